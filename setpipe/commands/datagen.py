"""setpipe datagen KIND --out DIR: make a Parquet dataset (every generator is seeded)."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from pathlib import Path

from setpipe.errors import DataError

HELP = "make a dataset: jets (synthetic), pythia (real q/g jets, hep extra), digits, passages, huge"


def _fraction_pair(text: str) -> tuple[float, float]:
    try:
        val, test = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected VALIDATION,TEST fractions, e.g. 0.1,0.1"
        ) from None
    if val < 0 or test < 0 or val + test >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: fractions must be >= 0 and sum below 1")
    return val, test


def _jet_pt_window(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected MIN,MAX jet pT in GeV, e.g. 300,350"
        ) from None
    if not (0 < low < high) or not all(map(math.isfinite, (low, high))):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 < MIN < MAX (GeV), e.g. 300,350")
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    def kind(name: str, help: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help, description=help)
        p.add_argument("--out", required=True, type=Path, help="Output directory.")
        p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="Replace the dataset already in --out, whole (refused if it holds anything "
            "but Parquet files). Without it a non-empty --out is refused.",
        )
        return p

    p = kind("jets", "synthetic quark/gluon-like jets (parallel lists; the quickstart data)")
    p.add_argument("--train", type=int, default=8000, help="Training jets (default 8000).")
    p.add_argument("--validation", type=int, default=1000, help="Validation jets (1000).")
    p.add_argument("--test", type=int, default=1000, help="Test jets (1000).")
    p.add_argument("--rows-per-file", type=int, default=20_000, help="Rows per Parquet file.")

    p = kind("pythia", "real quark/gluon jets from Pythia 8 + FastJet (needs the hep extra)")
    p.add_argument("--num-jets", type=int, default=2000, help="Jets in all (default 2000).")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="Processes (default: all CPUs)."
    )
    p.add_argument(
        "--split",
        type=_fraction_pair,
        default=None,
        metavar="VAL,TEST",
        help="Write train/validation/test subdirs by a stable hash of event_id, e.g. 0.1,0.1 "
        "(default: one directory, for a job with data.split).",
    )
    p.add_argument(
        "--jet-pt",
        type=_jet_pt_window,
        default=(500.0, 550.0),
        metavar="MIN,MAX",
        help="Leading-jet pT window in GeV (default 500,550, the benchmark's); another "
        "window makes a shifted sample, e.g. to fine-tune on.",
    )

    p = kind("digits", "scikit-learn's handwritten digits as point sets (list<struct>)")
    p.add_argument("--validation", type=float, default=0.1, help="Validation fraction (0.1).")
    p.add_argument("--test", type=float, default=0.1, help="Test fraction (0.1).")
    p.add_argument(
        "--points-per-digit",
        type=int,
        default=None,
        help="Resample each digit to N jittered points (intensity-weighted) for large sets.",
    )

    p = kind("passages", "synthetic re-ranking lists: 32-d passage vectors with relevance")
    p.add_argument("--train", type=int, default=4000, help="Training queries (4000).")
    p.add_argument("--validation", type=int, default=500, help="Validation queries (500).")
    p.add_argument("--test", type=int, default=500, help="Test queries (500).")

    p = kind("huge", "a few sets of 1e5-1e6 elements each, for memory tests")
    p.add_argument("--sets", type=int, default=4, help="Number of sets (default 4).")
    p.add_argument("--min-size", type=int, default=100_000, help="Smallest set (1e5).")
    p.add_argument("--max-size", type=int, default=1_000_000, help="Largest set (1e6).")
    p.add_argument("--dim", type=int, default=8, help="Features per element (8).")
    p.add_argument("--layout", choices=["vectors", "parallel"], default="vectors")


def run(args: argparse.Namespace) -> int:
    from setpipe.data.datagen._write import fresh_output, moved

    started = time.monotonic()
    # Generated beside --out and moved there whole: two datasets are never mixed.
    with fresh_output(args.out, args.overwrite) as staging:
        written = _generate(args, staging)
    _report(moved(written, staging, args.out), started)
    return 0


def _generate(args: argparse.Namespace, out: Path) -> dict[str, list[Path]]:
    if args.kind == "jets":
        from setpipe.data.datagen.jets import generate_jets

        sizes = {"train": args.train, "validation": args.validation, "test": args.test}
        written = generate_jets(out, sizes, seed=args.seed, rows_per_file=args.rows_per_file)
    elif args.kind == "pythia":
        from setpipe.data.datagen._write import split_by_key
        from setpipe.data.datagen.pythia import generate_pythia_jets

        if args.num_jets < 1:
            raise DataError(f"--num-jets must be at least 1, got {args.num_jets}")
        window = args.jet_pt
        if args.split is None:
            written = {
                "all": generate_pythia_jets(out, args.num_jets, args.workers, args.seed, window)
            }
        else:
            raw = out / "_generated"
            files = generate_pythia_jets(raw, args.num_jets, args.workers, args.seed, window)
            written = split_by_key(files, out, "event_id", *args.split, prefix="pythia")
            shutil.rmtree(raw)
    elif args.kind == "digits":
        from setpipe.data.datagen.digits import generate_digits

        if args.validation < 0 or args.test < 0 or args.validation + args.test >= 1:
            raise DataError("--validation and --test must be >= 0 and sum below 1")
        written = generate_digits(
            out, args.validation, args.test, args.points_per_digit, seed=args.seed
        )
    elif args.kind == "passages":
        from setpipe.data.datagen.passages import generate_passages

        sizes = {"train": args.train, "validation": args.validation, "test": args.test}
        written = generate_passages(out, sizes, seed=args.seed)
    else:
        from setpipe.data.datagen.huge import generate_huge

        if not 1 <= args.min_size <= args.max_size:
            raise DataError(
                f"need 1 <= --min-size <= --max-size, got {args.min_size}, {args.max_size}"
            )
        path = generate_huge(
            out, args.sets, args.min_size, args.max_size, args.dim, args.layout, args.seed
        )
        written = {"all": [path]}
    return written


def _report(written: dict[str, list[Path]], started: float) -> None:
    import pyarrow.parquet as pq

    for split, files in written.items():
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        where = Path(files[0]).parent if files else "-"
        print(f"{split:<10} {rows:>9} sets  {len(files):>3} files  {where}")
    print(f"done in {time.monotonic() - started:.1f}s")
