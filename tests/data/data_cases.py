"""Random sets in every element layout, written as real Parquet, with the rows kept to compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from setpipe.data import BatchStats, FittedTransforms, SetBatch, iter_set_batches, read_dataset
from setpipe.spec.models import DataSpec, ModelSpec

FEATURES = ("a", "b", "c")

# Small hand-made rows for the bad-row tests: three parallel element columns.
FIX = "(set data.on_bad_row: skip to drop such rows)"
PARALLEL = {"layout": "parallel", "columns": ["el_a", "el_b", "el_c"]}
LABELS = {"context": ["weight"], "label": "label", "element_label": "relevance"}
F32 = pa.list_(pa.float32())


def good_rows(n: int = 6, size: int = 5) -> dict[str, list[Any]]:
    rng = np.random.default_rng(0)
    return {
        "el_a": [rng.normal(size=size).tolist() for _ in range(n)],
        "el_b": [rng.normal(size=size).tolist() for _ in range(n)],
        "el_c": [rng.normal(size=size).tolist() for _ in range(n)],
        "weight": [1.0] * n,
        "label": [i % 2 for i in range(n)],
        "relevance": [[1.0] * size for _ in range(n)],
    }


def parallel_table(rows: dict[str, list[Any]]) -> pa.Table:
    types = {"weight": pa.float64(), "label": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k, F32)) for k, v in rows.items()})


@dataclass
class Sets:
    """What was written: per row, its elements [n, F], context, label, element labels."""

    elements: list[np.ndarray]
    context: np.ndarray  # [rows, 2]: (row id, a float)
    label: np.ndarray  # [rows] int64
    element_label: list[np.ndarray]


def make_sets(num: int, seed: int, max_size: int = 12) -> Sets:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, num)
    elements = [rng.normal(size=(n, len(FEATURES))).astype(np.float32) for n in sizes]
    context = np.stack([np.arange(num), rng.uniform(0, 100, num)], 1).astype(np.float32)
    label = rng.integers(0, 3, num).astype(np.int64)
    element_label = [rng.integers(0, 4, n).astype(np.float32) for n in sizes]
    return Sets(elements, context, label, element_label)


def to_table(sets: Sets, layout: str) -> pa.Table:
    """The rows in one layout: parallel lists, list<struct> or list<fixed_size_list>."""
    cols: dict[str, Any] = {}
    if layout == "parallel":
        for j, f in enumerate(FEATURES):
            cols[f"el_{f}"] = pa.array([e[:, j] for e in sets.elements], pa.list_(pa.float32()))
    elif layout == "struct":
        struct = pa.struct([(f, pa.float32()) for f in FEATURES])
        rows = [[dict(zip(FEATURES, map(float, x), strict=True)) for x in e] for e in sets.elements]
        cols["points"] = pa.array(rows, pa.list_(struct))
    elif layout == "vectors":
        vec = pa.list_(pa.float32(), len(FEATURES))
        cols["vecs"] = pa.array([e.tolist() for e in sets.elements], pa.list_(vec))
    elif layout == "ragged_vectors":  # list<list<float>>: vectors without a fixed size
        cols["vecs"] = pa.array(
            [e.tolist() for e in sets.elements], pa.list_(pa.list_(pa.float32()))
        )
    else:
        raise ValueError(layout)
    cols["row_id"] = pa.array(sets.context[:, 0].astype(np.int64))
    cols["weight"] = pa.array(sets.context[:, 1])
    cols["label"] = pa.array(sets.label)
    cols["relevance"] = pa.array(sets.element_label, pa.list_(pa.float32()))
    cols["unused"] = pa.array(np.zeros(len(sets.label)))  # must not be read
    return pa.table(cols)


def elements_spec(layout: str) -> dict[str, Any]:
    if layout == "parallel":
        return {"layout": "parallel", "columns": [f"el_{f}" for f in FEATURES]}
    if layout == "struct":
        return {"layout": "struct", "column": "points", "fields": list(FEATURES)}
    return {"layout": "vectors", "column": "vecs", "dim": len(FEATURES), "names": list(FEATURES)}


def write(table: pa.Table, directory: Path, files: int, row_group_size: int = 7) -> list[Path]:
    """``table`` in ``files`` files of small row groups (so Ray sees many blocks)."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    paths = []
    for i in range(files):
        path = directory / f"part-{i:04d}.parquet"
        pq.write_table(
            table.slice(bounds[i], bounds[i + 1] - bounds[i]), path, row_group_size=row_group_size
        )
        paths.append(path)
    return paths


def spec(train: str | list[str], elements: dict[str, Any], **extra: Any) -> DataSpec:
    data: dict[str, Any] = {"train": train, "elements": elements}
    data["shuffle"] = extra.pop("shuffle", {"files": False, "buffer_sets": 0})
    data.update(extra)
    return DataSpec.model_validate(data)


def read_all(
    data: DataSpec,
    *,
    shuffle: bool = False,
    epoch: int = 0,
    stats: BatchStats | None = None,
    model: ModelSpec | None = None,
) -> list[SetBatch]:
    """Every SetBatch of the training data, through Ray Data (labels checked against
    ``model``'s task when given), with the job's transforms (unfitted: no standardize)."""
    ds = read_dataset(data, "train", model=model)
    assert ds is not None
    transforms = FittedTransforms.from_spec(data)
    return list(iter_set_batches(ds, data, transforms, epoch=epoch, shuffle=shuffle, stats=stats))
