"""Training-time augmentation: per-set rotations and reflections, seeded, input untouched."""

from __future__ import annotations

import torch

from setpipe.data import SetBatch, augment_batch
from setpipe.spec.models import ReflectAugment, RotateAugment

NAMES = ["log_pt", "y_rel", "phi_rel"]


def batch(seed: int = 0) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (5, 1, 9, 4, 7, 3)]
    return SetBatch.from_sets(sets)


def test_rotate_turns_each_set_by_one_angle() -> None:
    b = batch()
    before = b.values.clone()
    op = RotateAugment(op="rotate", features=("y_rel", "phi_rel"))
    out = augment_batch(b, [op], NAMES, torch.Generator().manual_seed(1))
    assert torch.equal(b.values, before)  # the input batch is not written
    assert torch.equal(out.values[:, 0], before[:, 0])  # other features pass through
    assert torch.equal(out.offsets, b.offsets)
    # A rotation keeps every element's distance from the axis...
    torch.testing.assert_close(out.values[:, 1:].norm(dim=1), before[:, 1:].norm(dim=1))
    # ...and turns all elements of one set by the same angle; sets get different angles.
    turn = torch.atan2(out.values[:, 2], out.values[:, 1]) - torch.atan2(before[:, 2], before[:, 1])
    turn = torch.remainder(turn, 2 * torch.pi)
    angles = []
    for s in range(b.num_sets):
        mine = turn[b.offsets[s] : b.offsets[s + 1]]
        torch.testing.assert_close(mine, mine[:1].expand_as(mine))
        angles.append(float(mine[0]))
    assert len({round(a, 6) for a in angles}) == b.num_sets
    # Seeded: the same generator state gives the same batch, another seed another one.
    again = augment_batch(b, [op], NAMES, torch.Generator().manual_seed(1))
    other = augment_batch(b, [op], NAMES, torch.Generator().manual_seed(2))
    assert torch.equal(out.values, again.values)
    assert not torch.equal(out.values, other.values)


def test_reflect_flips_whole_sets() -> None:
    b = batch(3)
    op = ReflectAugment(op="reflect", features=["y_rel"])
    flipped = set()
    for seed in range(8):
        out = augment_batch(b, [op], NAMES, torch.Generator().manual_seed(seed))
        assert torch.equal(out.values[:, [0, 2]], b.values[:, [0, 2]])
        sign = out.values[:, 1] / b.values[:, 1]
        for s in range(b.num_sets):
            mine = sign[b.offsets[s] : b.offsets[s + 1]]
            assert bool((mine == mine[0]).all()) and float(mine[0]) in (1.0, -1.0)
            flipped.add(float(mine[0]))
    assert flipped == {1.0, -1.0}


def test_no_ops_or_no_elements_return_the_batch() -> None:
    b = batch()
    assert augment_batch(b, [], NAMES) is b
    empty = SetBatch.from_sets([torch.zeros(0, 3)])
    op = RotateAugment(op="rotate", features=("y_rel", "phi_rel"))
    assert augment_batch(empty, [op], NAMES) is empty
