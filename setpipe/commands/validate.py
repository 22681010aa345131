"""`setpipe validate JOB.yaml [KEY=VALUE ...]`: check a job without touching data or Ray."""

from __future__ import annotations

import argparse
import sys

from setpipe.errors import SpecError
from setpipe.spec import dump_job, load_job

HELP = "Check a job YAML (with overrides) and report every problem, or print it resolved."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.yaml", help="the job file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.epochs=3"
    )
    parser.add_argument(
        "--print", action="store_true", help="print the resolved job as YAML (defaults filled in)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        job = load_job(args.job, args.overrides)
    except SpecError as err:
        # One problem per line, no "error:" prefix: the lines are meant to be read as a list.
        print(err, file=sys.stderr)
        return 1
    if args.print:
        sys.stdout.write(dump_job(job))
    else:
        print(
            f'{args.job}: valid (job "{job.name}", task {job.model.task_names}, '
            f"encoder {job.model.encoder.kind})"
        )
    return 0
