"""The SetpipeError family: every error a user can cause, worded to be acted on.

Each message names where (file, line, dotted field or row), what was found, what
is expected, and how to fix it. The CLI prints ``str(err)`` and exits 1; nothing
else in setpipe raises bare ``ValueError``/``assert`` for user input.
"""

from __future__ import annotations


class SetpipeError(Exception):
    """Base of every error setpipe raises for bad input or a bad environment."""


class SpecError(SetpipeError):
    """A job YAML or a ``KEY=VALUE`` override is invalid."""


class DataError(SetpipeError):
    """A Parquet file or row does not match the job's data layout."""


class ModelError(SetpipeError):
    """A model cannot be built or loaded from what was given."""


class TrainError(SetpipeError):
    """Training could not start or could not finish."""


class RegistryError(SetpipeError):
    """A model URI, alias or tracking store cannot be resolved."""


class ServeError(SetpipeError):
    """A serving request or deployment is invalid."""


class ExportError(SetpipeError):
    """A model cannot be exported, or its export does not match the PyTorch model."""


class JobError(SetpipeError):
    """A Ray job submission, lookup or schedule failed."""


def setpipe_cause(err: BaseException) -> SetpipeError | None:
    """The SetpipeError inside an error that Ray wrapped around it, or None.

    A Ray task or actor keeps the exception it raised as ``.cause`` (``RayTaskError``); a
    Ray Train worker group keeps each rank's as ``.worker_failures`` (``WorkerGroupError``).
    Followed through those and ``__cause__``, so a bad row found in a read task or a NaN
    loss on rank 1 reaches the user as setpipe's one-line message, not a Ray traceback.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SetpipeError) and type(current).__module__.startswith("setpipe"):
            return current
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            pending += [f for _, f in sorted(failures.items()) if isinstance(f, BaseException)]
        for inner in (getattr(current, "cause", None), current.__cause__):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return None
