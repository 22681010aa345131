"""`setpipe export` on a registered version: the files, the MLflow record, the transforms
contract (transforms.json + the graph == the pyfunc on raw features), and --overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from setpipe.cli import main
from setpipe.data.batch import SetBatch
from setpipe.data.transforms import FittedTransforms, fit_on_batches
from setpipe.errors import ExportError
from setpipe.export import ExportedModel, export_model
from setpipe.export.parity import relative
from setpipe.export.serving import load_onnx_model
from setpipe.models import build_model
from setpipe.spec import job_from_dict
from setpipe.tracking.mlflow_run import close_run, log_model, open_run
from setpipe.tracking.pyfunc import load_set_model
from setpipe.tracking.registry import register_and_gate

STANDARDIZE = {"op": "standardize"}


def _job(workdir: Path):
    data = workdir.parent / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        pq.write_table(pa.table({"label": [0, 1]}), data / split / "part-0.parquet")
    return job_from_dict(
        {
            "name": "t-export",
            "workdir": str(workdir),
            "data": {
                "train": str(data / "train"),
                "validation": str(data / "validation"),
                "elements": {"layout": "parallel", "columns": ["pt", "eta", "phi"]},
                "features": [
                    {"name": "log_pt", "source": "pt", "ops": [{"op": "log"}, STANDARDIZE]},
                    {"name": "eta", "source": "eta", "ops": [{"op": "center", "weight": "pt"}]},
                    {"name": "phi", "source": "phi"},
                ],
                "context": ["jet_pt"],
                "label": "label",
            },
            "model": {
                "task": "classify",
                "num_classes": 2,
                "encoder": {"kind": "deepsets", "phi": [8, 8], "rho": [8]},
                "head": {"hidden": [8]},
            },
            "train": {"epochs": 1, "chunk_size": 64, "workers": 0},
        }
    )  # fmt: skip


def _raw(sizes: list[int], seed: int = 0) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.rand(n, 3, generator=g) * 4 + 0.5 for n in sizes]
    return SetBatch.from_sets(sets, context=torch.rand(len(sizes), 1, generator=g) * 500)


def _register(job, workdir: Path) -> tuple[str, str]:  # job: JobSpec
    """Log an untrained (seed 0) model of ``job`` with transforms fitted on a small batch and
    register it through the gate (version 1 becomes champion): (the store's URI, run id)."""
    sample = _raw([5, 1, 12, 3])
    transforms = fit_on_batches(FittedTransforms.from_spec(job.data), [sample])
    torch.manual_seed(0)
    state = build_model(job.model, 3, 1).state_dict()
    run_id = open_run(job)
    uri = log_model(run_id, job, state, transforms, [{"epoch": 0, "train_loss": 1.0}], sample)
    close_run(run_id, "FINISHED")
    register_and_gate(job, run_id, uri, 0.7)
    return f"sqlite:///{workdir.resolve() / 'mlflow.db'}", run_id


def test_export_command_writes_logs_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    job = _job(workdir)
    store, run_id = _register(job, workdir)

    out = tmp_path / "exported"
    argv = ["export", "models:/t-export@champion", "--format", "onnx", "--out", str(out)]
    argv += ["--tracking-uri", store, "--chunked-size", "20000"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith(
        f"t-export version 1 exported as onnx to {out} (whole, update, finalize); parity max rel "
    )
    files = {"whole.onnx", "update.onnx", "finalize.onnx", "export.json", "README.md"}
    assert {p.name for p in out.iterdir()} == files | {"transforms.json", "job.yaml"}
    meta = json.loads((out / "export.json").read_text())
    assert meta["parity"]["passed"] is True
    assert set(meta["parity"]["figures"]) == {
        "size_1", "size_10", "size_100", "size_1000", "size_10000", "mixed",
        "chunked_mixed", "chunked_20000", "max",
    }  # fmt: skip
    assert meta["parity"]["figures"]["max"] <= 1e-5
    assert [i["name"] for i in meta["graphs"]["whole"]["inputs"]] == [
        "values",
        "offsets",
        "context",
    ]
    assert meta["graphs"]["whole"]["outputs"] == [
        {"name": "logits", "dtype": "float32", "shape": ["sets", 2]}
    ]

    # Logged beside the version: artifacts on its run, a version tag naming them, figures.
    client = MlflowClient(store, registry_uri=store)
    tags = client.get_model_version("t-export", "1").tags
    run = client.get_run(run_id)
    assert tags["setpipe.export.onnx"] == f"{run.info.artifact_uri}/export/onnx/v1"
    logged = {Path(f.path).name for f in client.list_artifacts(run_id, "export/onnx/v1")}
    assert logged == files | {"transforms.json", "job.yaml"}
    assert run.data.metrics["export.onnx.rel_max"] == pytest.approx(
        meta["parity"]["figures"]["max"], rel=1e-6, abs=1e-12
    )
    assert run.data.tags["export.onnx.parity"] == "passed"

    # The transforms travel as metadata: applied to raw features, then the graph, the
    # exported model gives the pyfunc's probabilities.
    other = _raw([7, 2, 30], seed=5)
    expected = load_set_model("models:/t-export/1", store).predict_batch(other)
    features = FittedTransforms.from_dict(json.loads((out / "transforms.json").read_text()))
    b = features.apply(other)
    logits = ExportedModel(out).predict(b.values.numpy(), b.offsets.numpy(), b.context.numpy())
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    assert relative(probs, np.array([p["probabilities"] for p in expected])) <= 1e-5

    # setpipe serve --runtime onnx: the replica's model runs the logged graphs, whole and
    # (a batch past train.chunk_size = 64 elements) chunked, with the torch path's outputs.
    onnx = load_onnx_model("models:/t-export/1", store)
    assert onnx.exported.directory.name == "v1"  # the logged export, not a new one
    for sizes in ([7, 2, 30], [300, 5]):
        batch = _raw(sizes, seed=6)
        torch_out = load_set_model("models:/t-export/1", store).predict_batch(batch)
        onnx_out = onnx.predict_batch(batch)
        assert [o["label"] for o in onnx_out] == [o["label"] for o in torch_out]
        assert (
            relative(
                np.array([o["probabilities"] for o in onnx_out]),
                np.array([o["probabilities"] for o in torch_out]),
            )
            <= 1e-5
        )

    # Above the tolerance the export fails, writes nothing, and says so in MLflow
    # (a float64-accumulating graph differs from float32 PyTorch by ~1e-7, not 1e-12).
    strict = tmp_path / "strict"
    with pytest.raises(ExportError) as err:
        export_model(
            "models:/t-export/1", "torch-export", strict, tracking_uri=store,
            sizes=(1, 10), chunked_size=100, tolerance=1e-12,
        )  # fmt: skip
    assert str(err.value).startswith(
        "models:/t-export/1: the torch-export export differs from PyTorch above 1e-12 "
        "(max |Δ| / max |ref|): "
    )
    assert f"nothing was written to {strict}" in str(err.value)
    assert not strict.exists()
    run = client.get_run(run_id)
    assert run.data.tags["export.torch_export.parity"] == "failed"
    assert run.data.metrics["export.torch_export.rel_max"] > 1e-12
    assert "setpipe.export.torch-export" not in client.get_model_version("t-export", "1").tags

    # A second export into the same directory is refused, and changes nothing.
    before = (out / "export.json").read_text()
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"error: --out {out}: the directory is not empty; pass --overwrite to replace it, or "
        "give a new directory\n"
    )
    assert (out / "export.json").read_text() == before
    assert main([*argv, "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == files | {"transforms.json", "job.yaml"}


def test_several_heads_export_logs_per_head_parity_and_serve_onnx_answers_as_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model.heads model (classify + regress) exports with one figure per head and batch;
    its ONNX replica (setpipe serve --runtime onnx) answers with the torch path's JSON:
    each set {head name: that head's output}."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    raw = _job(workdir).model_dump(mode="json")
    raw["name"] = "t-heads"
    del raw["data"]["label"], raw["model"]["task"], raw["model"]["num_classes"]
    del raw["model"]["head"]
    raw["model"]["heads"] = [
        {"name": "cls", "task": "classify", "target": "label", "num_classes": 2, "hidden": [8]},
        {"name": "pt", "task": "regress", "target": "label", "offset": 500.0, "scale": 20.0,
         "hidden": [8]},
    ]  # fmt: skip
    raw["tracking"] = {"metric": "val_cls_auc", "direction": "maximize"}
    store, run_id = _register(job_from_dict(raw), workdir)

    summary = export_model(
        "models:/t-heads/1", "onnx", tmp_path / "out", tracking_uri=store,
        sizes=(1, 10, 100), chunked_size=5000,
    )  # fmt: skip
    batches = ("size_1", "size_10", "size_100", "mixed", "chunked_mixed", "chunked_5000")
    assert set(summary.parity) == {f"{h}_{b}" for h in ("cls", "pt") for b in batches} | {"max"}
    assert summary.parity["max"] <= 1e-5
    meta = json.loads((tmp_path / "out" / "export.json").read_text())
    assert [o["name"] for o in meta["graphs"]["whole"]["outputs"]] == ["cls.logits", "pt.value"]
    assert [o["name"] for o in meta["graphs"]["finalize"]["outputs"]] == [
        "cls.logits",
        "pt.value",
    ]
    metrics = MlflowClient(store).get_run(run_id).data.metrics
    assert metrics["export.onnx.rel_pt_chunked_5000"] == pytest.approx(
        summary.parity["pt_chunked_5000"], rel=1e-6, abs=1e-12
    )

    onnx = load_onnx_model("models:/t-heads/1", store)
    assert onnx.exported.directory.name == "v1"
    torch_model = load_set_model("models:/t-heads/1", store)
    for sizes in ([7, 2, 30], [300, 5]):  # the second past train.chunk_size: chunked graphs
        batch = _raw(sizes, seed=6)
        torch_out, onnx_out = torch_model.predict_batch(batch), onnx.predict_batch(batch)
        assert [sorted(o) for o in onnx_out] == [["cls", "pt"]] * len(sizes)
        assert [sorted(o["cls"]) for o in onnx_out] == [["label", "probabilities"]] * len(sizes)
        assert [list(o["pt"]) for o in onnx_out] == [["value"]] * len(sizes)
        assert [o["cls"]["label"] for o in onnx_out] == [o["cls"]["label"] for o in torch_out]
        for head, key in (("cls", "probabilities"), ("pt", "value")):
            got = np.array([o[head][key] for o in onnx_out])
            assert relative(got, np.array([o[head][key] for o in torch_out])) <= 1e-5
