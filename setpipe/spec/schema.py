"""The JSON Schema of a job, generated from the models (editors complete and check against it)."""

from __future__ import annotations

import json

from setpipe.spec.models import JobSpec

SCHEMA_PATH = "schemas/job.schema.json"


def job_schema_text() -> str:
    """The schema file's exact text: stable key order, two-space indent, trailing newline."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(JobSpec.model_json_schema())
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
