"""The copy-once shuffle: batches gathered straight from the blocks the buffer holds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from setpipe.data import SetBatch
from setpipe.data.batching import shuffled_batches


def blocks(sizes: list[int], pieces: int, seed: int = 0) -> list[SetBatch]:
    """Sets whose every element carries the set's id in feature 0 (float32, 4 features, as
    a jet block), with context, targets, element targets and weights keyed on the id."""
    rng = np.random.default_rng(seed)
    ids = np.arange(len(sizes))
    cuts = np.linspace(0, len(sizes), pieces + 1).astype(int)
    out = []
    for a, b in itertools.pairwise(cuts):
        sets = [
            torch.from_numpy(
                np.concatenate([np.full((n, 1), i), rng.normal(size=(n, 3))], 1, dtype=np.float32)
            )
            for i, n in zip(ids[a:b], sizes[a:b], strict=True)
        ]
        out.append(
            SetBatch.from_sets(
                sets,
                context=torch.from_numpy(ids[a:b, None] * 2.0).float(),
                targets=torch.from_numpy(ids[a:b]),
                element_targets=torch.cat([s[:, 0] * 3 for s in sets]),
                weights=torch.from_numpy(ids[a:b] * 0.5).float(),
            )
        )
    return out


@pytest.mark.parametrize(("buffer", "budget"), [(64, 40), (1000, 40), (16, 7), (1, 30)])
def test_every_set_once_intact_within_budget_and_seeded(buffer: int, budget: int) -> None:
    sizes = np.random.default_rng(3).integers(1, 12, 400).tolist()

    def run(seed: int) -> list[SetBatch]:
        return list(shuffled_batches(blocks(sizes, 9), buffer, budget, np.random.default_rng(seed)))

    batches = run(5)
    order = [int(t) for b in batches for t in b.targets]  # type: ignore[union-attr]
    assert sorted(order) == list(range(400))  # every set exactly once
    assert order != sorted(order)
    assert order == [int(t) for b in run(5) for t in b.targets]  # type: ignore[union-attr]
    assert order != [int(t) for b in run(6) for t in b.targets]  # type: ignore[union-attr]
    for b in batches:
        assert b.num_elements <= budget or b.num_sets == 1
        assert b.values.dtype == torch.float32 and b.values.is_contiguous()
        # Every field of every set still belongs to that set: nothing shifted between sets.
        ids = b.targets
        assert ids is not None and b.context is not None and b.weights is not None
        assert torch.equal(b.values[:, 0].long(), ids[b.set_index()])
        assert torch.equal(b.element_targets, b.values[:, 0] * 3)  # type: ignore[arg-type]
        assert torch.equal(b.context[:, 0], ids.float() * 2)
        assert torch.equal(b.weights, ids.float() * 0.5)
        assert b.sizes().tolist() == [sizes[i] for i in ids.tolist()]


def test_gather_from_several_blocks_equals_select_on_their_concatenation() -> None:
    parts = blocks(np.random.default_rng(1).integers(0, 9, 60).tolist(), 3)
    rng = np.random.default_rng(2)
    source = rng.integers(0, 3, 25)
    sets = np.array([rng.integers(0, parts[s].num_sets) for s in source])
    got = SetBatch.gather(parts, source, sets)
    # Grouped by source, in the given order within each source.
    order = np.argsort(source, kind="stable")
    base = np.cumsum([0] + [p.num_sets for p in parts])
    want = SetBatch.concat(parts).select(torch.from_numpy(base[source[order]] + sets[order]))
    for name in ("values", "offsets", "context", "targets", "element_targets", "weights"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
