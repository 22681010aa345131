"""`mlflow models serve` of the same registered model (the pydantic-typed pyfunc), over HTTP."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import REPO, Registered

from setpipe._net import free_port

GOOD = {
    "features": {
        "part_pt": [10.0, 5.0, 2.0],
        "part_eta": [0.1, -0.2, 0.0],
        "part_phi": [0.3, 0.1, -0.1],
        "part_pid": [211.0, 22.0, -211.0],
    },
    "context": {"jet_pt": 400.0},
}


def test_mlflow_models_serve_round_trip(registered: Registered, tmp_path: Path) -> None:
    import mlflow

    from setpipe.tracking.store import resolve

    bin_dir = Path(sys.executable).parent
    port = free_port()
    env = {
        **os.environ,
        # `mlflow models serve` execs uvicorn, found on PATH.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
    }
    uri = f"models:/{registered.name}@champion"
    log = (tmp_path / "mlflow-serve.log").open("w")
    proc = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer in 120 s"
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        second = {**GOOD, "context": {"jet_pt": 900.0}}
        response = httpx.post(f"{url}/invocations", json={"inputs": [GOOD, second]}, timeout=60)
        assert response.status_code == 200, response.text
        got = np.asarray([p["probabilities"] for p in response.json()["predictions"]])

        _, version = resolve(uri, registered.tracking_uri)
        mlflow.set_tracking_uri(registered.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{registered.name}/{version}")
        expected = [
            o if isinstance(o, dict) else o.model_dump() for o in model.predict([GOOD, second])
        ]
        np.testing.assert_allclose(got, [e["probabilities"] for e in expected], rtol=1e-6)

        # The README's command is the one run here; its body is answered as it says.
        readme = (REPO / "README.md").read_text()
        assert "mlflow models serve -m models:/quickstart@champion --env-manager local" in readme
        body = re.search(r"/invocations .*? -d '(.*?)'", readme, flags=re.DOTALL)
        assert body is not None, "README: no curl example for /invocations"
        response = httpx.post(f"{url}/invocations", content=body.group(1).encode(), timeout=60,
                              headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 200, response.text
        [answer] = response.json()["predictions"]
        assert sorted(answer) == ["label", "probabilities"]
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-6)

        # The pydantic type hint validates the request: a feature list that is not numbers.
        bad = {**GOOD, "features": {**GOOD["features"], "part_pt": ["a", "b", "c"]}}
        response = httpx.post(f"{url}/invocations", json={"inputs": [bad]}, timeout=60)
        assert response.status_code == 400
        assert "part_pt" in response.json()["message"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# Loads the registered model as `mlflow models serve` does and predicts one set, recording
# every `import` statement that setpipe's own code executes (already loaded or not).
IMPORTS = """
import builtins, json, sys
seen = set()
real_import = builtins.__import__
def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.split(".")[0] == "setpipe":
        seen.add(name.split(".")[0])
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = recording_import
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(json.loads(sys.argv[2]))
assert "setpipe.tracking.pyfunc" in sys.modules, "the model code did not run"
print(json.dumps(sorted(seen)))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(requirements: list[str]) -> set[str]:
    """The distributions ``pip install -r`` of ``requirements`` brings (no extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    pending = [_canonical(Requirement(r).name) for r in requirements]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in needs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(_canonical(req.name))
    return seen


def test_logged_requirements_cover_every_import_of_the_model(registered: Registered) -> None:
    """`mlflow models serve` builds the model's environment from its requirements.txt with
    pip (setpipe itself travels as code_paths). Every requirement must be installable from
    PyPI (a local version such as torch==2.13.0+cpu is not there), and every third-party
    module setpipe's code imports while the model loads and predicts must come from a
    requirement or one of their dependencies."""
    import mlflow
    from packaging.version import Version

    uri = f"models:/{registered.name}/{registered.version}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.tracking_uri}
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS, uri, json.dumps([GOOD])],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"torch", "numpy", "pydantic", "mlflow"} <= set(imported)  # the hook saw them

    mlflow.set_tracking_uri(registered.tracking_uri)
    lines = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]
    pins = dict(r.split("==", 1) for r in requirements)
    assert len(pins) == len(requirements), requirements  # each one pinned as trained
    local = {name: v for name, v in pins.items() if Version(v).local is not None}
    assert local == {}, f"local versions are not on PyPI: {requirements}"
    available = _with_dependencies(requirements)
    owners = importlib.metadata.packages_distributions()
    third_party = [m for m in imported if m not in sys.stdlib_module_names and m != "setpipe"]
    missing = {
        m: owners.get(m, ["no installed distribution"])
        for m in third_party
        if not {_canonical(d) for d in owners.get(m, [])} & available
    }
    assert missing == {}, f"imported by setpipe but not in {requirements} or their dependencies"
