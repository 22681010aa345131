"""Float32 pooled state of one huge set, whole and chunked, against the same model in float64.

One set of n elements (F=3, standard normal), small encoders (DeepSets phi [4], sum
pooling; UMBC K=2 slots, 1 head, width 4, slot_sigmoid), weights built in float32 and
copied to float64, so the two runs differ only by float32 arithmetic. Printed: the
largest relative error of each state tensor (DeepSets Σφ and the count, UMBC Σa·v and
Σa) over its largest float64 entry, for the whole set in one ``update`` and in chunks
of 4096. Without tiled sums the error grows with n (3e-4 for Σφ and 2e-2 for Σa at
n = 4e6); with them it should stay near a few 1e-7.

    python bench/float32_sums.py [--quick] [--n 1e7] [--chunk 4096]   (--quick: n = 1e6)
"""

from __future__ import annotations

import argparse
import time

import torch

from setpipe.models import build_model
from setpipe.models.protocol import MBCEncoder
from setpipe.spec.models import ModelSpec

F = 3
ENCODERS = {
    "deepsets": {"kind": "deepsets", "phi": [4], "rho": [4], "pooling": "sum"},
    "umbc": {
        "kind": "umbc",
        "embed": [4],
        "slots": 2,
        "heads": 1,
        "dim": 4,
        "attention": "slot_sigmoid",
        "slot_head": {"kind": "mlp"},
    },
}


def fold(enc: MBCEncoder, values: torch.Tensor, chunk: int | None) -> dict[str, torch.Tensor]:
    state = enc.init_state(1, dtype=values.dtype)
    step = chunk or values.shape[0]
    with torch.no_grad():
        for lo in range(0, values.shape[0], step):
            part = values[lo : lo + step]
            state = enc.update(state, part, torch.zeros(part.shape[0], dtype=torch.long))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, default=1e7, help="elements in the set")
    parser.add_argument("--chunk", type=int, default=4096, help="elements per chunk")
    parser.add_argument("--quick", action="store_true", help="n = 1e6 (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.n = 1e6
    torch.set_num_threads(1)
    n = int(args.n)
    x = torch.randn(n, F, generator=torch.Generator().manual_seed(0))
    worst: dict[str, float] = {}
    print(f"n={n} chunk={args.chunk}; relative error of float32 against float64")
    for name, spec in ENCODERS.items():
        torch.manual_seed(0)
        model = build_model(ModelSpec(encoder=spec, task="classify", num_classes=2), F).eval()
        enc32: MBCEncoder = model.encoder  # type: ignore[assignment]
        want = fold(model.double().encoder, x.double(), None)  # type: ignore[arg-type]
        model.float()
        for label, chunk in (("whole", None), ("chunked", args.chunk)):
            t0 = time.process_time()
            got = fold(enc32, x, chunk)
            seconds = time.process_time() - t0
            for key, value in got.items():
                if key == "query":
                    continue
                ref = want[key].double()
                err = float((value.double() - ref).abs().max() / ref.abs().max())
                worst[f"{name}_{key}_{label}"] = err
                print(f"{name:<9} {label:<8} {key:<6} {err:.2e}   ({seconds:.2f} s CPU)")
    print("RESULT " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()) + f" n={n}")


if __name__ == "__main__":
    main()
