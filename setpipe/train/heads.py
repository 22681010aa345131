"""Several heads on one encoder (``model.heads``): the loss and the evaluation.

Both compose the single-head pieces: each head's loss is ``task_loss`` on a view of the
batch whose targets are that head's column, and each head's figures come from its own
``Evaluation``, reported as ``<split>_<head>_<metric>`` (val_qg_auc, val_mass_rmse).

- loss = Σ loss_weight · head loss (``<split>_loss`` is this total); a regress head with
  ``offset``/``scale`` has its MSE in units of (target - offset) / scale, so a target of
  order 500 ± 15 does not drown a cross-entropy of order 1;
- ``SetBatch.targets`` is [B, K] float32 for several heads: column k is the k-th
  classify/regress head's target in ``model.heads`` order (a rank head's relevance is
  ``element_targets``).

A job with ``model.task`` (one head) goes straight to ``task_loss`` and ``Evaluation``:
nothing here changes what it computes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from setpipe.data.batch import SetBatch
from setpipe.spec.models import ModelSpec, TaskHeadSpec
from setpipe.train.losses import task_loss
from setpipe.train.metrics import Evaluation

Outputs = torch.Tensor | dict[str, torch.Tensor]


def head_batch(batch: SetBatch, heads: list[TaskHeadSpec], name: str) -> SetBatch:
    """``batch`` as head ``name`` sees it: targets [B] its own column (class ids as int64)."""
    set_heads = [h for h in heads if h.task != "rank"]
    head = next(h for h in heads if h.name == name)
    if head.task == "rank" or batch.targets is None:
        return replace(batch, targets=None)
    column = batch.targets[:, [h.name for h in set_heads].index(name)]
    return replace(batch, targets=column.long() if head.task == "classify" else column)


def head_losses(
    heads: list[TaskHeadSpec], outputs: dict[str, torch.Tensor], batch: SetBatch
) -> dict[str, torch.Tensor]:
    """Each head's mean loss over the batch's sets (unweighted; regress in scaled units)."""
    losses = {}
    for head in heads:
        loss = task_loss(head.task, outputs[head.name], head_batch(batch, heads, head.name))
        losses[head.name] = loss / head.scale**2 if head.task == "regress" else loss
    return losses


def model_loss(model: ModelSpec, outputs: Outputs, batch: SetBatch) -> torch.Tensor:
    """The training objective: ``task_loss`` for one head; Σ loss_weight · head loss for
    several."""
    if model.heads is None:
        assert isinstance(outputs, torch.Tensor) and model.task is not None
        return task_loss(model.task, outputs, batch)
    assert isinstance(outputs, dict)
    losses = head_losses(model.heads, outputs, batch)
    return sum(  # type: ignore[return-value]
        (head.loss_weight * losses[head.name] for head in model.heads),
        start=torch.zeros((), device=batch.values.device),
    )


class HeadsEvaluation:
    """``Evaluation`` for several heads: one per head, the total loss beside them.

    Speaks Evaluation's interface (add, gather, compute, counts, predictions and the
    counters the loop reads), so the loop does not tell the two apart.
    """

    def __init__(self, heads: list[TaskHeadSpec], *, sigma: bool = False) -> None:
        self.heads = heads
        self.per_head = {
            h.name: Evaluation(h.task, background_class=h.background_class, sigma=sigma)
            for h in heads
        }
        self.loss_sum = 0.0
        self.sets = 0
        self.skipped_rows = 0
        self.extra: dict[str, float] = {}
        """Figures computed beside the outputs, already over all ranks (``Evaluation.extra``)."""
        self.non_finite_sets = 0
        """Sets for which any head's output held a NaN or an infinity."""

    def add(self, outputs: dict[str, torch.Tensor], batch: SetBatch, loss: float) -> None:
        """outputs as SetModel.forward returns them; loss = the batch's total (weighted) loss."""
        n = batch.num_sets
        self.loss_sum += loss * n
        self.sets += n
        with torch.no_grad():
            losses = head_losses(self.heads, outputs, batch)
        bad = torch.zeros(n, dtype=torch.bool)
        for head in self.heads:
            out = outputs[head.name].detach().float().cpu()
            evaluation = self.per_head[head.name]
            evaluation.add(out, head_batch(batch, self.heads, head.name), float(losses[head.name]))
            finite = torch.isfinite(out)
            if head.task == "rank":
                bad.index_fill_(0, batch.set_index().cpu()[~finite.reshape(-1)], True)
            else:
                bad |= ~finite.reshape(n, -1).all(dim=1)
        self.non_finite_sets += int(bad.sum())

    def gather(self) -> None:
        """Pull every rank's share in, so all ranks compute the same figures."""
        import torch.distributed as dist

        for evaluation in self.per_head.values():
            evaluation.gather()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mine = (self.loss_sum, self.sets, self.skipped_rows, self.non_finite_sets)
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        self.loss_sum = sum(e[0] for e in everyone)
        self.sets = sum(e[1] for e in everyone)
        self.skipped_rows = sum(e[2] for e in everyone)
        self.non_finite_sets = sum(e[3] for e in everyone)

    def predictions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """None: the ROC plot and the bootstrap gate read one classifier's outputs."""
        return None

    def compute(self, prefix: str) -> dict[str, float]:
        """``<prefix>_loss`` (the weighted total) and ``<prefix>_<head>_<name>`` per head."""
        out = {f"{prefix}_loss": self.loss_sum / self.sets if self.sets else math.nan}
        for name, evaluation in self.per_head.items():
            out |= evaluation.compute(f"{prefix}_{name}")
        return out

    def counts(self, prefix: str) -> dict[str, float]:
        """``<prefix>_skipped_rows``: the bad rows the reader dropped from this split; and
        ``<prefix>_<name>`` for each figure in ``extra``."""
        extra = {f"{prefix}_{name}": value for name, value in self.extra.items()}
        return {f"{prefix}_skipped_rows": float(self.skipped_rows)} | extra


def evaluation_for(model: ModelSpec, *, sigma: bool = False) -> Evaluation | HeadsEvaluation:
    """The accumulator for one split of a job: ``Evaluation`` for one head, else per head."""
    if model.heads is None:
        assert model.task is not None
        return Evaluation(model.task, background_class=model.background_class, sigma=sigma)
    return HeadsEvaluation(model.heads, sigma=sigma)
