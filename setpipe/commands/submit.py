"""`setpipe submit JOB.yaml [KEY=VALUE ...] --address URL [--follow]`: run a job on a cluster."""

from __future__ import annotations

import argparse
import sys

from setpipe.commands._address import add_address
from setpipe.spec import load_job

HELP = "Submit a job to a Ray cluster through the Ray Jobs API (the head's dashboard)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.yaml", help="the job file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.epochs=3"
    )
    add_address(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="stream the job's logs until it ends; exit 1 unless it succeeded",
    )
    parser.add_argument(
        "--id",
        default=None,
        metavar="SUBMISSION_ID",
        help="submission id (default: setpipe-<name>-<UTC minute>-<8 hex of the resolved job>)",
    )


def run(args: argparse.Namespace) -> int:
    from setpipe.jobs.submit import JobsClient, check_durable_paths, submission_id_for

    job = load_job(args.job, args.overrides)
    check_durable_paths(job)  # before contacting the cluster: the mistake is the job's
    client = JobsClient(args.address)
    submission_id = client.submit(job, args.id or submission_id_for(job))
    print(f"submitted {submission_id} to {client.address}")
    print(f"  runs, checkpoints and the default MLflow store go to {job.workdir} on the cluster")
    if not args.follow:
        print(f"  setpipe jobs logs {submission_id} --follow --address {client.address}")
        return 0
    status = client.follow(submission_id, sys.stdout)
    print(f"{submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1
