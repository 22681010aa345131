"""A weighted sample and one gloo rank of the gather test, in a module light enough for
``torch.multiprocessing.spawn`` to import in each child (no scikit-learn, no Ray)."""

from __future__ import annotations

import numpy as np
import torch

from setpipe.data.batch import SetBatch
from setpipe.train.losses import task_loss
from setpipe.train.metrics import Evaluation


def binary_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [n, 2], labels [n], weights [n]): tied scores, some zero weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1.0 / (1.0 + np.exp(-np.round(rng.normal(1.5 * y, 1.0), 2)))  # rounded: many ties
    w = rng.exponential(1.0, n) * (rng.uniform(size=n) > 0.1)  # some zero weights
    return np.stack([1 - p1, p1], axis=1), y, w


def gather_rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        probabilities, y, w = binary_sample(300, 8)
        logits = torch.from_numpy(np.log(probabilities))
        mine = slice(0, 120) if rank == 0 else slice(120, 300)
        batch = SetBatch.from_sets(
            [torch.zeros(1, 1)] * len(y[mine]),
            targets=torch.from_numpy(y[mine]),
            weights=torch.from_numpy(w[mine]).float(),
        )
        evaluation = Evaluation("classify")
        evaluation.add(logits[mine], batch, float(task_loss("classify", logits[mine], batch)))
        evaluation.gather()
        if rank == 0:
            torch.save(evaluation.compute("val"), out)
    finally:
        dist.destroy_process_group()
