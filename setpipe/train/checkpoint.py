"""Checkpoint files: tensors through torch.save (loaded with weights_only=True), the rest JSON.

One checkpoint directory holds:
  weights.pt        model state_dict (the un-wrapped SetModel's keys)
  best_weights.pt   state_dict of the best validation epoch so far (when there is one;
                    with train.ema, the average's)
  ema.pt            with train.ema: {"weights": the average's state_dict, "updates": count}
  optimizer.pt      optimizer state_dict
  scheduler.pt      LR scheduler state_dict
  rng.pt            torch CPU (+ CUDA) generator states, estimator generator state
  loop.json         epoch, global step, history, early-stopping counters, python/numpy RNG
  job.yaml          the resolved job
  transforms.json   the fitted feature transforms
Nothing else is pickled, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

WEIGHTS = "weights.pt"
BEST_WEIGHTS = "best_weights.pt"
EMA_WEIGHTS = "ema.pt"


def _save(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensor states, JSON states) of every RNG the loop draws from."""
    tensors = {"torch": torch.get_rng_state(), "estimator": generator.get_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(
    tensors: dict[str, torch.Tensor], states: dict[str, Any], generator: torch.Generator
) -> None:
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["estimator"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


def save_checkpoint(
    directory: str | Path,
    *,
    model: dict[str, torch.Tensor],
    best_model: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
    ema: dict[str, Any] | None = None,
    scheduler: dict[str, Any],
    generator: torch.Generator,
    loop: dict[str, Any],
    job_yaml: str,
    transforms: dict[str, Any],
) -> Path:
    """Write one checkpoint into ``directory`` (created); returns it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    _save(model, path / WEIGHTS)
    if best_model is not None:
        _save(best_model, path / BEST_WEIGHTS)
    if ema is not None:
        _save(ema, path / EMA_WEIGHTS)
    _save(optimizer, path / "optimizer.pt")
    _save(scheduler, path / "scheduler.pt")
    tensors, states = rng_state(generator)
    _save(tensors, path / "rng.pt")
    (path / "loop.json").write_text(json.dumps({**loop, "rng": states}, indent=1))
    (path / "job.yaml").write_text(job_yaml)
    (path / "transforms.json").write_text(json.dumps(transforms, indent=1))
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Everything save_checkpoint wrote, as tensors, dicts and strings."""
    path = Path(directory)
    best = path / BEST_WEIGHTS
    ema = path / EMA_WEIGHTS
    return {
        "model": _load(path / WEIGHTS),
        "best_model": _load(best) if best.exists() else None,
        "ema": _load(ema) if ema.exists() else None,
        "optimizer": _load(path / "optimizer.pt"),
        "scheduler": _load(path / "scheduler.pt"),
        "rng": _load(path / "rng.pt"),
        "loop": json.loads((path / "loop.json").read_text()),
        "job_yaml": (path / "job.yaml").read_text(),
        "transforms": json.loads((path / "transforms.json").read_text()),
    }


def latest_local_checkpoint(root: str | Path) -> Path | None:
    """The newest ``epoch_NNNNNN`` directory under ``root`` (in-process runs keep their own)."""
    root = Path(root)
    found = sorted(p for p in root.glob("epoch_*") if (p / "loop.json").exists())
    return found[-1] if found else None
