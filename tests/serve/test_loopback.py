"""`setpipe serve` and `setpipe run` on a local Ray: nothing listens beyond 127.0.0.0/8,
the token and HAProxy's admin socket are the user's alone, and the ports can be pinned.

Each test starts the real command in a subprocess with its own local Ray and lists every
socket its whole process tree (Ray's GCS, raylet, agents, workers, Serve's actors,
HAProxy) accepts traffic on: TCP listeners and bound, unconnected UDP sockets.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from serve_helpers import REPO, Registered

from setpipe._net import free_port

STARTUP_S = 300  # a local Ray + Serve + HAProxy on 2 busy cores: ~40 s, often more
RANGE_SIZE = 40
SERVING = re.compile(r"^serving .* at (http://\S+) ", re.MULTILINE)


@dataclass(frozen=True)
class Socket:
    ip: str
    port: int
    kind: str  # "tcp" or "udp"
    process: str

    def __str__(self) -> str:
        return f"{self.process} {self.kind} {self.ip}:{self.port}"


def on_loopback(ip: str) -> bool:
    """In 127.0.0.0/8, written as IPv4 or IPv4-mapped IPv6 (``::ffff:127.0.0.1``)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in ipaddress.ip_network("127.0.0.0/8")


def sockets_of_tree(root: psutil.Process) -> list[Socket]:
    """Every socket of ``root`` and its descendants that accepts traffic."""
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            connections = proc.net_connections(kind="inet")
        except psutil.Error:  # a worker that exited meanwhile
            continue
        for conn in connections:
            listening = conn.type == 1 and conn.status == psutil.CONN_LISTEN
            bound_udp = conn.type == 2 and not conn.raddr
            if listening or bound_udp:
                kind = "tcp" if conn.type == 1 else "udp"
                found.add(Socket(conn.laddr.ip, conn.laddr.port, kind, name))
    return sorted(found, key=lambda s: (s.process, s.port))


def clean_env(home: Path) -> dict[str, str]:
    """This environment without the Ray and setpipe settings the test session exported
    (its own HAProxy ports, ...), with HOME in ``home`` so Ray's token file lands there."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "SETPIPE_")) or k in ("RAY_AUTH_MODE", "RAY_DEDUP_LOGS")
    }
    env["HOME"] = str(home)
    env["RAY_AUTH_MODE"] = "token"
    return env


@dataclass
class Started:
    proc: subprocess.Popen
    url: str
    home: Path
    log: Path
    port_range: tuple[int, int]

    @property
    def tree(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive ports free on loopback now, below the ephemeral range."""
    for low in range(21000, 32000, 97):
        ports = range(low, low + size)
        if all(_free(p) for p in ports):
            return low, low + size - 1
    raise AssertionError(f"no {size} consecutive free ports between 21000 and 32000")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def served(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """`setpipe serve` in its own process (its own local Ray), ports pinned to a range."""
    root = tmp_path_factory.mktemp("loopback")
    home = root / "home"
    home.mkdir()
    log = root / "serve.log"
    low, high = free_range(RANGE_SIZE)
    command = [
        sys.executable, "-m", "setpipe", "serve", f"models:/{registered.name}@champion",
        "--tracking-uri", registered.tracking_uri,
        "--port", str(free_port()),
        "--ray-port-range", f"{low}-{high}",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=clean_env(home), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_S
        while not (match := SERVING.search(log.read_text())):
            assert proc.poll() is None, f"setpipe serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not serving in {STARTUP_S} s:\n{log.read_text()}"
            time.sleep(0.5)
        url = match.group(1)
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.5)
        time.sleep(3)  # the replica's direct-ingress server and HAProxy's reload settle
        yield Started(proc, url, home, log, (low, high))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_listens_on_loopback_only(served: Started) -> None:
    sockets = sockets_of_tree(served.tree)
    names = {s.process for s in sockets}
    # The whole tree is seen: Ray's core, its agents, Serve's actors and HAProxy.
    assert {"gcs_server", "raylet", "haproxy"} <= names, names
    assert any("ServeReplica" in n for n in names), names
    exposed = [str(s) for s in sockets if not on_loopback(s.ip)]
    assert exposed == [], "listening beyond 127.0.0.0/8:\n" + "\n".join(exposed)


def test_ray_token_file_is_private(served: Started) -> None:
    token = served.home / ".ray" / "auth_token"
    assert token.is_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) == 64  # 256 random bits, hex: Ray's own format


def test_haproxy_admin_socket_is_private(served: Started) -> None:
    haproxy = [p for p in served.tree.children(recursive=True) if p.name() == "haproxy"]
    assert haproxy
    cmdline = haproxy[0].cmdline()
    config = Path(cmdline[cmdline.index("-f") + 1]).read_text()
    match = re.search(r"^\s*stats socket (\S+) mode (\d+) level admin", config, re.MULTILINE)
    assert match is not None, config
    socket_path, mode = Path(match.group(1)), match.group(2)
    assert mode == "600"
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    # The directory that holds it, its config and its state is the user's alone.
    private = Path(tempfile.gettempdir()) / socket_path.relative_to(tempfile.gettempdir()).parts[0]
    assert private != Path("/tmp/haproxy-serve")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert private.stat().st_uid == os.getuid()


def test_ray_port_range_pins_every_port_setpipe_sets(served: Started) -> None:
    """--ray-port-range LO-HI: the GCS, the dashboard, the metrics exporter, HAProxy's stats
    and metrics pages, the fallback proxy and the replica's HTTP server take their ports
    from the range, in that order, so two servers given disjoint ranges never collide."""
    low, high = served.port_range
    by_process: dict[str, set[int]] = {}
    for s in sockets_of_tree(served.tree):
        by_process.setdefault(s.process, set()).add(s.port)
    in_range = {name: {p for p in ports if low <= p <= high} for name, ports in by_process.items()}
    http_port = int(served.url.rsplit(":", 1)[1])
    assert in_range["gcs_server"] == {low}
    assert low + 1 in by_process["python"]  # the dashboard
    assert low + 2 in in_range["ray::DashboardAgent"]  # the Prometheus exporter
    assert by_process["haproxy"] == {http_port, low + 3, low + 4}
    assert in_range["ray::ProxyActor"] == {low + 5}
    replica = next(ports for name, ports in in_range.items() if "ServeReplica" in name)
    assert len(replica) == 1 and low + 7 <= min(replica) <= high, replica


def test_run_starts_its_local_ray_on_loopback_only(tmp_path: Path) -> None:
    """`setpipe run`'s Ray (pipeline.connect with no address) gets the same treatment."""
    code = (
        "import json, os, time, ray\n"
        "from setpipe.pipeline import connect\n"
        "connect(None)\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "print('READY', os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        time.sleep(3)
        sockets = sockets_of_tree(psutil.Process(proc.pid))
        assert {"gcs_server", "raylet"} <= {s.process for s in sockets}
        exposed = [str(s) for s in sockets if not on_loopback(s.ip)]
        assert exposed == [], "listening beyond 127.0.0.0/8:\n" + "\n".join(exposed)
        token = tmp_path / ".ray" / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=90)


def test_on_loopback() -> None:
    assert on_loopback("127.0.0.1") and on_loopback("127.3.2.1")
    assert on_loopback("::ffff:127.0.0.1")
    for ip in ("0.0.0.0", "::", "192.0.2.2", "::1", "::ffff:10.0.0.1"):
        assert not on_loopback(ip), ip
