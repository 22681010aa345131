"""setpipe.pipeline.run end to end: real local Ray, real MLflow sqlite store, real Parquet.

Three behaviours of issue 5 that only the whole run shows: a worker that dies in epoch 2
is restarted from the checkpoint and the run still ends as ONE finished MLflow run; what a
run leaves in MLflow (params, per-epoch metrics, artifacts, tags, registry, alias gate);
and a re-run of an unfinished job name continues it instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

import setpipe
from setpipe import attempts
from setpipe.errors import TrainError
from setpipe.pipeline import run
from setpipe.spec import job_from_dict
from setpipe.spec.models import JobSpec
from setpipe.tracking.pyfunc import ARTIFACTS
from setpipe.train.hooks import FAIL_ENV

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sets, plus a validation split with every label flipped (AUC ~ 1 - AUC)."""
    root = make_data(tmp_path_factory.mktemp("sets"))
    flipped = root / "validation_flipped"
    flipped.mkdir()
    for part in sorted((root / "validation").glob("*.parquet")):
        table = pq.read_table(part)
        labels = pc.subtract(1, table.column("label"))
        table = table.set_column(table.schema.get_field_index("label"), "label", labels)
        pq.write_table(table, flipped / part.name)
    return root


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow database (migrations take seconds), copied into each work dir."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def store(workdir: Path, empty_store: Path) -> MlflowClient:
    """A client on the store the pipeline defaults to: sqlite in the work dir."""
    shutil.copyfile(empty_store, workdir / "mlflow.db")
    uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pipeline must use the work dir's store, not a developer's server.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(FAIL_ENV, raising=False)


def make_job(data: Path, workdir: Path, name: str, validation: str = "validation", **train):
    raw = job_dict(data, workdir, **{"epochs": 3, **train})
    raw["name"] = name
    raw["data"]["validation"] = str(data / validation)
    return job_from_dict(raw)


