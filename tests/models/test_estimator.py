"""The gradient estimator is exactly unbiased: the mean over ALL subsets is the full gradient."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mbc_cases import DEEPSETS, UMBC, gen, make_model, mbc_encoders, random_batch

from setpipe.data.batch import SetBatch
from setpipe.errors import ModelError
from setpipe.models import SetModel
from setpipe.models.estimator import (
    GradSubsets,
    _choose,
    estimated_forward,
    sample_subsets,
)


def loss_fn(model: SetModel, out: torch.Tensor, batch: SetBatch) -> torch.Tensor:
    """A loss that is far from linear in the pooled state (the estimator must not need that)."""
    if model.task == "classify":
        return F.cross_entropy(out, torch.arange(out.shape[0]) % out.shape[1]) + (out**4).mean()
    if model.task == "regress":
        return (torch.tanh(out) - 0.3).pow(2).sum()
    # rank: a listwise softmax loss per set, which couples every element's score
    target = torch.linspace(0, 1, out.shape[0], dtype=out.dtype)
    return sum(
        -(target[lo:hi] * torch.log_softmax(out[lo:hi], 0)).sum()
        for lo, hi in itertools.pairwise(batch.offsets.tolist())
    )


def estimate(
    model: SetModel,
    batch: SetBatch,
    subsets: GradSubsets,
    chunk_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``estimated_forward`` on the model's encoder and head."""
    return estimated_forward(
        model.encoder,
        model.head,
        batch,
        subsets,
        chunk_size,
        generator,
        rank=model.task == "rank",
    )


def grads(model: SetModel, out: torch.Tensor, batch: SetBatch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model, out, batch).backward()
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def all_subsets(batch: SetBatch, m: int) -> list[torch.Tensor]:
    """Every choice of min(n_b, m) elements per set (product over sets), as sorted indices."""
    per_set = [
        [torch.tensor(c) for c in itertools.combinations(range(lo, hi), min(hi - lo, m))]
        for lo, hi in itertools.pairwise(batch.offsets.tolist())
    ]
    return [torch.cat(choice).sort().values for choice in itertools.product(*per_set)]


def assert_unbiased(model: SetModel, batch: SetBatch, m: int, chunk_size: int) -> None:
    full = grads(model, model(batch, generator=gen()), batch)
    sizes = batch.sizes()
    factor = sizes.double() / sizes.clamp(max=m).double()
    subsets = all_subsets(batch, m)
    pairs = (
        list(itertools.product(subsets, subsets))
        if model.task == "rank"
        else [(s, None) for s in subsets]
    )
    total = {n: torch.zeros_like(g) for n, g in full.items()}
    for pool, score in pairs:
        out = estimate(model, batch, GradSubsets(pool, factor, score), chunk_size, gen())
        for n, g in grads(model, out, batch).items():
            total[n] += g
    assert len(pairs) == (math.comb(6, 2) if batch.num_sets == 1 else math.comb(5, 3)) ** (
        2 if model.task == "rank" else 1
    )
    for n, g in full.items():
        torch.testing.assert_close(total[n] / len(pairs), g, rtol=0, atol=1e-10, msg=n)


ONE_SET = [6]  # n=6, M=2: 15 subsets
TWO_SETS = [5, 3]  # M=3: the first set has 10 subsets, the second (n <= M) is whole


@mbc_encoders
def test_mean_over_all_subsets_is_the_full_gradient(encoder: dict) -> None:
    model = make_model(encoder, "classify", num_context=2)
    assert_unbiased(model, random_batch(ONE_SET, num_context=2), m=2, chunk_size=2)
    assert_unbiased(model, random_batch(TWO_SETS, seed=1, num_context=2), m=3, chunk_size=4)


@pytest.mark.parametrize(
    "encoder",
    [DEEPSETS[2], UMBC[0], UMBC[15]],
    ids=["deepsets-max", "umbc-slot_sigmoid-res-rand", "umbc-set_softmax-nores-det"],
)
@pytest.mark.parametrize("task", ["regress", "rank"])
def test_unbiased_for_regress_and_rank(encoder: dict, task: str) -> None:
    model = make_model(encoder, task)
    assert_unbiased(model, random_batch(ONE_SET), m=2, chunk_size=3)
    assert_unbiased(model, random_batch(TWO_SETS, seed=1), m=3, chunk_size=4)


