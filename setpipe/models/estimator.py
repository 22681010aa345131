"""The unbiased full-set gradient estimator: constant-memory training on sets of any size.

For set b with n_b elements and gradient budget M, draw a uniform random subset of
M_b = min(n_b, M) elements (fresh each step). The subset goes through ``update`` with
autograd, the rest under ``torch.no_grad()`` chunk by chunk; the two partial states
are merged, finalized and fed to the head. The forward value is exactly the
full-set forward (same elements, re-associated sums).

Why it is unbiased for ANY head and loss: dL/dθ = (dL/dS)(dS/dθ) + (paths that do not
pass through the pooled state S, e.g. the slot residual). dL/dS is exact because S is
computed from all elements; dS/dθ = Σ_i dS_i/dθ is a sum over elements, and
(n/M) Σ_{i in subset} dS_i/dθ averages to it over uniform subsets. So the n_b/M_b
factor is applied in the graph (``ScaleGrad``) to the subset's partial state only:
paths that bypass S stay unscaled, sets of different sizes get their own factor, and
DDP averages gradients that are already right. (Scaling parameter gradients after
backward, as the reference code does, is biased as soon as such a path exists.)
Max pooling works too: the gradient reaches the arg-max element only when it is in
the subset (probability M/n), times n/M; k tied maxima get 1/k each, as in the whole
set's amax, because merging two tied partial maxima splits by their tie counts
(setpipe/models/deepsets.py).

Rank (score_i = g(x_i, ctx_b)): the loss needs every element's score, and each score's
gradient reaches θ through g and through ctx_b. Scores of a second, independent
uniform subset (same sizes) are computed with autograd and their gradient scaled by
n_b/M_b; the other scores under no_grad. With one subset for both passes the product
(scoring estimate × context estimate) would be biased (both depend on the same draw);
with independent draws the expectation factorises, so the estimate stays unbiased.
Memory for rank is the [E] score vector plus two subsets' activations. The scores are
float32 (float64 for float64 values) even when the head runs in bf16 under autocast, and
the n/M factor is applied to them there: a bf16 factor would be rounded (333.33 -> 334,
7/3 -> 2.328), a bias of ~0.2% on the gradient of every element of the set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from setpipe.data.batch import SetBatch, chunk_ranges, set_of
from setpipe.errors import ModelError
from setpipe.models.protocol import MBCEncoder, MBCState, scale_grad, state_dtype

MIN_REST_BLOCK = 1024
"""Fewest elements per no-grad block when the budget is smaller: one ``update`` is ~40
small ops (~0.7 ms on CPU), so blocks of M = 64 spend 5 s of a 3e5-element step on
overhead; from 1024 on it is a few percent."""


def rest_block(chunk_size: int, grad_budget: int) -> int:
    """Elements per block of the no-grad pass: max(M, 1024), at most ``chunk_size``.

    Not ``chunk_size`` itself: a no-grad UMBC update holds ~1.7 KB an element at once
    (embedding, keys, values, logits, weights, tile layout), the gradient subset's graph
    ~2.8 KB an element, so a block up to about M keeps the step's peak at the graph's;
    blocks of 4096 beside M = 1024 raise it 2.7x (bench/memory_vs_set_size.py).
    """
    return min(chunk_size, max(grad_budget, MIN_REST_BLOCK))


@dataclass(frozen=True)
class GradSubsets:
    """Which elements carry the gradient in one estimated step."""

    pool: torch.Tensor
    """int64 [ΣM_b], sorted: elements of ``batch.values`` in the pooling pass with autograd."""
    factor: torch.Tensor
    """float64 [B]: n_b / M_b (1 for sets that fit the budget whole)."""
    score: torch.Tensor | None = None
    """int64 [ΣM_b], sorted: an independent subset for the rank scoring pass (rank only)."""


def _choose(n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random m-subset of range(n), in O(m) memory when m << n.

    Draws with replacement and keeps the first m distinct values in draw order: that is
    sequential sampling without replacement, so every m-subset is equally likely.
    """
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < m:
        cand = torch.cat([picked, torch.randint(n, (2 * m,), generator=generator)])
        uniq, inverse = torch.unique(cand, return_inverse=True)
        first = torch.full((uniq.numel(),), cand.numel(), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(cand.numel()), reduce="amin"
        )
        picked = cand[first.sort().values][:m]
    return picked


def sample_subsets(
    batch: SetBatch,
    grad_budget: int,
    generator: torch.Generator | None = None,
    *,
    scoring: bool = False,
) -> GradSubsets:
    """Draw a uniform grad subset of min(n_b, grad_budget) elements per set (CPU generator)."""
    if grad_budget < 1:
        raise ModelError(f"grad_budget must be at least 1, got {grad_budget}")
    offsets = batch.offsets.cpu()
    sizes = offsets[1:] - offsets[:-1]
    m = sizes.clamp(max=grad_budget)
    factor = torch.where(m > 0, sizes.double() / m.clamp_min(1).double(), torch.ones(()))

    def draw() -> torch.Tensor:
        parts = []
        small = sizes <= grad_budget
        # Whole sets that fit the budget.
        if bool(small.any()):
            parts.append(_elements_of(offsets, small.nonzero().squeeze(1)))
        # Medium sets (up to 8M): per-element random keys, keep the M smallest per set.
        medium = (~small) & (sizes <= 8 * grad_budget)
        if bool(medium.any()):
            sets = medium.nonzero().squeeze(1)
            elems = _elements_of(offsets, sets)
            owner = set_of(offsets, elems)
            keys = torch.rand(elems.numel(), generator=generator, dtype=torch.float64)
            order = torch.argsort(keys)
            order = order[torch.argsort(owner[order], stable=True)]
            owner_sorted = owner[order]
            rank = torch.arange(elems.numel()) - _first_position(owner_sorted)
            parts.append(elems[order][rank < grad_budget])
        # Huge sets: O(M) rejection sampling, never an n-sized permutation.
        for b in ((~small) & (sizes > 8 * grad_budget)).nonzero().squeeze(1).tolist():
            parts.append(int(offsets[b]) + _choose(int(sizes[b]), grad_budget, generator))
        chosen = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        return chosen.sort().values.to(batch.values.device)

    pool = draw()
    score = draw() if scoring else None
    return GradSubsets(pool=pool, factor=factor.to(batch.values.device), score=score)


