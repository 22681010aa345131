"""Encoder throughput: packed SetBatch versus the same sets padded to the batch maximum.

Sets: jet-like multiplicities, 2 + Poisson(Gamma(6, 43/6)) clipped to 120 (negative
binomial, mean ~45, the shape setpipe's jets generator uses; the batch maximum lands
near 100-120), F=8 element features, batches cut by an element budget of 16384 as
jobs/qg_jets.yaml does. Encoders: the job defaults (DeepSets phi [128]*3 rho [128]*2;
UMBC as jobs/qg_jets.yaml: K=32, H=4, dim 128, SAB+PMA slot head; Set Transformer
dim 128, 2 SAB layers).

Measured: one training step of the encoder, forward + backward of a scalar loss on its
output (no optimizer step), in real elements per second, so padding costs what it costs.
Packed: ``encoder(batch)``, segment reductions over ``values [E, F]`` (set_index is
built inside the timed step). Padded: the same modules and weights on ``x [B, Nmax, F]``
with ``mask [B, Nmax]`` built beforehand (a padded pipeline delivers them), pooling as
masked batched matmuls (einsum): the competent padded version, not a per-set loop. Its
outputs are checked equal to the packed ones before timing. The Set Transformer has only
a padded form; its "packed" figure is the SetBatch entry point that pads inside.

Timing: torch.set_num_threads(--threads, default 1), warm-up, then repeats that
alternate packed and padded over the same batches; the figure is the median over
repeats of elements / process CPU seconds (CPU time, because the 2 cores are shared and
wall time swings with other load; wall medians are printed beside).

    python bench/encoder_throughput.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from setpipe.data.batch import SetBatch
from setpipe.models import build_model
from setpipe.models.deepsets import DeepSets
from setpipe.models.umbc import UMBC
from setpipe.spec.models import ModelSpec

F = 8  # jets: log pt, eta, phi relative to the axis, charge and a few particle-id flags
ELEMENT_BUDGET = 16384  # jobs/qg_jets.yaml data.batch.element_budget
MAX_MULTIPLICITY = 120
ENCODERS = {
    "deepsets": {"kind": "deepsets"},
    "umbc": {
        "kind": "umbc",
        "embed": [128, 128],
        "slots": 32,
        "heads": 4,
        "dim": 128,
        "slot_head": {"kind": "set_transformer", "sab_layers": 1},
    },
    "set_transformer": {"kind": "set_transformer"},
}


def jet_batches(num_batches: int, seed: int) -> list[SetBatch]:
    """Batches of jet-like sets, each cut at ELEMENT_BUDGET elements."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        sizes: list[int] = []
        while True:
            n = int(min(MAX_MULTIPLICITY, 2 + rng.poisson(rng.gamma(6.0, 43.0 / 6.0))))
            if sum(sizes) + n > ELEMENT_BUDGET:
                break
            sizes.append(n)
        sets = [torch.from_numpy(rng.standard_normal((n, F), dtype=np.float32)) for n in sizes]
        batches.append(SetBatch.from_sets(sets))
    return batches


