"""Numerics at any set size: finite attention at extreme logits, float32 sums that do not drift
with n, exact counts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mbc_cases import NUM_FEATURES, make_model, random_batch

from setpipe.data.batch import SetBatch

U32 = 2.0**-24  # unit roundoff of float32

SLOT_SIGMOID = {
    "kind": "umbc",
    "embed": [8],
    "slots": 4,
    "heads": 2,
    "dim": 8,
    "attention": "slot_sigmoid",
    "slot_head": {"kind": "mlp"},
}


def slot_sigmoid_reference(s: torch.Tensor) -> torch.Tensor:
    """σ(s_k) / Σ_j σ(s_j) in float64 by another route: log σ(s) = -softplus(-s), shifted by
    its max over slots before exp, so nothing underflows to 0/0."""
    log_sig = -F.softplus(-s.double())
    w = torch.exp(log_sig - log_sig.amax(-1, keepdim=True))
    return w / w.sum(-1, keepdim=True)


def test_slot_sigmoid_is_finite_for_inputs_scaled_1000() -> None:
    """Logits of ~1e3: float32 σ is 0 below about -88 (exp overflows in 1/(1+e^-s)), and for
    some elements every slot of a head is that far down: σ(s)/Σσ was 0/0 = NaN there."""
    model = make_model(SLOT_SIGMOID, dtype=torch.float32, seed=2).eval()
    enc = model.encoder
    batch = random_batch([2000, 3], dtype=torch.float32)
    big = SetBatch(values=batch.values * 1000, offsets=batch.offsets)
    with torch.no_grad():
        state = enc.update(enc.init_state(2), big.values, big.set_index())
        out = model(big)
        keys = enc.k(enc.embed(big.values)).view(-1, 2, 4)
        s = enc._scores(keys, state["query"], big.set_index())
    assert (torch.sigmoid(s).sum(-1) == 0).any()  # the case: σ underflows on every slot
    assert torch.isfinite(state["num"]).all() and torch.isfinite(state["den"]).all()
    assert torch.isfinite(out).all()
    # The float32 weights against the float64 reference on the same float32 logits.
    from setpipe.models.umbc import attention_weights

    a = attention_weights(s, "slot_sigmoid")
    assert a.dtype == torch.float32
    # A weight is exp of a difference of float32 log-sigmoids of size up to |s|: its
    # relative error is a few |s|·u, the rounding of the logits' own magnitude.
    rtol = 4 * float(s.abs().amax()) * U32
    torch.testing.assert_close(a.double(), slot_sigmoid_reference(s), rtol=rtol, atol=1e-30)


def test_slot_sigmoid_with_collapsed_slots() -> None:
    """All K slots identical and every logit -200 (σ = 1e-87, 0 in float32): each slot gets
    weight 1/K, so every pooled slot is the plain mean of the values, in float32 as in float64."""
    outs = {}
    sets = random_batch([30, 5])  # float64; the float32 run gets the same values rounded
    for dtype in (torch.float32, torch.float64):
        model = make_model(SLOT_SIGMOID, dtype=dtype).eval()
        enc = model.encoder
        with torch.no_grad():
            enc.q.weight.zero_()
            enc.q.bias.fill_(1.0)  # every slot's query is the ones vector
            enc.k.weight.zero_()
            enc.k.bias.fill_(-100.0)  # logit per head: 4 · (-100) / sqrt(4) = -200
        batch = SetBatch(values=sets.values.to(dtype), offsets=sets.offsets)
        state = enc.update(enc.init_state(2, dtype=dtype), batch.values, batch.set_index())
        assert torch.isfinite(state["den"]).all()
        sizes = torch.tensor([30.0, 5.0], dtype=dtype)[:, None, None]
        torch.testing.assert_close(state["den"], (sizes / 4).expand(2, 2, 4), rtol=0, atol=0)
        outs[dtype] = (enc.slot_outputs(state), model(batch))
    for got, want in zip(outs[torch.float32], outs[torch.float64], strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- float32 sums at n = 4e6

N_HUGE = 4_000_000
CHUNK = 4096
SMALL_DEEPSETS = {"kind": "deepsets", "phi": [4], "rho": [4], "pooling": "sum"}
SMALL_UMBC = {
    "kind": "umbc",
    "embed": [4],
    "slots": 2,
    "heads": 1,
    "dim": 4,
    "attention": "slot_sigmoid",
    "slot_head": {"kind": "mlp"},
}


def huge_set() -> torch.Tensor:
    return torch.randn(N_HUGE, NUM_FEATURES, generator=torch.Generator().manual_seed(0))


def fold(enc, values: torch.Tensor, chunk: int | None) -> dict[str, torch.Tensor]:
    """One set's state from ``values`` whole (chunk None) or ``chunk`` elements at a time."""
    state = enc.init_state(1, dtype=values.dtype)
    step = chunk or values.shape[0]
    with torch.no_grad():
        for lo in range(0, values.shape[0], step):
            part = values[lo : lo + step]
            state = enc.update(state, part, torch.zeros(part.shape[0], dtype=torch.long))
    return state


