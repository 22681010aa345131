"""DeepSets / Particle Flow Network: rho(pool_i phi(x_i)) (Zaheer et al. 2017; Komiske et al. 2019).

State per set: ``sum`` [B, D] and ``count`` [B, 1] (int64, exact at any size) for sum
and mean pooling; or ``max`` [B, D] and ``max_count`` [B, D] (int64: how many elements
attain each maximum) for max pooling, where the empty state is -inf and an empty set
pools to 0.

LCM pooling (``pooling: lcm``, setpipe/models/lcm.py): ``lcm`` [B, D], the set's balanced
tree under a learned commutative operator, and ``count`` [B, 1]; chunks are folded left to
right. It is mini-batch consistent only as far as the operator is associative:
``partition_error`` measures how far, and the training loop logs it.

Max pooling's gradient with ties: the whole set's amax gives each of k tied elements
1/k of the gradient. Merging two partial maxima that tie gives each side its share of
the k (c_a/k and c_b/k), so every tied element gets 1/k whatever the chunking, and the
gradient estimator (which merges a subset's state with the rest's) stays unbiased.
``torch.maximum`` would split 1/2 and 1/2 whatever the counts.
"""

from __future__ import annotations

from typing import Literal

import torch

from setpipe.data.batch import SetBatch
from setpipe.models.lcm import LCMOperator, assoc_loss, merge_states, tree_reduce
from setpipe.models.protocol import MBCEncoder, MBCState, mlp, require_context, state_dtype
from setpipe.models.segment import segment_sum


