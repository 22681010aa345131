"""build_model and SetModel: outputs per task, chunked and streamed passes, errors."""

from __future__ import annotations

import pytest
import torch
from mbc_cases import DEEPSETS, NUM_FEATURES, UMBC, make_model, random_batch

from setpipe.errors import ModelError
from setpipe.models import SetModel, build_model
from setpipe.spec.models import ModelSpec

ENCODERS = {
    "deepsets": DEEPSETS[0],
    "umbc-st-head": UMBC[0],
    "umbc-mlp-head": UMBC[2],
    "set_transformer": {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 1},
    "set_transformer-isab": {
        "kind": "set_transformer",
        "dim": 8,
        "heads": 2,
        "layers": 2,
        "inducing_points": 2,
        "pma_seeds": 2,
    },
}
SIZES = [5, 1, 11, 3]


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("task", ["classify", "regress", "rank"])
def test_outputs_per_task(name: str, task: str) -> None:
    model = make_model(ENCODERS[name], task, num_context=2).eval()
    batch = random_batch(SIZES, num_context=2)
    out = model(batch)
    expected = {"classify": (4, 3), "regress": (4,), "rank": (sum(SIZES),)}[task]
    assert out.shape == expected
    assert model.is_mbc == (not name.startswith("set_transformer"))
    torch.testing.assert_close(model.predict_chunked(batch, 3), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["deepsets", "umbc-st-head", "set_transformer"])
def test_rank_scores_depend_on_the_set(name: str) -> None:
    """The same element scores differently next to different set-mates."""
    model = make_model(ENCODERS[name], "rank").eval()
    batch = random_batch([4, 4], seed=2)
    moved = batch.values.clone()
    moved[1:4] += 3.0  # change only the set-mates of element 0
    out = model(batch)
    other = model(type(batch)(values=moved, offsets=batch.offsets))
    assert abs(float((out[0] - other[0]).detach())) > 1e-4
    torch.testing.assert_close(out[4:], other[4:], rtol=0, atol=1e-12)  # the other set


@pytest.mark.parametrize("name", ["deepsets", "umbc-st-head"])
def test_encode_stream_equals_the_whole_set(name: str) -> None:
    for task in ("classify", "rank"):
        model = make_model(ENCODERS[name], task, num_context=2).eval()
        batch = random_batch([50], num_context=2)
        chunks = (batch.values[i : i + 7] for i in range(0, 50, 7))
        emb = model.encode_stream(chunks, context=batch.context[0])
        whole = model.encoder(batch)[0]
        torch.testing.assert_close(emb, whole, rtol=0, atol=1e-12)
        if task == "classify":
            torch.testing.assert_close(
                model.predict_from_embedding(emb), model(batch)[0], rtol=0, atol=1e-12
            )
        else:
            scores = torch.cat(
                list(model.score_stream((batch.values[i : i + 9] for i in range(0, 50, 9)), emb))
            )
            torch.testing.assert_close(scores, model(batch), rtol=0, atol=1e-12)


def test_missing_context_is_a_model_error() -> None:
    model = make_model(DEEPSETS[0], num_context=2)
    with pytest.raises(ModelError) as err:
        model(random_batch([3]))
    assert str(err.value) == (
        "the model was built with 2 context features per set; got none, expected shape "
        "(1, 2): pass SetBatch.context"
    )


def test_errors_name_the_limitation() -> None:
    st = make_model(ENCODERS["set_transformer"])
    with pytest.raises(ModelError, match="encode_stream needs a mini-batch consistent encoder"):
        st.encode_stream([torch.zeros(2, NUM_FEATURES, dtype=torch.float64)])
    spec = ModelSpec(encoder=DEEPSETS[0], task="regress")
    with pytest.raises(ModelError, match="at least one element feature, got num_features=0"):
        build_model(spec, 0)


def test_build_model_reads_the_spec() -> None:
    spec = ModelSpec(
        encoder={
            "kind": "umbc",
            "embed": [16, 8],
            "slots": 5,
            "heads": 4,
            "dim": 12,
            "slot_head": {"kind": "set_transformer", "sab_layers": 2, "pma_seeds": 3},
        },
        task="classify",
        num_classes=4,
        head={"hidden": [7], "dropout": 0.1},
    )
    model = build_model(spec, num_features=6, num_context=1)
    assert isinstance(model, SetModel) and model.task == "classify"
    enc = model.encoder
    assert (enc.num_slots, enc.heads, enc.dim, enc.attention) == (5, 4, 12, "slot_sigmoid")
    assert enc.slot_residual and not enc.random_slots
    assert enc.embed[0].in_features == 6 and enc.k.in_features == 8
    assert len(enc.head.blocks) == 2 and enc.out_dim == 3 * 12 + 1
    assert [m.out_features for m in model.head.modules() if isinstance(m, torch.nn.Linear)] == [
        7,
        4,
    ]
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in model.head.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_public_surface() -> None:
    import setpipe.models

    assert setpipe.models.__all__ == ["MBCEncoder", "MBCState", "SetModel", "build_model"]
