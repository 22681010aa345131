"""schemas/job.schema.json is generated from the models and checked in; it must stay current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from setpipe.spec.schema import job_schema_text

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "job.schema.json"


def setpipe(*args: str, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "setpipe", *args],
        cwd=cwd,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checked_in_schema_matches_the_models() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == job_schema_text(), (
        "schemas/job.schema.json is stale: run `setpipe schema`"
    )


def test_schema_describes_the_job() -> None:
    schema = json.loads(job_schema_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "JobSpec"
    assert schema["required"] == ["name", "data", "model"]
    assert schema["additionalProperties"] is False
    encoder_kinds = [
        schema["$defs"][ref.split("/")[-1]]["properties"]["kind"]["const"]
        for ref in schema["$defs"]["ModelSpec"]["properties"]["encoder"]["discriminator"][
            "mapping"
        ].values()
    ]
    assert encoder_kinds == ["deepsets", "set_transformer", "umbc"]


@pytest.mark.parametrize("name", ["quickstart", "qg_jets", "digits", "passages"])
def test_example_jobs_pass_the_schema(name: str) -> None:
    # What an editor sees: the raw YAML (before ${VAR} interpolation) against the schema.
    jsonschema.validate(
        yaml.safe_load((REPO / "jobs" / f"{name}.yaml").read_text(encoding="utf-8")),
        json.loads(SCHEMA.read_text(encoding="utf-8")),
    )


def test_schema_command_check(tmp_path: Path) -> None:
    assert setpipe("schema", "--check", cwd=REPO).returncode == 0
    out = tmp_path / "s.json"
    written = setpipe("schema", "--output", str(out), cwd=tmp_path)
    assert (written.returncode, written.stdout) == (0, f"{out}: written\n")
    assert out.read_text(encoding="utf-8") == SCHEMA.read_text(encoding="utf-8")
    assert setpipe("schema", "--check", "--output", str(out), cwd=tmp_path).stdout == (
        f"{out}: up to date\n"
    )
    out.write_text("{}\n", encoding="utf-8")
    stale = setpipe("schema", "--check", "--output", str(out), cwd=tmp_path)
    assert (stale.returncode, stale.stderr) == (
        1,
        f"{out}: differs from the job models; regenerate it with `setpipe schema --output {out}`\n",
    )


def test_schema_command_never_overwrites_a_users_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n", encoding="utf-8")
    refused = setpipe("schema", "--output", str(notes), cwd=tmp_path)
    assert (refused.returncode, refused.stderr) == (
        1,
        f"error: --output {notes}: exists and is not a setpipe job schema; refusing to "
        "overwrite it. Choose another path, or pass --overwrite to replace it\n",
    )
    assert notes.read_text(encoding="utf-8") == "my notes\n"
    forced = setpipe("schema", "--output", str(notes), "--overwrite", cwd=tmp_path)
    assert forced.returncode == 0 and notes.read_text(encoding="utf-8") == job_schema_text()
    # An older schema of its own is regenerated without asking.
    old = json.loads(job_schema_text())
    old["$defs"].pop("ModelSpec")
    notes.write_text(json.dumps(old), encoding="utf-8")
    assert setpipe("schema", "--output", str(notes), cwd=tmp_path).returncode == 0
    assert notes.read_text(encoding="utf-8") == job_schema_text()
    directory = setpipe("schema", "--output", str(tmp_path), cwd=tmp_path)
    assert (directory.returncode, directory.stderr) == (
        1,
        f"error: --output {tmp_path}: is a directory; give a file path, e.g. "
        f"{tmp_path / 'job.schema.json'}\n",
    )