class DeepSets(MBCEncoder):
    def __init__(
        self,
        num_features: int,
        phi: list[int],
        rho: list[int],
        pooling: Literal["sum", "mean", "max", "lcm"] = "sum",
        num_context: int = 0,
        *,
        lcm_hidden: list[int] | None = None,
        lcm_assoc_weight: float = 0.0,
        lcm_partition_chunks: int = 3,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.width = phi[-1]
        self.phi = mlp([num_features, *phi])
        self.rho = mlp([self.width + num_context, *rho])
        self.num_context = num_context
        self.out_dim = rho[-1] if rho else self.width + num_context
        keys = {"max": ("max",), "lcm": ("lcm",)}
        self.partial_keys = keys.get(pooling, ("sum",))
        self.lcm = LCMOperator(self.width, lcm_hidden or [128]) if pooling == "lcm" else None
        self.lcm_assoc_weight = lcm_assoc_weight
        self.lcm_partition_chunks = lcm_partition_chunks
        self.logs_partition_error = pooling == "lcm"
        """Evaluation reports ``<split>_lcm_partition_error`` (``partition_error``)."""
        self._aux_loss: torch.Tensor | None = None

    def init_state(
        self,
        num_sets: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> MBCState:
        if self.pooling == "max":
            return {
                "max": torch.full((num_sets, self.width), -torch.inf, device=device, dtype=dtype),
                "max_count": torch.zeros(num_sets, self.width, device=device, dtype=torch.long),
            }
        if self.pooling == "lcm":
            return {
                "lcm": torch.zeros(num_sets, self.width, device=device, dtype=dtype),
                "count": torch.zeros(num_sets, 1, device=device, dtype=torch.long),
            }
        return {
            "sum": torch.zeros(num_sets, self.width, device=device, dtype=dtype),
            "count": torch.zeros(num_sets, 1, device=device, dtype=torch.long),
        }

    def update(self, state: MBCState, values: torch.Tensor, set_index: torch.Tensor) -> MBCState:
        if self.pooling == "max":
            acc = state["max"]
            h = self.phi(values).to(acc.dtype)
            # include_self=False: rows without elements in this chunk stay -inf, so the
            # chunk maximum never mixes with a placeholder value.
            chunk = torch.full_like(acc, -torch.inf).scatter_reduce(
                0, set_index[:, None].expand_as(h), h, reduce="amax", include_self=False
            )
            hits = (h.detach() == chunk.detach()[set_index]).long()
            ties = torch.zeros_like(state["max_count"]).index_add_(0, set_index, hits)
            return self.merge(state, {"max": chunk, "max_count": ties})
        if self.lcm is not None:
            return self._update_lcm(state, values, set_index)
        acc = state["sum"]
        h = self.phi(values).to(acc.dtype)
        count = torch.bincount(set_index, minlength=acc.shape[0])
        return {
            "sum": acc + segment_sum(h, set_index, acc.shape[0], count),
            "count": state["count"] + count[:, None],
        }

    def _update_lcm(
        self, state: MBCState, values: torch.Tensor, set_index: torch.Tensor
    ) -> MBCState:
        assert self.lcm is not None
        acc = state["lcm"]
        h = self.phi(values).to(acc.dtype)
        tree, count, nodes = tree_reduce(self.lcm, h, set_index, acc.shape[0])
        if self.training and self.lcm_assoc_weight > 0 and torch.is_grad_enabled():
            loss = self.lcm_assoc_weight * assoc_loss(self.lcm, torch.cat([h, *nodes]))
            self._aux_loss = loss if self._aux_loss is None else self._aux_loss + loss
        return self.merge(state, {"lcm": tree, "count": count[:, None]})

    def take_aux_loss(self) -> torch.Tensor | None:
        """The regulariser terms the last training passes added (lcm_assoc_weight × the
        associativity loss, summed over ``update`` calls), then forgets them; None if none.
        The training step adds it to the task loss."""
        loss, self._aux_loss = self._aux_loss, None
        return loss

    @torch.no_grad()
    def partition_error(self, batch: SetBatch) -> torch.Tensor:
        """Per set with at least 2 elements: |chunked - whole| / |whole| of the pooled
        vector, chunked = the set cut into ``lcm_partition_chunks`` contiguous chunks (sizes
        differing by at most one) folded left to right. 0 for exactly associative pooling."""
        if self.lcm is None:
            raise ValueError(f"partition_error is for pooling lcm, not {self.pooling}")
        dtype = state_dtype(batch.values.dtype)
        device = batch.values.device
        set_index = batch.set_index()
        whole = self.update(self.init_state(batch.num_sets, device, dtype), batch.values, set_index)
        sizes = batch.sizes()
        pos = torch.arange(batch.num_elements, device=device) - batch.offsets[set_index]
        k = self.lcm_partition_chunks
        part = (pos * k) // sizes[set_index]
        state = self.init_state(batch.num_sets, device, dtype)
        for j in range(k):
            keep = part == j
            state = self.update(state, batch.values[keep], set_index[keep])
        a, b = whole["lcm"], state["lcm"]
        error = (b - a).norm(dim=1) / a.norm(dim=1).clamp_min(torch.finfo(a.dtype).tiny)
        return error[sizes >= 2]

    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        if self.pooling == "max":
            return _merge_max(a, b)
        if self.lcm is not None:
            ca, cb = a["count"][:, 0], b["count"][:, 0]
            value, count = merge_states(self.lcm, a["lcm"], ca, b["lcm"], cb)
            return {"lcm": value, "count": count[:, None]}
        return {"sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}

    def pooled(self, state: MBCState) -> torch.Tensor:
        """The pooled phi features [B, D] before rho."""
        if self.pooling == "max":
            m = state["max"]
            # An empty set (or the identity state) pools to 0, not -inf.
            return torch.where(torch.isinf(m), torch.zeros_like(m), m)
        if self.pooling == "lcm":
            return state["lcm"]
        if self.pooling == "mean":
            return state["sum"] / state["count"].clamp_min(1)
        return state["sum"]

    def finalize(self, state: MBCState, context: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pooled(state)
        if self.num_context:
            pooled = torch.cat([pooled, require_context(context, self.num_context, pooled)], 1)
        return self.rho(pooled)


def _merge_max(a: MBCState, b: MBCState) -> MBCState:
    """The larger maximum per set and feature; where the two tie, both sides, in proportion
    to how many elements of each attain it (the value is unchanged: ma + w·(mb - ma) = ma)."""
    ma, mb, ca, cb = a["max"], b["max"], a["max_count"], b["max_count"]
    tie = (ma == mb) & (ca + cb > 0)  # two empty sides (-inf, no elements) are not a tie
    share_b = cb.to(ma.dtype) / (ca + cb).clamp_min(1).to(ma.dtype)  # int / int is float32
    at_tie = ma + share_b * torch.where(tie, mb - ma, torch.zeros_like(ma))
    return {
        "max": torch.where(ma > mb, ma, torch.where(tie, at_tie, mb)),
        "max_count": torch.where(ma > mb, ca, torch.where(ma < mb, cb, ca + cb)),
    }
