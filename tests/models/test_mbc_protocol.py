"""The MBC protocol's properties, for every MBC encoder and option: chunked == whole."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from mbc_cases import gen, make_model, mbc_encoders, random_batch

from setpipe.data.batch import SetBatch
from setpipe.models import MBCEncoder
from setpipe.models.segment import SUM_TILE

# An empty set and a singleton on purpose; and a set of 300, past the largest tile (256):
# UMBC's tiled pooling and segment_sum's tiles of tile sums both run on it.
SIZES = [7, 0, 12, 4, 1, 300]
U32 = 2.0**-24  # unit roundoff of float32


def fold(
    enc: MBCEncoder, batch: SetBatch, perm: torch.Tensor, cuts: list[int], seed: int = 1234
) -> torch.Tensor:
    """Encode ``batch`` with its elements in order ``perm``, cut into chunks at ``cuts``."""
    values, set_index = batch.values[perm], batch.set_index()[perm]
    bounds = [0, *sorted(cuts), batch.num_elements]
    state = enc.init_state(batch.num_sets, dtype=batch.values.dtype, generator=gen(seed))
    for lo, hi in itertools.pairwise(bounds):
        state = enc.update(state, values[lo:hi], set_index[lo:hi])
    return enc.finalize(state, batch.context)


def partitions(batch: SetBatch) -> list[tuple[str, torch.Tensor, list[int]]]:
    """(name, element order, cut points): the fixed corner cases, then seeded random ones."""
    e = batch.num_elements
    ident = torch.arange(e)
    offsets = batch.offsets.tolist()
    cases = [
        ("one-chunk", ident, []),
        ("singletons", ident, list(range(1, e))),
        # The last chunk holds nothing but the last two elements of the last set.
        ("tail-of-one-set", ident, [offsets[1] - 3, offsets[-1] - 2]),
        ("uneven", ident, [1, 2, 9, 10, 11, 20]),
    ]
    rng = random.Random(0)
    for i in range(4):
        perm = torch.randperm(e, generator=torch.Generator().manual_seed(i))
        cuts = sorted(rng.sample(range(1, e), rng.randint(1, e - 1)))
        cases.append((f"random-{i}", perm, cuts))
    return cases


@mbc_encoders
def test_partition_invariance_float64(encoder: dict) -> None:
    model = make_model(encoder)
    batch = random_batch(SIZES)
    whole = model.encoder(batch, generator=gen())
    for name, perm, cuts in partitions(batch):
        chunked = fold(model.encoder, batch, perm, cuts)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-10, msg=name)


def summed_terms(n: int) -> int:
    """Roundings one term of a whole-set sum of n terms goes through: n - 1 up to the
    tile size; then at most SUM_TILE - 1 per level of tiles (segment_sum), however big n."""
    levels = max(1, math.ceil(math.log(n) / math.log(SUM_TILE)))
    return min(n, levels * SUM_TILE)


@mbc_encoders
def test_partition_invariance_float32(encoder: dict) -> None:
    """Tolerance: a whole pass adds each set's n terms in one order; a chunked pass adds
    them in another order plus c merges of partial sums. Summation of k terms errs by at
    most (k - 1)·u·Σ|x| (Higham, Accuracy and Stability, §4.2), and each chunk is summed
    into fresh zeros in tiles, so the two states differ by at most (2·k + c)·u·Σ|x| with
    k = ``summed_terms(n)``: the bound grows with the chunks c, not with n beyond the tile.
    finalize (division by Σa, LayerNorm, a small MLP) is well conditioned here; we allow
    a factor 8 for it. Outputs are O(1).
    """
    model = make_model(encoder, dtype=torch.float32)
    batch = random_batch(SIZES, dtype=torch.float32)
    whole = model.encoder(batch, generator=gen())
    k = summed_terms(max(SIZES))
    for name, perm, cuts in partitions(batch):
        chunked = fold(model.encoder, batch, perm, cuts)
        c = len(cuts) + 1
        tol = 8 * (2 * k + c) * U32
        torch.testing.assert_close(chunked, whole, rtol=tol, atol=tol, msg=name)


@mbc_encoders
def test_merge_order_invariance(encoder: dict) -> None:
    """Each chunk folded into its own copy of the initial state, merged in random orders."""
    model = make_model(encoder)
    enc = model.encoder
    batch = random_batch(SIZES)
    whole = enc(batch, generator=gen())
    set_index = batch.set_index()
    state0 = enc.init_state(batch.num_sets, dtype=torch.float64, generator=gen())
    bounds = [0, 3, 4, 11, 15, 20, batch.num_elements]
    parts = [
        enc.update(state0, batch.values[lo:hi], set_index[lo:hi])
        for lo, hi in itertools.pairwise(bounds)
    ]
    rng = random.Random(0)
    for _ in range(5):
        pool = parts[:]
        while len(pool) > 1:  # merge two random partial states until one is left
            rng.shuffle(pool)
            pool.append(enc.merge(pool.pop(), pool.pop()))
        torch.testing.assert_close(enc.finalize(pool[0]), whole, rtol=0, atol=1e-10)


@mbc_encoders
def test_permutation_invariance(encoder: dict) -> None:
    model = make_model(encoder)
    batch = random_batch(SIZES)
    g = torch.Generator().manual_seed(7)
    shuffled = SetBatch.from_sets(
        [
            batch.values[lo:hi][torch.randperm(hi - lo, generator=g)]
            for lo, hi in zip(batch.offsets[:-1].tolist(), batch.offsets[1:].tolist(), strict=True)
        ]
    )
    torch.testing.assert_close(
        model(shuffled, generator=gen()), model(batch, generator=gen()), rtol=0, atol=1e-10
    )


@mbc_encoders
def test_empty_chunks_and_identity_state_change_nothing(encoder: dict) -> None:
    model = make_model(encoder)
    enc = model.encoder
    batch = random_batch(SIZES)
    state = enc.init_state(batch.num_sets, dtype=torch.float64, generator=gen())
    state = enc.update(state, batch.values[:0], batch.set_index()[:0])
    state = enc.update(state, batch.values, batch.set_index())
    state = enc.merge(state, enc.init_state(batch.num_sets, dtype=torch.float64, generator=gen()))
    torch.testing.assert_close(enc.finalize(state), enc(batch, generator=gen()), rtol=0, atol=1e-12)
    assert torch.isfinite(enc.finalize(state)).all()


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
def test_deepsets_pools_by_hand(pooling: str) -> None:
    """The pooled phi features against a per-set loop (empty set pools to 0)."""
    from mbc_cases import DEEPSETS

    model = make_model(next(e for e in DEEPSETS if e["pooling"] == pooling))
    enc = model.encoder
    batch = random_batch(SIZES)
    state = enc.update(
        enc.init_state(batch.num_sets, dtype=torch.float64), batch.values, batch.set_index()
    )
    h = enc.phi(batch.values)
    expected = []
    for lo, hi in zip(batch.offsets[:-1].tolist(), batch.offsets[1:].tolist(), strict=True):
        if hi == lo:
            expected.append(torch.zeros(h.shape[1], dtype=h.dtype))
        else:
            expected.append(
                {"sum": h[lo:hi].sum(0), "mean": h[lo:hi].mean(0), "max": h[lo:hi].amax(0)}[pooling]
            )
    torch.testing.assert_close(enc.pooled(state), torch.stack(expected), rtol=0, atol=1e-12)


def test_float32_state_under_autocast() -> None:
    """Partial sums stay float32 under bf16 autocast."""
    from mbc_cases import UMBC

    model = make_model(UMBC[0], dtype=torch.float32)
    batch = random_batch(SIZES, dtype=torch.float32)
    enc = model.encoder
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = enc.update(enc.init_state(batch.num_sets), batch.values, batch.set_index())
    assert {k: v.dtype for k, v in state.items() if k != "query"} == {
        "num": torch.float32,
        "den": torch.float32,
    }
