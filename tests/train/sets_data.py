"""Tiny synthetic set data for the train and pipeline tests: learnable in a few epochs.

Each row is a set of 4-24 elements with two features (x, y) as parallel list columns.
Class 1 sets have x drawn around +0.8, class 0 around -0.8, so the mean of x separates
the classes and a small DeepSets reaches AUC near 1 in a handful of epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_sets(path: Path, rows: int, seed: int, first_id: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 25, rows)
    label = rng.integers(0, 2, rows)
    x = [
        rng.normal(0.8 if lab else -0.8, 1.0, n).astype(np.float32)
        for n, lab in zip(sizes, label, strict=True)
    ]
    y = [rng.normal(0.0, 1.0, n).astype(np.float32) for n in sizes]
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "x": pa.array(x, pa.list_(pa.float32())),
            "y": pa.array(y, pa.list_(pa.float32())),
            "label": pa.array(label, pa.int64()),
            # Small ids: the 2-worker test feeds them in as a context feature to see the shards.
            "event_id": pa.array(np.arange(first_id, first_id + rows), pa.int64()),
        }
    )
    # Two files per split, so Ray Data has more than one block to hand out.
    half = rows // 2
    pq.write_table(table.slice(0, half), path / "part-0.parquet")
    pq.write_table(table.slice(half), path / "part-1.parquet")


def make_data(root: Path, train: int = 400, validation: int = 120, test: int = 120) -> Path:
    write_sets(root / "train", train, seed=1, first_id=0)
    write_sets(root / "validation", validation, seed=2, first_id=10_000)
    write_sets(root / "test", test, seed=3, first_id=20_000)
    return root


def job_dict(root: Path, workdir: Path, **train: Any) -> dict[str, Any]:
    return {
        "name": "sets",
        "workdir": str(workdir),
        "data": {
            "train": str(root / "train"),
            "validation": str(root / "validation"),
            "test": str(root / "test"),
            "elements": {"layout": "parallel", "columns": ["x", "y"]},
            "label": "label",
            "key": "event_id",
            "batch": {"element_budget": 512},  # ~35 sets: ~12 steps per epoch on 400 sets
            "shuffle": {"buffer_sets": 100, "seed": 0},
        },
        "model": {
            "task": "classify",
            "num_classes": 2,
            "encoder": {"kind": "deepsets", "phi": [16, 16], "rho": [16]},
            "head": {"hidden": [16]},
        },
        "train": {
            "epochs": 3,
            "workers": 0,
            "optimizer": {"lr": 0.01},
            "lr_schedule": {"kind": "cosine", "warmup_steps": 3},
            "seed": 7,
            **train,
        },
    }
