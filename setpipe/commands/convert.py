"""setpipe convert INPUT... --out DIR: ROOT, HDF5 or awkward data into setpipe's Parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from setpipe.errors import DataError

HELP = "convert ROOT (uproot), HDF5 (h5py; zero-padded arrays) or awkward Parquet to setpipe data"

FORMATS = {".root": "root", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".parquet": "awkward"}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated names")
    return names


def _pair(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OLD=NEW, e.g. y=label")
    return old, new


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="Input files.")
    parser.add_argument("--out", required=True, type=Path, help="Output directory.")
    parser.add_argument(
        "--format",
        choices=["root", "hdf5", "awkward"],
        default=None,
        help="Input format (default: from the extension: .root, .h5/.hdf5, .parquet).",
    )
    parser.add_argument(
        "--columns",
        type=_names,
        default=None,
        help="Comma-separated branches (root; globs allowed), set-level datasets (hdf5) or "
        "top-level fields (awkward) to keep (default: all).",
    )
    parser.add_argument(
        "--cut",
        default=None,
        help="root: uproot expression keeping whole sets, e.g. '(jet_pt > 500) & (npart >= 2)'.",
    )
    parser.add_argument(
        "--tree", default=None, help="root: the TTree/RNTuple (default: the only one)."
    )
    parser.add_argument(
        "--elements",
        default=None,
        help="hdf5: the (N, M, F) zero-padded element dataset (default: the only one).",
    )
    parser.add_argument(
        "--features",
        type=_names,
        default=None,
        help="hdf5: comma-separated names of the F element features, e.g. "
        "part_pt,part_y,part_phi,part_pid.",
    )
    parser.add_argument(
        "--rename",
        type=_pair,
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="Rename an output column (repeatable), e.g. --rename y=label.",
    )
    parser.add_argument(
        "--step", type=int, default=20_000, help="Sets read per chunk: bounds memory (20000)."
    )
    parser.add_argument(
        "--rows-per-file", type=int, default=100_000, help="Rows per Parquet file (100000)."
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the dataset already in --out, whole (refused if it holds anything but "
        "Parquet files). Without it a non-empty --out is refused.",
    )


def _format(args: argparse.Namespace) -> str:
    for path in args.inputs:
        if not path.is_file():
            raise DataError(f"{path}: no such file; give existing input files")
    if args.format is not None:
        return args.format
    found = {FORMATS.get(p.suffix.lower()) for p in args.inputs}
    if len(found) != 1 or None in found:
        suffixes = ", ".join(sorted({p.suffix or "(none)" for p in args.inputs}))
        raise DataError(
            f"cannot tell the input format from the extensions ({suffixes}); expected one of "
            ".root, .h5/.hdf5, .parquet for all inputs, or give --format root|hdf5|awkward"
        )
    return found.pop()  # type: ignore[return-value]


def _refuse(args: argparse.Namespace, fmt: str) -> None:
    given = {
        "root": ("cut", "tree"),
        "hdf5": ("elements", "features"),
    }
    for owner, flags in given.items():
        for flag in flags:
            if owner != fmt and getattr(args, flag) is not None:
                raise DataError(f"--{flag} applies to --format {owner}, not {fmt}; leave it out")


def run(args: argparse.Namespace) -> int:
    from setpipe.data.converters import (
        iter_awkward_parquet,
        iter_hdf5,
        iter_root,
        write_parquet,
    )
    from setpipe.data.datagen._write import fresh_output, moved

    fmt = _format(args)
    _refuse(args, fmt)
    if fmt == "root":
        chunks = iter_root(
            args.inputs, tree=args.tree, columns=args.columns, cut=args.cut, step=args.step
        )
    elif fmt == "hdf5":
        chunks = iter_hdf5(
            args.inputs,
            features=args.features or [],
            elements=args.elements,
            columns=args.columns,
            step=args.step,
        )
    else:
        chunks = iter_awkward_parquet(args.inputs, columns=args.columns, step=args.step)
    # Written beside --out and moved there whole: a failed conversion leaves --out as it was.
    with fresh_output(args.out, args.overwrite) as staging:
        done = write_parquet(
            chunks,
            staging,
            rows_per_file=args.rows_per_file,
            rename=dict(args.rename),
            progress=sys.stderr,
            total_sources=len(args.inputs),
        )
        if done.schema is None:  # raised inside: the empty staging directory is removed
            raise DataError(
                f"{', '.join(map(str, args.inputs))}: no entries to convert; nothing was "
                "written. Check the inputs (--tree, --elements) hold sets"
            )
    files = moved({"all": done.files}, staging, args.out)["all"]
    rate = done.sets / max(done.seconds, 1e-9)
    print(
        f"{done.sets} sets from {len(done.sources)} {fmt} file(s) -> {len(files)} Parquet "
        f"file(s) in {args.out} ({done.seconds:.1f}s, {rate:.0f} sets/s)"
    )
    if done.schema is not None:
        lists = [f.name for f in done.schema if str(f.type).startswith("list")]
        scalars = [f.name for f in done.schema if f.name not in lists]
        print(f"element columns (data.elements: {{layout: parallel, columns: [...]}}): {lists}")
        print(f"set-level columns (context, label, key): {scalars}")
    return 0
