"""The serving API's request and response, and the validation that turns a body into a SetBatch.

A request holds one or many sets, each in the job's element layout by raw element
feature name (the registered pyfunc's ``SetInput``, one definition)::

    {"sets": [{"features": {"part_pt": [...], "part_eta": [...], ...},
               "context": {"jet_pt": 512.0}}]}

Validation is done here, by hand, on what ``_json.loads_request`` decodes (orjson lists
for ordinary bodies, numpy arrays for huge ones), not by pydantic: pydantic on a
10⁶-element set's 4·10⁶ floats would cost 130 MB of objects and seconds.
Every error names the set index and field the way the user wrote it, e.g.
``sets[3].features.part_eta: expected 12 values like part_pt, found 11``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from setpipe.data.batch import SetBatch
from setpipe.errors import ServeError
from setpipe.serve._json import loads_request
from setpipe.spec.models import JobSpec
from setpipe.tracking.pyfunc import SetInput


class BadRequest(ServeError):
    """A request the server refuses: ``status`` 413 (over a limit) or 422 (invalid)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Limits(BaseModel):
    """Per-request limits; each is a command-line option of ``setpipe serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sets: int = Field(default=4096, ge=1, description="Sets in one request.")
    max_elements_per_set: int = Field(
        default=2_000_000, ge=1, description="Elements in one set (larger sets are chunked)."
    )
    max_body_bytes: int = Field(
        # A 10⁶-element jet (4 features, ~9 characters a number) is ~40 MB of JSON.
        default=128 * 1024 * 1024,
        ge=1,
        description="Bytes of request body.",
    )


# --------------------------------------------------------------------------- API models


class PredictRequest(BaseModel):
    """Body of ``POST /predict`` (documentation; the handler validates by hand, see above)."""

    model_config = ConfigDict(extra="forbid")

    sets: list[SetInput] = Field(min_length=1, description="One or many sets.")


class ModelRef(BaseModel):
    name: str = Field(description="Registered model name.")
    version: str = Field(description="The registered version that produced the predictions.")


class PredictResponse(BaseModel):
    """Body of a 200 answer: one prediction per set, in request order, all from one version."""

    model: ModelRef
    predictions: list[dict[str, Any]] = Field(
        description='Per set: {"probabilities": [...]} (classify), {"value": x} (regress) or '
        '{"scores": [...]} (rank, one per element).'
    )


class ModelInfo(BaseModel):
    """Body of ``GET /model``."""

    name: str
    version: str
    alias: str | None
    task: str
    element_features: list[str]
    context_features: list[str]
    num_classes: int | None
    pid: int = Field(description="Process id of the replica that answered (for RSS probes).")


class ErrorResponse(BaseModel):
    detail: str


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: a raw-feature SetBatch (no transforms applied yet)."""

    batch: SetBatch

    @property
    def num_elements(self) -> int:
        return self.batch.num_elements


def _describe(value: Any) -> str:
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


def _as_values(where: str, value: Any) -> np.ndarray:
    """A feature list as float64 numbers, or a 422 naming the first bad entry."""
    if isinstance(value, list):
        # From orjson, or a list the numeric decoder refused. type() and not isinstance:
        # True is an int to isinstance, and numpy would turn "1.5" into 1.5.
        if not set(map(type, value)) <= _NUMBER_TYPES:
            for i, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, int | float):
                    raise BadRequest(
                        422, f"{where}[{i}]: expected a number, found {_describe(item)}"
                    )
        value = np.asarray(value, dtype=np.float64)
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise BadRequest(422, f"{where}: expected a list of numbers, found {_describe(value)}")
    finite = np.isfinite(value)
    if not finite.all():
        i = int(np.argmin(finite))
        raise BadRequest(
            422,
            f"{where}[{i}]: {_non_finite(float(value[i]))} is not allowed; values must be "
            "finite numbers",
        )
    return value


def _expect_keys(where: str, obj: dict, expected: list[str], what: str) -> None:
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


def sets_to_batch(sets: Any, job: JobSpec, limits: Limits) -> SetBatch:
    """Validate decoded sets (lists or numpy arrays as values) and pack them, raw features.

    Raises BadRequest 413 for a limit, 422 for anything else, naming ``sets[i].field``.
    """
    features = job.data.elements.feature_names
    context_names = list(job.data.context)
    if isinstance(sets, np.ndarray):
        sets = sets.tolist()  # the fast path made "[1, 2]" an array: name its entries below
    if not isinstance(sets, list) or not sets:
        raise BadRequest(422, f"sets: expected a non-empty list of sets, found {_describe(sets)}")
    if len(sets) > limits.max_sets:
        raise BadRequest(
            413,
            f"sets: {len(sets)} sets exceed the limit of {limits.max_sets} per request "
            "(--max-sets)",
        )
    columns: list[list[np.ndarray]] = [[] for _ in features]
    sizes: list[int] = []
    contexts: list[list[float]] = []
    for s, item in enumerate(sets):
        where = f"sets[{s}]"
        if not isinstance(item, dict):
            raise BadRequest(
                422, f"{where}: expected an object with features, found {_describe(item)}"
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
                f"{'nothing' if given is None else _describe(given)}",
            )
        _expect_keys(f"{where}.features", given, features, "an element feature")
        first = _as_values(f"{where}.features.{features[0]}", given[features[0]])
        n = first.size
        if n == 0:
            raise BadRequest(422, f"{where}: empty set; a set needs at least one element")
        if n > limits.max_elements_per_set:
            raise BadRequest(
                413,
                f"{where}: {n} elements exceed the limit of {limits.max_elements_per_set} per set "
                "(--max-elements-per-set)",
            )
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
        ctx = item.get("context", {})
        if not isinstance(ctx, dict):
            raise BadRequest(422, f"{where}.context: expected an object, found {_describe(ctx)}")
        _expect_keys(f"{where}.context", ctx, context_names, "a context feature")
        row = []
        for name in context_names:
            value = ctx[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(
                    422, f"{where}.context.{name}: expected a number, found {_describe(value)}"
                )
            if not math.isfinite(value):
                raise BadRequest(
                    422,
                    f"{where}.context.{name}: {_non_finite(float(value))} is not allowed; "
                    "values must be finite numbers",
                )
            row.append(float(value))
        contexts.append(row)
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


def _not_json(err: ValueError) -> BadRequest:
    """The 422 for a body that is not JSON: not UTF-8, or malformed (where and why)."""
    return BadRequest(422, f"body: not valid JSON ({err})")


def decode_body(body: bytes | bytearray) -> str:
    """The body as text; 422 when it is not UTF-8 (the message a JSON error would give)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_json(err) from None


def parse_request(body: bytes | bytearray | str, job: JobSpec, limits: Limits) -> ParsedRequest:
    """Decode and validate a ``POST /predict`` body (already read under the byte cap).

    The server passes a body over ``_json.ORJSON_MAX_BYTES`` as text from ``decode_body``,
    so that it can drop the bytes first; smaller ones as they came.
    """
    try:
        doc = loads_request(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _not_json(err) from None
    if not isinstance(doc, dict):
        raise BadRequest(422, f'body: expected an object {{"sets": [...]}}, found {_describe(doc)}')
    unknown = [k for k in doc if k != "sets"]
    if unknown:
        raise BadRequest(422, f"body.{unknown[0]}: unknown field; expected sets")
    return ParsedRequest(batch=sets_to_batch(doc.get("sets"), job, limits))
