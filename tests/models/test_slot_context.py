"""Rank heads that read their set's slots (model.head.context: slots): the element-scoring
properties hold (chunked = whole, permutation equivariance, other sets and padding never
reach a set's scores, the estimator stays unbiased), and the slots carry the list."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from mbc_cases import NUM_FEATURES, UMBC, gen, random_batch
from pydantic import ValidationError
from test_estimator import ONE_SET, TWO_SETS, assert_unbiased

from setpipe.data.batch import SetBatch
from setpipe.models import SetModel, build_model
from setpipe.models.slot_context import SlotAttention, SlotStates
from setpipe.spec.models import ModelSpec

ENCODERS: dict[str, dict[str, Any]] = {
    "umbc-st-head": UMBC[0],  # slot_sigmoid, residual, random slots, SAB + PMA
    "umbc-mlp-head": UMBC[2],  # slot_sigmoid, no residual, random slots, mlp head
    "umbc-set_softmax-2-seeds": UMBC[15],  # no SAB layer, two PMA seeds
    "deepsets": {"kind": "deepsets", "phi": [8, 8], "rho": [8]},
    "set_transformer": {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 1},
}
SIZES = [5, 1, 11, 3]
TOL = {"rtol": 0, "atol": 1e-10}  # float64


def slots_model(encoder: dict[str, Any], num_context: int = 0, seed: int = 0) -> SetModel:
    torch.manual_seed(seed)
    spec = ModelSpec(
        encoder=encoder,
        task="rank",
        head={"hidden": [8], "context": "slots", "context_heads": 2},
    )
    return build_model(spec, NUM_FEATURES, num_context).double().train()


def scores(model: SetModel, batch: SetBatch) -> torch.Tensor:
    return model(batch, generator=gen()).detach()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_chunked_scoring_equals_whole_list(name: str) -> None:
    model = slots_model(ENCODERS[name], num_context=2).eval()
    batch = random_batch(SIZES, num_context=2)
    whole = scores(model, batch)
    assert whole.shape == (sum(SIZES),)
    for chunk in (1, 3, 7):
        torch.testing.assert_close(model.predict_chunked(batch, chunk), whole, **TOL)
    if model.is_mbc:  # streamed: one set, chunk by chunk, both passes
        one = random_batch([50], num_context=2, seed=3)
        emb = model.encode_stream((one.values[i : i + 7] for i in range(0, 50, 7)), one.context[0])
        streamed = model.score_stream((one.values[i : i + 9] for i in range(0, 50, 9)), emb)
        torch.testing.assert_close(torch.cat(list(streamed)), scores(model, one), **TOL)


@pytest.mark.parametrize("name", ["umbc-st-head", "umbc-mlp-head", "umbc-set_softmax-2-seeds"])
def test_estimated_forward_equals_forward(name: str) -> None:
    """Training mode, random slots from the same generator: the estimator's values are the
    whole pass's (the gradient subsets only decide where the gradient flows)."""
    model = slots_model(ENCODERS[name])
    batch = random_batch(SIZES)
    estimated = model(batch, grad_budget=3, chunk_size=4, generator=gen())
    torch.testing.assert_close(estimated.detach(), scores(model, batch), **TOL)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_scores_are_permutation_equivariant(name: str) -> None:
    model = slots_model(ENCODERS[name]).eval()
    batch = random_batch(SIZES)
    g = torch.Generator().manual_seed(7)
    bounds = itertools.pairwise(batch.offsets.tolist())
    order = torch.cat([lo + torch.randperm(hi - lo, generator=g) for lo, hi in bounds])
    permuted = SetBatch(values=batch.values[order], offsets=batch.offsets)
    torch.testing.assert_close(scores(model, permuted), scores(model, batch)[order], **TOL)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_other_sets_and_padding_never_change_a_sets_scores(name: str) -> None:
    """Set 2 (11 elements) scored alone, and beside sets of other sizes (the Set
    Transformer pads them to 11 or to 40), gives the same scores."""
    model = slots_model(ENCODERS[name]).eval()
    batch = random_batch(SIZES)
    lo, hi = batch.offsets[2].item(), batch.offsets[3].item()
    alone = scores(model, SetBatch.from_sets([batch.values[lo:hi]]))
    torch.testing.assert_close(scores(model, batch)[lo:hi], alone, **TOL)
    bigger = random_batch([40, 2], seed=5)
    mixed = SetBatch.from_sets([bigger.values[:40], batch.values[lo:hi], bigger.values[40:]])
    torch.testing.assert_close(scores(model, mixed)[40:51], alone, **TOL)


