"""`setpipe jobs list | status ID | logs ID [--follow] | stop ID`: jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import sys

from setpipe.commands._address import add_address

HELP = "List, inspect, follow and stop jobs submitted to a Ray cluster."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_address(sub.add_parser("list", help="submitted jobs, oldest first"))
    for name, text in (
        ("status", "a job's status and message"),
        ("logs", "a job's driver logs"),
        ("stop", "ask a job to stop"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("submission_id", metavar="ID", help="the submission id")
        add_address(action)
        if name == "logs":
            action.add_argument("--follow", action="store_true", help="stream until the job ends")


def run(args: argparse.Namespace) -> int:
    from setpipe.jobs.submit import JobsClient

    client = JobsClient(args.address)
    if args.action == "list":
        rows = client.list()
        if not rows:
            print(f"no submitted jobs on {client.address}")
        width = max((len(r.submission_id) for r in rows), default=0)
        for row in rows:
            started = f"{row.start_time:%Y-%m-%d %H:%M:%SZ}" if row.start_time else "-"
            print(f"{row.submission_id:<{width}}  {row.status:<9}  {started}  {row.entrypoint}")
        return 0
    if args.action == "status":
        status = client.status(args.submission_id)
        message = client.message(args.submission_id)
        print(f"{args.submission_id}: {status}" + (f" ({message})" if message else ""))
        return 0
    if args.action == "logs":
        if args.follow:
            status = client.follow(args.submission_id, sys.stdout)
            print(f"{args.submission_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(client.logs(args.submission_id))
        return 0
    stopped = client.stop(args.submission_id)
    status = client.status(args.submission_id)
    verb = "stop requested" if stopped else "already finished"
    print(f"{args.submission_id}: {verb} ({status})")
    return 0
