"""Exported ONNX graphs against PyTorch: max relative difference and CPU throughput.

One model per exportable encoder and head kind (random weights, seed 0; F=7 element
features, 2-class classify head unless said):

- ``deepsets``, ``deepsets_max``, ``deepsets_lcm``: phi [128]*3, rho [128]*2, sum / max /
  LCM pooling;
- ``umbc``: as jobs/qg_jets.yaml (embed [128, 128], K=32, H=4, dim 128, SAB + PMA slot
  head); ``umbc_set_softmax``: the same with the exact set softmax (a running-max state);
- ``umbc_slot_rank``: that UMBC under a rank head whose elements attend to the finalized
  slots (``head.context: slots``; finalize gives the slots, a score graph the scores);
- ``set_transformer``: dim 128, 4 heads, 2 SAB layers;
- ``pairwise``: the same with ParT-style jet pair biases (``pairwise: {kind: jet}``, read
  back from a standardized log pT, rapidity and phi through fitted transforms), which
  refuses sets above its ``max_set_size`` (256);
- ``heads``: DeepSets under three heads (classify + regress + rank, ``model.heads``):
  one figure per head.

Parity: setpipe.export.parity.measure, the check `setpipe export` runs: rel = max
|onnxruntime - torch| / max |torch| per batch, over set sizes 1, 10, ..., 10^4 (8 sets a
batch up to 10^3, one of 10^4; the Set Transformer up to 10^3: its attention is
quadratic, see parity.ATTENTION_MAX; the pairwise one up to its max_set_size, the limit
included), a mixed batch with an empty set, and for the MBC encoders the update/finalize
(and score) graphs on one set of 10^6 elements in chunks of 4096 against PyTorch's own
chunked pass. --quick: sizes up to 10^3, chunked 10^5.

Throughput: sets per second of the whole-set graph (onnxruntime, CPU provider) against
``model(batch)`` under torch.inference_mode, on batches of 256 jet-like sets (sizes 2 +
Poisson(43), ~45 elements), both on --threads threads (default 1), median of repeats,
wall time (note the machine's load beside the figures).

    python bench/export_parity.py [--quick] [--threads N] [--only MODEL]

Prints one table row per model and ends with ``RESULT <model>_rel=...
<model>_chunked_rel=... <model>_ort_sets_s=... <model>_torch_sets_s=... <model>_speedup=...``
(rel: the largest figure of the whole-set graph, chunked_rel: of the chunked graphs).
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
from setpipe.data.transforms import FittedTransforms
from setpipe.export.artifact import write_directory
from setpipe.export.parity import measure
from setpipe.export.runtime import ExportedModel
from setpipe.models import SetModel, build_model
from setpipe.spec.models import FeatureSpec, ModelSpec

F = 7
DEEPSETS = {"kind": "deepsets", "phi": [128, 128, 128], "rho": [128, 128]}
UMBC = {
    "kind": "umbc",
    "embed": [128, 128],
    "slots": 32,
    "heads": 4,
    "dim": 128,
    "slot_head": {"kind": "set_transformer", "sab_layers": 1},
}
SET_TRANSFORMER = {"kind": "set_transformer", "dim": 128, "heads": 4, "layers": 2}
JET_PAIRS = {"kind": "jet", "pt": "log_pt", "rapidity": "rapidity", "phi": "phi"}
CLASSIFY = {"task": "classify", "num_classes": 2, "head": {"hidden": [64]}}
MODELS: dict[str, dict[str, Any]] = {
    "deepsets": {**CLASSIFY, "encoder": DEEPSETS},
    "deepsets_max": {**CLASSIFY, "encoder": {**DEEPSETS, "pooling": "max"}},
    "deepsets_lcm": {**CLASSIFY, "encoder": {**DEEPSETS, "pooling": "lcm"}},
    "umbc": {**CLASSIFY, "encoder": UMBC},
    "umbc_set_softmax": {**CLASSIFY, "encoder": {**UMBC, "attention": "set_softmax"}},
    "umbc_slot_rank": {
        "task": "rank",
        "encoder": UMBC,
        "head": {"hidden": [64], "context": "slots"},
    },
    "set_transformer": {**CLASSIFY, "encoder": SET_TRANSFORMER},
    "pairwise": {**CLASSIFY, "encoder": {**SET_TRANSFORMER, "pairwise": JET_PAIRS}},
    "heads": {
        "encoder": DEEPSETS,
        "heads": [
            {"name": "flavour", "task": "classify", "target": "y", "num_classes": 2},
            {"name": "mass", "task": "regress", "target": "m", "offset": 50.0, "scale": 10.0},
            {"name": "constituent", "task": "rank", "target": "r"},
        ],
    },
}


def jet_transforms() -> FittedTransforms:
    """Model features 0-2 as a jet tagger's: standardized log pT (pT = exp(1.2 f0 + 1),
    ~3 GeV), rapidity and phi relative to the axis; the pair features read them back."""
    names = ["log_pt", "rapidity", "phi", *(f"f{i}" for i in range(3, F))]
    raw = [f"r{i}" for i in range(F)]
    ops: list[list[dict[str, str]]] = [[{"op": "log"}, {"op": "standardize"}]] + [[]] * (F - 1)
    features = [
        FeatureSpec.model_validate({"name": n, "source": r, "ops": o})
        for n, r, o in zip(names, raw, ops, strict=True)
    ]
    return FittedTransforms(raw, features, {"log_pt": {"mean": 1.0, "std": 1.2, "count": 1.0}})


def build(name: str) -> SetModel:
    spec = TypeAdapter(ModelSpec).validate_python(MODELS[name])
    torch.manual_seed(0)
    transforms = jet_transforms() if name == "pairwise" else None
    return build_model(spec, F, 0, transforms=transforms).eval()


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
    parser.add_argument("--only", choices=list(MODELS), action="append", help="these models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = (1, 10, 100, 1000) if args.quick else (1, 10, 100, 1000, 10_000)
    chunked = 100_000 if args.quick else 1_000_000
    repeats = 3 if args.quick else 7
    result: dict[str, str] = {}
    started = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.1f}; threads {args.threads}")
    rows = [
        "| model | export s | parity s | rel whole | rel chunked | ort sets/s | torch sets/s "
        "| ort/torch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in MODELS:
        if args.only and name not in args.only:
            continue
        model = build(name)
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
            start = time.perf_counter()
            figures = measure(model, exported, F, 0, sizes=sizes, chunked_size=chunked)
            parity_s = time.perf_counter() - start
            batch = jets(256, seed=1)
            values, offsets = batch.values.numpy(), batch.offsets.numpy()

            def torch_pass(model=model, batch=batch) -> None:
                with torch.inference_mode():
                    model(batch)

            ort_s = timed(lambda ex=exported, v=values, o=offsets: ex.predict(v, o), repeats)
            torch_s = timed(torch_pass, repeats)
        whole = max(v for k, v in figures.items() if "chunked" not in k and k != "max")
        chunk = max((v for k, v in figures.items() if "chunked" in k), default=None)
        shown = ", ".join(f"{k} {v:.2g}" for k, v in figures.items() if k != "max")
        print(
            f"{name}: export {export_s:.1f} s, parity {parity_s:.1f} s; rel whole {whole:.2g}"
            f"{'' if chunk is None else f', chunked {chunk:.2g}'} ({shown}); onnxruntime "
            f"{256 / ort_s:.0f} sets/s, torch {256 / torch_s:.0f} sets/s",
            flush=True,
        )
        rows.append(
            f"| {name} | {export_s:.1f} | {parity_s:.1f} | {whole:.2g} | "
            f"{'-' if chunk is None else f'{chunk:.2g}'} | {256 / ort_s:.0f} | "
            f"{256 / torch_s:.0f} | {torch_s / ort_s:.2f} |"
        )
        result[f"{name}_rel"] = f"{whole:.2g}"
        if chunk is not None:
            result[f"{name}_chunked_rel"] = f"{chunk:.2g}"
        result[f"{name}_ort_sets_s"] = f"{256 / ort_s:.0f}"
        result[f"{name}_torch_sets_s"] = f"{256 / torch_s:.0f}"
        result[f"{name}_speedup"] = f"{torch_s / ort_s:.2f}"
    print("\n".join(rows))
    print(f"load average {os.getloadavg()[0]:.1f}; {time.perf_counter() - started:.0f} s")
    result["max_rel"] = f"{max(float(v) for k, v in result.items() if k.endswith('_rel')):.2g}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