def deepsets_padded(enc: DeepSets, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DeepSets on [B, N, F]: phi on every slot, masked pooling, the same finalize (rho)."""
    h = enc.phi(x)  # [B, N, D]
    if enc.pooling == "max":
        state = {"max": h.masked_fill(~mask[..., None], -math.inf).amax(1)}
    else:
        m = mask.to(h.dtype)
        state = {"sum": torch.einsum("bn,bnd->bd", m, h), "count": m.sum(1, keepdim=True)}
    return enc.finalize(state)


def umbc_padded(enc: UMBC, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """UMBC on [B, N, F]: attention weights for every slot, masked, pooled by batched matmul."""
    b, n, _ = x.shape
    hh, k, d = enc.heads, enc.num_slots, enc.head_dim
    h = enc.embed(x)
    keys = enc.k(h).view(b, n, hh, d)
    vals = enc.v(h).view(b, n, hh, d)
    state = enc.init_state(b, x.device, x.dtype)
    query = state["query"]  # [1, K, dim]: deterministic slots, shared by every set
    s = torch.einsum("bnhd,khd->bnhk", keys, query[0].view(k, hh, d)) / math.sqrt(d)
    m = mask[:, :, None, None]
    if enc.attention == "set_softmax":
        state["max"] = s.masked_fill(~m, -math.inf).amax(1).detach()
        a = torch.exp(s - state["max"][:, None])
    elif enc.attention == "slot_softmax":
        a = torch.softmax(s, -1)
    else:
        a = torch.sigmoid(s)
        if enc.attention == "slot_sigmoid":
            a = a / a.sum(-1, keepdim=True)
    a = a * m.to(a.dtype)  # [B, N, H, K]
    state["num"] = torch.einsum("bnhk,bnhd->bhkd", a, vals)
    state["den"] = a.sum(1)
    return enc.finalize(state)


def train_step(fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]) -> None:
    for p in params:
        p.grad = None
    fn().square().mean().backward()


def measure(
    name: str, batches: list[SetBatch], repeats: int
) -> tuple[float, float, float, float, float]:
    """(packed el/s, padded el/s by CPU time, the same two by wall time, padding fraction)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(encoder=ENCODERS[name], task="classify", num_classes=2), F)
    enc = model.encoder.train()
    params = list(enc.parameters())
    padded = [b.padded() for b in batches]
    if name == "deepsets":

        def padded_fn(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return deepsets_padded(enc, x, mask)  # type: ignore[arg-type]

    elif name == "umbc":

        def padded_fn(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return umbc_padded(enc, x, mask)  # type: ignore[arg-type]

    else:

        def padded_fn(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return enc.net(x, mask)  # type: ignore[operator]

    with torch.no_grad():  # same math: same outputs, or the comparison means nothing
        got, want = padded_fn(*padded[0]), enc(batches[0])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    steps = {
        "packed": [lambda b=b: enc(b) for b in batches],
        "padded": [lambda xm=xm: padded_fn(*xm) for xm in padded],
    }
    for fns in steps.values():  # warm-up: allocator, kernels, autograd
        train_step(fns[0], params)
    elements = sum(b.num_elements for b in batches)
    cpu: dict[str, list[float]] = {"packed": [], "padded": []}
    wall: dict[str, list[float]] = {"packed": [], "padded": []}
    for _ in range(repeats):
        for mode, fns in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for fn in fns:
                train_step(fn, params)
            cpu[mode].append(elements / (time.process_time() - c0))
            wall[mode].append(elements / (time.perf_counter() - w0))
    slots = sum(x.shape[0] * x.shape[1] for x, _ in padded)
    med = statistics.median
    return (
        med(cpu["packed"]),
        med(cpu["padded"]),
        med(wall["packed"]),
        med(wall["padded"]),
        1 - elements / slots,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches, 3 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_batches, repeats = (2, 3) if args.quick else (6, 7)
    batches = jet_batches(num_batches, seed=0)
    sizes = torch.cat([b.sizes() for b in batches])
    print(
        f"{len(sizes)} sets in {num_batches} batches: mean {sizes.double().mean():.1f}, "
        f"max {int(sizes.max())}, batch max {[int(b.sizes().max()) for b in batches]}; "
        f"threads {args.threads}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print("forward+backward of the encoder; elements/s by CPU time (by wall time)")
    print(f"{'encoder':<16} {'packed':>16} {'padded':>16} {'ratio':>6} {'padding':>8}")
    ratios = {}
    for name in ENCODERS:
        packed, padded, packed_wall, padded_wall, pad_frac = measure(name, batches, repeats)
        ratios[name] = packed / padded
        print(
            f"{name:<16} {packed:>7.0f} ({packed_wall:>6.0f}) {padded:>7.0f} ({padded_wall:>6.0f}) "
            f"{ratios[name]:>6.2f} {pad_frac:>7.0%}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"RESULT deepsets_packed_vs_padded={ratios['deepsets']:.2f} "
        f"umbc_packed_vs_padded={ratios['umbc']:.2f} "
        f"set_transformer_packed_vs_padded={ratios['set_transformer']:.2f} "
        f"step=forward+backward threads={args.threads} clock=cpu"
    )


if __name__ == "__main__":
    main()
