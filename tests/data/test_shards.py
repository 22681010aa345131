"""Ray Train shards: two real workers (gloo) get the same number of batches every epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from data_cases import write

from setpipe.data import read_dataset
from setpipe.spec.models import DataSpec

EPOCHS = 2


def train_loop(config: dict[str, Any]) -> None:
    import ray.train

    from setpipe.data import (
        BatchStats,
        FittedTransforms,
        equalize_batches,
        iter_set_batches,
        torch_all_reduce_min,
    )

    spec = DataSpec.model_validate(config["spec"])
    transforms = FittedTransforms.from_spec(spec)
    rank = ray.train.get_context().get_world_rank()
    epochs = []
    for epoch in range(EPOCHS):
        stats = BatchStats()
        shard = ray.train.get_dataset_shard("train")
        batches = iter_set_batches(shard, spec, transforms, epoch=epoch, stats=stats)
        used = sum(1 for _ in equalize_batches(batches, torch_all_reduce_min()))
        epochs.append({"used": used, "produced": stats.batches, "sets": stats.sets})
    (Path(config["out"]) / f"rank{rank}.json").write_text(json.dumps(epochs))


@pytest.mark.slow
def test_two_workers_get_equal_batch_counts(ray_local: None, tmp_path: Path) -> None:
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Skewed sizes: the early files hold big sets, so the two shards' batch counts differ.
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(20, 60, 100), rng.integers(1, 5, 200)])
    table = pa.table({"x": pa.array([rng.normal(size=n) for n in sizes], pa.list_(pa.float32()))})
    write(table, tmp_path / "data", files=6, row_group_size=25)
    spec = DataSpec.model_validate(
        {
            "train": str(tmp_path / "data"),
            "elements": {"layout": "parallel", "columns": ["x"]},
            "batch": {"element_budget": 64},
            "shuffle": {"buffer_sets": 32},
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    # The loop lives in this test module, which Ray workers cannot import by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "out": str(out)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="shards", storage_path=str(tmp_path / "ray")),
        datasets={"train": read_dataset(spec, "train")},
    )
    trainer.fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in range(EPOCHS):
        used = [r[epoch]["used"] for r in ranks]
        assert used[0] == used[1] > 0
        assert used[0] == min(r[epoch]["produced"] for r in ranks)
        # Each rank read a disjoint share of the rows; together (nearly) all of them.
        assert len(sizes) - 1 <= sum(r[epoch]["sets"] for r in ranks) <= len(sizes)
