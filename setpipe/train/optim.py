"""Optimizer and learning-rate schedule from the job's train section."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from setpipe.spec.models import LRScheduleSpec, OptimizerSpec


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict[str, Any]], spec: OptimizerSpec
) -> torch.optim.Optimizer:
    """The job's optimizer over ``params``: parameters, or param groups each with an
    ``lr_multiplier`` (``setpipe.train.finetune.param_groups``) whose lr is spec.lr times it."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [group | {"lr": spec.lr * group.get("lr_multiplier", 1.0)} for group in params]
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        # Adam's weight_decay is L2 in the gradient (coupled), unlike AdamW's.
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def lr_factor(step: int, total_steps: int, spec: LRScheduleSpec) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup: (step + 1) / warmup_steps, so the first step already moves and step
    warmup_steps - 1 runs at the peak. Then decay over the remaining steps from 1 to
    min_lr_ratio (cosine or linear), or stay at 1 (constant). Past total_steps (the
    step count is an estimate, see trainer.estimate_steps) the final value holds.
    """
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / decay_steps)
    low = spec.min_lr_ratio
    if spec.kind == "cosine":
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + (1.0 - low) * (1.0 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, spec: LRScheduleSpec
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; its state_dict is checkpointed."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, spec)
    )
