"""What the bench scripts share: the repo path, a local Ray, process memory, the RESULT line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # read by Ray at import: set it first


def start_ray(**init_kwargs: Any) -> None:
    """A local Ray for one bench: no dashboard, workers' logs not echoed, and the data
    context ``setpipe run`` uses (``setpipe.pipeline.connect``)."""
    import ray

    from setpipe.pipeline import connect

    ray.init(include_dashboard=False, log_to_driver=False, **init_kwargs)
    connect(None)


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of ``pid`` (default: this process) in MiB, from /proc."""
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def result_line(figures: dict[str, Any]) -> str:
    """``RESULT name=value ...``: the one line every bench ends with (floats to 4 digits)."""
    shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    return "RESULT " + " ".join(shown)
