"""Training on Ray Train: the per-worker loop, the TorchTrainer setup, checkpoints, metrics."""

from setpipe.train.trainer import TrainOutcome, fit

__all__ = ["TrainOutcome", "fit"]
