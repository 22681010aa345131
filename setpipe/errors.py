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


class JobError(SetpipeError):
    """A Ray job submission, lookup or schedule failed."""
