"""setpipe.search.tune on a real local Ray: 4 tiny trials, nested MLflow runs, the gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

from setpipe.search import PARENT_TAG, ROLE_TAG, TRIAL_TAG, tune
from setpipe.spec import job_from_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"), train=200, validation=80, test=80)


def search_job(data: Path, workdir: Path, **search: Any) -> Any:
    spec = job_dict(data, workdir, epochs=2)
    spec["search"] = {
        "space": {
            "train.optimizer.lr": {"loguniform": [1e-3, 3e-2]},
            "model.encoder.phi": [[8], [16, 16]],
        },
        "trials": 4,
        "concurrency": 2,
        "scheduler": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
        **search,
    }
    return job_from_dict(spec)


def test_four_trials_nest_under_one_parent_and_only_the_best_is_registered(
    ray_local: None, data: Path, workdir: Path
) -> None:
    import ray

    job = search_job(data, workdir)
    summary = tune(job, progress=False)
    assert summary.stopped_early, "ASHA stopped no trial: the leak check below proves nothing"
    # Every CPU comes back: a stopped trial's Train workers' placement group is removed with
    # its process (before, each one kept its CPU and the next trials waited forever).
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, (
            f"CPUs still held 30 s after the search: {ray.available_resources().get('CPU')} "
            f"of {ray.cluster_resources()['CPU']} free"
        )
        time.sleep(0.5)

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("sets")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "parent"]
    nested = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(runs) == 5 and len(parents) == 1 and len(nested) == 4
    parent = parents[0]
    assert parent.info.run_id == summary.parent_run_id
    assert parent.info.status == "FINISHED"
    assert {r.data.tags[PARENT_TAG] for r in nested} == {parent.info.run_id}
    assert len({r.data.tags[TRIAL_TAG] for r in nested}) == 4
    assert {r.info.status for r in nested} <= {"FINISHED", "KILLED"}
    stopped = {r.data.tags[TRIAL_TAG] for r in nested if r.info.status == "KILLED"}
    assert stopped == set(summary.stopped_early)
    assert summary.trials == 4 and not summary.failed

    # The parent records the space, the best trial's figures and which trial it was.
    space = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "search/space.json", str(workdir))
        ).read_text()
    )
    assert space["trials"] == 4 and "train.optimizer.lr" in space["space"]
    assert parent.data.tags["setpipe.search.best_run"] == summary.best_run_id
    assert parent.data.metrics["val_auc"] == pytest.approx(summary.metrics["val_auc"], abs=1e-12)
    # Registration only through the gate: one version, the best trial's run, alias moved.
    versions = client.search_model_versions("name='sets'")
    assert len(versions) == 1
    assert versions[0].run_id == summary.best_run_id
    assert summary.decision.moved
    assert client.get_model_version_by_alias("sets", "champion").version == versions[0].version
    # The best trial is the finished one with the highest chosen-epoch val_auc (the job
    # monitors val_auc, so a trial's chosen epoch is its best one); ties (these sets are
    # easy: several trials reach 1.0) go to the lowest trial id.
    best_auc = {
        r.data.tags[TRIAL_TAG]: (
            max(m.value for m in client.get_metric_history(r.info.run_id, "val_auc")),
            r.info.run_id,
        )
        for r in nested
        if r.info.status == "FINISHED"
    }
    top = max(auc for auc, _ in best_auc.values())
    first = min(trial for trial, (auc, _) in best_auc.items() if auc == top)
    assert summary.best_trial == first and best_auc[first][1] == summary.best_run_id
    assert summary.metrics["val_auc"] == pytest.approx(top, abs=1e-12)


def test_concurrent_trials_leave_a_cpu_for_reading_data() -> None:
    """Sized one trial at a time, 2 trials of 1 worker x 1 CPU plus the trials' own 0.1 took
    2.2 of 2 CPUs: Ray Data's read tasks never ran and the search waited forever."""
    from setpipe.errors import TrainError
    from setpipe.search import TRIAL_CPU, trial_resources

    job = search_job(Path("/data"), Path("/work"))  # concurrency 2, workers 0 -> 1
    overrides, note = trial_resources(job, 2.0)
    share = overrides["train.resources_per_worker"]["CPU"]
    assert share == pytest.approx((2.0 - 1.0 - 2 * TRIAL_CPU) / 2, abs=1e-4)  # 0.4
    assert 2 * (share + TRIAL_CPU) + 1.0 <= 2.0 + 1e-9
    assert note is not None and "0.4 CPU so that 1 stays free for reading data" in note
    # Room for 1 CPU per worker: the job is left as it is.
    assert trial_resources(job, 8.0) == ({}, None)
    assert trial_resources(job, 0.0) == ({}, None)  # an autoscaling cluster's empty head
    # A job's own CPU that cannot fit is refused with the numbers and the fix.
    asked = search_job(Path("/data"), Path("/work"), concurrency=3)
    asked = asked.model_copy(
        update={"train": asked.train.model_copy(update={"resources_per_worker": {"CPU": 1.0}})}
    )
    with pytest.raises(TrainError) as err:
        trial_resources(asked, 4.0)
    assert str(err.value) == (
        "sets: search.concurrency 3 x train.workers 1 x train.resources_per_worker.CPU 1 = 3 "
        "CPUs, but the cluster's 4 CPUs leave 2.7 after 3 x 0.1 for the trials and 1 for "
        "reading data: the trials would wait forever for each other. Set search.concurrency "
        "to 2, or resources_per_worker.CPU to 0.9, or add CPUs"
    )
    # Too many trials for the CPUs: refused, naming the concurrency that fits.
    with pytest.raises(TrainError, match=r"Set search.concurrency to 2 or less"):
        trial_resources(search_job(Path("/data"), Path("/work"), concurrency=8, trials=8), 2.0)
