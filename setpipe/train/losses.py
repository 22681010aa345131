"""The training objective of each task, on SetModel.forward outputs and a SetBatch.

With set weights w (``SetBatch.weights``: data.weight x class weight x reweight factor) each
loss is the weighted mean sum(w * l) / sum(w) over the sets it averages over; a batch whose
weights sum to zero has loss 0 (with its graph kept).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from setpipe.data.batch import SetBatch
from setpipe.models.masked import masked_loss


def _wide(outputs: torch.Tensor) -> torch.Tensor:
    """float32 for the loss (autocast's half outputs widened), float64 kept as it is (the
    float64 tests compare training steps to 1e-12)."""
    return outputs if outputs.dtype == torch.float64 else outputs.float()


def listwise_softmax_loss(
    scores: torch.Tensor, batch: SetBatch, *, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """ListNet loss: cross-entropy between rel/sum(rel) and the softmax of the set's scores.

    scores [E] element scores; batch.element_targets [E] relevance >= 0. Averaged over the
    sets that hold a relevant element (a set with none carries no ranking signal), weighted
    by ``weights`` [B] when given.
    """
    set_index = batch.set_index()
    num_sets = batch.num_sets
    scores = _wide(scores)
    # Per-set log-softmax, shifted by the set max so exp() cannot overflow.
    set_max = scores.new_full((num_sets,), -torch.inf).scatter_reduce(
        0, set_index, scores.detach(), reduce="amax", include_self=True
    )
    shifted = scores - set_max[set_index]
    log_norm = torch.log(scores.new_zeros(num_sets).index_add(0, set_index, shifted.exp()))
    log_p = shifted - log_norm[set_index]
    relevance = batch.element_targets.float().clamp_min(0)
    rel_sum = relevance.new_zeros(num_sets).index_add(0, set_index, relevance)
    target = relevance / rel_sum.clamp_min(1e-12)[set_index]
    per_set = -scores.new_zeros(num_sets).index_add(0, set_index, target * log_p)
    has_relevant = rel_sum > 0
    if not bool(has_relevant.any()):
        return (scores * 0.0).sum()  # keeps the graph (DDP expects a gradient) at zero
    if weights is None:
        return per_set[has_relevant].mean()
    return weighted_mean(per_set[has_relevant], weights[has_relevant], scores)


def weighted_mean(
    per_set: torch.Tensor, weights: torch.Tensor, outputs: torch.Tensor
) -> torch.Tensor:
    """sum(w * l) / sum(w) in float32 at least; 0 (graph kept) when sum(w) is 0."""
    w = weights.to(per_set.dtype)
    total = w.sum()
    if float(total) <= 0:
        return (_wide(outputs) * 0.0).sum()
    return (w * per_set).sum() / total


def loss_sets(task: str, batch: SetBatch, *, weights: torch.Tensor | None = None) -> float:
    """What ``task_loss`` divides by: the sets it averages over (for the listwise loss those
    holding a relevant element), or their weights' sum. Accumulating batches, batch i's loss
    times loss_sets_i / sum(loss_sets) sums to the loss of the combined batch."""
    counted = torch.ones(batch.num_sets, device=batch.offsets.device)
    if task == "rank":
        relevance = batch.element_targets.float().clamp_min(0)
        per_set = relevance.new_zeros(batch.num_sets).index_add(0, batch.set_index(), relevance)
        counted = (per_set > 0).float()
    if weights is not None:
        counted = counted * weights.float()
    return float(counted.sum())


def task_loss(
    task: str,
    outputs: torch.Tensor,
    batch: SetBatch,
    *,
    weights: torch.Tensor | Literal["batch"] | None = "batch",
) -> torch.Tensor:
    """Mean loss over the batch's sets: cross-entropy, MSE, or the listwise loss; with set
    weights [B] the weighted mean sum(w * l) / sum(w). ``weights``: "batch" (the default)
    takes ``batch.weights`` (None when the job declares no weights), None asks for the
    unweighted mean, a tensor gives them."""
    if isinstance(weights, str):
        weights = batch.weights
    if task == "pretrain_masked":
        return masked_loss(outputs)  # its targets are the elements: no label, no set weight
    if task == "classify":
        if weights is None:
            return F.cross_entropy(_wide(outputs), batch.targets.long())
        per_set = F.cross_entropy(_wide(outputs), batch.targets.long(), reduction="none")
        return weighted_mean(per_set, weights, outputs)
    if task == "regress":
        if weights is None:
            return F.mse_loss(_wide(outputs).reshape(-1), batch.targets.float())
        per_set = F.mse_loss(_wide(outputs).reshape(-1), batch.targets.float(), reduction="none")
        return weighted_mean(per_set, weights, outputs)
    return listwise_softmax_loss(outputs, batch, weights=weights)
