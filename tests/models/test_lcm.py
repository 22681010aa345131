"""LCM pooling: a learned commutative operator folded as a balanced tree (setpipe/models/lcm.py).

Commutativity is exact (bitwise); associativity is not, so what the tests pin is where
the result may and may not move: swapping siblings never moves it, the empty state is an
exact identity, a set inside one chunk gives the whole-set result, and the partition error
is the relative distance of a stated chunking from the whole-set tree.
"""

from __future__ import annotations

import pytest
import torch
from mbc_cases import make_model, random_batch

from setpipe.data.batch import SetBatch
from setpipe.errors import SpecError
from setpipe.models.deepsets import DeepSets
from setpipe.models.lcm import LCMOperator, assoc_loss, tree_reduce
from setpipe.spec import job_from_dict

LCM = {"kind": "deepsets", "phi": [8, 8], "rho": [8], "pooling": "lcm", "lcm_hidden": [16]}


def lcm_model(dtype: torch.dtype = torch.float64, weight: float = 0.0) -> DeepSets:
    """A DeepSets-LCM whose operator is far from the sum (g's zero-initialised last layer
    drawn at random), so non-associativity shows."""
    model = make_model({**LCM, "lcm_assoc_weight": weight}, dtype=dtype).encoder
    assert isinstance(model, DeepSets) and model.lcm is not None
    torch.manual_seed(7)
    for p in model.lcm.g[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_is_exactly_commutative(dtype: torch.dtype) -> None:
    op = lcm_model(dtype).lcm
    assert op is not None
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=g, dtype=dtype) * 10
    b = torch.randn(64, 8, generator=g, dtype=dtype)
    assert torch.equal(op(a, b), op(b, a))
    assert (op(a, b) - (a + b)).abs().max() > 0.1  # g is not zero: a real operator


def test_untrained_operator_is_the_sum() -> None:
    """g's last layer starts at zero: a + b exactly, so training starts from sum pooling."""
    op = LCMOperator(8, [16]).double()
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    assert torch.equal(op(a, b), a + b)


def pooled(model: DeepSets, values: torch.Tensor) -> torch.Tensor:
    """The pooled vector of one set given in this element order."""
    state = model.update(
        model.init_state(1, dtype=values.dtype),
        values,
        torch.zeros(values.shape[0], dtype=torch.long),
    )
    return state["lcm"][0]


def test_swapping_siblings_is_bitwise_equal_other_permutations_are_not() -> None:
    """8 leaves: the tree is ((01)(23))((45)(67)). Swapping two children of any node
    (0<->1, the pair (01)<->(23), the halves) is commutativity: bitwise equal. Moving an
    element across a node (1<->2) re-brackets, and the result moves by as much as the
    operator is non-associative: here by more than 1e-3 relative."""
    model = lcm_model()
    x = random_batch([8]).values
    ref = pooled(model, x)
    for order in ([1, 0, 2, 3, 4, 5, 6, 7], [2, 3, 0, 1, 4, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3]):
        assert torch.equal(pooled(model, x[order]), ref), order
    moved = pooled(model, x[[0, 2, 1, 3, 4, 5, 6, 7]])
    assert (moved - ref).norm() / ref.norm() > 1e-3


def test_tree_matches_hand_bracketing_with_odd_counts() -> None:
    """5 leaves: ((01)(23))4, the odd last node carried up unchanged at each level."""
    model = lcm_model()
    op = model.lcm
    assert op is not None
    h = torch.randn(5, 8, dtype=torch.float64)
    value, count, _ = tree_reduce(op, h, torch.zeros(5, dtype=torch.long), 1)
    e = [h[i : i + 1] for i in range(5)]
    expected = op(op(op(e[0], e[1]), op(e[2], e[3])), e[4])
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-14)
    assert count.tolist() == [5]


def test_empty_state_and_empty_chunk_are_exact_identities() -> None:
    model = lcm_model()
    batch = random_batch([4, 6])
    whole = model.update(model.init_state(2, dtype=torch.float64), batch.values, batch.set_index())
    merged = model.merge(model.init_state(2, dtype=torch.float64), whole)
    assert torch.equal(merged["lcm"], whole["lcm"])
    assert torch.equal(
        model.merge(whole, model.init_state(2, dtype=torch.float64))["lcm"], whole["lcm"]
    )
    empty = model.update(whole, batch.values[:0], batch.set_index()[:0])
    assert torch.equal(empty["lcm"], whole["lcm"]) and torch.equal(empty["count"], whole["count"])


