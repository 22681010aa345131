"""Several heads on one encoder (model.heads): the spec, the model's passes, the loss, and
one whole run that trains, logs both heads' metrics, registers and predicts both heads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

from setpipe.data.batch import SetBatch
from setpipe.errors import SpecError
from setpipe.models import build_model
from setpipe.pipeline import run
from setpipe.serve.batch_predict import input_spec, output_schema_names, prediction_columns
from setpipe.spec import dump_job, job_from_dict, load_job
from setpipe.spec.models import JobSpec
from setpipe.tracking.pyfunc import heads_outputs, load_set_model, non_finite_sets
from setpipe.train.heads import HeadsEvaluation, model_loss

REPO = Path(__file__).resolve().parents[2]
HEADS = [
    {"name": "cls", "task": "classify", "target": "label", "num_classes": 2, "hidden": [16]},
    # size = elements in the set (4-24): offset/scale put it at unit scale.
    {"name": "size", "task": "regress", "target": "size", "offset": 14.0, "scale": 6.0,
     "loss_weight": 0.5, "hidden": [16]},
]  # fmt: skip


def heads_job(root: Path, workdir: Path, heads: list[dict[str, Any]] = HEADS, **train: Any):
    raw = job_dict(root, workdir, **train)
    raw["name"] = "heads"
    del raw["data"]["label"], raw["model"]["task"], raw["model"]["num_classes"]
    del raw["model"]["head"]
    raw["model"]["heads"] = heads
    raw["tracking"] = {"metric": "val_cls_auc", "direction": "maximize"}
    return raw


def spec_error(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as err:
        job_from_dict(raw)
    return str(err.value)


# --------------------------------------------------------------------------- the spec


def test_heads_spec_names_targets_metrics_and_round_trips(tmp_path: Path) -> None:
    job = job_from_dict(heads_job(tmp_path, tmp_path))
    assert job.data.set_label_columns == ["label", "size"]
    assert job.data.element_label_column is None
    assert job.model.metric_names() == (
        "val_loss", "val_cls_loss", "val_cls_accuracy", "val_cls_auc", "val_cls_rej30",
        "val_cls_rej50", "val_size_loss", "val_size_rmse",
    )  # fmt: skip
    assert job.promotion == ("val_cls_auc", "maximize")
    # The dumped job (checkpoints, the model's job.yaml) loads back with the same targets.
    path = tmp_path / "job.yaml"
    path.write_text(dump_job(job))
    again = load_job(path)
    assert again == job and again.data.set_label_columns == ["label", "size"]
    # Without a tracking metric: the first head's task metric; a regress metric minimizes.
    raw = heads_job(tmp_path, tmp_path)
    raw["tracking"] = {}
    assert job_from_dict(raw).promotion == ("val_cls_auc", "maximize")
    raw["tracking"] = {"metric": "val_size_rmse"}
    assert job_from_dict(raw).promotion == ("val_size_rmse", "minimize")


def test_heads_spec_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    raw = heads_job(tmp_path, tmp_path)
    raw["model"]["task"] = "classify"
    assert "model.heads replaces model.task: remove model.task" in spec_error(raw)

    raw = heads_job(tmp_path, tmp_path)
    raw["data"]["label"] = "label"
    assert (
        "data.label: with model.heads each head names its target column; remove data.label"
        in spec_error(raw)
    )

    raw = heads_job(tmp_path, tmp_path, heads=[HEADS[0], {**HEADS[1], "name": "cls"}])
    assert "each head name may appear once; duplicated: cls (2 times)" in spec_error(raw)

    raw = heads_job(tmp_path, tmp_path)
    raw["data"]["context"] = ["size"]
    assert (
        "model.heads[1] (size): target 'size' is in data.context: the model would see what it "
        "must predict" in spec_error(raw)
    )

    raw = heads_job(tmp_path, tmp_path, heads=[{**HEADS[1], "target": "x"}])
    assert "target 'x' is an element column; a regress head needs a set-level column" in (
        spec_error(raw)
    )

    raw = heads_job(tmp_path, tmp_path)
    raw["tracking"] = {"metric": "val_auc"}  # the single-head name: not reported with heads
    message = spec_error(raw)
    assert "tracking.metric" in message
    assert "each head reports val_<head>_<metric>" in message
    assert 'did you mean "val_cls_auc"?' in message

    raw = heads_job(tmp_path, tmp_path, heads=[{**HEADS[0], "offset": 1.0}])
    assert "head 'cls': offset and scale are only for task regress, not classify" in (
        spec_error(raw)
    )

    raw = heads_job(tmp_path, tmp_path)
    del raw["model"]["heads"]
    assert "model needs task (one head" in spec_error(raw)


# --------------------------------------------------------------------------- the model


def model_and_batch(tmp_path: Path, heads: list[dict[str, Any]]) -> tuple[Any, SetBatch, JobSpec]:
    job = job_from_dict(heads_job(tmp_path, tmp_path, heads=heads))
    torch.manual_seed(0)
    model = build_model(job.model, num_features=2).double()
    gen = torch.Generator().manual_seed(1)
    sizes = [3, 9, 1, 17, 6]
    sets = [torch.randn(n, 2, generator=gen, dtype=torch.float64) for n in sizes]
    set_targets = torch.tensor([[0, 3], [1, 9], [1, 1], [0, 17], [1, 6]], dtype=torch.float32)
    relevance = torch.randint(0, 3, (sum(sizes),), generator=gen).float()
    return model, SetBatch.from_sets(sets, targets=set_targets, element_targets=relevance), job


RANK = {"name": "pick", "task": "rank", "target": "relevance", "hidden": [8]}


def test_heads_share_the_encoder_and_every_pass_agrees(tmp_path: Path) -> None:
    model, batch, _ = model_and_batch(tmp_path, [*HEADS, RANK])
    model.eval()
    assert sorted(k.split(".")[1] for k in model.state_dict() if k.startswith("heads.")) == (
        ["cls"] * 4 + ["pick"] * 6 + ["size"] * 4
    )
    assert not any(k.startswith("head.") for k in model.state_dict())
    whole = model(batch)
    assert list(whole) == ["cls", "size", "pick"]
    assert whole["cls"].shape == (5, 2) and whole["size"].shape == (5,)
    assert whole["pick"].shape == (batch.num_elements,)
    # The regress head is in the target's units: offset + scale * the MLP.
    embedding = model.encoder(batch)
    raw = model.heads["size"].net(embedding).squeeze(-1)
    torch.testing.assert_close(whole["size"], raw * 6.0 + 14.0, rtol=0, atol=1e-12)
    # Chunked (4 elements at a time, two passes for the rank head) == whole, float64.
    chunked = model.predict_chunked(batch, 4)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=0, atol=1e-12)
    # The estimator with a budget every set fits is the plain forward.
    estimated = model(batch, grad_budget=32, chunk_size=8)
    for name in whole:
        torch.testing.assert_close(estimated[name], whole[name], rtol=0, atol=1e-12)
    # From a streamed embedding: the set-level heads of one set.
    one = model.encode_stream(iter([batch.values[3:7], batch.values[7:12]]))
    torch.testing.assert_close(one, embedding[1], rtol=0, atol=1e-12)
    single = model.predict_from_embedding(one)
    assert list(single) == ["cls", "size"]
    torch.testing.assert_close(single["cls"], whole["cls"][1], rtol=0, atol=1e-12)


def test_loss_is_the_weighted_sum_of_the_head_losses(tmp_path: Path) -> None:
    model, batch, job = model_and_batch(tmp_path, HEADS)
    outputs = model(batch)
    # In float64 (the model's dtype here); float32 outputs give the same to ~1e-7.
    targets = torch.tensor([3.0, 9, 1, 17, 6], dtype=torch.float64)
    expected = F.cross_entropy(outputs["cls"].double(), torch.tensor([0, 1, 1, 0, 1]))
    expected = expected + 0.5 * F.mse_loss(outputs["size"].double(), targets) / 36.0
    loss = model_loss(job.model, outputs, batch)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    loss.backward()  # both heads and the shared encoder get a gradient
    assert all(p.grad is not None for p in model.parameters())

    evaluation = HeadsEvaluation(job.model.heads or [])
    evaluation.add(outputs, batch, float(loss.detach()))
    metrics = evaluation.compute("val")
    assert sorted(metrics) == sorted(job.model.metric_names())
    assert metrics["val_loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    size = outputs["size"].detach().double().numpy()
    rmse = math.sqrt(float(np.mean((size - [3, 9, 1, 17, 6]) ** 2)))
    assert metrics["val_size_rmse"] == pytest.approx(rmse, rel=1e-6)
    assert metrics["val_cls_loss"] == pytest.approx(
        float(F.cross_entropy(outputs["cls"].detach().float(), torch.tensor([0, 1, 1, 0, 1]))),
        rel=1e-6,
    )


def test_outputs_per_set_predict_columns_and_non_finite_per_head(tmp_path: Path) -> None:
    job = job_from_dict(heads_job(tmp_path, tmp_path))
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    out = {"cls": logits, "size": torch.tensor([7.5, math.nan])}
    per_set = heads_outputs(job, out, torch.tensor([0, 3, 5]))
    assert per_set[0] == {
        "cls": {"probabilities": pytest.approx([0.25, 0.75], abs=1e-15), "label": 1},
        "size": {"value": 7.5},
    }
    assert per_set[1]["cls"] == {"probabilities": [0.5, 0.5], "label": 0}
    assert math.isnan(per_set[1]["size"]["value"])
    # A NaN in any head's output names the set (the server answers 422, predict refuses).
    assert non_finite_sets(per_set) == [1]
    assert output_schema_names(job) == ["cls_prob_0", "cls_prob_1", "cls_label", "size_value"]
    columns = prediction_columns(job, per_set[:1])
    assert {k: v.to_pylist() for k, v in columns.items()} == {
        "cls_prob_0": pytest.approx([0.25], abs=1e-15),
        "cls_prob_1": pytest.approx([0.75], abs=1e-15),
        "cls_label": [1],
        "size_value": [7.5],
    }
    # predict reads no labels: neither data.label nor the heads' targets.
    spec = input_spec(job, str(tmp_path))
    assert spec.set_label_columns == [] and spec.element_label_column is None


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sets of sets_data, each row with its set size as a set-level column."""
    root = make_data(tmp_path_factory.mktemp("heads"), train=300, validation=100, test=100)
    for part in root.glob("*/*.parquet"):
        table = pq.read_table(part)
        size = pc.cast(pc.list_value_length(table.column("x")), pa.float32())
        pq.write_table(table.append_column("size", size), part)
    return root


