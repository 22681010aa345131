"""The serving API's request and response bodies, and the decoding of a ``POST /predict`` body.

A request holds one or many sets, each in the job's element layout by raw element
feature name (the registered pyfunc's ``SetInput``, one definition in
``setpipe.data.request``)::

    {"sets": [{"features": {"part_pt": [...], "part_eta": [...], ...},
               "context": {"jet_pt": 512.0}}]}

The body is decoded by ``_json.loads_request`` (orjson lists for ordinary bodies, numpy
arrays for huge ones) and its sets are checked and packed by ``data.request.sets_to_batch``,
the same validation the pyfunc runs; every error names the set index and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from setpipe.data.batch import SetBatch
from setpipe.data.request import BadRequest, Limits, SetInput, describe, sets_to_batch
from setpipe.serve._json import loads_request
from setpipe.spec.models import JobSpec

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


NESTED_TOO_DEEP = (
    'body: JSON nested too deeply; a request is {"sets": [{"features": {"NAME": [numbers]}, '
    '"context": {"NAME": number}}]}'
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
    except RecursionError:  # the pure-Python decoder of huge bodies recurses per level
        raise BadRequest(422, NESTED_TOO_DEEP) from None
    if not isinstance(doc, dict):
        raise BadRequest(422, f'body: expected an object {{"sets": [...]}}, found {describe(doc)}')
    unknown = [k for k in doc if k != "sets"]
    if unknown:
        raise BadRequest(422, f"body.{unknown[0]}: unknown field; expected sets")
    return ParsedRequest(batch=sets_to_batch(doc.get("sets"), job, limits))
