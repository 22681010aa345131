"""Session fixtures for the jobs tests: one real Ray head with dashboard and token auth.

``ray start --head --block`` runs in its own process session with its own --temp-dir,
free ports and a token of its own, so it never meets the in-process ``ray_local``
cluster or a developer's ~/.ray/auth_token. It is stopped by signalling the processes
of that session only: ``ray stop`` would stop every Ray on the machine, other test
sessions' included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import (
    HEAD_RESOURCE,
    VENV_BIN,
    Head,
    free_port,
    ports,
    start_node,
    stop_node,
    wait_dashboard,
)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Head]:
    # Short path: Ray's unix sockets live under --temp-dir and must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="spj-", dir="/tmp"))
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_DEDUP_LOGS="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Startup timeouts (60 s, 30 s, 60 s by default) that a contended 2-core machine can
        # exceed: `ray start` gives up on a slow dashboard, the raylet exits when its
        # runtime-env agent is slow to answer, and kills (then restarts, forever) workers
        # whose Python start-up outlasts the registration timeout.
        RAY_DASHBOARD_STARTUP_TIMEOUT_S="300",
        RAY_agent_register_timeout_ms="600000",
        RAY_worker_register_timeout_seconds="600",
        # Job entrypoints say `python`: make it this venv's, which has setpipe's dependencies.
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("RAY_API_SERVER_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    log = temp_dir / "head.log"
    proc = start_node(
        [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            f'--resources={{"{HEAD_RESOURCE}": 1}}',
            f"--temp-dir={temp_dir}",
            *ports(
                "ray-client-server-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "node-manager-port",
                "object-manager-port",
            ),
        ],
        env,
        log,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_dashboard(address, token, proc, log)
        yield Head(address, f"127.0.0.1:{port}", token, temp_dir, env)
    finally:
        stop_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def client(ray_head: Head):
    from setpipe.jobs.submit import JobsClient, Token

    return JobsClient(ray_head.address, token=Token(ray_head.token, "the test head"))
