"""Training runs with LCM pooling (the partition error logged per split) and with pairwise
attention (the worker and the registered model's loader pass the fitted transforms)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sets_data import job_dict, make_data

from setpipe.data import fit_transforms, read_dataset
from setpipe.data.batch import SetBatch
from setpipe.spec import job_from_dict
from setpipe.tracking.pyfunc import LoadedSetModel
from setpipe.train import fit


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"), train=240, validation=80, test=80)


def run(data: Path, workdir: Path, encoder: dict, features: list | None = None):
    spec = job_dict(data, workdir, epochs=2)
    spec["model"]["encoder"] = encoder
    if features is not None:
        spec["data"]["features"] = features
    job = job_from_dict(spec)
    datasets = {s: read_dataset(job.data, s) for s in ("train", "validation", "test")}
    transforms = fit_transforms(job.data, datasets["train"])
    outcome = fit(
        job,
        storage_path=workdir / "ray_results",
        run_name="a",
        transforms=transforms,
        datasets=datasets,
        progress=False,
    )
    return job, outcome


def test_lcm_logs_the_partition_error_per_split(ray_local, data: Path, workdir: Path) -> None:
    encoder = {
        "kind": "deepsets",
        "phi": [16, 16],
        "rho": [16],
        "pooling": "lcm",
        "lcm_hidden": [16],
        "lcm_assoc_weight": 0.1,
    }
    _, out = run(data, workdir, encoder)
    for h in out.history:
        assert 0.0 < h["val_lcm_partition_error"] < 1.0, h  # trained away from the sum
    assert 0.0 < out.test_metrics["test_lcm_partition_error"] < 1.0
    assert math.isfinite(out.history[-1]["train_loss"])
    assert out.test_metrics["test_auc"] > 0.8


def test_pairwise_set_transformer_trains_and_loads_from_its_files(
    ray_local, data: Path, workdir: Path
) -> None:
    features = [
        {"name": "xs", "source": "x", "ops": [{"op": "standardize"}]},
        {"name": "ys", "source": "y", "ops": [{"op": "center"}, {"op": "standardize"}]},
    ]
    encoder = {
        "kind": "set_transformer",
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "pairwise": {"kind": "points", "coordinates": ["xs", "ys"], "embed": [8]},
    }
    job, out = run(data, workdir, encoder, features)
    assert out.test_metrics["test_auc"] > 0.8
    assert "val_lcm_partition_error" not in out.history[-1]
    # What the registry logs: weights, job.yaml, transforms.json; the loader passes the
    # transforms to build_model, so the pairwise features can be computed when serving.
    ckpt = workdir / "ray_results" / "a" / "local_checkpoints" / "epoch_000001"
    loaded = LoadedSetModel.from_files(
        ckpt / "weights.pt", ckpt / "job.yaml", ckpt / "transforms.json"
    )
    raw = SetBatch.from_sets([torch.tensor([[0.5, 0.1], [1.5, -0.3], [0.9, 0.2]])])
    (prediction,) = loaded.predict_batch(raw)
    assert abs(sum(prediction["probabilities"]) - 1.0) < 1e-6
    assert job.model.encoder.pairwise is not None
