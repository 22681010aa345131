"""Set Transformer: masks keep padding out; it is not mini-batch consistent (negative control)."""

from __future__ import annotations

import pytest
import torch
from mbc_cases import make_model, random_batch

from setpipe.data.batch import SetBatch
from setpipe.models.set_transformer import MAB, SetTransformer

ST = {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 2}
ST_ISAB = {**ST, "inducing_points": 3}


@pytest.mark.parametrize("encoder", [ST, ST_ISAB], ids=["sab", "isab"])
def test_output_does_not_depend_on_padding_length(encoder: dict) -> None:
    model = make_model(encoder)
    net: SetTransformer = model.encoder.net
    batch = random_batch([5, 2, 9])
    outs = []
    for pad_to in (9, 10, 31):
        x, mask = batch.padded(pad_to)
        x = x.masked_fill(~mask[..., None], 1e3)  # loud garbage in the padding
        outs.append(net(x, mask))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-12)
    # A set alone (no padding) equals the same set padded in a batch.
    alone = model(SetBatch.from_sets([batch.values[5:7]]))
    torch.testing.assert_close(alone[0], model(batch)[1], rtol=0, atol=1e-12)


def test_unmasked_padding_would_leak() -> None:
    """The control: without the mask the padded positions change the output."""
    torch.manual_seed(0)
    mab = MAB(3, 3, 8, 2).double()
    batch = random_batch([4])
    x, mask = batch.padded(7)
    masked = mab(x[:, :1], x, mask)
    unmasked = mab(x[:, :1], x, None)
    assert (masked - unmasked).abs().max() > 1e-3


def test_attention_is_scaled_by_the_per_head_width() -> None:
    """dim 4, 2 heads: logits are q·k / sqrt(2), not / sqrt(4) as in the reference code."""
    mab = MAB(4, 4, 4, 2).double()
    q = torch.tensor([[[1.0, 2.0, 3.0, -1.0]]], dtype=torch.float64)
    k = torch.tensor([[[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 2.0]]], dtype=torch.float64)
    w = mab.weights(q, k, None)  # [1, H=2, 1, 2]
    expected = torch.stack(
        [
            torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64) / 2**0.5, 0),  # head 0
            torch.softmax(torch.tensor([1.5, -2.0], dtype=torch.float64) / 2**0.5, 0),  # head 1
        ]
    )
    torch.testing.assert_close(w[0, :, 0], expected, rtol=0, atol=1e-15)


def test_set_transformer_fails_partition_invariance() -> None:
    """Negative control: encoding two halves separately and combining them any natural way
    differs from encoding the whole set (the MBC encoders pass this test to 1e-10)."""
    model = make_model(ST)
    batch = random_batch([16], seed=3)
    whole = model.encoder(batch)
    a = model.encoder(SetBatch.from_sets([batch.values[:8]]))
    b = model.encoder(SetBatch.from_sets([batch.values[8:]]))
    combos = {
        "mean": (a + b) / 2,
        "sum": a + b,
        "max": torch.maximum(a, b),
        "first": a,
        "second": b,
    }
    gaps = {name: float((c - whole).abs().max().detach()) for name, c in combos.items()}
    assert min(gaps.values()) > 1e-2, gaps
