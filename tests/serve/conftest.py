"""Serving fixtures: one tiny model trained ONCE, one Serve app per session on loopback.

Serve start costs ~10 s and training a few more, so everything here is session-scoped
and shared by the serving tests; the app is shut down at the end of the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from serve_helpers import (
    REPO,
    TEST_ELEMENT_BUDGET,
    TEST_LIMITS,
    TEST_REQUEST_TIMEOUT_S,
    Registered,
    Server,
)

from setpipe._net import free_port
from setpipe.serve.ingress import use_local_ingress
from setpipe.spec import load_job

# Before the session's Ray starts (tests/conftest.py::ray_local): serve as `setpipe serve`
# does by default, through Ray Serve's HAProxy ingress on loopback.
use_local_ingress("haproxy", "127.0.0.1", request_timeout_s=TEST_REQUEST_TIMEOUT_S)


@pytest.fixture(scope="session")
def registered(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """The quickstart job trained for one epoch on tiny synthetic jets, registered once."""
    from setpipe.data.datagen.jets import generate_jets
    from setpipe.pipeline import run

    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    generate_jets(data, {"train": 300, "validation": 100, "test": 100}, seed=0)
    workdir = root / "work"
    job = load_job(
        REPO / "jobs" / "quickstart.yaml",
        [
            f"workdir={workdir}",
            f"data.train={data}/train",
            f"data.validation={data}/validation",
            f"data.test={data}/test",
            "train.epochs=1",
        ],
    )
    summary = run(job, progress=False)
    from setpipe.tracking.store import resolve

    uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    name, version = resolve(f"models:/{job.model_name}@{job.tracking.alias}", uri)
    assert str(version) == str(summary.version)
    return Registered(job, uri, name, str(version), data)


@pytest.fixture(scope="session")
def server(registered: Registered) -> Iterator[Server]:
    """The real Serve app on <default host>:<free port>, following @champion every second.

    Started the way ``setpipe serve`` starts it, with the host left to its default (the
    bind test checks that this listens on loopback only).
    """
    from ray import serve

    from setpipe.data.request import Limits
    from setpipe.serve.app import ServeConfig, start

    port = free_port()
    config = ServeConfig(
        name=registered.name,
        alias=registered.job.tracking.alias,
        tracking_uri=registered.tracking_uri,
        limits=Limits(**TEST_LIMITS),
        element_budget=TEST_ELEMENT_BUDGET,
        num_cpus=0.5,
        poll_s=1.0,
    )
    url = start(config, registered.version, port=port)
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the Serve app did not become ready in 120 s"
        time.sleep(0.2)
    yield Server(url, registered)
    serve.shutdown()