@pytest.mark.parametrize("name", ["umbc-st-head", "set_transformer"])
def test_an_elements_score_reads_its_set_mates(name: str) -> None:
    model = slots_model(ENCODERS[name]).eval()
    batch = random_batch([4, 4], seed=2)
    moved = batch.values.clone()
    moved[1:4] += 3.0  # only the set-mates of element 0
    out, other = scores(model, batch), scores(model, SetBatch(values=moved, offsets=batch.offsets))
    assert abs(float(out[0] - other[0])) > 1e-4
    torch.testing.assert_close(out[4:], other[4:], **TOL)


@pytest.mark.parametrize("name", ["umbc-st-head", "umbc-set_softmax-2-seeds"])
def test_estimator_is_unbiased_with_slot_attention(name: str) -> None:
    """The mean over ALL pairs of (pooling subset, scoring subset) is the full gradient."""
    model = slots_model(ENCODERS[name])
    assert_unbiased(model, random_batch(ONE_SET), m=2, chunk_size=3)
    assert_unbiased(model, random_batch(TWO_SETS, seed=1), m=3, chunk_size=4)


def test_umbc_slot_states_are_the_slots_then_the_pooled_outputs() -> None:
    model = slots_model(ENCODERS["umbc-set_softmax-2-seeds"]).eval()
    encoder = model.encoder
    assert isinstance(encoder, SlotStates)
    umbc = encoder.inner
    batch = random_batch(SIZES)
    state = umbc.update(umbc.init_state(4, dtype=torch.float64), batch.values, batch.set_index())
    slots = umbc.slot_states(state)
    assert slots.shape == (4, 4 + 2, 8) and umbc.slot_states_shape == (6, 8)
    # No SAB layer: the first K are the pooled slots, the last two the PMA outputs, which
    # flattened are UMBC's own set embedding.
    torch.testing.assert_close(slots[:, :4], umbc.slot_outputs(state), **TOL)
    torch.testing.assert_close(slots[:, 4:].flatten(1), umbc.finalize(state), **TOL)


def test_slot_attention_reads_only_its_own_sets_slots() -> None:
    """Element i's read-out depends on slots[set_index[i]] only (exactly: other sets'
    slots are replaced by garbage)."""
    torch.manual_seed(0)
    attend = SlotAttention(num_features=3, slot_dim=5, dim=8, heads=2).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    set_index = torch.tensor([1, 0, 1, 2, 1, 0])
    slots = torch.randn(3, 4, 5, dtype=torch.float64)
    out = attend(x, set_index, slots)
    assert out.shape == (6, 8)
    garbage = slots.clone()
    garbage[[0, 2]] = 1e3
    torch.testing.assert_close(attend(x, set_index, garbage)[[0, 2, 4]], out[[0, 2, 4]], **TOL)
    with pytest.raises(ValueError, match="dim 6 is not a multiple of heads 4"):
        SlotAttention(3, 5, 6, 4)


def test_slots_context_is_for_rank_only() -> None:
    with pytest.raises(ValidationError) as err:
        ModelSpec(
            encoder=ENCODERS["umbc-st-head"],
            task="classify",
            num_classes=2,
            head={"context": "slots"},
        )
    assert (
        "model.head.context: slots is for task rank (elements read their set's slots), not "
        "classify; remove it or use task rank"
    ) in str(err.value)
