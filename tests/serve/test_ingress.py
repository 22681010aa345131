"""The HAProxy ingress `setpipe serve` starts by default: what listens where, and its settings."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from serve_helpers import REPO, Registered, Server

from setpipe._net import is_loopback
from setpipe.errors import ServeError
from setpipe.serve.ingress import (
    RayPorts,
    bind_wildcards_to,
    check_ports_free,
    local_ray_environment,
    plan_ports,
    private_admin_socket,
    private_state_dir,
)

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


def test_local_environment_per_ingress(tmp_path: Path) -> None:
    state = str(tmp_path)
    proxy = local_ray_environment("proxy", "127.0.0.1", state_dir=state)
    assert proxy == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}

    local = local_ray_environment("haproxy", "127.0.0.1", state_dir=state)
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

    exposed = local_ray_environment("haproxy", "0.0.0.0", state_dir=state)
    assert "SETPIPE_HAPROXY_BIND" not in exposed  # told otherwise: Ray's binds stay
    assert exposed["RAY_SERVE_HAPROXY_BINARY_PATH"] == wrapper  # the admin socket is 600
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")

    with pytest.raises(ServeError, match="ingress 'nginx': expected one of haproxy, proxy"):
        local_ray_environment("nginx", "127.0.0.1", state_dir=state)


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


# --------------------------------------------------------------------------- private and pinned


def test_admin_socket_becomes_mode_600() -> None:
    """Ray's template opens HAProxy's admin socket to every local user; the wrapper makes
    it this user's alone and changes nothing else."""
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    line = "stats socket {{ config.socket_path }} mode 666 level admin expose-fd listeners"
    assert line in HAPROXY_CONFIG_TEMPLATE  # what the rewrite expects Ray to write
    config = (
        "global\n"
        "    stats socket /tmp/x/n1/admin.sock mode 666 level admin expose-fd listeners\n"
        "    stats timeout 30s\n"
        "frontend f\n"
        "    bind 127.0.0.1:8000\n"
    )
    assert private_admin_socket(config) == config.replace("mode 666", "mode 600")
    assert private_admin_socket(private_admin_socket(config)) == private_admin_socket(config)


def test_haproxy_files_go_to_a_private_directory(tmp_path: Path) -> None:
    state = private_state_dir()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert os.stat(state).st_uid == os.getuid()
    assert os.listdir(state) == []
    env = local_ray_environment("haproxy", "127.0.0.1", state_dir=state)
    assert {k: v for k, v in env.items() if v.startswith(state)} == {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_LOG_TARGET": f"{state}/log.sock",  # no UDP socket on 0.0.0.0
    }
    # Ray puts a 56-character node id between the directory and each socket's name, and
    # HAProxy binds <name>.<pid>.tmp first: it still fits in a unix socket path (107).
    assert len(f"{state}/{'n' * 56}/metrics.sock.4194304.tmp") <= 107


def test_plan_ports_draws_every_port_from_the_range() -> None:
    ports = plan_ports(20000, 20039, replicas=2, http_port=8000)
    assert ports == RayPorts(
        gcs=20000,
        dashboard=20001,
        metrics_export=20002,
        haproxy_stats=20003,
        haproxy_metrics=20004,
        fallback_http=20005,
        fallback_grpc=20006,
        replica_http=range(20007, 20023),  # (40 - 7) // 2 = 16 each; 20039 left unused
        replica_grpc=range(20023, 20039),
    )
    env = local_ray_environment("haproxy", "127.0.0.1", state_dir="/s", ports=ports)
    assert {k: env[k] for k in env if k.endswith("_PORT")} == {
        "RAY_SERVE_HAPROXY_STATS_PORT": "20003",
        "RAY_SERVE_HAPROXY_METRICS_PORT": "20004",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "20005",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": "20006",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "20007",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "20023",  # Serve excludes the maximum
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "20023",
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "20039",
    }
    assert plan_ports(20000, 20010, replicas=1, http_port=8000).replica_http == range(20007, 20009)
    with pytest.raises(
        ServeError,
        match=r"--ray-port-range 20000-20009: 10 ports; 1 replica\(s\) need at least 11 "
        r"\(7 for Ray and HAProxy, then 2 HTTP and 2 gRPC per replica\); widen the range",
    ):
        plan_ports(20000, 20009, replicas=1, http_port=8000)
    with pytest.raises(ServeError, match="holds the serving port --port 20005; pick a range"):
        plan_ports(20000, 20039, replicas=1, http_port=20005)


def test_a_pinned_port_in_use_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = plan_ports(port - 1, port + 20, replicas=1, http_port=1)
        with pytest.raises(
            ServeError,
            match=rf"--ray-port-range: port {port} \(Ray's dashboard\) is not free \(Address "
            r"already in use\); give each server on this machine its own range",
        ):
            check_ports_free(ports)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-port-range", "9000"], "argument --ray-port-range: expected LO-HI, found '9000'"),
        (
            ["--ray-port-range", "80-90"],
            "expected LO-HI with 1024 <= LO <= HI <= 65535, found '80-90'",
        ),
        (
            ["--address", "ray://head:10001", "--ray-port-range", "20000-20039"],
            "--ray-port-range with --address: a cluster's ports are set where its nodes start",
        ),
    ],
)
def test_cli_checks_the_port_range(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "setpipe", "serve", "models:/m@champion", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_cli_names_a_busy_http_port(registered: Registered) -> None:
    """`setpipe serve --port P` with P already taken: one line naming the port, before Ray
    starts (it printed HAProxy's crash log inside Ray's remote traceback)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "setpipe",
                "serve",
                f"models:/{registered.name}@{registered.job.tracking.alias}",
                "--tracking-uri",
                registered.tracking_uri,
                "--port",
                str(port),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick a free port, or stop the server that holds it"
    )
    assert "File " not in result.stderr  # no traceback, not even Ray's remote one
