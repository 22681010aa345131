"""Set Transformer blocks (Lee et al., ICML 2019): MAB, SAB, ISAB, PMA, with masks threaded through.

Runs on the padded view ``x [B, N, D]``, ``mask [B, N]`` (True = element). Every attention
masks its keys, and SAB/ISAB zero the outputs of padded queries, so padding never
leaks into pooling: a set's output does not depend on how far it was padded.

Scaling: logits are divided by sqrt(dim / heads), the width of one head's dot product
(Vaswani et al. 2017). The reference code (juho-lee/set_transformer, modules.py)
divides by sqrt(dim), the full width, which is sqrt(heads) too cold: with 4 heads the
softmax starts twice as flat as intended. We keep the standard per-head scaling.

Pairwise interactions (``model.encoder.pairwise``, setpipe/models/pairwise.py): a bias
[B, heads, N, N] from features of each pair of elements is added to the logits of every
SAB block before the key mask, as ParT adds its U to the particle attention blocks. The
same bias serves every block; PMA's seeds are not elements and get none, and ISAB (whose
elements only meet inducing points) is refused with pairwise when the job loads.

Not mini-batch consistent: attention between elements needs the whole set at once.
Used as an encoder for small sets and as the head after the UMBC slots.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from setpipe.data.batch import SetBatch
from setpipe.models.pairwise import PairwiseEmbedding
from setpipe.models.protocol import require_context


class MAB(nn.Module):
    """Multihead attention block: H = LN(Q' + Attn(Q', K', V')); out = LN(H + ReLU(fc_o(H)))."""

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.fc_q = nn.Linear(dim_q, dim)
        self.fc_k = nn.Linear(dim_k, dim)
        self.fc_v = nn.Linear(dim_k, dim)
        self.fc_o = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim)
        self.ln1 = nn.LayerNorm(dim)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q [B, Nq, dim_q], k [B, Nk, dim_k], key_mask [B, Nk] (True = attend), bias
        [B, H, Nq, Nk] added to the logits (pairwise interactions) -> [B, Nq, dim]."""
        b, nq, _ = q.shape
        nk = k.shape[1]
        qp = self.fc_q(q)
        vh = self.fc_v(k).view(b, nk, self.heads, self.head_dim)
        attn = self.weights(qp, self.fc_k(k), key_mask, bias)
        h = qp + torch.einsum("bhqk,bkhd->bqhd", attn, vh).reshape(b, nq, -1)
        h = self.ln0(h)
        return self.ln1(h + torch.relu(self.fc_o(h)))

    def weights(
        self,
        qp: torch.Tensor,
        kp: torch.Tensor,
        key_mask: torch.Tensor | None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention weights [B, H, Nq, Nk] from projected queries and keys (plus ``bias``)."""
        b, nq, _ = qp.shape
        qh = qp.view(b, nq, self.heads, self.head_dim)
        kh = kp.view(b, kp.shape[1], self.heads, self.head_dim)
        logits = torch.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(self.head_dim)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        if key_mask is not None:
            # finfo.min, not -inf: a set with no keys (empty) gets a finite uniform
            # attention instead of NaN; any real key outweighs it by exp(huge).
            logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)


class SAB(nn.Module):
    """Self-attention block MAB(X, X); padded rows come out as zeros."""

    def __init__(self, dim_in: int, dim: int, heads: int) -> None:
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.mab(x, x, mask, bias)
        return out if mask is None else out * mask[..., None].to(out.dtype)


class ISAB(nn.Module):
    """Induced self-attention: m inducing points attend to X, then X attends to them (O(N m))."""

    def __init__(self, dim_in: int, dim: int, heads: int, inducing_points: int) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.empty(1, inducing_points, dim))
        nn.init.xavier_uniform_(self.inducing)
        self.mab0 = MAB(dim, dim_in, dim, heads)
        self.mab1 = MAB(dim_in, dim, dim, heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x, mask)  # [B, m, dim]
        out = self.mab1(x, h)  # the m inducing points are never padding
        return out if mask is None else out * mask[..., None].to(out.dtype)


class PMA(nn.Module):
    """Pooling by multihead attention: k learned seeds attend to the (masked) set."""

    def __init__(self, dim: int, heads: int, seeds: int) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(1, seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(dim, dim, dim, heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, mask)  # [B, seeds, dim]


class SetTransformer(nn.Module):
    """SAB/ISAB blocks then PMA, flattened: x [B, N, dim_in], mask [B, N] -> [B, seeds * dim]."""

    def __init__(
        self,
        dim_in: int,
        dim: int,
        heads: int,
        layers: int,
        seeds: int = 1,
        inducing_points: int | None = None,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            width = dim_in if i == 0 else dim
            if inducing_points is None:
                blocks.append(SAB(width, dim, heads))
            else:
                blocks.append(ISAB(width, dim, heads, inducing_points))
        self.blocks = nn.ModuleList(blocks)
        # With no blocks (a slot head with sab_layers=0) PMA reads the inputs directly.
        self.input = nn.Identity() if layers or dim_in == dim else nn.Linear(dim_in, dim)
        self.pma = PMA(dim, heads, seeds)
        self.out_dim = seeds * dim

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``bias [B, H, N, N]``: pairwise interactions added in every SAB block (not ISAB)."""
        x = self.input(x)
        for block in self.blocks:
            x = block(x, mask, bias) if bias is not None else block(x, mask)
        return self.pma(x, mask).flatten(1)


class SetTransformerEncoder(nn.Module):
    """The Set Transformer as a whole-set encoder of a SetBatch (padded view; not MBC)."""

    def __init__(
        self,
        num_features: int,
        dim: int,
        heads: int,
        layers: int,
        seeds: int = 1,
        inducing_points: int | None = None,
        num_context: int = 0,
        pairwise: PairwiseEmbedding | None = None,
    ) -> None:
        super().__init__()
        if pairwise is not None and inducing_points is not None:
            raise ValueError("pairwise needs SAB blocks; ISAB has no element-to-element attention")
        self.net = SetTransformer(num_features, dim, heads, layers, seeds, inducing_points)
        self.pairwise = pairwise
        self.num_context = num_context
        self.out_dim = self.net.out_dim + num_context

    def forward(self, batch: SetBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pairwise is not None:
            self.pairwise.check_sizes(batch.sizes())
        x, mask = batch.padded()
        bias = self.pairwise(x, mask) if self.pairwise is not None else None
        out = self.net(x, mask, bias)
        if self.num_context:
            out = torch.cat([out, require_context(batch.context, self.num_context, out)], 1)
        return out
