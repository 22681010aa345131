"""Helpers shared by the serving tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from setpipe.spec.models import JobSpec

REPO = Path(__file__).resolve().parents[2]

# Seconds a client has to send its request (HAProxy and the replica); low so the slow-client
# tests see it fire, far above what a loopback upload of the biggest test body takes.
TEST_REQUEST_TIMEOUT_S = 5.0
# Small on purpose: the serving tests need a registered model, not a good one.
TEST_LIMITS = {
    "max_sets": 8,
    "max_elements_per_set": 20_000,
    "max_body_bytes": 2_000_000,
    "request_timeout_s": TEST_REQUEST_TIMEOUT_S,
}
# Below the size of the big test set, so it is chunked instead of run whole.
TEST_ELEMENT_BUDGET = 512


@dataclass(frozen=True)
class Registered:
    job: JobSpec
    tracking_uri: str
    name: str
    version: str
    data_dir: Path

    def train_again(self, seed: int) -> str:
        """Train and register another version (the alias may or may not move)."""
        from setpipe.pipeline import run

        job = self.job.model_copy(deep=True)
        job.train.seed = seed
        return str(run(job, progress=False).version)


@dataclass(frozen=True)
class Server:
    url: str
    registered: Registered

    def post(self, payload: dict | bytes, **kwargs) -> httpx.Response:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return httpx.post(
            f"{self.url}/predict",
            content=content,
            headers={"content-type": "application/json"},
            timeout=60,
            **kwargs,
        )
