"""The request format for predictions, shared by the registered pyfunc and the Ray Serve app.

One set, by the job's RAW element feature names (``data.elements.feature_names``: the
parallel columns, the struct fields, or the vector components ``<column>_0 ...``), so one
request shape covers all three layouts::

    SET = {"features": {"part_pt": [...], "part_eta": [...], ...},   # equal-length lists
           "context": {"jet_pt": 512.0}}                              # the job's context, if any

``SetInput`` is the pydantic type (``mlflow models serve`` validates against it);
``sets_to_batch`` checks names, lengths, numbers and limits by hand and packs the sets
into a raw-feature SetBatch, for both the pyfunc and the server. By hand, not by
pydantic: pydantic on a 10⁶-element set's 4·10⁶ floats would cost 130 MB of objects and
seconds. Every error names the set index and field the way the user wrote it, e.g.
``sets[3].features.part_eta: expected 12 values like part_pt, found 11``. The server's
streaming parser of big bodies (``serve._json``) raises the same errors through the
public checks here (``check_numbers``, ``context_row``, ``too_many_elements``).

It sits in the data layer, below tracking (the pyfunc) and serve (the HTTP app), and
imports neither; torch is imported only where the SetBatch is built.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from setpipe.errors import ServeError
from setpipe.spec.models import JobSpec

if TYPE_CHECKING:
    from setpipe.data.batch import SetBatch


class SetInput(BaseModel):
    """One set: raw element feature name -> one number per element; context name -> number."""

    model_config = ConfigDict(extra="forbid")

    features: dict[str, list[float]] = Field(
        description="Every raw element feature of the job: equal-length lists of finite numbers."
    )
    context: dict[str, float] = Field(
        default_factory=dict, description="The job's set-level context features (none: {})."
    )


class BadRequest(ServeError):
    """A request that is refused: ``status`` 413 (over a limit) or 422 (invalid)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


DEFAULT_MAX_ELEMENTS_PER_SET = 2_000_000
_JET_FEATURES = 4  # part_pt, part_eta, part_phi, part_pid: the layout the defaults are sized on
_JSON_BYTES_PER_NUMBER = 8  # "-0.1234," or "211, ": a value rounded as a client sends it
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_ELEMENTS_PER_SET * _JET_FEATURES * _JSON_BYTES_PER_NUMBER
"""64,000,000: the largest set the element limit admits, as JSON. The server parses a body
within about its own size again (4 bytes a number), so this bounds a request's memory near
200 MB; a 10⁶-element jet at 4 decimals is ~30 MB. Models with more features, or clients
that send full double precision (~20 bytes a number), raise --max-body-bytes."""
DEFAULT_REQUEST_TIMEOUT_S = 30.0
"""Seconds a client has to send a whole request: a 64 MB body (the default limit) at
~2 MB/s, ~100x what loopback or a LAN needs; a quiet client is let go after this long."""


