"""UMBC, the universal MBC slot set encoder (Willette et al. ICML 2023; Bruno et al. NeurIPS 2021).

K slots (learned, or drawn per set from a learned Gaussian) attend to the elements of
a set with H heads. Each element's attention weights a[h, k] are normalised per
element only (never across elements), so the pooled slot value

    slot[k, h] = Σ_i a_i[h, k] v_i[h] / Σ_i a_i[h, k]

is a ratio of two sums: the state is (num = Σ a·v, den = Σ a) per set, slot and head.
Normalisations: ``sigmoid``; ``slot_sigmoid`` (sigmoid, then divided by its sum over
slots, computed as a softmax over log-sigmoids: finite at any logit); ``slot_softmax``
(softmax over slots). ``set_softmax`` is the exact softmax over
the set's elements per slot: it keeps a running max per set/head/slot and merges
log-sum-exp style. After pooling: optional slot residual (+ the slot's query), a
LayerNorm, then any function of the K slot vectors (flatten+MLP, or SAB + PMA).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from setpipe.errors import ModelError
from setpipe.models.protocol import MBCEncoder, MBCState, mlp, require_context
from setpipe.models.segment import segment_sum
from setpipe.models.set_transformer import SetTransformer

Attention = Literal["slot_sigmoid", "sigmoid", "slot_softmax", "set_softmax"]

BLOCK = 512
"""Elements per block when gathering per-set random slot queries in ``_scores``:
[block, K, H, dim/H] at a time instead of one such row for every element of the chunk."""


class UMBC(MBCEncoder):
    def __init__(
        self,
        num_features: int,
        embed: list[int],
        slots: int,
        heads: int,
        dim: int,
        attention: Attention = "slot_sigmoid",
        random_slots: bool = False,
        slot_residual: bool = True,
        slot_head: Literal["mlp", "set_transformer"] = "set_transformer",
        sab_layers: int = 1,
        pma_seeds: int = 1,
        num_context: int = 0,
    ) -> None:
        super().__init__()
        self.num_slots, self.heads, self.dim = slots, heads, dim
        self.head_dim = dim // heads
        self.attention = attention
        self.random_slots = random_slots
        self.slot_residual = slot_residual
        self.num_context = num_context
        self.partial_keys = ("num", "den")

        self.embed = mlp([num_features, *embed])
        if random_slots:
            # As the reference: means U(-0.2, 0.2), std ≈ 0.01 (its softplus(U(-5, -4))).
            self.slot_mean = nn.Parameter(torch.empty(slots, dim).uniform_(-0.2, 0.2))
            self.slot_log_std = nn.Parameter(torch.full((slots, dim), math.log(0.01)))
        else:
            self.slots = nn.Parameter(torch.empty(slots, dim))
            nn.init.xavier_uniform_(self.slots)
        self.norm_slots = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(embed[-1], dim)
        self.v = nn.Linear(embed[-1], dim)
        self.norm_after = nn.LayerNorm(dim)

        self.head: nn.Module
        if slot_head == "mlp":
            self.head = nn.Sequential(nn.Flatten(1), nn.Linear(slots * dim, dim), nn.ReLU())
            head_dim = dim
        else:
            st = SetTransformer(dim, dim, heads, sab_layers, pma_seeds)
            self.head, head_dim = st, st.out_dim
        self.out_dim = head_dim + num_context

    # ------------------------------------------------------------------ slots

    def queries(
        self,
        num_sets: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Slot queries [B, K, dim] drawn once per set (random slots, training), else [1, K, dim].

        The second case is shared by every set (first axis 1), so it is never gathered.
        """
        if self.random_slots:
            if self.training:
                gen_device = generator.device if generator is not None else device
                noise = torch.randn(
                    (num_sets, self.num_slots, self.dim), generator=generator, device=gen_device
                ).to(device=self.slot_mean.device, dtype=self.slot_mean.dtype)
                s = self.slot_mean + self.slot_log_std.exp() * noise
            else:
                # Inference uses the mean slots (as the reference): predictions are deterministic.
                s = self.slot_mean[None]
        else:
            s = self.slots[None]
        return self.q(self.norm_slots(s)).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ protocol

    def init_state(
        self,
        num_sets: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> MBCState:
        h, k, d = self.heads, self.num_slots, self.head_dim
        state = {
            "query": self.queries(num_sets, device, dtype, generator),
            "num": torch.zeros(num_sets, h, k, d, device=device, dtype=dtype),
            "den": torch.zeros(num_sets, h, k, device=device, dtype=dtype),
        }
        if self.attention == "set_softmax":
            state["max"] = torch.full((num_sets, h, k), -torch.inf, device=device, dtype=dtype)
        return state

    def _scores(
        self, keys: torch.Tensor, query: torch.Tensor, set_index: torch.Tensor
    ) -> torch.Tensor:
        """Attention logits [e, H, K] (scaled by sqrt of the per-head width)."""
        q = query.view(query.shape[0], self.num_slots, self.heads, self.head_dim)
        scale = 1.0 / math.sqrt(self.head_dim)
        if q.shape[0] == 1:
            return torch.einsum("ehd,khd->ehk", keys, q[0]) * scale
        parts = [
            torch.einsum("ehd,ekhd->ehk", keys[i : i + BLOCK], q[set_index[i : i + BLOCK]])
            for i in range(0, keys.shape[0], BLOCK)
        ]
        return (
            torch.cat(parts, 0) * scale if parts else keys.new_zeros(0, self.heads, self.num_slots)
        )

    def update(self, state: MBCState, values: torch.Tensor, set_index: torch.Tensor) -> MBCState:
        num = state["num"]
        e = values.shape[0]
        x = self.embed(values)
        keys = self.k(x).view(e, self.heads, self.head_dim).to(num.dtype)
        vals = self.v(x).view(e, self.heads, self.head_dim).to(num.dtype)
        del x  # under no_grad nothing else holds it: one chunk-sized tensor less at the peak
        # The MLP and projections above run under autocast; the attention weights and the
        # sums below stay in the state's dtype (fp32): exp and long sums in bf16 lose digits.
        with torch.autocast(num.device.type, enabled=False):
            return self._accumulate(state, keys, vals, set_index)

    def _accumulate(
        self, state: MBCState, keys: torch.Tensor, vals: torch.Tensor, set_index: torch.Tensor
    ) -> MBCState:
        num, den = state["num"], state["den"]
        s = self._scores(keys, state["query"].to(num.dtype), set_index)  # [e, H, K]

        new: MBCState = {"query": state["query"]}
        if self.attention == "set_softmax":
            # The running max only shifts exponents; the ratio num/den does not depend on
            # it, so it is detached (and the estimator's sums stay plain sums).
            old_max = state["max"]
            chunk_max = torch.full_like(old_max, -torch.inf).scatter_reduce(
                0,
                set_index[:, None, None].expand_as(s),
                s.detach(),
                reduce="amax",
                include_self=False,
            )
            new_max = torch.maximum(old_max, chunk_max)
            rescale = _shift(old_max, new_max)
            num, den = num * rescale[..., None], den * rescale
            a = torch.exp(s - new_max[set_index])
            new["max"] = new_max
        else:
            a = attention_weights(s, self.attention)

        pooled_num, pooled_den = segment_pool(a, vals, set_index, num.shape[0])
        new["num"] = num + pooled_num
        new["den"] = den + pooled_den
        return new

    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        out: MBCState = {"query": a["query"]}
        if self.attention == "set_softmax":
            m = torch.maximum(a["max"], b["max"])
            fa, fb = _shift(a["max"], m), _shift(b["max"], m)
            out["num"] = a["num"] * fa[..., None] + b["num"] * fb[..., None]
            out["den"] = a["den"] * fa + b["den"] * fb
            out["max"] = m
            return out
        out["num"] = a["num"] + b["num"]
        out["den"] = a["den"] + b["den"]
        return out

    def slot_outputs(self, state: MBCState) -> torch.Tensor:
        """The K pooled slot vectors [B, K, dim] after residual and LayerNorm, before the head."""
        num, den = state["num"], state["den"]
        # An empty set has den = 0 and num = 0: it pools to 0 (then the residual).
        pooled = num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]  # [B, H, K, d]
        pooled = pooled.permute(0, 2, 1, 3).reshape(num.shape[0], self.num_slots, self.dim)
        if self.slot_residual:
            pooled = pooled + state["query"]
        return self.norm_after(pooled)

    def slot_states(self, state: MBCState) -> torch.Tensor:
        """The finalized slots [B, K + s, dim] that element-level heads attend to
        (setpipe/models/slot_context.py): the K slot vectors after the slot head's SAB
        blocks (they have seen each other), then the head's s pooled outputs (its PMA
        seeds; the mlp head's one output). Every head parameter takes part."""
        slots = self.slot_outputs(state)
        if isinstance(self.head, SetTransformer):
            x = self.head.input(slots)
            for block in self.head.blocks:
                x = block(x)
            return torch.cat([x, self.head.pma(x)], 1)
        return torch.cat([slots, self.head(slots)[:, None]], 1)

    @property
    def slot_states_shape(self) -> tuple[int, int]:
        """(K + s, dim): the shape of one set's ``slot_states``."""
        seeds = self.head.pma.seeds.shape[1] if isinstance(self.head, SetTransformer) else 1
        return self.num_slots + seeds, self.dim

    def finalize(self, state: MBCState, context: torch.Tensor | None = None) -> torch.Tensor:
        out = self.head(self.slot_outputs(state))
        if self.num_context:
            out = torch.cat([out, require_context(context, self.num_context, out)], 1)
        return out


