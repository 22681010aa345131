"""The setpipe command line: thin; each command lives in ``setpipe/commands/<name>.py``.

A command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``, and imports heavy libraries (ray, torch, mlflow) inside
``run`` so that ``setpipe --help`` and ``setpipe validate`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from setpipe import __version__
from setpipe.errors import SetpipeError

COMMANDS = (
    "validate",
    "schema",
    "datagen",
    "convert",
    "inspect",
    "run",
    "tune",
    "serve",
    "predict",
    "export",
    "submit",
    "jobs",
    "schedule",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setpipe",
        description="Train, track and serve mini-batch consistent set encoders on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"setpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"setpipe.commands.{name}")
        except ModuleNotFoundError as err:
            # A command still being written is left out; a broken import inside it is not.
            if err.name != f"setpipe.commands.{name}":
                raise
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _parser=cmd)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line. ``KEY=VALUE`` overrides may come after flags too
    (``setpipe run JOB --address A k=v``); anything else unknown is reported with the
    subcommand's usage, not the top level's."""
    args, extra = build_parser().parse_known_args(argv)
    if not extra:
        return args
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides.extend(overrides)
        extra = [e for e in extra if e not in overrides]
    if extra:
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args._run(args) or 0)
    except SetpipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
