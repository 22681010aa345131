"""Training on Ray Train: the per-worker loop, the TorchTrainer setup, checkpoints, metrics.

``fit`` and ``TrainOutcome`` are resolved on first use, so the parts a training step needs
(losses, optim, metrics) import without Ray or MLflow: bench/gpu_check.py runs them on a
machine that has neither (tests/test_gpu_check.py checks the boundary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setpipe.train.trainer import TrainOutcome, fit

__all__ = ["TrainOutcome", "fit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from setpipe.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'setpipe.train' has no attribute {name!r}")