def attention_weights(s: torch.Tensor, attention: Attention) -> torch.Tensor:
    """Per-element attention weights [e, H, K] from logits ``s [e, H, K]`` (not set_softmax).

    slot_sigmoid is σ(s_k) / Σ_j σ(s_j) = softmax_k(log σ(s)): the direct quotient is 0/0
    = NaN once every slot's logit is below about -88 in float32 (σ underflows to 0), as
    with large inputs or collapsed slots; log σ(s) = -softplus(-s) is finite everywhere.
    """
    if attention == "sigmoid":
        return torch.sigmoid(s)
    if attention == "slot_sigmoid":
        return torch.softmax(F.logsigmoid(s), dim=-1)
    if attention == "slot_softmax":
        return torch.softmax(s, dim=-1)
    raise ModelError(f"attention_weights: {attention!r} is not a per-element normalisation")


def _shift(old_max: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
    """exp(old_max - new_max); 0 where old_max is -inf (no elements yet: avoids -inf - -inf)."""
    empty = torch.isinf(old_max)
    return torch.where(
        empty, torch.zeros_like(old_max), torch.exp(old_max - new_max.masked_fill(empty, 0))
    )


MAX_TILE = 256
"""Largest tile of ``segment_pool``: a huge set's per-tile sums are then 1/16 of its inputs."""


def tile_size(mean_len: float) -> int:
    """Elements per tile: the power of two at least half the mean set length, 1..MAX_TILE.

    Each set is padded to whole tiles, so a tile near half a set wastes about a quarter
    of a tile per set; smaller tiles mean more, smaller matmuls and more per-tile sums.
    Sets of one or two elements get tiles of 1: the plain outer product.
    """
    return min(MAX_TILE, 1 << max(0, math.ceil(math.log2(max(mean_len / 2, 1.0)))))


def segment_pool(
    a: torch.Tensor, vals: torch.Tensor, set_index: torch.Tensor, num_sets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-set sums ``Σ_i a_i[h,k] v_i[h,:]`` [B, H, K, d] and ``Σ_i a_i[h,k]`` [B, H, K].

    a [e, H, K], vals [e, H, d], set_index [e] (any order). The direct way, an outer
    product [e, H, K, d] scattered with index_add, is memory-bound (on CPU about 10 ns
    per float). Instead each set's elements, sorted by set, are laid out in tiles of T
    (``tile_size``; the set's last tile zero-padded) as [tiles, H, T, K] and
    [tiles, H, T, d]; one batched matmul gives every tile's sums [tiles, H, K, d], and
    only those are scattered to their sets. The layout is written with ``index_copy_``
    into a fresh buffer (its backward is a gather), never into a view of one, whose
    backward (CopySlices) clones the whole buffer. On jet-like batches this is
    about 5x faster than blocks shared by several sets with one column group per set.
    Both sums go tile by tile, and the tile sums reach their sets through
    ``segment_sum``: the float32 error does not grow with the set's size.
    """
    e, heads, k = a.shape
    d = vals.shape[-1]
    if e == 0:
        return a.new_zeros(num_sets, heads, k, d), a.new_zeros(num_sets, heads, k)
    # Chunks of a SetBatch are sorted by set already; only shuffled partitions need the sort.
    if not bool((set_index[1:] >= set_index[:-1]).all()):
        order = torch.argsort(set_index, stable=True)
        a, vals, set_index = a[order], vals[order], set_index[order]
    distinct, counts = torch.unique_consecutive(set_index, return_counts=True)
    t = tile_size(e / distinct.numel())
    tiles = (counts + t - 1) // t
    nt = int(tiles.sum())
    if nt * t == e:  # no padding (e.g. a huge set in chunks of a multiple of T): a transpose
        grid_a = a.view(nt, t, heads, k).transpose(1, 2).reshape(nt * heads, t, k)
        grid_v = vals.view(nt, t, heads, d).transpose(1, 2).reshape(nt * heads, t, d)
    else:
        # Row of (element i, head h) in the [tiles, H, T] grid. In-place into a fresh
        # buffer: the out-of-place index_copy would clone the zeros first.
        rank = torch.repeat_interleave(torch.arange(distinct.numel(), device=a.device), counts)
        pos = torch.arange(e, device=a.device) - (torch.cumsum(counts, 0) - counts)[rank]
        tile = (torch.cumsum(tiles, 0) - tiles)[rank] + pos // t
        h = torch.arange(heads, device=a.device)
        rows = ((tile[:, None] * heads + h) * t + (pos % t)[:, None]).reshape(-1)
        grid_a = a.new_zeros(nt * heads * t, k).index_copy_(0, rows, a.reshape(e * heads, k))
        grid_v = vals.new_zeros(nt * heads * t, d)
        grid_v = grid_v.index_copy_(0, rows, vals.reshape(e * heads, d))
        grid_a, grid_v = grid_a.view(nt * heads, t, k), grid_v.view(nt * heads, t, d)
    sums = torch.bmm(grid_a.transpose(1, 2), grid_v).view(nt, heads, k, d)
    tile_den = grid_a.sum(1).view(nt, heads, k)
    tile_set = torch.repeat_interleave(distinct, tiles)
    return segment_sum(sums, tile_set, num_sets), segment_sum(tile_den, tile_set, num_sets)
