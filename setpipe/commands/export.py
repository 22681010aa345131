"""`setpipe export MODEL_URI --format onnx|torch-export --out DIR [--overwrite]`."""

from __future__ import annotations

import argparse

from setpipe.commands._model_args import add_model_arguments, positive_int, tracking_uri

HELP = "Export a registered model as ONNX or torch.export graphs, checked against PyTorch."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, ray=False)  # export runs in this process: no Ray
    parser.add_argument(
        "--format", required=True, choices=("onnx", "torch-export"), help="graph format"
    )
    parser.add_argument("--out", required=True, help="new or empty directory for the export")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out when it is not empty"
    )
    parser.add_argument(
        "--chunked-size",
        type=positive_int,
        default=1_000_000,
        help="elements of the one set the chunked graphs are checked on (default 1000000)",
    )


def run(args: argparse.Namespace) -> int:
    from setpipe.commands._quiet import library_logging

    library_logging(quiet=True)
    from setpipe.export import export_model

    summary = export_model(
        args.model_uri,
        args.format,
        args.out,
        overwrite=args.overwrite,
        tracking_uri=tracking_uri(args),
        chunked_size=args.chunked_size,
    )
    logged = f"; logged to {summary.artifact_uri}" if summary.artifact_uri else ""
    print(
        f"{summary.name} version {summary.version} exported as {summary.format} to "
        f"{summary.directory} ({', '.join(summary.graphs)}); parity max rel "
        f"{summary.parity['max']:.2g}{logged}"
    )
    return 0
