"""The LR schedule, pinned at every step (warmup 3 steps, 8 steps in all, floor 0.1)."""

from __future__ import annotations

import pytest
import torch

from setpipe.spec.models import LRScheduleSpec, OptimizerSpec
from setpipe.train.optim import build_optimizer, build_scheduler, lr_factor

EXPECTED = {
    # step: 0     1       2    3    4             5             6             7             8
    "cosine": [1 / 3, 2 / 3, 1.0, 1.0, 0.9140576475, 0.6890576475, 0.4109423525, 0.1859423525, 0.1],
    "linear": [1 / 3, 2 / 3, 1.0, 1.0, 0.82, 0.64, 0.46, 0.28, 0.1],
    "constant": [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_lr_factor_every_step(kind: str) -> None:
    spec = LRScheduleSpec(kind=kind, warmup_steps=3, min_lr_ratio=0.1)
    got = [lr_factor(step, 8, spec) for step in range(9)]
    assert got == pytest.approx(EXPECTED[kind], abs=1e-10)


def test_scheduler_drives_optimizer_lr() -> None:
    """The lr an optimizer step uses is peak * factor(step), stepped once per optimizer step."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimizerSpec(name="sgd", lr=0.5))
    scheduler = build_scheduler(
        optimizer, 8, LRScheduleSpec(kind="linear", warmup_steps=3, min_lr_ratio=0.1)
    )
    seen = []
    for _ in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5 * f for f in EXPECTED["linear"]], abs=1e-12)


def test_optimizer_kinds() -> None:
    param = [torch.nn.Parameter(torch.zeros(1))]
    adamw = build_optimizer(param, OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.1))
    sgd = build_optimizer(param, OptimizerSpec(name="sgd", lr=0.01, momentum=0.8))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.1
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.8
    assert type(build_optimizer(param, OptimizerSpec(name="adam"))) is torch.optim.Adam