class Limits(BaseModel):
    """Per-request limits; each is a command-line option of ``setpipe serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sets: int = Field(default=4096, ge=1, description="Sets in one request.")
    max_elements_per_set: int = Field(
        default=DEFAULT_MAX_ELEMENTS_PER_SET,
        ge=1,
        description="Elements in one set (larger sets are chunked).",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1, description="Bytes of request body."
    )
    request_timeout_s: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S,
        gt=0.0,
        description="Seconds a client has to send a whole request (408 after).",
    )


def too_many_sets(limits: Limits, count: int | None = None) -> BadRequest:
    """The 413 for a request over ``--max-sets``; ``count`` None: parsing stopped at the limit."""
    if count is None:
        return BadRequest(
            413,
            f"sets: more than {limits.max_sets} sets; the limit is {limits.max_sets} per "
            "request (--max-sets)",
        )
    return BadRequest(
        413,
        f"sets: {count} sets exceed the limit of {limits.max_sets} per request (--max-sets)",
    )


def too_many_elements(where: str, count: int, limits: Limits) -> BadRequest:
    """The 413 for a set over ``--max-elements-per-set`` (``where``: ``sets[i]``)."""
    return BadRequest(
        413,
        f"{where}: {count} elements exceed the limit of {limits.max_elements_per_set} per set "
        "(--max-elements-per-set)",
    )


def describe(value: Any) -> str:
    """A decoded JSON value as an error shows it: ``an empty list``, ``"abc"``, ``null``, ``3``."""
    if isinstance(value, np.ndarray | list) and len(value) == 0:
        return "an empty list"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:17] + "..."
        return json.dumps(shown)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, np.ndarray | list):
        return "a list"
    return repr(value)


def _non_finite(value: float) -> str:
    return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")


_NUMBER_TYPES = {int, float}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_numbers(where: str, values: np.ndarray, first: int = 0) -> None:
    """422 naming the first value of ``values`` (float64, entries ``first``... of the list at
    ``where``) that is not finite or does not fit float32."""
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        raise BadRequest(
            422,
            f"{where}[{first + i}]: {_non_finite(float(values[i]))} is not allowed; values must "
            "be finite numbers",
        )
    outside = np.abs(values) > FLOAT32_MAX
    if outside.any():
        i = int(np.argmax(outside))
        raise BadRequest(422, f"{where}[{first + i}]: {_outside_float32(float(values[i]))}")


def _as_values(where: str, value: Any) -> np.ndarray:
    """A feature list as float64 numbers, or a 422 naming the first bad entry."""
    if isinstance(value, list):
        # From orjson, or a list the numeric decoder refused. type() and not isinstance:
        # True is an int to isinstance, and numpy would turn "1.5" into 1.5.
        if not set(map(type, value)) <= _NUMBER_TYPES:
            for i, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, int | float):
                    raise BadRequest(
                        422, f"{where}[{i}]: expected a number, found {describe(item)}"
                    )
        given, value = value, np.asarray(value, dtype=np.float64)
    else:
        given = None
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise BadRequest(422, f"{where}: expected a list of numbers, found {describe(value)}")
    finite = np.isfinite(value)
    if not finite.all():
        i = int(np.argmin(finite))
        if given is not None and type(given[i]) is int:  # a huge JSON integer, not inf
            digits = len(str(abs(given[i])))
            raise BadRequest(
                422, f"{where}[{i}]: an integer of {digits} digits does not fit float32"
            )
    check_numbers(where, value)
    return value


def _outside_float32(value: float) -> str:
    return (
        f"{value:.6g} does not fit float32 (|x| <= {FLOAT32_MAX:.4g}), which the model "
        "computes in; send values in the range the model was trained on"
    )


def expect_keys(where: str, obj: dict, expected: list[str], what: str) -> None:
    """422 for the first key of ``obj`` not in ``expected``, else for those missing."""
    unknown = [k for k in obj if k not in expected]
    if unknown:
        raise BadRequest(
            422,
            f"{where}.{unknown[0]}: not {what} of this model; expected {', '.join(expected)}",
        )
    missing = [k for k in expected if k not in obj]
    if missing:
        raise BadRequest(
            422, f"{where}: missing {', '.join(missing)}; expected {', '.join(expected)}"
        )


def context_row(where: str, ctx: Any, context_names: list[str]) -> list[float]:
    """One set's context as floats in the job's order, or a 422 naming the field."""
    if not isinstance(ctx, dict):
        raise BadRequest(422, f"{where}.context: expected an object, found {describe(ctx)}")
    expect_keys(f"{where}.context", ctx, context_names, "a context feature")
    row = []
    for name in context_names:
        value = ctx[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(
                422, f"{where}.context.{name}: expected a number, found {describe(value)}"
            )
        if not math.isfinite(value):
            raise BadRequest(
                422,
                f"{where}.context.{name}: {_non_finite(float(value))} is not allowed; "
                "values must be finite numbers",
            )
        if abs(value) > FLOAT32_MAX:
            raise BadRequest(422, f"{where}.context.{name}: {_outside_float32(float(value))}")
        row.append(float(value))
    return row


def sets_to_batch(sets: Any, job: JobSpec, limits: Limits) -> SetBatch:
    """Validate decoded sets (lists or numpy arrays as values) and pack them, raw features.

    Raises BadRequest 413 for a limit, 422 for anything else, naming ``sets[i].field``.
    """
    import torch

    from setpipe.data.batch import SetBatch

    features = job.data.elements.feature_names
    context_names = list(job.data.context)
    if isinstance(sets, np.ndarray):
        sets = sets.tolist()  # the fast path made "[1, 2]" an array: name its entries below
    if not isinstance(sets, list) or not sets:
        raise BadRequest(422, f"sets: expected a non-empty list of sets, found {describe(sets)}")
    if len(sets) > limits.max_sets:
        raise too_many_sets(limits, len(sets))
    columns: list[list[np.ndarray]] = [[] for _ in features]
    sizes: list[int] = []
    contexts: list[list[float]] = []
    for s, item in enumerate(sets):
        where = f"sets[{s}]"
        if not isinstance(item, dict):
            raise BadRequest(
                422, f"{where}: expected an object with features, found {describe(item)}"
            )
        unknown = [k for k in item if k not in ("features", "context")]
        if unknown:
            raise BadRequest(
                422, f"{where}.{unknown[0]}: unknown field; expected features, context"
            )
        given = item.get("features")
        if not isinstance(given, dict):
            raise BadRequest(
                422,
                f"{where}.features: expected an object of feature lists, found "
                f"{'nothing' if given is None else describe(given)}",
            )
        expect_keys(f"{where}.features", given, features, "an element feature")
        first = _as_values(f"{where}.features.{features[0]}", given[features[0]])
        n = first.size
        if n == 0:
            raise BadRequest(422, f"{where}: empty set; a set needs at least one element")
        if n > limits.max_elements_per_set:
            raise too_many_elements(where, n, limits)
        columns[0].append(first)
        for f, name in enumerate(features[1:], start=1):
            values = _as_values(f"{where}.features.{name}", given[name])
            if values.size != n:
                raise BadRequest(
                    422,
                    f"{where}.features.{name}: expected {n} values like {features[0]}, "
                    f"found {values.size}",
                )
            columns[f].append(values)
        sizes.append(n)
        contexts.append(context_row(where, item.get("context", {}), context_names))
    # One float32 [E, F] block, filled column by column (no [E, F] float64 intermediate).
    values = np.empty((sum(sizes), len(features)), dtype=np.float32)
    for f, parts in enumerate(columns):
        np.concatenate(parts, out=values[:, f], casting="same_kind")
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return SetBatch(
        values=torch.from_numpy(values),
        offsets=torch.from_numpy(offsets),
        context=torch.tensor(contexts, dtype=torch.float32) if context_names else None,
    )


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ELEMENTS_PER_SET",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "BadRequest",
    "Limits",
    "SetInput",
    "check_numbers",
    "context_row",
    "describe",
    "expect_keys",
    "sets_to_batch",
    "too_many_elements",
    "too_many_sets",
]