def test_single_subset_is_not_the_full_gradient() -> None:
    """The control for the test above: one subset alone is a noisy estimate."""
    model = make_model(UMBC[0])
    batch = random_batch(ONE_SET)
    full = grads(model, model(batch, generator=gen()), batch)
    factor = torch.tensor([3.0], dtype=torch.float64)
    out = estimate(model, batch, GradSubsets(torch.tensor([0, 1]), factor), 4, gen())
    one = grads(model, out, batch)
    assert (one["encoder.k.weight"] - full["encoder.k.weight"]).abs().max() > 1e-3


@mbc_encoders
def test_estimated_forward_equals_forward(encoder: dict) -> None:
    for task in ("classify", "rank"):
        model = make_model(encoder, task, num_context=2)
        batch = random_batch([9, 1, 4, 30], num_context=2)
        out = model.forward_estimated(batch, 3, 5, generator=gen())
        torch.testing.assert_close(out, model(batch, generator=gen()), rtol=0, atol=1e-12)


def test_sample_subsets_sizes_and_factors() -> None:
    batch = random_batch([2, 5, 40, 100])  # whole, medium (key sort), medium, huge (> 8M)
    subsets = sample_subsets(batch, 4, torch.Generator().manual_seed(0), scoring=True)
    assert subsets.factor.tolist() == [1.0, 5 / 4, 10.0, 25.0]
    for chosen in (subsets.pool, subsets.score):
        assert chosen is not None
        owner = torch.searchsorted(batch.offsets[1:], chosen, right=True)
        assert torch.bincount(owner, minlength=4).tolist() == [2, 4, 4, 4]
        assert torch.equal(chosen, chosen.unique())  # sorted and distinct
    assert not torch.equal(subsets.pool, subsets.score)  # independent draws


@pytest.mark.parametrize("n", [7, 60])  # the key-sort path and the rejection path
def test_subsets_are_uniform(n: int) -> None:
    """Each element is chosen with probability M/n: counts within 5 binomial sigmas.

    The draws are ``draws`` sets of n elements in ONE batch (one call, as in training),
    so this also checks that each set gets its own subset of exactly M.
    """
    m, draws = 3, 3000
    batch = random_batch([n] * draws)
    pool = sample_subsets(batch, m, torch.Generator().manual_seed(0)).pool
    owner = torch.searchsorted(batch.offsets[1:], pool, right=True)
    assert torch.equal(torch.bincount(owner, minlength=draws), torch.full((draws,), m))
    counts = torch.bincount(pool - batch.offsets[owner], minlength=n).double()
    p = m / n
    sigma = math.sqrt(draws * p * (1 - p))
    assert (counts - draws * p).abs().max() < 5 * sigma


def test_choose_gives_distinct_indices() -> None:
    chosen = _choose(10**9, 1024, torch.Generator().manual_seed(0))
    assert chosen.numel() == 1024 and chosen.unique().numel() == 1024
    assert int(chosen.min()) >= 0 and int(chosen.max()) < 10**9


