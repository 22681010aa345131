"""`setpipe predict MODEL_URI --input PARQUET --output DIR`: batch inference with Ray Data."""

from __future__ import annotations

import argparse

from setpipe.commands._model_args import add_model_arguments, positive_int, tracking_uri

HELP = "Predict every set of a Parquet dataset with a registered model; write Parquet."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--input", required=True, help="Parquet file, directory, glob or s3:// URI (job layout)"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="new or empty directory for the prediction Parquet, resolved on this machine "
        "(on a cluster: one every node shares, or an s3:// / gs:// URI)",
    )
    parser.add_argument(
        "--batch-elements",
        type=positive_int,
        default=None,
        help="elements per model batch (default: the job's data.batch.element_budget)",
    )
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="COLUMN",
        help="input column copied to the output beside the job's key (repeatable)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=1, help="model actors (default 1)"
    )


def run(args: argparse.Namespace) -> int:
    from setpipe.commands._quiet import library_logging

    library_logging(quiet=False)
    import ray

    from setpipe.serve.batch_predict import predict_dataset, preflight

    checked = preflight(args.input, args.output)  # bad paths, buckets, credentials: before Ray
    # Called in-process (tests, notebooks) with Ray already up: use it and leave it up.
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=args.address, log_to_driver=False)
    try:
        summary = predict_dataset(
            args.model_uri,
            args.input,
            args.output,
            tracking_uri=tracking_uri(args),
            batch_elements=args.batch_elements,
            keep=[c for spec in args.keep for c in spec.split(",") if c],
            concurrency=args.concurrency,
            checked=checked,
        )
    finally:
        if owns_ray:
            ray.shutdown()
    skipped = f", {summary.skipped_rows} bad rows skipped" if summary.skipped_rows else ""
    print(
        f"{summary.rows} predictions from {summary.name} version {summary.version} "
        f"written to {summary.output}{skipped}"
    )
    return 0
