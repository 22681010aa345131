"""Helpers for the jobs tests: start and stop Ray nodes (see conftest.ray_head), job files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from setpipe._net import free_port

VENV_BIN = Path(sys.executable).parent
HEAD_RESOURCE = "setpipe_slot"  # one per node: a 2-worker run must use both nodes


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard, http://127.0.0.1:PORT
    gcs: str  # 127.0.0.1:PORT, for `ray start --address`
    token: str
    temp_dir: Path
    env: dict[str, str]  # the environment the head runs with (PATH with this venv first)


def ports(*names: str) -> list[str]:
    args = []
    for name in names:
        args += [f"--{name}", str(free_port())]
    return args


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own session: stopped by session id, nothing else
    )


def stop_node(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the `ray start` process, then SIGKILL whatever of its session is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    for pid in _session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and int(entry.name) != sid:
            pids.append(int(entry.name))
    return pids


def wait_dashboard(address: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    request = urllib.request.Request(
        f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 600  # `ray start` alone can take minutes on a contended box
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(
        f"the Ray dashboard at {address} did not come up:\n{log.read_text()[-3000:]}"
    )


def write_data(path: Path, rows: int = 4) -> Path:
    """A real Parquet file of ``rows`` jets (its content only matters to the fingerprint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "part_pt": [[1.0, 2.0]] * rows,
            "part_eta": [[0.1, 0.2]] * rows,
            "label": [0, 1] * (rows // 2),
        }
    )
    pq.write_table(table, path)
    return path


def write_job(path: Path, name: str, data: Path, schedule: str = "") -> Path:
    """A job YAML named ``name`` reading ``data``; ``schedule`` is extra YAML under schedule:."""
    text = f"""name: {name}
workdir: {path.parent / "work"}
data:
  train: {data}
  elements: {{layout: parallel, columns: [part_pt, part_eta]}}
  label: label
model:
  task: classify
  num_classes: 2
  encoder: {{kind: deepsets, phi: [8], rho: [8]}}
train: {{epochs: 1, workers: 0}}
"""
    if schedule:
        text += "schedule:\n" + "".join(f"  {line}\n" for line in schedule.strip().splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
