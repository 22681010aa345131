"""Huge sets for memory tests: 1e5 to 1e6 elements per row, written one row group per set.

Each set is generated, written and dropped before the next, so the generator's memory
stays at one set (a million 8-d float32 vectors is 32 MB) however many are written;
one row group per set lets a reader hold one set at a time too.

Label: whether the set's elements are drawn around +mu or -mu (a weak mean shift of
0.05 per component): learnable from the whole set, hard from a few elements.
Layouts: ``vectors`` (one list<fixed_size_list<float32, D>> column ``x``) or
``parallel`` (D list<float32> columns ``f0``..``f{D-1}``). Set columns: label (int64),
set_id (int64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHIFT = 0.05


def generate_huge(
    out_dir: Path,
    num_sets: int,
    min_size: int = 100_000,
    max_size: int = 1_000_000,
    dim: int = 8,
    layout: Literal["vectors", "parallel"] = "vectors",
    seed: int = 0,
) -> Path:
    """Write ``num_sets`` sets into one file ``huge.parquet`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "huge.parquet"
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_sets) % 2)
    sizes = rng.integers(min_size, max_size + 1, num_sets)
    writer: pq.ParquetWriter | None = None
    try:
        for i in range(num_sets):
            x = rng.normal(size=(int(sizes[i]), dim)).astype(np.float32)
            x += np.float32(SHIFT if labels[i] else -SHIFT)
            offsets = pa.array([0, len(x)], pa.int32())
            if layout == "vectors":
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
                columns = {"x": pa.ListArray.from_arrays(offsets, vectors)}
            else:
                columns = {
                    f"f{j}": pa.ListArray.from_arrays(
                        offsets, pa.array(np.ascontiguousarray(x[:, j]))
                    )
                    for j in range(dim)
                }
            columns["label"] = pa.array([int(labels[i])], pa.int64())
            columns["set_id"] = pa.array([i], pa.int64())
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=1)
    finally:
        if writer is not None:
            writer.close()
    return path
