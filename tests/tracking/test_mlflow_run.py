"""The MLflow run of a job: params, tags, job.yaml and inputs at open; reopen; epochs; close."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_job
from mlflow.tracking import MlflowClient

from setpipe._version import __version__
from setpipe.data.batch import SetBatch
from setpipe.errors import RegistryError
from setpipe.spec import dump_job
from setpipe.tracking.mlflow_run import (
    MAX_PARAM_LENGTH,
    TRUNCATED,
    close_run,
    example_request,
    flatten_params,
    log_epoch,
    open_run,
)


@pytest.fixture(autouse=True)
def _jobs_own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_flatten_params() -> None:
    long = "x" * (MAX_PARAM_LENGTH + 10)
    assert flatten_params(
        {
            "model": {"encoder": {"phi": [64, 64], "kind": "deepsets"}, "head": {}},
            "train": {"amp": True, "lr": 0.001, "grad_clip": None},
            "note": long,
        }
    ) == {
        "model.encoder.phi": "[64, 64]",
        "model.encoder.kind": "deepsets",
        "model.head": "{}",
        "train.amp": "true",
        "train.lr": "0.001",
        "train.grad_clip": "null",
        "note": "x" * (MAX_PARAM_LENGTH - len(TRUNCATED)) + TRUNCATED,
    }
    assert len(flatten_params({"note": long})["note"]) == MAX_PARAM_LENGTH


def test_open_run_records_the_job(workdir: Path, store: str) -> None:
    job = make_job(workdir, "classify")
    run_id = open_run(job)
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == f"t-classify-{run_id[:8]}"  # as its Ray run: runs differ
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "t-classify"
    assert experiment.artifact_location == (workdir / "mlartifacts").resolve().as_uri()

    tags = run.data.tags
    assert tags["setpipe.version"] == __version__
    assert (tags["setpipe.job"], tags["setpipe.task"], tags["setpipe.attempts"]) == (
        "t-classify", "classify", "1",
    )  # fmt: skip
    assert tags["data.train.files"] == "2" and tags["data.validation.files"] == "1"
    assert json.loads(tags["data.train.paths"]) == [job.data.train]
    assert "data.fingerprint" in tags and "data.test.files" not in tags

    params = run.data.params
    assert params == flatten_params(job.model_dump(mode="json"))
    assert params["model.encoder.kind"] == "deepsets" and params["train.chunk_size"] == "3"
    assert client.download_artifacts(run_id, "job.yaml", str(workdir.parent))
    assert (workdir.parent / "job.yaml").read_text() == dump_job(job)

    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert inputs == {
        "t-classify-train": {"mlflow.data.context": "training"},
        "t-classify-validation": {"mlflow.data.context": "validation"},
    }
    close_run(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_reopening_continues_the_same_run(workdir: Path, store: str) -> None:
    job = make_job(workdir, "regress")
    run_id = open_run(job)
    close_run(run_id, "FAILED")
    assert open_run(job, run_id) == run_id
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["setpipe.attempts"] == "2"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    close_run(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_reopening_an_unknown_run_names_the_fix(workdir: Path, store: str) -> None:
    job = make_job(workdir, "classify")
    with pytest.raises(RegistryError) as err:
        open_run(job, "0123abcd")
    assert str(err.value) == (
        f"cannot resume MLflow run 0123abcd of job 't-classify': no such run at {store}; "
        f"remove {workdir}/runs/t-classify/state.json to start a new run"
    )


def test_log_epoch_logs_each_metric_at_the_epoch_step(workdir: Path, store: str) -> None:
    job = make_job(workdir, "classify")
    run_id = open_run(job)
    log_epoch(run_id, store, 0, {"epoch": 0, "train_loss": 1.5, "val_auc": None})
    log_epoch(run_id, store, 1, {"epoch": 1, "train_loss": 1.25, "val_auc": 0.75})
    log_epoch(run_id, store, 2, {"epoch": 2})  # nothing to log
    close_run(run_id, "FINISHED")
    client = MlflowClient(store)
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in ("train_loss", "val_auc", "epoch")
    }
    # The loop counts epochs from 0; a user sees them from 1, as the CLI prints them.
    assert history == {"train_loss": [(1, 1.5), (2, 1.25)], "val_auc": [(2, 0.75)], "epoch": []}


def test_close_run_errors(workdir: Path, store: str) -> None:
    with pytest.raises(RegistryError) as err:
        close_run("abc", "DONE")  # type: ignore[arg-type]
    assert str(err.value) == "close_run status 'DONE': expected FINISHED, FAILED or KILLED"
    with pytest.raises(RegistryError) as err:
        close_run("abc", "FINISHED")
    assert str(err.value) == (
        "close_run('abc'): this process did not open the run; pass tracking_uri="
    )
    # A run this process did not open is closed in the store it is told.
    job = make_job(workdir, "rank")
    run_id = open_run(job)
    close_run(run_id, "KILLED")
    client = MlflowClient(store)
    client.update_run(run_id, status="RUNNING")
    close_run(run_id, "FAILED", tracking_uri=store)
    assert client.get_run(run_id).info.status == "FAILED"


def test_example_request_is_the_first_sets_by_raw_name(workdir: Path) -> None:
    job = make_job(workdir, "classify")
    raw = SetBatch.from_sets(
        [
            torch.tensor([[1.0, 0.5, -0.25], [2.0, 0.0, 0.125]]),
            torch.tensor([[3.0, 1.0, 1.5]]),
            torch.tensor([[4.0, 2.0, 2.5]]),
        ],
        context=torch.tensor([[100.0], [200.0], [300.0]]),
    )
    assert example_request(job, raw) == [
        {
            "features": {
                "part_pt": [1.0, 2.0],
                "part_eta": [0.5, 0.0],
                "part_phi": [-0.25, 0.125],
            },
            "context": {"jet_pt": 100.0},
        },
        {
            "features": {"part_pt": [3.0], "part_eta": [1.0], "part_phi": [1.5]},
            "context": {"jet_pt": 200.0},
        },
    ]
    assert len(example_request(job, raw, max_sets=5)) == 3
    rank = make_job(workdir, "rank")
    two = SetBatch.from_sets([torch.tensor([[0.5, 3.0], [0.25, 4.0]])])
    assert example_request(rank, two) == [{"features": {"sim": [0.5, 0.25], "len": [3.0, 4.0]}}]