def sum_bound(chunks: int) -> float:
    """Worst-case relative error of a float32 sum of nonnegative terms against float64.

    Each chunk is summed in tiles of at most T = 256 terms, tile sums again in tiles, and
    so on (three levels for n ≤ 256³ ≈ 1.7e7), each level into fresh zeros: at most
    3·(T - 1) roundings per term; then one rounding per chunk as it joins the running
    state (Higham, Accuracy and Stability, §4.2: recursive summation of k terms errs by
    at most (k - 1)·u·Σ|x|). The per-element layers (φ, k, v) add a few u per term; we
    allow 16. The old code added all n terms to one running sum: (n - 1)·u, 0.24 here,
    and in practice 3e-4 (DeepSets) and 2e-2 (UMBC's Σa).
    """
    return (3 * 255 + chunks + 16) * U32


def test_deepsets_sum_and_mean_at_4e6_elements_float32() -> None:
    x = huge_set()
    m32 = make_model(SMALL_DEEPSETS, dtype=torch.float32).encoder
    m64 = make_model(SMALL_DEEPSETS, dtype=torch.float64).encoder  # same seed: same weights
    mean32 = make_model({**SMALL_DEEPSETS, "pooling": "mean"}, dtype=torch.float32).encoder
    mean64 = make_model({**SMALL_DEEPSETS, "pooling": "mean"}, dtype=torch.float64).encoder
    want = fold(m64, x.double(), None)
    assert int(want["count"]) == N_HUGE
    for chunk in (None, CHUNK):
        got = fold(m32, x, chunk)
        assert int(got["count"]) == N_HUGE  # exact
        chunks = 1 if chunk is None else math.ceil(N_HUGE / chunk)
        # φ ends in a ReLU: every term is ≥ 0, so Σ|h| = Σh and the bound is relative.
        rel = ((got["sum"].double() - want["sum"]).abs() / want["sum"]).max()
        assert rel <= sum_bound(chunks), f"chunk={chunk}: relative error {rel:.2e}"
        for enc32, enc64 in ((m32, m64), (mean32, mean64)):
            p32, p64 = enc32.pooled(got).double(), enc64.pooled(want)
            torch.testing.assert_close(p32, p64, rtol=sum_bound(chunks) + 2 * U32, atol=0)


def test_umbc_sums_at_4e6_elements_float32() -> None:
    x = huge_set()
    m32 = make_model(SMALL_UMBC, dtype=torch.float32).encoder.eval()
    m64 = make_model(SMALL_UMBC, dtype=torch.float64).encoder.eval()
    want = fold(m64, x.double(), None)
    with torch.no_grad():  # Σ a·|v| ≤ Σa · max|v|: the scale of num's error bound
        vmax = float(m64.v(m64.embed(x.double())).abs().amax())
    for chunk in (None, CHUNK):
        got = fold(m32, x, chunk)
        bound = sum_bound(1 if chunk is None else math.ceil(N_HUGE / chunk))
        den_rel = ((got["den"].double() - want["den"]).abs() / want["den"]).max()
        assert den_rel <= bound, f"chunk={chunk}: Σa relative error {den_rel:.2e}"
        num_err = (got["num"].double() - want["num"]).abs()
        assert (num_err <= bound * want["den"][..., None] * vmax).all(), f"chunk={chunk}"
        torch.testing.assert_close(
            m32.slot_outputs(got).double(), m64.slot_outputs(want), rtol=1e-4, atol=1e-4
        )
