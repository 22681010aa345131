"""Tiled per-set sums equal the plain index_add scatter, values and gradients: UMBC's
tiled-matmul pooling and segment_sum's tiles of tile sums."""

from __future__ import annotations

import pytest
import torch

from setpipe.models.segment import SUM_TILE, segment_sum
from setpipe.models.umbc import segment_pool, tile_size


def scatter_pool(
    a: torch.Tensor, vals: torch.Tensor, set_index: torch.Tensor, num_sets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: Σ_i a_i[h,k] v_i[h,:] and Σ_i a_i[h,k] per set, by index_add."""
    heads, k, d = a.shape[1], a.shape[2], vals.shape[2]
    num = a.new_zeros(num_sets, heads, k, d).index_add(
        0, set_index, a[..., None] * vals[:, :, None]
    )
    return num, a.new_zeros(num_sets, heads, k).index_add(0, set_index, a)


def sizes_case(name: str) -> list[int]:
    return {
        # one huge set (tiles of 256, the last one padded), jet-like sizes (tiles of 32),
        # mostly one-element sets (tiles of 1: the outer product), a mix with empty sets,
        # sizes that leave ragged last tiles, and sets that fill whole tiles (no padding:
        # the transpose path).
        "huge": [3000],
        "jets": [45, 12, 80, 3, 120, 44, 46, 7, 60, 33],
        "tiny": [1] * 40 + [2] * 10,
        "mixed": [0, 5, 0, 300, 1, 1, 1, 1, 1, 1, 17, 0],
        "ragged": [257, 3, 19],
        "whole_tiles": [64, 32, 96],
    }[name]


@pytest.mark.parametrize("case", ["huge", "jets", "tiny", "mixed", "ragged", "whole_tiles"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_segment_pool_matches_scatter(case: str, shuffle: bool) -> None:
    sizes = sizes_case(case)
    g = torch.Generator().manual_seed(len(sizes) + shuffle)
    set_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    if shuffle:  # update() may get elements in any order (random partitions)
        set_index = set_index[torch.randperm(set_index.numel(), generator=g)]
    e, heads, k, d = set_index.numel(), 2, 3, 5
    a = torch.rand(e, heads, k, generator=g, dtype=torch.float64, requires_grad=True)
    vals = torch.randn(e, heads, d, generator=g, dtype=torch.float64, requires_grad=True)
    got = segment_pool(a, vals, set_index, len(sizes))
    want = scatter_pool(a, vals, set_index, len(sizes))
    if case == "whole_tiles" and not shuffle:
        t = tile_size(sum(sizes) / len(sizes))
        assert all(n % t == 0 for n in sizes)  # every set whole tiles: really the no-pad path
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # Gradients through both outputs with the same random cotangents.
    cot = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    grads_got = torch.autograd.grad(got, (a, vals), cot)
    grads_want = torch.autograd.grad(want, (a, vals), cot)
    for x, y in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_empty_chunk_pools_to_zero() -> None:
    a = torch.zeros(0, 2, 3)
    num, den = segment_pool(a, torch.zeros(0, 2, 5), torch.zeros(0, dtype=torch.long), 4)
    assert num.shape == (4, 2, 3, 5) and den.shape == (4, 2, 3)
    assert not num.any() and not den.any()


@pytest.mark.parametrize(
    "sizes",
    [
        [70_000],  # three levels: 274 tiles of 256, then 2 tiles of tile sums, then index_add
        [0, 5, 1000, 1, 256, 0, 300],  # small sets summed at once beside big ones
        [512, 256, 768],  # every set whole tiles: the grid is a view
        [3, 200, 17],  # all at most one tile: the plain index_add
    ],
    ids=["three-levels", "mixed", "whole-tiles", "small"],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_segment_sum_matches_index_add(sizes: list[int], shuffle: bool) -> None:
    g = torch.Generator().manual_seed(len(sizes))
    set_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    if shuffle:
        set_index = set_index[torch.randperm(set_index.numel(), generator=g)]
    x = torch.randn(set_index.numel(), 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    got = segment_sum(x, set_index, len(sizes))
    want = x.new_zeros(len(sizes), 2, 3).index_add(0, set_index, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (grad_got,) = torch.autograd.grad(got, x, cot)
    torch.testing.assert_close(grad_got, cot[set_index], rtol=0, atol=0)


def test_segment_sum_float32_error_does_not_grow_with_n() -> None:
    """1e6 terms of 1 + U(0, 1) in float32: the sum errs by at most 2·(SUM_TILE - 1)·u
    relative (two levels of tiles; 1.3e-8 here), one running index_add by 1e-5."""
    x = 1 + torch.rand(1_000_000, 1, generator=torch.Generator().manual_seed(0))
    index = torch.zeros(x.shape[0], dtype=torch.long)
    exact = x.double().sum()
    tiled = float(segment_sum(x, index, 1)[0, 0])
    running = float(x.new_zeros(1, 1).index_add(0, index, x)[0, 0])
    u = 2.0**-24
    assert abs(tiled - exact) / exact <= 2 * (SUM_TILE - 1) * u
    assert abs(running - exact) > 100 * abs(tiled - exact)  # the control
