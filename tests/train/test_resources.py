"""Nothing hangs without a word: training workers always leave Ray Data a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from setpipe.errors import TrainError
from setpipe.train.resources import worker_resources

HERE = Path(__file__).resolve().parent


def test_workers_that_would_take_every_cpu_get_a_share() -> None:
    assert worker_resources(2, {}, 2.0) == (
        {"CPU": 0.5},
        "train.workers 2 on 2 CPUs: each worker takes 0.5 CPU so that 1 stays free for "
        "reading data (set train.resources_per_worker.CPU to choose)",
    )
    assert worker_resources(4, {"GPU": 1.0}, 4.0) == (
        {"GPU": 1.0, "CPU": 0.75},
        "train.workers 4 on 4 CPUs: each worker takes 0.75 CPU so that 1 stays free for "
        "reading data (set train.resources_per_worker.CPU to choose)",
    )


def test_room_left_changes_nothing() -> None:
    assert worker_resources(2, {}, 4.0) == ({}, None)
    assert worker_resources(2, {"CPU": 1.5}, 4.0) == ({"CPU": 1.5}, None)
    assert worker_resources(0, {}, 2.0) == ({}, None)  # in-process: no workers to place


def test_a_jobs_own_cpu_count_that_starves_the_reader_is_refused() -> None:
    with pytest.raises(TrainError) as err:
        worker_resources(2, {"CPU": 1.0}, 2.0)
    assert str(err.value) == (
        "train.workers 2 x train.resources_per_worker.CPU 1 = 2 of the cluster's 2 CPUs "
        "leaves 0 for reading data, and Ray Data needs 1: training would wait forever. Set "
        "resources_per_worker.CPU to 0.5 or less, use fewer workers, or add CPUs"
    )
    with pytest.raises(TrainError) as err:
        worker_resources(1, {}, 1.0)
    assert str(err.value) == (
        "train.workers 1 on a cluster of 1 CPUs: with 1 kept for reading data each worker "
        "would get 0 CPU; use train.workers: 0 (0 trains in this process), or add CPUs"
    )


def test_more_workers_than_cpus_is_left_to_the_autoscaler_with_a_note() -> None:
    resources, note = worker_resources(4, {}, 2.0)
    assert resources == {}
    assert note is not None and note.startswith("train.workers 4 x 1 CPU = 4 CPUs, more than")


@pytest.mark.slow
def test_two_workers_on_a_two_cpu_ray_finish(tmp_path: Path) -> None:
    """Before: this run waited forever (killed after 150 s), every CPU held by a worker."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(HERE)!r})
        import ray
        from sets_data import job_dict, make_data
        from setpipe.pipeline import train
        from setpipe.spec import job_from_dict
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        root = make_data(Path({str(tmp_path)!r}) / "d", train=200, validation=60, test=60)
        job = job_from_dict(job_dict(root, Path({str(tmp_path)!r}) / "w", epochs=1, workers=2))
        out = train(job, progress=True).outcome
        print("trained", len(out.history), "epoch(s)")
        """
    )
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_TRAIN_V2_ENABLED": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=400, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: train.workers 2 on 2 CPUs: each worker takes 0.5 CPU" in result.stdout
    assert result.stdout.rstrip().endswith("trained 1 epoch(s)")