def _elements_of(offsets: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """Global element indices of the given sets, concatenated."""
    sizes = offsets[sets + 1] - offsets[sets]
    starts = torch.repeat_interleave(offsets[sets], sizes)
    within = torch.arange(int(sizes.sum())) - torch.repeat_interleave(
        torch.cumsum(sizes, 0) - sizes, sizes
    )
    return starts + within


def _first_position(sorted_owner: torch.Tensor) -> torch.Tensor:
    """For a sorted owner vector, the index where each entry's run starts."""
    n = sorted_owner.numel()
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_owner[1:] != sorted_owner[:-1]
    starts = torch.where(new_run, torch.arange(n), torch.zeros(n, dtype=torch.long))
    return torch.cummax(starts, 0).values


def _rest(
    batch: SetBatch, chosen: torch.Tensor, chunk_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunks of the elements NOT in ``chosen`` (sorted): (positions, values, set_index)."""
    for start, stop, values, set_index in chunk_ranges(batch, chunk_size):
        lo, hi = torch.searchsorted(chosen, torch.tensor([start, stop], device=chosen.device))
        keep = torch.ones(stop - start, dtype=torch.bool, device=values.device)
        keep[chosen[lo:hi] - start] = False
        positions = torch.arange(start, stop, device=values.device)[keep]
        yield positions, values[keep], set_index[keep]


def estimated_forward(
    encoder: MBCEncoder,
    head: nn.Module,
    batch: SetBatch,
    subsets: GradSubsets,
    chunk_size: int,
    generator: torch.Generator | None = None,
    state0: MBCState | None = None,
    *,
    rank: bool = False,
    block: int | None = None,
) -> torch.Tensor:
    """The outputs of ``head`` on ``encoder``'s embedding of ``batch``, with the gradient
    carried by ``subsets`` only. ``rank``: the head scores elements, ``head(values,
    set_index, embedding) -> [e]``; otherwise it maps embeddings, ``head(embedding)``.

    ``state0`` is the initial state (its random slots) when already drawn, else it is
    drawn here from ``generator``. The no-grad pass runs first, while no graph is alive,
    in blocks of ``block`` elements (default ``chunk_size``; ``rest_block`` chooses it
    in training): the step's peak memory is then the larger of the gradient subset's
    graph and one no-grad block, not their sum. Blocking does not change the result
    (the encoder is MBC).
    """
    embedding = estimated_embedding(
        encoder, batch, subsets, chunk_size, generator, state0, block=block
    )
    if not rank:
        return head(embedding)  # type: ignore[no-any-return]
    return estimated_scores(head, batch, subsets, embedding, chunk_size)


def estimated_embedding(
    encoder: MBCEncoder,
    batch: SetBatch,
    subsets: GradSubsets,
    chunk_size: int,
    generator: torch.Generator | None = None,
    state0: MBCState | None = None,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """The set embeddings [B, H] of ``estimated_forward``: the gradient flows through
    ``subsets.pool`` only, scaled n/M per set (several heads share it)."""
    values, offsets = batch.values, batch.offsets
    if state0 is None:
        state0 = encoder.init_state(
            batch.num_sets, values.device, state_dtype(values.dtype), generator
        )

    with torch.no_grad():
        rest = state0
        for _, chunk, set_index in _rest(batch, subsets.pool, block or chunk_size):
            rest = encoder.update(rest, chunk, set_index)

    sub = state0
    for i in range(0, subsets.pool.numel(), chunk_size):
        idx = subsets.pool[i : i + chunk_size]
        sub = encoder.update(sub, values[idx], set_of(offsets, idx))
    sub = {
        k: scale_grad(v, subsets.factor) if k in encoder.partial_keys else v for k, v in sub.items()
    }
    return encoder.finalize(encoder.merge(sub, rest), batch.context)


def estimated_scores(
    head: nn.Module,
    batch: SetBatch,
    subsets: GradSubsets,
    embedding: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Element scores [E] of a rank ``head`` on ``embedding``: the gradient flows through
    ``subsets.score`` only, scaled n/M per set; the other elements are scored under no_grad."""
    values, offsets = batch.values, batch.offsets
    if subsets.score is None:
        raise ModelError("rank needs an independent scoring subset: sample_subsets(scoring=True)")
    scores = torch.empty(batch.num_elements, device=values.device, dtype=state_dtype(values.dtype))
    with torch.no_grad():
        for positions, chunk, set_index in _rest(batch, subsets.score, chunk_size):
            scores[positions] = head(chunk, set_index, embedding).to(scores.dtype)
    idx = subsets.score
    owner = set_of(offsets, idx)
    graded = scale_grad(head(values[idx], owner, embedding).to(scores.dtype), subsets.factor[owner])
    return scores.index_copy(0, idx, graded)
