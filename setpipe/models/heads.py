"""Task heads on top of a set embedding: classify [B, C], regress [B], rank element scores [E]."""

from __future__ import annotations

import torch
from torch import nn

from setpipe.models.protocol import mlp
from setpipe.models.slot_context import SlotAttention, SlotLayout


class ClassifyHead(nn.Module):
    """MLP on the set embedding -> logits [B, num_classes]."""

    def __init__(self, in_dim: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([in_dim, *hidden, num_classes], activate_last=False, dropout=dropout)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class RegressHead(nn.Module):
    """MLP on the set embedding -> one value per set [B].

    ``offset``/``scale`` (a head of ``model.heads``): the MLP predicts (value - offset) /
    scale, so a target of order 500 ± 15 starts at unit scale; the output is in the
    target's units. Plain numbers, not weights: the job rebuilds them.
    """

    def __init__(
        self, in_dim: int, hidden: list[int], dropout: float = 0.0, offset: float = 0.0,
        scale: float = 1.0,
    ):  # fmt: skip
        super().__init__()
        self.net = mlp([in_dim, *hidden, 1], activate_last=False, dropout=dropout)
        self.offset, self.scale = offset, scale

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        out = self.net(embedding).squeeze(-1)
        if self.offset == 0.0 and self.scale == 1.0:
            return out
        return out * self.scale + self.offset


class RankHead(nn.Module):
    """score_i = g(x_i, c_i, x_i * P c_i): each element scored with c_i, its view of its set.

    ``context="pooled"``: c_i = ctx[set_index_i], the set embedding, the same for every
    element of a set. ``context="slots"``: c_i is element i's multi-head cross-attention
    read-out of its set's slots (``SlotAttention``; the embedding the head receives is then
    the slots flattened, as ``slots`` lays out), so each element asks the list its own
    question, as the Set-Encoder's passages do, in memory constant in the list length.

    Relevance in a list is mostly how well an element matches what the list is about: a
    similarity x·Wc. An MLP on the bare concatenation [x, c] can only build that product
    out of its ReLU units, a second-order effect the listwise gradient hardly moves at
    initialisation (the passages example kept constant scores for 10 epochs); with the
    element-wise product of x and a learned projection P c among its inputs, x·Wc is one
    linear unit away (tests/models/test_rank_head.py: nDCG@10 0.70 -> 0.98 in 300 steps).
    Row-wise in the elements, so it runs chunk by chunk once the context is final.
    """

    def __init__(
        self,
        num_features: int,
        ctx_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        *,
        slots: SlotLayout | None = None,
        heads: int = 4,
    ):
        super().__init__()
        self.slots = slots
        if slots is not None:
            width = -(-slots.width // heads) * heads  # the slot width, up to a multiple of heads
            self.attend = SlotAttention(num_features, slots.width, width, heads)
            ctx_dim = width
        self.project = nn.Linear(ctx_dim, num_features)
        self.net = mlp(
            [2 * num_features + ctx_dim, *hidden, 1], activate_last=False, dropout=dropout
        )

    def forward(
        self, values: torch.Tensor, set_index: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """values [e, F], set_index [e], embedding [B, ctx_dim] (slots: [B, S * D + C]) -> [e]."""
        if self.slots is None:
            ctx = embedding[set_index].to(values.dtype)
        else:
            ctx = self.attend(values, set_index, self.slots.unflatten(embedding))
        return self.net(torch.cat([values, ctx, values * self.project(ctx)], dim=1)).squeeze(-1)
