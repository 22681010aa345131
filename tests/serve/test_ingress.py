"""The HAProxy ingress `setpipe serve` starts by default: what listens where, and its settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from serve_helpers import REPO, Server

from setpipe._net import is_loopback
from setpipe.errors import ServeError
from setpipe.serve.ingress import bind_wildcards_to, local_ray_environment

GOOD = {  # one small valid set
    "part_pt": [10.0, 5.0, 2.0],
    "part_eta": [0.1, -0.2, 0.0],
    "part_phi": [0.3, 0.1, -0.1],
    "part_pid": [211, 22, -211],
}


def listeners(proc: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in proc.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def test_requests_enter_through_haproxy_listening_on_loopback_only(server: Server) -> None:
    """The app's port is HAProxy's, and none of HAProxy's sockets (frontend, stats page,
    Prometheus exporter) listens beyond loopback, although Ray's template binds the last
    two on every interface."""
    port = int(server.url.rsplit(":", 1)[1])
    ours = [p for p in psutil.Process().children(recursive=True) if p.name() == "haproxy"]
    assert ours, "no HAProxy process under this session's Ray"
    sockets = set().union(*(listeners(p) for p in ours))
    assert ("127.0.0.1", port) in sockets
    assert len(sockets) >= 3  # frontend, stats, metrics
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}
    # HAProxy forwards to the replica's own HTTP server, which listens on loopback too
    # (its other sockets are Ray's own, on every interface as in any Ray worker).
    replica = psutil.Process(httpx.get(f"{server.url}/model").json()["pid"])
    assert any(ip == "127.0.0.1" for ip, _ in listeners(replica))


def test_bind_wildcards_to_rewrites_only_wildcard_binds() -> None:
    config = "\n".join(
        [
            "frontend prometheus",
            "    bind :9101",
            "frontend http_frontend",
            "    bind 127.0.0.1:8000",
            "listen stats",
            "  bind *:8404",
            "  bind 0.0.0.0:1",
            "  bind [::]:2",
            "  server r1 10.0.0.5:30000 check",
        ]
    )
    assert bind_wildcards_to(config, "127.0.0.1").splitlines() == [
        "frontend prometheus",
        "    bind 127.0.0.1:9101",
        "frontend http_frontend",
        "    bind 127.0.0.1:8000",
        "listen stats",
        "  bind 127.0.0.1:8404",
        "  bind 127.0.0.1:1",
        "  bind 127.0.0.1:2",
        "  server r1 10.0.0.5:30000 check",
    ]
    assert bind_wildcards_to("  bind *:8404", "::1") == "  bind [::1]:8404"


def test_ray_template_still_has_the_wildcard_binds_we_rewrite() -> None:
    """If Ray's HAProxy template changes how it binds stats and metrics, this says so."""
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert "bind :{{ config.metrics_port }}" in HAPROXY_CONFIG_TEMPLATE
    assert "bind *:{{ config.stats_port }}" in HAPROXY_CONFIG_TEMPLATE


def test_local_environment_per_ingress() -> None:
    proxy = local_ray_environment("proxy", "127.0.0.1")
    assert proxy == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}

    local = local_ray_environment("haproxy", "127.0.0.1")
    assert local["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert local["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert local["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1"
    wrapper = local["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert os.path.basename(wrapper) == "setpipe-haproxy" and os.access(wrapper, os.X_OK)
    assert local["SETPIPE_HAPROXY_BIND"] == "127.0.0.1"
    ports = [
        local[k]
        for k in (
            "RAY_SERVE_HAPROXY_STATS_PORT",
            "RAY_SERVE_HAPROXY_METRICS_PORT",
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
        )
    ]
    assert len(set(ports)) == 4  # Ray's fixed defaults would collide between two servers

    exposed = local_ray_environment("haproxy", "0.0.0.0")  # told otherwise: Ray's binds
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in exposed
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")

    with pytest.raises(ServeError, match="ingress 'nginx': expected one of haproxy, proxy"):
        local_ray_environment("nginx", "127.0.0.1")


def test_cli_refuses_ingress_for_a_cluster() -> None:
    cluster = ["--address", "ray://head:10001", "--ingress", "proxy"]
    result = subprocess.run(
        [sys.executable, "-m", "setpipe", "serve", "models:/m@champion", *cluster],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "--ingress proxy with --address: a cluster's ingress is set where its nodes" in (
        result.stderr
    )


def test_two_replicas_behind_haproxy_share_the_requests(server: Server) -> None:
    """A second app with two replicas (``--replicas 2``) under its own route: HAProxy
    spreads requests over both, and both answer alike with the pinned version."""
    from ray import serve

    from setpipe.serve.app import ServeConfig, build_app

    registered = server.registered
    config = ServeConfig(
        name=registered.name,
        tracking_uri=registered.tracking_uri,
        replicas=2,
        num_cpus=0.25,
    )
    serve.run(build_app(config, registered.version), name="setpipe-two", route_prefix="/two")
    try:
        base = f"{server.url}/two"
        pids: set[int] = set()
        deadline = time.monotonic() + 90
        # HAProxy learns the new app's replicas on its next reload; until then the
        # fallback proxy answers. (GETs only: interleaved with POSTs, leastconn alternates
        # and every GET can land on one replica.)
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"only replica {pids} answered"
            pids.add(httpx.get(f"{base}/model", timeout=30).json()["pid"])
        sets = {"sets": [{"features": GOOD, "context": {"jet_pt": 400.0}}]}
        answers = [httpx.post(f"{base}/predict", json=sets, timeout=30) for _ in range(6)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        for answer in answers:
            assert answer.json() == answers[0].json()
        assert answers[0].json()["model"] == {
            "name": registered.name,
            "version": registered.version,
        }
    finally:
        serve.delete("setpipe-two")