def runs_of(client: MlflowClient, job: JobSpec) -> list[Any]:
    experiment = client.get_experiment_by_name(job.experiment_name)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """What the run's params must be: dotted keys, JSON for everything but strings."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def digest(directory: Path) -> str:
    """sha256 over (resolved path, size, mtime_ns) of each file, sorted: the lineage rule."""
    h = hashlib.sha256()
    for path in sorted(p.resolve() for p in directory.iterdir()):
        stat = path.stat()
        h.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


@pytest.mark.slow
def test_worker_exit_in_epoch_2_resumes_and_leaves_one_finished_run(
    ray_local, data: Path, workdir: Path, store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One real Ray Train worker (not in-process); it exits with os._exit(1) after its first
    # batch of epoch 2 (0-based 1) of the attempt that started from scratch.
    monkeypatch.setenv(FAIL_ENV, "1")
    job = make_job(data, workdir, "fails", workers=1, max_failures=1)
    summary = run(job, progress=False)

    assert summary.resumed_from_epoch == 1  # the retry started from epoch 1's checkpoint
    [only] = runs_of(store, job)
    assert only.info.run_id == summary.run_id
    assert only.info.status == "FINISHED"
    # Each epoch logged once: the dead attempt never reached epoch 2's log, the retry
    # did not repeat epoch 1's.
    for key in ("train_loss", "val_auc", "lr"):
        assert steps(store, summary.run_id, key) == [1, 2, 3], key
    history = json.loads(Path(store.download_artifacts(summary.run_id, "history.json")).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]  # numbered from 1, as the CLI prints
    assert summary.metrics["val_auc"] > 0.9
    state = json.loads((workdir / "runs" / "fails" / "state.json").read_text())
    assert state == {
        "run_id": summary.run_id,
        "ray_run": f"fails-{summary.run_id[:8]}",  # the Ray run is named after the MLflow run
        "status": "FINISHED",
        "job_digest": attempts.job_digest(job),
        "job": attempts.trained_fields(job),
    }
    assert summary.artifacts["ray_run"] == str(workdir.resolve() / "ray_results" / state["ray_run"])
    assert store.get_model_version(job.model_name, summary.version).run_id == summary.run_id


def test_run_content_and_champion_gate(
    ray_local, data: Path, workdir: Path, store: MlflowClient
) -> None:
    # Three runs of one job name: flipped validation labels (bad AUC) with no champion yet,
    # true labels (beats it), flipped again (does not beat the new champion).
    first = make_job(data, workdir, "gate", validation="validation_flipped", epochs=2)
    good = make_job(data, workdir, "gate", epochs=2)
    summaries = [run(job, progress=False) for job in (first, good, first)]
    s1, s2, s3 = summaries
    name = good.model_name

    assert [s.version for s in summaries] == ["1", "2", "3"]
    assert [s.decision.moved for s in summaries] == [True, True, False]
    assert s1.decision.reason == "no champion yet"
    assert s1.metrics["val_auc"] < 0.2 < 0.8 < s2.metrics["val_auc"]
    assert s2.decision.champion_version_before == "1"
    assert s2.decision.champion_metric_before == s1.metrics["val_auc"]
    assert s3.decision.champion_version_before == "2"
    assert s3.decision.champion_metric_before == s2.metrics["val_auc"]
    assert "does not beat the champion (maximize)" in s3.decision.reason
    assert str(store.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(store.get_model_version_by_alias(name, "challenger").version) == "3"
    # The prediction printed by each run is the champion's: run 3's comes from version 2.
    assert s3.prediction == s2.prediction
    assert abs(sum(s3.prediction["probabilities"]) - 1) < 1e-9

    runs = runs_of(store, good)
    assert [r.info.run_id for r in runs] == [s.run_id for s in summaries]
    assert all(r.info.status == "FINISHED" for r in runs)
    for s, r in zip(summaries, runs, strict=True):
        # Decision and both figures on the run.
        assert r.data.tags["gate.moved"] == ("true" if s.decision.moved else "false")
        assert r.data.tags["gate.reason"] == s.decision.reason
        assert r.data.tags["gate.version"] == s.version
        assert r.data.metrics["gate.challenger_metric"] == s.metrics["val_auc"]
        mv = store.get_model_version(name, s.version)
        assert mv.run_id == s.run_id
        # Registered from the logged model's files (see registry.register_and_gate).
        logged = store.get_logged_model(r.data.tags["setpipe.model_uri"].removeprefix("models:/"))
        assert mv.source == logged.artifact_location
    assert "gate.champion_metric_before" not in runs[0].data.metrics
    assert runs[2].data.metrics["gate.champion_metric_before"] == s2.metrics["val_auc"]

    # The content of run 2.
    r = store.get_run(s2.run_id)
    assert r.data.params == flat(good.model_dump(mode="json"))
    assert r.data.params["train.epochs"] == "2"
    assert r.data.params["model.encoder.phi"] == "[16, 16]"
    assert r.data.params["data.validation"] == str(data / "validation")
    assert r.data.tags["setpipe.version"] == setpipe.__version__
    for split in ("train", "validation", "test"):
        assert r.data.tags[f"data.{split}.digest"] == digest(data / split), split
        assert json.loads(r.data.tags[f"data.{split}.paths"]) == [str(data / split)]
    assert (
        r.data.tags["data.validation.digest"]
        != store.get_run(s1.run_id).data.tags["data.validation.digest"]
    )
    # Epochs are numbered from 1 wherever a user sees them: CLI, MLflow steps, history.json.
    for key in ("train_loss", "train_sets_per_s", "val_loss", "val_accuracy", "val_auc", "lr"):
        assert steps(store, s2.run_id, key) == [1, 2], key
    assert steps(store, s2.run_id, "test_auc") == [2]
    history = json.loads(Path(store.download_artifacts(s2.run_id, "history.json")).read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert [r.info.run_name for r in runs] == [f"{good.name}-{s.run_id[:8]}" for s in summaries]
    assert [m.value for m in store.get_metric_history(s2.run_id, "val_auc")] == [
        h["val_auc"] for h in history
    ]
    assert s2.metrics["val_auc"] == max(h["val_auc"] for h in history)

    files = sorted(f.path for d in (None, "plots") for f in store.list_artifacts(s2.run_id, d))
    assert files == [
        "gate", "history.json", "job.yaml", "plots", "plots/loss.png", "plots/roc.json",
        "plots/roc.png",
    ]  # fmt: skip
    outputs = np.load(store.download_artifacts(s2.run_id, "gate/validation_outputs.npz"))
    assert outputs["probabilities"].shape == (len(outputs["targets"]), good.model.num_classes)
    for plot in ("plots/loss.png", "plots/roc.png"):
        assert Path(store.download_artifacts(s2.run_id, plot)).read_bytes()[:8] == PNG_MAGIC
    logged = yaml.safe_load(Path(store.download_artifacts(s2.run_id, "job.yaml")).read_text())
    assert job_from_dict(logged) == good
    model = store.get_logged_model(r.data.tags["setpipe.model_uri"].removeprefix("models:/"))
    assert model.source_run_id == s2.run_id
    model_dir = Path(model.artifact_location.removeprefix("file://"))
    assert model_dir.is_relative_to(workdir.resolve())
    # MLflow keeps a pyfunc's artifacts under artifacts/ beside its MLmodel.
    assert (model_dir / "MLmodel").is_file()
    for name in ARTIFACTS.values():
        assert (model_dir / "artifacts" / name).is_file(), name


def test_rerun_of_unfinished_job_resumes_same_run(
    ray_local, data: Path, workdir: Path, store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, the injected failure raises; no restarts allowed, so the attempt fails.
    monkeypatch.setenv(FAIL_ENV, "1")
    job = make_job(data, workdir, "again", max_failures=0)
    with pytest.raises(TrainError, match="injected failure in epoch 1"):
        run(job, progress=False)
    [failed] = runs_of(store, job)
    assert failed.info.status == "FAILED"
    state_file = workdir / "runs" / "again" / "state.json"
    assert json.loads(state_file.read_text())["status"] == "FAILED"

    monkeypatch.delenv(FAIL_ENV)
    summary = run(job, progress=False)
    assert summary.run_id == failed.info.run_id
    assert summary.resumed_from_epoch == 1
    [again] = runs_of(store, job)
    assert again.info.status == "FINISHED"
    assert again.data.tags["setpipe.attempts"] == "2"
    for key in ("train_loss", "val_auc"):
        assert steps(store, summary.run_id, key) == [1, 2, 3], key  # MLflow steps: epochs from 1
    assert json.loads(state_file.read_text())["status"] == "FINISHED"
    assert summary.version == "1" and summary.decision.moved


@pytest.mark.slow
def test_workers_log_to_the_driver_s_store_with_a_relative_workdir(
    ray_local, data: Path, tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver runs in its own directory with `workdir: rel/work`; the session's Ray workers
    # were started elsewhere, so a store resolved on a worker from the job would be another one.
    driver = tmp_path / "driver"
    (driver / "rel" / "work").mkdir(parents=True)
    shutil.copyfile(empty_store, driver / "rel" / "work" / "mlflow.db")
    monkeypatch.chdir(driver)
    job = make_job(data, Path("rel/work"), "relative", workers=2, epochs=2)
    summary = run(job, progress=False)

    uri = f"sqlite:///{driver / 'rel' / 'work' / 'mlflow.db'}"
    assert summary.artifacts["tracking_uri"] == uri
    store = MlflowClient(uri)
    # Every epoch rank 0 logged is in the driver's store, and the run there is finished.
    for key in ("train_loss", "train_sets_per_s", "val_loss", "val_auc", "lr"):
        assert steps(store, summary.run_id, key) == [1, 2], key
    assert store.get_run(summary.run_id).info.status == "FINISHED"
