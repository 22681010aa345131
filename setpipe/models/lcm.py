"""Learnable commutative monoid pooling (Ong & Veličković, LoG 2022): a learned binary
operator folded over a set as a balanced binary tree.

The operator, on pooled features a, b [*, D]::

    a ⊕ b = a + b + g(LN(a + b), LN(a ⊙ b))        g: an MLP whose last layer starts at 0

It is commutative by construction and bitwise: IEEE addition and multiplication commute,
so ``a + b`` and ``a ⊙ b`` are the same tensors for (a, b) and (b, a), and everything after
them sees identical inputs. (The paper's symmetrised GRU, ½(GRU(a, b) + GRU(b, a)), is
commutative too, but its two matrix products see the rows in different places, and a
GEMM need not give a row the same bits wherever it sits.) With g = 0 it is the sum, so an
untrained LCM pools like DeepSets' sum and starts associative; the last layer of g starts
at zero for that reason. LayerNorm keeps g's inputs at unit scale at every tree level
(sums of hundreds of elements, products of such sums).

Associativity is NOT built in: ``(a ⊕ b) ⊕ c`` and ``a ⊕ (b ⊕ c)`` differ as soon as g
is not zero. The paper's regulariser, weighted by ``model.encoder.lcm_assoc_weight``,
pulls them together on random triples of the tree's nodes (``assoc_loss``). Hence:

- Within one ``update`` each set's elements, in their order, are the leaves of a
  balanced tree of depth ceil(log2 n): level by level, neighbours (0, 1), (2, 3), ... are
  combined and an odd last node is carried up unchanged (no padding value ever enters ⊕).
  Swapping the two children of any node leaves the result bitwise equal (commutativity);
  any other permutation of the elements changes it by as much as ⊕ is non-associative.
- Chunks (the MBC protocol) are folded left to right: state ⊕ tree(chunk). The empty
  state is an exact identity (a count of 0 selects the other side; ⊕ is never applied to
  it), so a set that lies in one chunk gives the whole-set result exactly. A set cut into
  chunks gives a different bracketing, so its result is the whole-set one only up to the
  partition error, which ``partition_error`` measures and training logs.
"""

from __future__ import annotations

import torch
from torch import nn

from setpipe.models.protocol import mlp

ASSOC_TRIPLES = 256
"""Random triples per ``update`` for the associativity regulariser: enough for a stable
mean at a cost of 6 applications of ⊕ on 256 rows, small beside the tree itself."""


class LCMOperator(nn.Module):
    """a ⊕ b = a + b + g(LN(a + b), LN(a ⊙ b)) on [*, D]: commutative, bitwise."""

    def __init__(self, width: int, hidden: list[int]) -> None:
        super().__init__()
        self.norm_sum = nn.LayerNorm(width)
        self.norm_prod = nn.LayerNorm(width)
        self.g = mlp([2 * width, *hidden, width], activate_last=False)
        last = self.g[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s, p = a + b, a * b
        g = self.g(torch.cat([self.norm_sum(s), self.norm_prod(p)], -1))
        return s + g.to(s.dtype)


def tree_reduce(
    op: LCMOperator, h: torch.Tensor, set_index: torch.Tensor, num_sets: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Fold each set's rows of ``h [e, D]`` (in order) as a balanced tree.

    Returns (value [num_sets, D] (0 for a set with no rows), count [num_sets] int64, the
    nodes ⊕ produced at every level, concatenated per level: what the regulariser samples).
    """
    e, d = h.shape
    count = torch.bincount(set_index, minlength=num_sets)
    if e == 0:
        return h.new_zeros(num_sets, d), count, []
    order = torch.argsort(set_index, stable=True)  # keeps each set's element order
    s = set_index[order]
    starts = torch.cumsum(count, 0) - count
    pos = torch.arange(e, device=h.device) - starts[s]
    width = int(count.max())
    x = h.new_zeros(num_sets, width, d).index_put((s, pos), h[order])
    n = count.clone()
    nodes: list[torch.Tensor] = []
    while width > 1:
        if width % 2:
            x = torch.cat([x, x.new_zeros(num_sets, 1, d)], 1)
            width += 1
        left, right = x[:, 0::2], x[:, 1::2]  # [B, width / 2, D]
        j = torch.arange(width // 2, device=h.device)
        both = 2 * j[None, :] + 1 < n[:, None]  # [B, width / 2]: a real right sibling
        combined = op(left[both], right[both])
        nodes.append(combined)
        x = left.clone()
        x[both] = combined  # an odd last node, or padding, is carried up as it is
        n = (n + 1) // 2
        width //= 2
    return x[:, 0], count, nodes


def merge_states(
    op: LCMOperator, a: torch.Tensor, ca: torch.Tensor, b: torch.Tensor, cb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a ⊕ b, ca + cb) per set; an empty side (count 0) is the identity, exactly."""
    both = (ca > 0) & (cb > 0)
    out = torch.where((ca > 0)[:, None], a, b)
    if bool(both.any()):
        out = out.clone()
        out[both] = op(a[both], b[both])
    return out, ca + cb


def assoc_loss(op: LCMOperator, pool: torch.Tensor, triples: int = ASSOC_TRIPLES) -> torch.Tensor:
    """Σ|(a ⊕ b) ⊕ c - a ⊕ (b ⊕ c)|² / Σ|(a ⊕ b) ⊕ c|² over random triples drawn (torch's
    global RNG, which the loop seeds per epoch) from the rows of ``pool [m, D]``.

    Relative, so it does not grow with the scale of the sums at the top of the tree.
    """
    if pool.shape[0] < 3:
        return pool.sum() * 0.0
    idx = torch.randint(pool.shape[0], (3, triples), device=pool.device)
    a, b, c = pool[idx[0]], pool[idx[1]], pool[idx[2]]
    left = op(op(a, b), c)
    right = op(a, op(b, c))
    return (left - right).pow(2).sum() / left.pow(2).sum().clamp_min(1e-12)
