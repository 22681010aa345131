"""`setpipe run JOB.yaml [KEY=VALUE ...]`: train, track, register and gate one job."""

from __future__ import annotations

import argparse
import json

HELP = "Train a job on Ray, track it in MLflow, register the model and gate its alias."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job YAML")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.epochs=5"
    )
    parser.add_argument(
        "--address", default=None, help="Ray address to join (default: a local Ray in-process)"
    )
    parser.add_argument(
        "--workdir", default=None, help="where runs, checkpoints and MLflow live (job.workdir)"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print the summary and errors only: no progress, no Ray or MLflow log lines",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--fresh",
        dest="resume",
        action="store_const",
        const="fresh",
        default="auto",
        help="start a new run even if the job's last attempt did not finish",
    )
    resume.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const="resume",
        help="resume the job's unfinished attempt, or fail saying why it cannot "
        "(default: resume it only if the job is unchanged, else start a new run)",
    )


def _summary(summary) -> str:  # summary: setpipe.pipeline.RunSummary
    from setpipe.jobs.scheduler import fingerprint_line

    d = summary.decision
    if d.moved:
        alias = f"moved to version {d.version}"
    elif d.champion_version_before is not None:
        alias = f"stays on version {d.champion_version_before}"
    else:
        alias = "not set"
    lines = [
        "",
        "run finished",
        f"  MLflow run     {summary.run_id}"
        + (
            f" (resumed at epoch {summary.resumed_from_epoch + 1})"
            if summary.resumed_from_epoch
            else ""
        ),
        f"  model          {summary.model_uri}",
        f"  alias          {alias}: {d.reason}",
        "  metrics        " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(summary.metrics.items())),
    ]
    lines += [f"  {k:<14} {v}" for k, v in summary.artifacts.items()]
    if summary.data_fingerprint:
        # The scheduler reads this line back from the job's log (on_new_data).
        lines.append(fingerprint_line(summary.data_fingerprint))
    lines.append(f"  champion on one test set: {json.dumps(summary.prediction)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from setpipe.commands._quiet import library_logging

    library_logging(quiet=args.quiet)  # before Ray and MLflow start: they read it then
    from setpipe import pipeline
    from setpipe.spec import load_job

    overrides = list(args.overrides)
    if args.workdir is not None:
        overrides.append(f"workdir={args.workdir}")
    job = load_job(args.job, overrides)
    summary = pipeline.run(job, address=args.address, progress=not args.quiet, resume=args.resume)
    print(_summary(summary), flush=True)
    return 0
