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