def test_padding_never_changes_outputs() -> None:
    """A set alone, or beside a much larger set (the tree pads it to the larger width), or
    with sets of every size around it: the same embedding (float64, 1e-12)."""
    model = lcm_model()
    batch = random_batch([3, 17, 1, 6])
    together = model(batch)
    for i, n in enumerate([3, 17, 1, 6]):
        alone = model(SetBatch.from_sets([batch.values[batch.offsets[i] : batch.offsets[i] + n]]))
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-12)


def test_a_set_inside_one_chunk_is_not_moved_by_chunking() -> None:
    """Chunks that never cut a set (each set wholly in one chunk) give the whole-set
    result: the other sets' chunks meet it only through the exact empty identity."""
    model = lcm_model()
    batch = random_batch([4, 5, 3])
    whole = model(batch)
    state = model.init_state(3, dtype=torch.float64)
    for lo, hi in ((9, 12), (0, 4), (4, 9)):  # set 2, set 0, set 1: any order
        state = model.update(state, batch.values[lo:hi], batch.set_index()[lo:hi])
    torch.testing.assert_close(model.finalize(state), whole, rtol=0, atol=1e-12)


def test_partition_error_is_the_relative_distance_of_the_stated_chunking() -> None:
    """8 elements in lcm_partition_chunks=3 contiguous chunks of 3, 3, 2, folded left to
    right: ((t(012) ⊕ t(345)) ⊕ t(67)) against the whole tree ((01)(23))((45)(67))."""
    model = lcm_model()
    op = model.lcm
    assert op is not None
    batch = random_batch([8, 1, 5])
    errors = model.partition_error(batch)
    assert errors.shape == (2,)  # the 1-element set is not counted
    with torch.no_grad():
        h = model.phi(batch.values[:8])
        e = [h[i : i + 1] for i in range(8)]
        chunked = op(op(op(op(e[0], e[1]), e[2]), op(op(e[3], e[4]), e[5])), op(e[6], e[7]))
        whole = op(op(op(e[0], e[1]), op(e[2], e[3])), op(op(e[4], e[5]), op(e[6], e[7])))
        expected = (chunked - whole).norm() / whole.norm()
    assert float(expected) > 1e-3
    torch.testing.assert_close(errors[0], expected, rtol=1e-10, atol=0)
    # 5 elements in chunks 2, 2, 1 bracket as the whole tree does: ((01)(23))4.
    assert float(errors[1]) < 1e-12


def test_partition_error_of_the_sum_operator_is_rounding_only() -> None:
    """g = 0 (untrained): the operator is the sum, associative; the error is reassociation."""
    model = make_model(LCM).encoder
    errors = model.partition_error(random_batch([8, 13, 40]))
    assert float(errors.max()) < 1e-14


def test_associativity_regulariser() -> None:
    """The loss is the stated ratio on random triples, zero for the sum, and minimising
    it alone moves the operator towards associativity (the partition error falls)."""
    op = LCMOperator(4, [8]).double()
    pool = torch.randn(50, 4, dtype=torch.float64)
    assert float(assoc_loss(op, pool).detach()) < 1e-28  # the sum: rounding only
    model = lcm_model(weight=1.0)
    batch = random_batch([8, 11, 6, 9], seed=3)
    before = float(model.partition_error(batch).mean())
    optimizer = torch.optim.Adam(model.lcm.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        model(batch)
        loss = model.take_aux_loss()
        assert loss is not None and model.take_aux_loss() is None  # taken once
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = float(model.partition_error(batch).mean())
    assert after < before / 5, (before, after)
    with torch.no_grad():
        model(batch)
    assert model.take_aux_loss() is None  # no regulariser outside a training graph


def lcm_job(**train: object) -> dict:
    return {
        "name": "lcm",
        "data": {
            "train": "data",
            "elements": {"layout": "parallel", "columns": ["x", "y"]},
            "label": "label",
        },
        "model": {"task": "classify", "num_classes": 2, "encoder": LCM},
        "train": train,
    }


def test_spec_refuses_the_estimator_and_stray_lcm_fields() -> None:
    with pytest.raises(SpecError, match="pooling lcm is a learned, non-linear tree"):
        job_from_dict(lcm_job(grad_element_budget=64))
    job = lcm_job()
    job["model"]["encoder"] = {"kind": "deepsets", "pooling": "sum", "lcm_assoc_weight": 0.1}
    with pytest.raises(SpecError, match="lcm_assoc_weight only apply to pooling lcm, not sum"):
        job_from_dict(job)
    # A dumped job (every default written out) loads again.
    plain = lcm_job()
    plain["model"]["encoder"] = {"kind": "deepsets"}
    dumped = job_from_dict(plain).model_dump(mode="json")
    assert job_from_dict(dumped).model.encoder.pooling == "sum"
