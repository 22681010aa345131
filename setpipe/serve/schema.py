"""The serving API's request and response bodies, and the decoding of a ``POST /predict`` body.

A request holds one or many sets, each in the job's element layout by raw element
feature name (the registered pyfunc's ``SetInput``, one definition in
``setpipe.data.request``)::

    {"sets": [{"features": {"part_pt": [...], "part_eta": [...], ...},
               "context": {"jet_pt": 512.0}}]}

A small body is decoded by orjson and its sets checked and packed by
``data.request.sets_to_batch``, the validation the pyfunc runs; a big one is parsed as a
stream by ``_json.parse_sets`` with the same checks, stopping at the first limit passed
(see _json.py). Every error names the set index and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from setpipe.data.batch import SetBatch
from setpipe.data.request import BadRequest, Limits, SetInput, describe, sets_to_batch
from setpipe.serve._json import ORJSON_MAX_BYTES, parse_sets
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
        '{"scores": [...]} (rank, one per element); several heads (model.heads): '
        '{"<head>": <its output as above>, ...}.'
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


def parse_request(body: bytes | bytearray, job: JobSpec, limits: Limits) -> ParsedRequest:
    """Decode and validate a ``POST /predict`` body (already read under the byte cap).

    Up to ``_json.ORJSON_MAX_BYTES``: orjson, then ``sets_to_batch``. Bigger, or refused by
    orjson (NaN, malformed, not UTF-8: the stream parser names what and where): parsed as
    a stream, within about the body's size again.
    """
    if len(body) <= ORJSON_MAX_BYTES:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            if str(err).startswith("depth limit exceeded"):  # over 1024 levels
                raise BadRequest(422, NESTED_TOO_DEEP) from None
        else:
            return ParsedRequest(batch=_document_to_batch(doc, job, limits))
    return ParsedRequest(batch=parse_sets(body, job, limits))


def _document_to_batch(doc: Any, job: JobSpec, limits: Limits) -> SetBatch:
    if not isinstance(doc, dict):
        raise BadRequest(422, f'body: expected an object {{"sets": [...]}}, found {describe(doc)}')
    unknown = [k for k in doc if k != "sets"]
    if unknown:
        raise BadRequest(422, f"body.{unknown[0]}: unknown field; expected sets")
    return sets_to_batch(doc.get("sets"), job, limits)