def test_set_transformer_refuses_the_estimator() -> None:
    model = make_model({"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 1})
    with pytest.raises(ModelError, match="needs a mini-batch consistent encoder"):
        model.forward_estimated(random_batch([3]), 2, 4)


def test_estimator_under_ddp_matches_plain() -> None:
    """Through DDP's forward (world size 1, gloo) the estimated gradients are the same."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = make_model(UMBC[0])
    batch = random_batch([6, 3])
    plain = grads(
        model, model.forward_estimated(batch, 2, 4, torch.Generator().manual_seed(5)), batch
    )
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        out = ddp(batch, grad_budget=2, chunk_size=4, generator=torch.Generator().manual_seed(5))
        model.zero_grad(set_to_none=True)
        loss_fn(model, out, batch).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, plain[n], rtol=0, atol=1e-12, msg=n)
    finally:
        dist.destroy_process_group()


def test_rank_factor_is_applied_in_float32_under_bf16_autocast() -> None:
    """The n/M factor of the rank scoring pass must not be rounded to the head's bf16.

    Set of n = 7, budget M = 3: n/M = 7/3, which bf16 holds as 2.328125. The loss is
    Σ_i 27·score_i, so every element's score gets the cotangent 27 in the full pass, and
    27·7/3 = 63 (a bf16 number) when it is in the scoring subset: the mean over all 35
    subsets of the cotangent reaching the head is then 63·15/35 = 27, exactly the full
    one. Rounding the factor first gives 27·2.328125 → 62.75, a 0.4% bias on every set.
    """
    model = make_model(DEEPSETS[0], "rank", dtype=torch.float32)
    batch = random_batch([7], dtype=torch.float32)
    seen: list[torch.Tensor] = []

    def keep_cotangent(module, inputs, output) -> None:
        if output.requires_grad:
            output.register_hook(lambda g: seen.append(g.detach().float().clone()))

    model.head.register_forward_hook(keep_cotangent)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        assert out.dtype == torch.bfloat16  # the head's output is bf16 under autocast
        (27 * out.float()).sum().backward()
        full = seen.pop()
        assert torch.equal(full, torch.full((7,), 27.0))
        factor = torch.tensor([7 / 3], dtype=torch.float64)
        pool = torch.arange(7)
        total = torch.zeros(7)
        subsets = [torch.tensor(c) for c in itertools.combinations(range(7), 3)]
        for score in subsets:
            out = estimate(model, batch, GradSubsets(pool, factor, score), 4)
            (27 * out.float()).sum().backward()
            total[score] += seen.pop()
    torch.testing.assert_close(total / len(subsets), full, rtol=2.0**-24, atol=0)


def tied_max_batch() -> SetBatch:
    """One set of 6: three identical rows, large, so they tie for the maximum of phi's
    features that grow along them; three small random rows."""
    g = torch.Generator().manual_seed(3)
    tied = torch.full((3, 3), 2.0, dtype=torch.float64)
    small = 0.1 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    return SetBatch.from_sets([torch.cat([tied[:1], small, tied[1:]])])


def test_max_pooling_with_three_tied_maxima_is_unbiased() -> None:
    """The full-set subgradient of amax splits evenly over the k tied elements; the mean of
    the estimator over all subsets (and any chunking) must give the same split."""
    model = make_model(DEEPSETS[2], "classify")
    batch = tied_max_batch()
    h = model.encoder.phi(batch.values)
    ties = (h == h.amax(0)).sum(0)
    assert (ties == 3).any()  # some features really have three tied maxima
    assert_unbiased(model, batch, m=2, chunk_size=2)


def test_max_pooling_ties_chunked_gradient_equals_whole() -> None:
    """Ties split across chunks (rows 0 | 1-3 | 4-5): each tied element gets the same
    share of the gradient as in the whole set's amax (a third), not 1/2, 1/4, 1/4."""
    model = make_model(DEEPSETS[2], "classify")
    enc = model.encoder
    batch = tied_max_batch()
    index = batch.set_index()
    shares = []
    for bounds in ([(0, 6)], [(0, 1), (1, 4), (4, 6)]):
        values = batch.values.clone().requires_grad_()
        state = enc.init_state(1, dtype=torch.float64)
        for lo, hi in bounds:
            state = enc.update(state, values[lo:hi], index[lo:hi])
        enc.pooled(state).sum().backward()  # d/dvalues: each element's share, through phi
        shares.append(values.grad)
    torch.testing.assert_close(shares[1], shares[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "budget", "chunk", "blocks"),
    [
        (3000, 16, 4096, 3),  # a small budget: blocks of 1024 (M = 16 made 188 of them)
        (9000, 2048, 4096, 5),  # a budget above 1024: blocks of M, the graph's size
        (3000, 16, 512, 6),  # never more than chunk_size
    ],
)
def test_no_grad_pass_runs_in_blocks_of_max_budget_1024(
    n: int, budget: int, chunk: int, blocks: int
) -> None:
    """The elements outside the subset go through the encoder in blocks of
    min(chunk_size, max(M, 1024)): per-call overhead made M = 64 blocks 6x slower."""
    model = make_model(DEEPSETS[0], dtype=torch.float32)
    batch = random_batch([n], dtype=torch.float32)
    sizes: list[int] = []
    model.encoder.phi.register_forward_hook(
        lambda m, i, o: None if torch.is_grad_enabled() else sizes.append(i[0].shape[0])
    )
    model.forward_estimated(batch, budget, chunk, torch.Generator().manual_seed(0))
    assert len(sizes) == blocks and sum(sizes) == n - budget
    assert max(sizes) <= min(chunk, max(budget, 1024))
