"""Element-budget batching, the seeded shuffle buffer, size buckets and padding fractions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from setpipe.data import BatchStats, SetBatch, budget_bounds, padding_fraction
from setpipe.data.batching import bucket_batches, budget_batches, shuffle_sets


def greedy(sizes: list[int], budget: int) -> list[list[int]]:
    """The rule written out set by set: close a batch when the next set would exceed budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i, n in enumerate(sizes):
        if current and sum(sizes[j] for j in current) + n > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def stream(sizes: list[int], pieces: int, seed: int = 0) -> list[SetBatch]:
    """Sets whose first feature is their index, cut into ``pieces`` chunks."""
    rng = np.random.default_rng(seed)
    sets = [
        torch.cat([torch.full((n, 1), float(i)), torch.from_numpy(rng.normal(size=(n, 2)))], 1)
        for i, n in enumerate(sizes)
    ]
    cuts = np.linspace(0, len(sets), pieces + 1).astype(int)
    return [
        SetBatch.from_sets(sets[a:b], targets=torch.arange(a, b))
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]


def test_budget_bounds_pinned() -> None:
    # [3, 4] = 7 (+5 would be 12); [5]; [30] alone, over budget; [2, 2]; [9]
    assert budget_bounds(np.array([3, 4, 5, 30, 2, 2, 9]), 10).tolist() == [0, 2, 3, 4, 6, 7]
    assert budget_bounds(np.array([10, 10, 1]), 10).tolist() == [0, 1, 2, 3]
    assert budget_bounds(np.array([], dtype=np.int64), 10).tolist() == [0]


@pytest.mark.parametrize("seed", range(5))
def test_budget_batches_follow_the_greedy_rule_across_chunks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, 200).tolist()
    sizes[17] = 500  # one set over the budget
    budget = 64
    batches = list(budget_batches(stream(sizes, pieces=9, seed=seed), budget))
    expected = greedy(sizes, budget)
    assert [b.targets.tolist() for b in batches] == expected  # type: ignore[union-attr]
    for b in batches:
        assert b.num_elements <= budget or b.num_sets == 1
        # Each set's elements still carry its own index: nothing shifted between sets.
        assert torch.equal(b.values[:, 0].long(), b.targets[b.set_index()])  # type: ignore[index]
    assert [b.targets.tolist() for b in batches if b.num_elements > budget] == [[17]]  # type: ignore[union-attr]


def test_shuffle_buffer_is_a_seeded_permutation() -> None:
    sizes = np.random.default_rng(1).integers(1, 9, 300).tolist()

    def order(seed: int) -> list[int]:
        out = shuffle_sets(stream(sizes, pieces=12), 64, np.random.default_rng(seed))
        return [int(t) for b in out for t in b.targets]  # type: ignore[union-attr]

    first = order(5)
    assert first == order(5)  # reproducible
    assert first != order(6)
    assert sorted(first) == list(range(300))  # every set once
    assert first != sorted(first)
    # Sets keep their elements through the shuffle.
    for b in shuffle_sets(stream(sizes, pieces=12), 64, np.random.default_rng(5)):
        assert torch.equal(b.values[:, 0].long(), b.targets[b.set_index()])  # type: ignore[index]


def test_bucketed_batches_hold_similar_sizes_and_pad_less() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 60, 400).tolist()
    budget = 128
    chunks = stream(sizes, pieces=2)
    plain, bucketed = BatchStats(), BatchStats()
    for b in budget_batches(stream(sizes, pieces=2), budget):
        plain.add(b)
    seen = []
    for b in bucket_batches(chunks, budget, np.random.default_rng(0)):
        bucketed.add(b)
        assert b.num_elements <= budget or b.num_sets == 1
        seen += b.targets.tolist()  # type: ignore[union-attr]
    assert sorted(seen) == list(range(400))
    assert bucketed.padding_fraction < plain.padding_fraction / 3


def test_padding_fraction_pinned() -> None:
    sizes = np.array([1, 3, 2, 6])
    # One batch padded to 6: 24 slots, 12 elements.
    assert padding_fraction(sizes, 100) == pytest.approx(0.5)
    # Windows of 2, sorted: [1, 3] -> 2 x 3 slots, [2, 6] -> 2 x 6: 18 slots, 12 elements.
    assert padding_fraction(sizes, 100, bucket_window=2) == pytest.approx(1 / 3)
    # Budget 4: [1, 3], [2], [6]: 6 + 2 + 6 = 14 slots.
    assert padding_fraction(sizes, 4) == pytest.approx(1 - 12 / 14)
    stats = BatchStats()
    for b in budget_batches(stream(sizes.tolist(), pieces=1), 4):
        stats.add(b)
    assert (stats.sets, stats.elements, stats.batches, stats.padded_slots) == (4, 12, 3, 14)
    assert stats.padding_fraction == pytest.approx(padding_fraction(sizes, 4))
