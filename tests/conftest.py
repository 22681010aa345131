"""Shared fixtures: one real local Ray per test session, real MLflow stores on tmp dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Token auth stays on (the default for a new local cluster); said explicitly so a
# developer's RAY_AUTH_MODE=disabled cannot leak into the suite.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray shared by the whole session (init costs ~3 s; do it once).

    4 logical CPUs on a 2-core machine: a 2-worker TorchTrainer plus Ray Data read
    tasks must be schedulable at once.
    """
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
    ray.shutdown()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A fresh setpipe work dir (MLflow sqlite store, checkpoints) per test."""
    path = tmp_path / "work"
    path.mkdir()
    return path
