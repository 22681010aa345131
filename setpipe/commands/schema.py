"""`setpipe schema`: write (or check) the job JSON Schema generated from the models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from setpipe.errors import SpecError
from setpipe.spec.schema import SCHEMA_PATH, job_schema_text

HELP = "Write schemas/job.schema.json from the job models (or --check that it is current)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        default=SCHEMA_PATH,
        metavar="PATH",
        help=f"where to write (default {SCHEMA_PATH})",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if PATH differs from the models"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace PATH even if it is not a setpipe job schema (an old one is always replaced)",
    )


def _is_job_schema(path: Path) -> bool:
    """Whether ``path`` holds a job schema this command wrote (any setpipe version)."""
    try:
        with path.open("rb") as f:
            data = json.loads(f.read(16 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("title") == "JobSpec" and "$defs" in data


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise SpecError(
            f"--output {path}: is a directory; give a file path, e.g. {path / 'job.schema.json'}"
        )
    if path.exists() and not overwrite and not _is_job_schema(path):
        raise SpecError(
            f"--output {path}: exists and is not a setpipe job schema; refusing to overwrite "
            "it. Choose another path, or pass --overwrite to replace it"
        )


def run(args: argparse.Namespace) -> int:
    path = Path(args.output)
    text = job_schema_text()
    if path.is_dir():
        _check_target(path, args.overwrite)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            state = "is missing" if current is None else "differs from the job models"
            print(
                f"{path}: {state}; regenerate it with `setpipe schema --output {path}`",
                file=sys.stderr,
            )
            return 1
        print(f"{path}: up to date")
        return 0
    _check_target(path, args.overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"{path}: written")
    return 0
