"""The logged pyfunc: artifacts, signature, and MLflow's predict == load_set_model's, exactly."""

from __future__ import annotations

import json
import os
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fitted, make_job, raw_batch, trained_state
from mlflow.tracking import MlflowClient

from setpipe.data.request import SetInput
from setpipe.errors import ModelError, ServeError
from setpipe.spec import dump_job
from setpipe.tracking.mlflow_run import close_run, example_request, log_model, open_run
from setpipe.tracking.pyfunc import load_set_model, task_outputs

SIZES = [5, 1, 12, 3]
HISTORY = [
    {"epoch": 0, "train_loss": 1.2, "val_loss": 1.1, "val_auc": 0.6},
    {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "val_auc": 0.7},
]


def _pyfunc(model_uri: str, tracking_uri: str):
    """mlflow.pyfunc.load_model of the logged model, fetched with an explicit tracking URI."""
    import mlflow

    return mlflow.pyfunc.load_model(_local(model_uri, tracking_uri))


def _local(model_uri: str, tracking_uri: str) -> str:
    """The logged model's directory, looked up in this store (not the process default)."""
    client = MlflowClient(tracking_uri)
    location = client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    return location.removeprefix("file://")


@pytest.mark.parametrize("task", ["classify", "regress", "rank"])
def test_pyfunc_predict_equals_load_set_model(task: str, workdir: Path, store: str) -> None:
    job = make_job(workdir, task)
    raw = raw_batch(job, SIZES)
    transforms = fitted(job, raw)
    state = trained_state(job)
    run_id = open_run(job)
    validation = (
        (torch.softmax(torch.randn(20, 3, generator=torch.Generator().manual_seed(1)), 1).numpy(),
         torch.arange(20).remainder(3).numpy())
        if task == "classify"
        else None
    )  # fmt: skip
    uri = log_model(run_id, job, state, transforms, HISTORY, raw, validation=validation)
    close_run(run_id, "FINISHED")
    assert uri.startswith("models:/m-")

    loaded = load_set_model(uri, store)
    assert (loaded.name, loaded.version) == (None, None)
    assert dump_job(loaded.job) == dump_job(job)
    assert loaded.transforms.to_dict() == transforms.to_dict()
    for key, value in state.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    expected = loaded.predict_batch(raw)

    # What the original weights give, by hand: the artifacts round-trip exactly.
    from setpipe.models import build_model

    model = build_model(job.model, len(job.data.feature_names), len(job.data.context))
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        out = model.predict_chunked(transforms.apply(raw), chunk_size=3)
    assert expected == task_outputs(task, out, raw.offsets)
    assert len(expected) == len(SIZES)
    if task == "classify":
        assert all(sorted(o) == ["label", "probabilities"] for o in expected)
        assert all(len(o["probabilities"]) == 3 for o in expected)
        assert all(
            o["label"] == max(range(3), key=o["probabilities"].__getitem__) for o in expected
        )
    elif task == "regress":
        assert all(sorted(o) == ["value"] and isinstance(o["value"], float) for o in expected)
    else:
        assert [len(o["scores"]) for o in expected] == SIZES

    requests = example_request(job, raw, max_sets=len(SIZES))
    pyfunc = _pyfunc(uri, store)
    assert pyfunc.predict(requests) == expected
    assert pyfunc.predict([SetInput(**r) for r in requests]) == expected


def test_logged_artifacts_signature_and_plots(workdir: Path, store: str) -> None:
    job = make_job(workdir, "classify")
    raw = raw_batch(job, SIZES)
    run_id = open_run(job)
    validation = (
        torch.tensor(
            [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]]
        ).numpy(),
        torch.tensor([0, 1, 2, 1]).numpy(),
    )
    uri = log_model(
        run_id, job, trained_state(job), fitted(job, raw), HISTORY, raw, validation=validation
    )
    close_run(run_id, "FINISHED")
    client = MlflowClient(store)
    run_files = sorted(
        f.path for d in ("", "plots") for f in client.list_artifacts(run_id, d or None)
    )
    assert run_files == [
        "history.json", "job.yaml", "plots", "plots/loss.png", "plots/roc.png",
    ]  # fmt: skip
    assert client.get_run(run_id).data.tags["setpipe.model_uri"] == uri

    from mlflow.models import Model

    local = Path(_local(uri, store))
    assert local.is_relative_to(workdir / "mlartifacts")
    conf = Model.load(str(local))
    flavor = conf.flavors["python_function"]
    # Logged from code: no pickled python model anywhere in the model directory.
    assert "python_model" not in flavor or not str(flavor["python_model"]).endswith(".pkl")
    assert not list(local.rglob("*.pkl"))
    assert (local / "code" / "setpipe" / "tracking" / "pyfunc.py").is_file()
    assert sorted(flavor["artifacts"]) == ["job", "transforms", "weights"]
    weights = local / flavor["artifacts"]["weights"]["path"]
    assert weights.name == "weights.pt"
    state = torch.load(weights, weights_only=True)
    assert sorted(state) == sorted(trained_state(job))
    assert yaml.safe_load((local / flavor["artifacts"]["job"]["path"]).read_text())["name"] == (
        "t-classify"
    )
    transforms = json.loads((local / flavor["artifacts"]["transforms"]["path"]).read_text())
    assert transforms["raw_features"] == ["part_pt", "part_eta", "part_phi"]

    requirements = (local / "requirements.txt").read_text().split()
    # Pinned as installed, without a local label: PyPI has no 2.13.0+cpu (MLflow's own
    # requirement inference strips it for the same reason).
    assert f"torch=={installed_version('torch').split('+')[0]}" in requirements
    assert any(r.startswith("torch==2.13.0") for r in requirements)
    assert "mlflow==3.17.2" in requirements
    assert any(r.startswith("pydantic==") for r in requirements)
    assert any(r.startswith("pyarrow==") for r in requirements)

    inputs = conf.get_input_schema().to_dict()
    assert inputs == [
        {
            "type": "object",
            "properties": {
                "context": {"type": "map", "values": {"type": "double"}, "required": True},
                "features": {
                    "type": "map",
                    "values": {"type": "array", "items": {"type": "double"}},
                    "required": True,
                },
            },
            "required": True,
        }
    ]
    example = json.loads((local / "input_example.json").read_text())
    assert example == example_request(job, raw)
    assert sorted(example[0]["features"]) == ["part_eta", "part_phi", "part_pt"]


