"""Every MBC encoder configuration the property tests run over, and small shared helpers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from setpipe.data.batch import SetBatch
from setpipe.models import SetModel, build_model
from setpipe.spec.models import ModelSpec

NUM_FEATURES = 3

DEEPSETS = [
    {"kind": "deepsets", "phi": [8, 8], "rho": [8], "pooling": pooling}
    for pooling in ("sum", "mean", "max")
]
# Each (residual, random slots) pair gets its own slot head, so every head meets both
# residual settings: residual + SAB/PMA head, no residual + MLP head, residual + MLP
# head, no residual + a head with no SAB layer and two PMA seeds.
SLOT_HEADS = {
    (True, True): {"kind": "set_transformer"},
    (False, True): {"kind": "mlp"},
    (True, False): {"kind": "mlp"},
    (False, False): {"kind": "set_transformer", "sab_layers": 0, "pma_seeds": 2},
}
UMBC = [
    {
        "kind": "umbc",
        "embed": [8],
        "slots": 4,
        "heads": 2,
        "dim": 8,
        "attention": attention,
        "slot_residual": residual,
        "random_slots": random_slots,
        "slot_head": SLOT_HEADS[residual, random_slots],
    }
    for attention, residual, random_slots in itertools.product(
        ("slot_sigmoid", "sigmoid", "slot_softmax", "set_softmax"), (True, False), (True, False)
    )
]
MBC_ENCODERS = DEEPSETS + UMBC


def encoder_id(spec: dict[str, Any]) -> str:
    if spec["kind"] == "deepsets":
        return f"deepsets-{spec['pooling']}"
    head = spec["slot_head"]
    head_id = (
        "mlp"
        if head["kind"] == "mlp"
        else f"st{head.get('sab_layers', 1)}x{head.get('pma_seeds', 1)}"
    )
    return (
        f"umbc-{spec['attention']}-{'res' if spec['slot_residual'] else 'nores'}"
        f"-{'rand' if spec['random_slots'] else 'det'}-{head_id}"
    )


mbc_encoders = pytest.mark.parametrize(
    "encoder", MBC_ENCODERS, ids=[encoder_id(e) for e in MBC_ENCODERS]
)


def make_model(
    encoder: dict[str, Any],
    task: str = "classify",
    *,
    num_context: int = 0,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> SetModel:
    torch.manual_seed(seed)
    spec = ModelSpec(
        encoder=encoder,
        task=task,
        num_classes=3 if task == "classify" else None,
        head={"hidden": [8]},
    )
    # Train mode: random slots are drawn (from the generator each test passes).
    return build_model(spec, NUM_FEATURES, num_context).to(dtype).train()


def random_batch(
    sizes: list[int], *, dtype: torch.dtype = torch.float64, seed: int = 0, num_context: int = 0
) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.randn(n, NUM_FEATURES, generator=g, dtype=dtype) for n in sizes]
    context = (
        torch.randn(len(sizes), num_context, generator=g, dtype=dtype) if num_context else None
    )
    return SetBatch.from_sets(sets, context=context)


def gen(seed: int = 1234) -> torch.Generator:
    """The generator that draws random slots; the same seed gives the same slots."""
    return torch.Generator().manual_seed(seed)
