"""`setpipe schedule JOBS_DIR --address URL [--once] [--interval S]`: retrain on a schedule."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from setpipe.commands._address import add_address

HELP = "Submit the scheduled jobs of a directory when due (cron, on_new_data, concurrency)."


EPILOG = """\
A job is scheduled by a schedule: block in its YAML (jobs without one are ignored):

  schedule:
    cron: "0 3 * * *"     # five fields, read in timezone
    timezone: UTC         # IANA name, e.g. Europe/Zurich
    on_new_data: true     # run only if the training files changed since the last success
    concurrency: forbid   # a due run while the last is going: forbid (skip) | replace | allow
    catchup: latest       # missed times after downtime: none | latest | all

Each due time is submitted once, as setpipe-<name>-<YYYYmmddTHHMMZ>: after a crash or
restart the same id is refused by Ray as a duplicate, so nothing runs twice and nothing
due is lost. A job seen for the first time is registered; its first run is its next cron
time. --once prints one line per event (or, when nothing was due, each job's next
time) and exits 1 if any was an error.

examples:
  setpipe schedule jobs/ --address http://head:8265            # a long-running service
  setpipe schedule jobs/ --once --address http://head:8265     # from cron / a CronJob
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "jobs_dir", metavar="JOBS_DIR", help="directory of job YAMLs (reloaded on change)"
    )
    add_address(parser)
    parser.add_argument(
        "--workdir",
        default=".setpipe",
        help="where scheduler.db (last fire times, submissions, data fingerprints) lives "
        "(default: .setpipe)",
    )
    parser.add_argument(
        "--once", action="store_true", help="one pass, then exit (for cron or a Kubernetes CronJob)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between passes (default: 30)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="S",
        help="catchup none: a due time older than this is missed, not run (default: 300)",
    )


def run(args: argparse.Namespace) -> int:
    from setpipe.jobs.scheduler import Scheduler
    from setpipe.jobs.state import State
    from setpipe.jobs.submit import JobsClient

    state = State(Path(args.workdir) / "scheduler.db")
    try:
        scheduler = Scheduler(
            args.jobs_dir, JobsClient(args.address), state, grace=timedelta(seconds=args.grace)
        )
        if args.once:
            events = scheduler.run_once()
            for event in events:
                print(event)
            if not events:  # from cron, silence would not say the pass ran at all
                print(scheduler.idle_note())
            return 1 if any(e.action == "error" for e in events) else 0
        print(f"scheduling {args.jobs_dir} every {args.interval:g} s (Ctrl-C stops)")
        scheduler.run_forever(
            args.interval,
            log=lambda line: print(f"{datetime.now(UTC):%H:%M:%SZ} {line}", flush=True),
        )
    finally:
        state.close()
    return 0