def test_pyfunc_rejects_wrong_features(workdir: Path, store: str) -> None:
    from mlflow.exceptions import MlflowException

    job = make_job(workdir, "classify")
    raw = raw_batch(job, SIZES)
    run_id = open_run(job)
    uri = log_model(run_id, job, trained_state(job), fitted(job, raw), HISTORY, None)
    close_run(run_id, "FINISHED")
    pyfunc = _pyfunc(uri, store)
    good = example_request(job, raw, max_sets=1)[0]
    # Types are pydantic's (MLflow validates against the type hint) ...
    with pytest.raises(MlflowException, match=r"features\.part_pt\.0"):
        pyfunc.predict([{**good, "features": {**good["features"], "part_pt": ["x"] * 5}}])
    # ... names and lengths are setpipe's, worded as the Ray Serve endpoint words them.
    with pytest.raises(ServeError) as err:
        pyfunc.predict([{**good, "features": {**good["features"], "part_pt": [1.0] * 4}}])
    assert str(
        err.value
    ) == "sets[0].features.part_pt: expected 5 values like part_eta, found 4" or (
        str(err.value) == "sets[0].features.part_eta: expected 4 values like part_pt, found 5"
    )
    missing = {k: v for k, v in good["features"].items() if k != "part_phi"}
    with pytest.raises(ServeError, match=r"^sets\[0\]\.features: missing part_phi; expected "):
        pyfunc.predict([{**good, "features": missing}])


def test_load_set_model_errors(workdir: Path, store: str) -> None:
    with pytest.raises(ModelError, match=r"^cannot load model 'models:/m-0123' from sqlite:///"):
        load_set_model("models:/m-0123", store)


def test_logging_a_model_leaves_mlflows_global_state_alone(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model goes to the job's store, through MlflowClient only: the process's tracking
    URI (here a store that cannot even be opened) is neither used nor changed."""
    import mlflow

    elsewhere = f"sqlite:///{tmp_path}/no-such-dir/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    job = make_job(workdir, "classify", tracking_uri=store)
    raw = raw_batch(job, SIZES)
    run_id = open_run(job)
    uri = log_model(run_id, job, trained_state(job), fitted(job, raw), HISTORY, raw)
    close_run(run_id, "FINISHED")
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert mlflow.get_tracking_uri() == elsewhere
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert not mlflow.is_tracking_uri_set()  # no global URI was left pinned
    assert not (tmp_path / "no-such-dir").exists()

    client = MlflowClient(store)
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert str(logged.status) == "READY"
    assert logged.source_run_id == run_id
    outputs = client.get_run(run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(logged.model_id, 0)]
    local = Path(_local(uri, store))
    assert sorted(p.name for p in local.iterdir() if p.name != "code") == [
        "MLmodel", "_pyfunc_model.py", "artifacts", "conda.yaml", "input_example.json",
        "python_env.yaml", "requirements.txt", "serving_input_example.json",
    ]  # fmt: skip
    assert not list(local.rglob("__pycache__"))
    assert load_set_model(uri, store).predict_batch(raw) == load_set_model(
        str(local)
    ).predict_batch(raw)


@pytest.mark.parametrize("task", ["classify", "regress", "rank"])
def test_non_finite_outputs_are_never_returned_silently(
    task: str, workdir: Path, store: str
) -> None:
    """A model whose weights went NaN: the
    pyfunc and predict_batch name the sets instead of returning NaN (JSON has no NaN)."""
    from setpipe.tracking.pyfunc import NonFiniteOutput, non_finite_sets

    job = make_job(workdir, task)
    raw = raw_batch(job, SIZES)
    state = trained_state(job)
    run_id = open_run(job)
    uri = log_model(run_id, job, state, fitted(job, raw), HISTORY, raw)
    close_run(run_id, "FINISHED")
    loaded = load_set_model(uri, store)
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteOutput) as err:
        loaded.predict_batch(raw)
    assert err.value.sets == [0, 1, 2, 3]
    assert str(err.value) == (
        "the model's output is not finite (NaN or infinite) for set(s) 0, 1, 2, 3 of 4; nothing "
        "was returned for them. Likely cause: a feature outside what the model was trained on "
        "(e.g. a value whose transform is not finite, like log of 0), or weights that diverged "
        "in training"
    )
    outputs = loaded.predict_batch(raw, allow_non_finite=True)  # the server checks per request
    assert non_finite_sets(outputs) == [0, 1, 2, 3]
    assert non_finite_sets([{"value": 1.0}, {"scores": [0.5, float("inf")]}]) == [1]
