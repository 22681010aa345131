"""Exported ONNX graphs against PyTorch: max relative difference and CPU throughput.

Per encoder (random weights, seed 0; F=7 element features, 2-class classify head):
DeepSets phi [128]*3 rho [128]*2; UMBC as jobs/qg_jets.yaml (embed [128, 128], K=32,
H=4, dim 128, SAB + PMA slot head); Set Transformer dim 128, 4 heads, 2 SAB layers.

Parity: setpipe.export.parity.measure, the check `setpipe export` runs: rel = max
|onnxruntime - torch| / max |torch| per batch, over set sizes 1, 10, ..., 10^4 (8 sets a
batch up to 10^3, one of 10^4; the Set Transformer up to 10^3: its attention is
quadratic, see parity.ATTENTION_MAX), a mixed batch with an empty set, and for the MBC
encoders the update/finalize graphs on one set of 10^6 elements in chunks of 4096
against PyTorch's own chunked pass. --quick: sizes up to 10^3, chunked 10^5.

Throughput: sets per second of the whole-set graph (onnxruntime, CPU provider) against
``model(batch)`` under torch.inference_mode, on batches of 256 jet-like sets (sizes 2 +
Poisson(43), ~45 elements), both on --threads threads (default 1), median of repeats,
wall time (note the machine's load beside the figures).

    python bench/export_parity.py [--quick] [--threads N]

Ends with ``RESULT <enc>_rel=... <enc>_chunked_rel=... <enc>_ort_sets_s=...
<enc>_torch_sets_s=... <enc>_speedup=...`` per encoder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter

from setpipe.data.batch import SetBatch
from setpipe.export.artifact import write_directory
from setpipe.export.parity import measure
from setpipe.export.runtime import ExportedModel
from setpipe.models import build_model
from setpipe.spec.models import ModelSpec

F = 7
ENCODERS: dict[str, dict[str, Any]] = {
    "deepsets": {"kind": "deepsets", "phi": [128, 128, 128], "rho": [128, 128]},
    "umbc": {
        "kind": "umbc",
        "embed": [128, 128],
        "slots": 32,
        "heads": 4,
        "dim": 128,
        "slot_head": {"kind": "set_transformer", "sab_layers": 1},
    },
    "set_transformer": {"kind": "set_transformer", "dim": 128, "heads": 4, "layers": 2},
}


def jets(num_sets: int, seed: int) -> SetBatch:
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.poisson(43, num_sets)
    sets = [torch.from_numpy(rng.standard_normal((n, F)).astype(np.float32)) for n in sizes]
    return SetBatch.from_sets(sets)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=list(ENCODERS), default=None, help="one encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = (1, 10, 100, 1000) if args.quick else (1, 10, 100, 1000, 10_000)
    chunked = 100_000 if args.quick else 1_000_000
    repeats = 3 if args.quick else 7
    result: dict[str, str] = {}
    print(f"load average {os.getloadavg()[0]:.1f}; threads {args.threads}")
    for name, encoder in ENCODERS.items():
        if args.only not in (None, name):
            continue
        spec = TypeAdapter(ModelSpec).validate_python(
            {"task": "classify", "num_classes": 2, "encoder": encoder, "head": {"hidden": [64]}}
        )
        torch.manual_seed(0)
        model = build_model(spec, F, 0).eval()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_directory(
                model,
                "onnx",
                Path(tmp),
                features=[f"f{i}" for i in range(F)],
                context=[],
                chunk_size=4096,
                model_info={"uri": None, "name": name, "version": None},
            )
            export_s = time.perf_counter() - start
            exported = ExportedModel(tmp, threads=args.threads)
            figures = measure(model, exported, F, 0, sizes=sizes, chunked_size=chunked)
            batch = jets(256, seed=1)
            values, offsets = batch.values.numpy(), batch.offsets.numpy()

            def torch_pass(model=model, batch=batch) -> None:
                with torch.inference_mode():
                    model(batch)

            ort_s = timed(lambda ex=exported, v=values, o=offsets: ex.predict(v, o), repeats)
            torch_s = timed(torch_pass, repeats)
        whole = max(v for k, v in figures.items() if not k.startswith("chunked") and k != "max")
        chunk = max((v for k, v in figures.items() if k.startswith("chunked")), default=0.0)
        print(
            f"{name}: export {export_s:.1f} s; rel whole {whole:.2g}, chunked {chunk:.2g} "
            f"({', '.join(f'{k} {v:.2g}' for k, v in figures.items() if k != 'max')}); "
            f"onnxruntime {256 / ort_s:.0f} sets/s, torch {256 / torch_s:.0f} sets/s"
        )
        result[f"{name}_rel"] = f"{whole:.2g}"
        if model.is_mbc:
            result[f"{name}_chunked_rel"] = f"{chunk:.2g}"
        result[f"{name}_ort_sets_s"] = f"{256 / ort_s:.0f}"
        result[f"{name}_torch_sets_s"] = f"{256 / torch_s:.0f}"
        result[f"{name}_speedup"] = f"{torch_s / ort_s:.2f}"
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
