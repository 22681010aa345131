"""An exponential moving average (EMA) of the model's weights, as the evaluated model.

After every optimizer step each floating-point parameter's average moves towards the
trained value, ``ema <- d * ema + (1 - d) * param`` (Polyak averaging as in timm's
ModelEmaV3 and the Heidelberg tagging / lorentz-gatr trainers); buffers (running
statistics, integer counters) are copied from the trained model, not averaged: they are
not optimised, and an integer cannot be averaged. Every rank updates its own copy from
weights that DDP keeps identical, so the averages agree without communication.

The decay of update ``n`` (1-based, counting optimizer steps) is ``ema_decay(n, spec)``:
0 (a plain copy) for the first ``start_step`` steps, then ``decay``, or with ``warmup``
``min(decay, (1 + k) / (10 + k))`` for the k-th averaged step (torch_ema's num_updates
rule), so an early average is not dominated by the random initial weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from setpipe.spec.models import EMASpec


def ema_decay(update: int, spec: EMASpec) -> float:
    """Decay of the ``update``-th EMA update (1-based optimizer step count)."""
    averaged = update - spec.start_step  # 1 for the first averaged step
    if averaged <= 0:
        return 0.0
    if spec.warmup:
        return min(spec.decay, (1.0 + averaged) / (10.0 + averaged))
    return spec.decay


class EMA:
    """The averaged copy of a model: ``model`` is an ``nn.Module`` holding the averages."""

    def __init__(self, model: nn.Module, spec: EMASpec) -> None:
        self.spec = spec
        self.model = copy.deepcopy(model).eval()
        """The average; evaluated, checkpointed as the chosen weights, registered."""
        self.model.requires_grad_(False)
        self.updates = 0
        """Optimizer steps averaged in so far (with start_step, copies count too)."""

    @torch.no_grad()
    def update(self, trained: nn.Module) -> None:
        """Move the average towards ``trained`` (after an optimizer step)."""
        self.updates += 1
        decay = ema_decay(self.updates, self.spec)
        averages = dict(self.model.named_parameters())
        for name, param in trained.named_parameters():
            average = averages[name]
            if average.is_floating_point():
                # lerp_: average + (1 - d) * (param - average), one rounding.
                average.lerp_(param.detach(), 1.0 - decay)
            else:
                average.copy_(param.detach())
        buffers = dict(self.model.named_buffers())
        for name, buffer in trained.named_buffers():
            buffers[name].copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        """For the checkpoint's ema.pt: the averaged state dict (on the CPU) and the count."""
        weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return {"weights": weights, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
