"""A failed run never wedges its job: resume only the same job; --fresh and --resume.

The pipeline tests run a real local Ray (in-process training) and a real MLflow sqlite
store; the failure is the loop's injected one (SETPIPE_FAIL_AT_EPOCH), which in-process
raises in epoch 1 of an attempt that started from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

from setpipe import attempts
from setpipe.errors import TrainError
from setpipe.pipeline import run
from setpipe.spec import job_from_dict
from setpipe.spec.models import JobSpec
from setpipe.train.hooks import FAIL_ENV


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"), train=200, validation=60, test=60)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(FAIL_ENV, raising=False)


def make_job(data: Path, workdir: Path, **changes: object) -> JobSpec:
    raw = job_dict(data, workdir, epochs=2, max_failures=0)
    raw["name"] = "wedge"
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for key in path:
            node = node[key]
        node[last] = value
    return job_from_dict(raw)


def store(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")


def fail_once(job: JobSpec, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``job`` with the injected failure; the FAILED MLflow run's id."""
    monkeypatch.setenv(FAIL_ENV, "1")
    with pytest.raises(TrainError, match="injected failure in epoch 1"):
        run(job, progress=False)
    monkeypatch.delenv(FAIL_ENV)
    return json.loads(attempts.state_path(job).read_text())["run_id"]


def test_a_changed_job_after_a_failure_starts_a_new_run_with_its_own_lineage(
    ray_local, data: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = fail_once(make_job(data, workdir), monkeypatch)
    # A new learning rate and a new model shape: the old checkpoint cannot be the start.
    changed = make_job(
        data,
        workdir,
        train__optimizer={"lr": 0.003},
        model__encoder={"kind": "deepsets", "phi": [24, 24], "rho": [16]},
    )
    summary = run(changed, progress=False)
    assert summary.run_id != failed
    assert summary.resumed_from_epoch == 0
    client = store(workdir)
    assert client.get_run(failed).info.status == "FAILED"
    new = client.get_run(summary.run_id)
    assert new.info.status == "FINISHED"
    # The lineage is the job that trained: its params and its job.yaml.
    assert new.data.params["train.optimizer.lr"] == "0.003"
    assert new.data.params["model.encoder.phi"] == "[24, 24]"
    logged = yaml.safe_load(Path(client.download_artifacts(summary.run_id, "job.yaml")).read_text())
    assert logged["train"]["optimizer"]["lr"] == 0.003


def test_fresh_never_resumes_and_resume_insists(
    ray_local, data: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(data, workdir)
    with pytest.raises(TrainError) as err:
        run(job, progress=False, resume="resume")
    assert str(err.value) == (
        "--resume: job 'wedge' has nothing to resume (it has no attempt yet, "
        f"{attempts.state_path(job)}); run it without --resume to start a new run"
    )
    failed = fail_once(job, monkeypatch)
    changed = make_job(data, workdir, train__optimizer={"lr": 0.003})
    with pytest.raises(TrainError) as err:
        run(changed, progress=False, resume="resume")
    assert str(err.value) == (
        f"--resume: cannot resume MLflow run {failed} of job 'wedge': the job changed since: "
        "train.optimizer.lr: 0.01 -> 0.003. Resuming would train and log a different job "
        "than the run records; restore the job as it was to resume, or run without --resume "
        "to start a new run"
    )
    summary = run(job, progress=False, resume="fresh")
    assert summary.run_id != failed and summary.resumed_from_epoch == 0
    assert store(workdir).get_run(failed).info.status == "FAILED"


def test_choose_reads_the_state_file(workdir: Path, data: Path) -> None:
    job = make_job(data, workdir)
    assert attempts.choose(job).note == "starting a new run"
    attempts.record(job, run_id="r1", ray_run="wedge-r1", status="FAILED")
    same = attempts.choose(job)
    assert (same.run_id, same.ray_run, same.resumes) == ("r1", "wedge-r1", True)
    # cluster and schedule do not change what is trained: still the same job.
    moved = job.model_copy(update={"cluster": job.cluster.model_copy(update={"address": "auto"})})
    assert attempts.choose(moved).resumes
    attempts.record(job, run_id="r1", ray_run="wedge-r1", status="FINISHED")
    assert not attempts.choose(job).resumes
    attempts.state_path(job).write_text("{not json")
    with pytest.raises(TrainError, match=r"state.json: cannot read the job's last attempt"):
        attempts.choose(job)
