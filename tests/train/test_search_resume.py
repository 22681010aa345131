"""setpipe tune --resume after its driver was SIGKILLed mid-search: no duplicate MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sets_data import make_data
from test_search import search_job

from setpipe.search import ROLE_TAG, TRIAL_TAG, tune


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"), train=200, validation=80, test=80)


def test_a_killed_search_resumes_without_duplicate_runs(
    ray_local: None, data: Path, workdir: Path
) -> None:
    """The driver is SIGKILLed once a trial has finished; --resume ends the same search."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    job = search_job(data, workdir, concurrency=1, trials=2)  # 2: one done, one to resume
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "setpipe", "tune", str(path), "--quiet"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    outcomes = workdir / "runs" / "sets"
    deadline = time.monotonic() + 600
    try:
        while not list(outcomes.glob("sets-search-*/*.json")):
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in 600 s"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    state = json.loads((outcomes / "search.json").read_text())
    assert state["status"] == "RUNNING"
    done_before = {p.stem for p in outcomes.glob("sets-search-*/*.json")}
    assert len(done_before) == 1

    summary = tune(job, progress=False, resume=True)

    assert summary.resumed and summary.parent_run_id == state["parent_run_id"]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sets").experiment_id])
    nested = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(runs) == 3 and len(nested) == 2  # one parent, one run per trial, no repeats
    assert summary.trials == 2 and not summary.failed
    assert {r.data.tags[TRIAL_TAG] for r in nested} >= done_before
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    assert len(client.search_model_versions("name='sets'")) == 1
