"""Training-time augmentation: random symmetries of each set, drawn per set.

Applied to training batches after the fitted transforms (``data.augment`` in the job),
never to validation, test or serving, so a model's predictions do not depend on it.
``rotate`` turns the plane of two features by one angle per set (a jet's particles
about its axis in centred rapidity and azimuth); ``reflect`` flips a feature's sign
per set. Draws come from the caller's generator, so a seeded epoch repeats.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from setpipe.data.batch import SetBatch
from setpipe.spec.models import AugmentOp, RotateAugment


def augment_batch(
    batch: SetBatch,
    ops: list[AugmentOp],
    feature_names: list[str],
    generator: torch.Generator | None = None,
) -> SetBatch:
    """``batch`` with ``ops`` applied per set (a new values tensor; the input is untouched)."""
    if not ops or batch.num_elements == 0:
        return batch
    values = batch.values.clone()
    set_index = batch.set_index()
    column = {name: j for j, name in enumerate(feature_names)}

    def per_set() -> torch.Tensor:
        draw = torch.rand(batch.num_sets, generator=generator, dtype=torch.float64)
        return draw.to(device=values.device, dtype=values.dtype)[set_index]

    for op in ops:
        if isinstance(op, RotateAugment):
            i, j = column[op.features[0]], column[op.features[1]]
            angle = per_set() * (2 * math.pi)
            cos, sin = torch.cos(angle), torch.sin(angle)
            x, y = values[:, i].clone(), values[:, j]
            values[:, i] = cos * x - sin * y
            values[:, j] = sin * x + cos * y
        else:
            for name in op.features:
                j = column[name]
                values[:, j] = torch.where(per_set() < 0.5, -values[:, j], values[:, j])
    return replace(batch, values=values)
