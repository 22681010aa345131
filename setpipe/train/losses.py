"""The training objective of each task, on SetModel.forward outputs and a SetBatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from setpipe.data.batch import SetBatch
from setpipe.models.masked import masked_loss


def listwise_softmax_loss(scores: torch.Tensor, batch: SetBatch) -> torch.Tensor:
    """ListNet loss: cross-entropy between rel/sum(rel) and the softmax of the set's scores.

    scores [E] element scores; batch.element_targets [E] relevance >= 0. Averaged over the
    sets that hold a relevant element (a set with none carries no ranking signal).
    """
    set_index = batch.set_index()
    num_sets = batch.num_sets
    scores = scores.float()
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
    return per_set[has_relevant].mean()


def task_loss(task: str, outputs: torch.Tensor, batch: SetBatch) -> torch.Tensor:
    """Mean loss over the batch's sets: cross-entropy, MSE, or the listwise loss."""
    if task == "pretrain_masked":
        return masked_loss(outputs)  # its targets are the elements: no label, no set weight
    if task == "classify":
        return F.cross_entropy(outputs.float(), batch.targets.long())
    if task == "regress":
        return F.mse_loss(outputs.float().reshape(-1), batch.targets.float())
    return listwise_softmax_loss(outputs, batch)