@pytest.fixture()
def store(workdir: Path) -> MlflowClient:
    db = workdir / "mlflow.db"
    uri = f"sqlite:///{db.resolve()}"
    MlflowClient(uri).search_experiments()  # creates and migrates the store
    return MlflowClient(uri, registry_uri=uri)


def test_run_trains_both_heads_registers_and_predicts_both(
    ray_local, data: Path, workdir: Path, store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = job_from_dict(heads_job(data, workdir, epochs=2))
    summary = run(job, progress=False)

    metrics = store.get_run(summary.run_id).data.metrics
    for name in (*job.model.metric_names(), "test_cls_auc", "test_cls_auc_sigma"):
        assert name in metrics, name
    assert "test_size_rmse" in metrics and "val_auc" not in metrics
    assert metrics["val_cls_auc"] > 0.9  # the mean of x separates the classes
    assert metrics["val_size_rmse"] < 5.9  # below the spread of the sizes (std ~5.9)
    assert summary.decision.moved and summary.decision.reason == "no champion yet"
    assert store.get_run(summary.run_id).data.tags["setpipe.task"] == "cls=classify,size=regress"
    assert str(store.get_model_version_by_alias(job.model_name, "champion").version) == "1"

    loaded = load_set_model(f"models:/{job.model_name}@champion", store.tracking_uri)
    sets = [
        {"features": {"x": [0.9, 1.1, 0.7, 1.3], "y": [0.0, 0.1, -0.2, 0.3]}},
        {"features": {"x": [-0.8] * 20, "y": [0.0] * 20}},
    ]
    out = loaded.predict_sets(sets)
    assert [sorted(o) for o in out] == [["cls", "size"], ["cls", "size"]]
    for o in out:
        assert sorted(o["cls"]) == ["label", "probabilities"]
        assert sum(o["cls"]["probabilities"]) == pytest.approx(1.0, abs=1e-12)
        assert sorted(o["size"]) == ["value"]
    assert [o["cls"]["label"] for o in out] == [1, 0]
    assert out[0]["size"]["value"] < out[1]["size"]["value"]  # 4 elements vs 20


def test_multihead_example_job_validates() -> None:
    job = load_job(REPO / "jobs" / "multihead.yaml")
    assert [h.name for h in job.model.heads or []] == ["qg", "pt"]
    assert job.data.set_label_columns == ["label", "jet_pt"]
    assert job.promotion == ("val_qg_auc", "maximize")
