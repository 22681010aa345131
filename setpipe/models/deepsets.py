"""DeepSets / Particle Flow Network: rho(pool_i phi(x_i)) (Zaheer et al. 2017; Komiske et al. 2019).

State per set: ``sum`` [B, D] (sum and mean pooling), ``count`` [B, 1] (mean), or
``max`` [B, D] (max pooling; the empty state is -inf and an empty set pools to 0).
"""

from __future__ import annotations

from typing import Literal

import torch

from setpipe.models.protocol import MBCEncoder, MBCState, mlp, require_context


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
        self.partial_keys = ("max",) if pooling == "max" else ("sum", "count")

    def init_state(
        self,
        num_sets: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> MBCState:
        if self.pooling == "max":
            return {
                "max": torch.full((num_sets, self.width), -torch.inf, device=device, dtype=dtype)
            }
        return {
            "sum": torch.zeros(num_sets, self.width, device=device, dtype=dtype),
            "count": torch.zeros(num_sets, 1, device=device, dtype=dtype),
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
            return {"max": torch.maximum(acc, chunk)}
        acc = state["sum"]
        h = self.phi(values).to(acc.dtype)
        ones = torch.ones(values.shape[0], 1, device=acc.device, dtype=acc.dtype)
        return {
            "sum": acc.index_add(0, set_index, h),
            "count": state["count"].index_add(0, set_index, ones),
        }

    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        if self.pooling == "max":
            return {"max": torch.maximum(a["max"], b["max"])}
        return {"sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}

    def pooled(self, state: MBCState) -> torch.Tensor:
        """The pooled phi features [B, D] before rho."""
        if self.pooling == "max":
            m = state["max"]
            # An empty set (or the identity state) pools to 0, not -inf.
            return torch.where(torch.isinf(m), torch.zeros_like(m), m)
        if self.pooling == "mean":
            return state["sum"] / state["count"].clamp_min(1.0)
        return state["sum"]

    def finalize(self, state: MBCState, context: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pooled(state)
        if self.num_context:
            pooled = torch.cat([pooled, require_context(context, self.num_context, pooled)], 1)
        return self.rho(pooled)
