"""`setpipe tune JOB.yaml [KEY=VALUE ...] [--resume]`: the job's search: block on Ray Tune."""

from __future__ import annotations

import argparse

HELP = "Search the job's hyperparameters (its search: block) on Ray Tune; gate the best model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job YAML (with a search: block)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. search.trials=8"
    )
    parser.add_argument(
        "--address", default=None, help="Ray address to join (default: a local Ray in-process)"
    )
    parser.add_argument(
        "--workdir", default=None, help="where runs, checkpoints and MLflow live (job.workdir)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the job's last search that did not finish (Tune restores it; no "
        "trial gets a second MLflow run)",
    )
    parser.add_argument("--quiet", action="store_true", help="print the summary and errors only")


def _summary(summary) -> str:  # summary: setpipe.search.SearchSummary
    d = summary.decision
    alias = f"moved to version {d.version}" if d.moved else f"not moved (version {d.version})"
    figures = "  ".join(f"{k}={v:.4g}" for k, v in sorted(summary.metrics.items()))
    return "\n".join(
        [
            "",
            "search finished" + (" (resumed)" if summary.resumed else ""),
            f"  parent run     {summary.parent_run_id}",
            f"  trials         {summary.trials} ({len(summary.stopped_early)} stopped early, "
            f"{len(summary.failed)} failed) in {summary.wall_s:.0f} s",
            f"  best trial     {summary.best_trial} (run {summary.best_run_id})",
            f"  best values    {summary.best_config}",
            f"  alias          {alias}: {d.reason}",
            f"  metrics        {figures}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    from setpipe.commands._quiet import library_logging

    library_logging(quiet=args.quiet)
    from setpipe import search
    from setpipe.spec import load_job

    overrides = list(args.overrides)
    if args.workdir is not None:
        overrides.append(f"workdir={args.workdir}")
    job = load_job(args.job, overrides)
    summary = search.tune(job, address=args.address, progress=not args.quiet, resume=args.resume)
    print(_summary(summary), flush=True)
    return 0
