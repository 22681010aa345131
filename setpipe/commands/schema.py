"""`setpipe schema`: write (or check) the job JSON Schema generated from the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    path = Path(args.output)
    text = job_schema_text()
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"{path}: written")
    return 0
