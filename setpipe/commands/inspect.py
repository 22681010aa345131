"""`setpipe inspect JOB.yaml [KEY=VALUE ...]`: describe a job's data as the pipeline reads it.

The first thing to run on new data. Bad rows are counted by kind (never fatal here,
whatever ``data.on_bad_row`` says; labels checked against the job's task, and sets that a
feature transform makes non-finite among them) and the first one is worded as training
would word it; statistics are taken on the rows that remain, after the job's feature
transforms (standardize is fitted in a first pass on those rows, as training fits it). A
file that cannot be read is an error.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

HELP = "Describe a job's data as the pipeline reads it: sizes, features, bad rows, padding."

BAR = 30  # histogram bar width in characters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.yaml", help="the job file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. data.train=other/"
    )
    parser.add_argument(
        "--split",
        choices=["train", "validation", "test"],
        default="train",
        help="which data to read (default: train)",
    )
    parser.add_argument("--bins", type=int, default=10, help="set-size histogram bins (10)")
    parser.add_argument(
        "--address", default=None, help="Ray address to join (default: a local Ray in-process)"
    )


@dataclass
class FeatureStats:
    """Streaming count / mean / M2 / min / max / non-finite of one feature."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    nonfinite: int = 0

    def add(self, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        self.nonfinite += int((~finite).sum())
        x = x[finite].astype(np.float64)
        if x.size == 0:
            return
        mean, m2 = float(x.mean()), float(((x - x.mean()) ** 2).sum())
        total = self.count + x.size
        delta = mean - self.mean
        self.mean += delta * x.size / total
        self.m2 += m2 + delta * delta * self.count * x.size / total
        self.count = total
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


@dataclass
class Survey:
    sizes: list[np.ndarray] = field(default_factory=list)
    features: dict[str, FeatureStats] = field(default_factory=dict)
    bad: Counter[str] = field(default_factory=Counter)
    bad_rows: int = 0
    first_bad: str | None = None
    labels: Counter[Any] = field(default_factory=Counter)
    seconds: float = 0.0


def survey(job: Any, split: str) -> tuple[Survey, Any]:
    """One pass over the data (two with standardize): sizes, feature stats, bad rows."""
    from setpipe.data import fit_transforms, read_dataset, table_to_batch
    from setpipe.data.bad_rows import (
        LabelRule,
        bad_row_error,
        bad_row_mask,
        find_problems,
        unreadable_error,
    )
    from setpipe.data.convert import set_sizes
    from setpipe.data.layout import PATH_COLUMN, ROW_COLUMN
    from setpipe.data.reading import iter_tables
    from setpipe.errors import DataError

    spec = job.data
    ds = read_dataset(spec, split, model=job.model)  # type: ignore[arg-type]
    if ds is None:
        raise DataError(f"{job.name}: data.{split} is not set; there is nothing to inspect")
    # Fit on the good rows whatever on_bad_row says: inspect reports bad rows, it does not stop.
    transforms = fit_transforms(spec.model_copy(update={"on_bad_row": "skip"}), ds)
    labels = LabelRule.of(job.model)
    out = Survey(features={name: FeatureStats() for name in transforms.feature_names})
    started = time.perf_counter()

    def note(table: pa.Table, problems: list[Any]) -> np.ndarray:
        """Count ``problems`` by kind; word the first bad row seen; the bad rows' mask."""
        mask = bad_row_mask(problems, table.num_rows)
        out.bad_rows += int(mask.sum())
        for p in problems:
            out.bad[p.kind] += int(p.rows.sum())
        if out.first_bad is None:
            row = int(np.argmax(mask))
            path = str(table.column(PATH_COLUMN)[row])
            where = table.column(ROW_COLUMN)[row].as_py()
            problem = next(p for p in problems if p.rows[row])
            what = problem.describe(row)
            # Worded as training words it: a transform's words carry their own fix.
            out.first_bad = (
                f"{path} row {where}: {what}"
                if problem.kind == "transform"
                else str(bad_row_error(path, where, what))
            )
        return mask

    for table in iter_tables(ds):
        unreadable = unreadable_error(table)
        if unreadable is not None:
            raise unreadable
        problems = find_problems(table, spec, labels)
        if problems:
            table = table.filter(pa.array(~note(table, problems)))
        if not table.num_rows:
            continue
        raw = table_to_batch(table, spec)
        batch = transforms.apply(raw)
        if not np.isfinite(batch.values.numpy()).all():
            problem = transforms.nonfinite_rows(raw)
            if problem is not None:
                keep = ~note(table, [problem])
                table, batch = table.filter(pa.array(keep)), batch.select(np.flatnonzero(keep))
                if not table.num_rows:
                    continue
        out.sizes.append(set_sizes(table, spec))
        values = batch.values.numpy()
        for j, name in enumerate(transforms.feature_names):
            out.features[name].add(values[:, j])
        if batch.targets is not None and not batch.targets.is_floating_point():
            out.labels.update(batch.targets.tolist())
    out.seconds = time.perf_counter() - started
    return out, transforms


def size_histogram(sizes: np.ndarray, bins: int) -> list[tuple[int, int, int]]:
    """(first size, last size, sets) for up to ``bins`` integer ranges covering min..max."""
    low, high = int(sizes.min()), int(sizes.max())
    edges = np.unique(np.linspace(low, high + 1, bins + 1).round().astype(np.int64))
    counts = np.histogram(sizes, bins=edges)[0]  # the last bin is closed: high is counted
    return [
        (int(a), int(b) - 1, int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def report(job: Any, split: str, s: Survey, bins: int) -> str:
    from setpipe.data import padding_fraction

    sizes = np.concatenate(s.sizes) if s.sizes else np.zeros(0, dtype=np.int64)
    sets, elements = len(sizes), int(sizes.sum())
    lines = [f"{job.name}: {split} data"]
    lines.append(f"sets          {sets}")
    if sets:
        lines.append(
            f"elements      {elements}  (per set: mean {elements / sets:.2f}, "
            f"min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()})"
        )
    else:
        lines.append("elements      0")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.bad.items()))
    lines.append(f"bad rows      {s.bad_rows}" + (f"  ({kinds})" if kinds else ""))
    if s.first_bad:
        lines.append(f"  first: {s.first_bad}")
    if s.labels:
        lines.append("labels        " + "  ".join(f"{k}: {n}" for k, n in sorted(s.labels.items())))
    if not sets:
        return "\n".join(lines)
    lines.append("set sizes")
    hist = size_histogram(sizes, bins)
    peak = max(c for _, _, c in hist)
    for first, last, count in hist:
        bar = "#" * round(BAR * count / peak) if peak else ""
        lines.append(f"  {first:>8} - {last:<8} {bar:<{BAR}} {count}")
    lines.append(
        f"features after transforms {'mean':>12} {'std':>12} {'min':>12} {'max':>12} non-finite"
    )
    for name, f in s.features.items():
        lines.append(
            f"  {name:<23} {f.mean:>12.6g} {f.std:>12.6g} {f.low:>12.6g} {f.high:>12.6g} "
            f"{f.nonfinite}"
        )
    budget = job.data.batch.element_budget
    window = job.data.shuffle.buffer_sets
    lines.append(
        f"padding       {padding_fraction(sizes, budget):.1%} of a padded view is padding with "
        f"element-budget batches of {budget} in read order"
    )
    if window:
        lines.append(
            f"              {padding_fraction(sizes, budget, bucket_window=window):.1%} with "
            f"data.batch.bucket_by_size (sorted within {window}-set windows)"
        )
    rate = s.seconds if s.seconds > 0 else math.nan
    lines.append(
        f"read          {s.seconds:.2f} s: {sets / rate:.0f} sets/s, {elements / rate:.0f} "
        "elements/s (checks, Arrow -> SetBatch and transforms included)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from setpipe.pipeline import connect
    from setpipe.spec import load_job

    job = load_job(args.job, args.overrides)
    connect(args.address)
    result, _ = survey(job, args.split)
    print(report(job, args.split, result, max(1, args.bins)), flush=True)
    return 0
