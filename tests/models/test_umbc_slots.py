"""UMBC slots: equivariance, and random slots drawn once per set (never per chunk)."""

from __future__ import annotations

import pytest
import torch
from mbc_cases import UMBC, encoder_id, gen, make_model, random_batch

umbc_encoders = pytest.mark.parametrize("encoder", UMBC, ids=[encoder_id(e) for e in UMBC])


@umbc_encoders
def test_slot_equivariance(encoder: dict) -> None:
    """Permuting the slots permutes the pooled slot vectors (before the head)."""
    model = make_model(encoder).eval()  # eval: random slots are their means, no noise to permute
    enc = model.encoder
    batch = random_batch([6, 3, 9])

    def slot_outputs():
        state = enc.init_state(batch.num_sets, dtype=torch.float64)
        return enc.slot_outputs(enc.update(state, batch.values, batch.set_index()))

    before = slot_outputs()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        for name in ("slots", "slot_mean", "slot_log_std"):
            if hasattr(enc, name):
                getattr(enc, name).copy_(getattr(enc, name)[perm])
    after = slot_outputs()
    torch.testing.assert_close(after, before[:, perm], rtol=0, atol=1e-12)
    assert (after - before).abs().max() > 1e-3  # the permutation did change slot order


def test_random_slots_are_drawn_per_set_once() -> None:
    enc = make_model(next(e for e in UMBC if e["random_slots"])).encoder
    q = enc.init_state(3, dtype=torch.float64, generator=gen(5))["query"]
    assert q.shape == (3, 4, 8)
    assert (q[0] - q[1]).abs().max() > 1e-4  # every set its own draw
    torch.testing.assert_close(
        q, enc.init_state(3, dtype=torch.float64, generator=gen(5))["query"], rtol=0, atol=0
    )
    # update never redraws: the query passes through every chunk unchanged
    batch = random_batch([4, 2, 5])
    state = enc.init_state(3, dtype=torch.float64, generator=gen(5))
    for lo in range(0, batch.num_elements, 3):
        state = enc.update(state, batch.values[lo : lo + 3], batch.set_index()[lo : lo + 3])
    assert torch.equal(state["query"], q)
    # inference uses the mean slots: one shared query, deterministic
    enc.eval()
    shared = enc.init_state(3, dtype=torch.float64, generator=gen(6))["query"]
    assert shared.shape == (1, 4, 8)


def test_set_softmax_is_the_exact_softmax_over_the_set() -> None:
    """The pooled slot value equals a per-set softmax over elements computed by hand."""
    spec = next(e for e in UMBC if e["attention"] == "set_softmax" and not e["slot_residual"])
    enc = make_model({**spec, "random_slots": False}).encoder
    batch = random_batch([5, 8])
    values = batch.values * 30  # large logits: the running max is what keeps exp finite
    state = enc.init_state(2, dtype=torch.float64)
    for lo in range(0, batch.num_elements, 2):
        state = enc.update(state, values[lo : lo + 2], batch.set_index()[lo : lo + 2])
    x = enc.embed(values)
    k = enc.k(x).view(-1, 2, 4)
    v = enc.v(x).view(-1, 2, 4)
    q = state["query"][0].view(4, 2, 4)
    for b, (lo, hi) in enumerate([(0, 5), (5, 13)]):
        logits = torch.einsum("ehd,khd->hke", k[lo:hi], q) / 2.0  # sqrt(dim/heads) = 2
        w = logits.softmax(-1)
        pooled = torch.einsum("hke,ehd->khd", w, v[lo:hi]).reshape(4, 8)
        got = state["num"][b] / state["den"][b][..., None]
        torch.testing.assert_close(got.permute(1, 0, 2).reshape(4, 8), pooled, rtol=0, atol=1e-12)
