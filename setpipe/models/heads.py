"""Task heads on top of a set embedding: classify [B, C], regress [B], rank element scores [E]."""

from __future__ import annotations

import torch
from torch import nn

from setpipe.models.protocol import mlp


class ClassifyHead(nn.Module):
    """MLP on the set embedding -> logits [B, num_classes]."""

    def __init__(self, in_dim: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([in_dim, *hidden, num_classes], activate_last=False, dropout=dropout)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class RegressHead(nn.Module):
    """MLP on the set embedding -> one value per set [B]."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.net = mlp([in_dim, *hidden, 1], activate_last=False, dropout=dropout)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding).squeeze(-1)


class RankHead(nn.Module):
    """score_i = g(x_i, c, x_i * P c) with c = ctx[set_index_i]: each element scored in the
    context of its whole set.

    Relevance in a list is mostly how well an element matches what the list is about: a
    similarity x·Wc. An MLP on the bare concatenation [x, c] can only build that product
    out of its ReLU units, a second-order effect the listwise gradient hardly moves at
    initialisation (the passages example kept constant scores for 10 epochs); with the
    element-wise product of x and a learned projection P c among its inputs, x·Wc is one
    linear unit away (tests/models/test_rank_head.py: nDCG@10 0.70 -> 0.98 in 300 steps).
    Row-wise in the elements, so it runs chunk by chunk once the context is final.
    """

    def __init__(self, num_features: int, ctx_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.project = nn.Linear(ctx_dim, num_features)
        self.net = mlp(
            [2 * num_features + ctx_dim, *hidden, 1], activate_last=False, dropout=dropout
        )

    def forward(
        self, values: torch.Tensor, set_index: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """values [e, F], set_index [e], embedding [B, ctx_dim] -> scores [e]."""
        ctx = embedding[set_index].to(values.dtype)
        return self.net(torch.cat([values, ctx, values * self.project(ctx)], dim=1)).squeeze(-1)
