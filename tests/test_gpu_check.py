"""bench/gpu_check.py runs where Ray and MLflow are absent (the GPU machine has neither).

The script is run in a child interpreter whose imports of ray and mlflow fail, as they
would on that machine: without CUDA it must print ``RESULT gpu=none`` and exit 0 (what CI
sees), and with ``--device cpu`` it must run every section end to end on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
ABSENT = ("ray", "mlflow")

# The child: a meta-path finder that refuses ray and mlflow, then the script as __main__.
RUNNER = f"""
import importlib.abc, runpy, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")

sys.meta_path.insert(0, Absent())
sys.path.insert(0, {str(SCRIPT.parent)!r})
sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def run_without_ray(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), proc.stdout
    return dict(item.split("=", 1) for item in last.split()[1:])


def test_the_blocker_really_blocks() -> None:
    """The control: a script importing ray fails under the same runner."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER.replace(repr(str(SCRIPT)), repr("/dev/null")) + "\nimport ray\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "absent on the GPU machine" in proc.stderr


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="a CUDA machine runs the real check"
)
def test_without_cuda_it_says_gpu_none() -> None:
    assert result_of(run_without_ray(timeout=300)) == {"gpu": "none"}


def test_every_section_runs_on_the_cpu_without_ray_or_mlflow() -> None:
    figures = result_of(run_without_ray("--device", "cpu", "--seconds", "0.5", timeout=900))
    assert figures["gpu"] == "cpu"
    # Float64 on the CPU: chunked equals whole, and the estimator is exactly unbiased.
    assert float(figures["mbc_partition_max_err"]) <= 1e-10
    assert float(figures["estimator_bias_max"]) <= 1e-10
    for model in ("pfn", "umbc", "st"):
        assert float(figures[f"{model}_sets_s"]) > 0
        assert float(figures[f"{model}_fed_sets_s"]) > 0
    assert float(figures["input_mb_1e5"]) == pytest.approx(1e5 * 16 / 2**20, abs=0.05)
