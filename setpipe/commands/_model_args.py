"""Arguments shared by the commands that use a registered model (serve, predict, export)."""

from __future__ import annotations

import argparse

from setpipe.tracking import store


def add_model_arguments(parser: argparse.ArgumentParser, *, ray: bool = True) -> None:
    """MODEL_URI, --tracking-uri and --workdir; with ``ray``, --address too."""
    parser.add_argument(
        "model_uri",
        metavar="MODEL_URI",
        help=f"registered model: {store.REGISTERED_URI_FORMS}",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in --workdir)",
    )
    parser.add_argument(
        "--workdir", default=".setpipe", help="work dir holding mlflow.db (default: .setpipe)"
    )
    if not ray:
        return
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (e.g. ray://head:10001 or auto); default: a local Ray",
    )


def tracking_uri(args: argparse.Namespace) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the work dir's sqlite store."""
    return store.tracking_uri(args.tracking_uri, args.workdir)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, found {value}")
    return value
