"""DeepSets / Particle Flow Network: rho(pool_i phi(x_i)) (Zaheer et al. 2017; Komiske et al. 2019).

State per set: ``sum`` [B, D] and ``count`` [B, 1] (int64, exact at any size) for sum
and mean pooling; or ``max`` [B, D] and ``max_count`` [B, D] (int64: how many elements
attain each maximum) for max pooling, where the empty state is -inf and an empty set
pools to 0.

Max pooling's gradient with ties: the whole set's amax gives each of k tied elements
1/k of the gradient. Merging two partial maxima that tie gives each side its share of
the k (c_a/k and c_b/k), so every tied element gets 1/k whatever the chunking, and the
gradient estimator (which merges a subset's state with the rest's) stays unbiased.
``torch.maximum`` would split 1/2 and 1/2 whatever the counts.
"""

from __future__ import annotations

from typing import Literal

import torch

from setpipe.models.protocol import MBCEncoder, MBCState, mlp, require_context
from setpipe.models.segment import segment_sum


class DeepSets(MBCEncoder):
    def __init__(
        self,
        num_features: int,
        phi: list[int],
        rho: list[int],
        pooling: Literal["sum", "mean", "max"] = "sum",
        num_context: int = 0,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.width = phi[-1]
        self.phi = mlp([num_features, *phi])
        self.rho = mlp([self.width + num_context, *rho])
        self.num_context = num_context
        self.out_dim = rho[-1] if rho else self.width + num_context
        self.partial_keys = ("max",) if pooling == "max" else ("sum",)

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
        acc = state["sum"]
        h = self.phi(values).to(acc.dtype)
        count = torch.bincount(set_index, minlength=acc.shape[0])
        return {
            "sum": acc + segment_sum(h, set_index, acc.shape[0], count),
            "count": state["count"] + count[:, None],
        }

    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        if self.pooling == "max":
            return _merge_max(a, b)
        return {"sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}

    def pooled(self, state: MBCState) -> torch.Tensor:
        """The pooled phi features [B, D] before rho."""
        if self.pooling == "max":
            m = state["max"]
            # An empty set (or the identity state) pools to 0, not -inf.
            return torch.where(torch.isinf(m), torch.zeros_like(m), m)
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
