"""Shared writing helpers: ragged numpy -> Arrow lists, tables -> numbered Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")


def ragged(sizes: np.ndarray, values: np.ndarray | pa.Array) -> pa.ListArray:
    """A list array whose row i holds the next ``sizes[i]`` values (no Python loop)."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_files(table: pa.Table, out_dir: Path, rows_per_file: int, prefix: str) -> list[Path]:
    """``table`` as ``<prefix>-00000.parquet`` ... of at most ``rows_per_file`` rows each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        path = out_dir / f"{prefix}-{i:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_file), path)
        paths.append(path)
    return paths


def split_sizes(total: int, validation: float, test: float) -> dict[str, int]:
    n_val, n_test = round(total * validation), round(total * test)
    return {"train": total - n_val - n_test, "validation": n_val, "test": n_test}


def split_by_key(
    files: list[Path], out_dir: Path, key: str, validation: float, test: float, prefix: str
) -> dict[str, list[Path]]:
    """Re-write ``files`` into train/validation/test under ``out_dir`` by a stable key hash.

    The same hash as ``data.split`` (setpipe.data.split), so a row lands in the split
    a job with ``split: {key: ..., validation: ..., test: ...}`` would put it in.
    """
    from setpipe.data.split import assign
    from setpipe.spec.models import SplitSpec

    rule = SplitSpec(key=key, validation=validation, test=test)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    codes = assign(table.column(key), rule)
    written = {}
    for code, split in enumerate(SPLITS):
        part = table.filter(pa.array(codes == code))
        if part.num_rows:
            written[split] = write_files(part, Path(out_dir) / split, 10_000, prefix)
    return written
