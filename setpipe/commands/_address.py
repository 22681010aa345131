"""The --address option shared by submit, jobs and schedule."""

from __future__ import annotations

import argparse

from setpipe.jobs.submit import DEFAULT_ADDRESS


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        metavar="URL",
        help="the head's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS or "
        f"{DEFAULT_ADDRESS}); the auth token comes from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH "
        "or ~/.ray/auth_token",
    )
