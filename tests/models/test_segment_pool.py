"""UMBC's tiled-matmul pooling equals the plain outer-product scatter, values and gradients."""

from __future__ import annotations

import pytest
import torch

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
