"""`mlflow models serve` of the same registered model (the pydantic-typed pyfunc), over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from serve_helpers import Registered

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
