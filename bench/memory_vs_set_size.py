"""Peak memory of one UMBC training step versus set size: gradient estimator vs full backprop.

One set of n elements (F=4), UMBC encoder, classify head, AdamW. Estimator: chunk 4096,
gradient budget 1024. Full backprop: the same model through ``forward`` on the whole set.
Also chunked inference (``predict_chunked``) of one huge set.

How memory is measured (CPU): every point runs in a fresh subprocess. After imports,
building the model, creating the data and one small warm-up step, it reads its current
RSS; after the measured step it reads ru_maxrss (the high-water mark). Growth = peak -
RSS before. MALLOC_MMAP_THRESHOLD_ is fixed at 64 KiB so glibc serves every large
tensor from mmap and gives it back on free: RSS then follows live tensor memory
instead of the allocator's heap, which is what makes a per-process peak meaningful.
The data itself (16 B an element) exists before the step and is not counted. With CUDA,
torch.cuda.max_memory_allocated growth is reported too.

    python bench/memory_vs_set_size.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CHUNK = 4096
BUDGET = 1024
F = 4
# A mid-sized UMBC: K=16 slots, 4 heads, width 64 (the job default is K=32, width 128;
# this one keeps full backprop at n=1e6 inside the 24 GB of the bench machine).
ENCODER = {
    "kind": "umbc",
    "embed": [64, 64],
    "slots": 16,
    "heads": 4,
    "dim": 64,
    "attention": "slot_sigmoid",
    "slot_head": {"kind": "set_transformer"},
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, n: int) -> dict:
    import torch

    from setpipe.data.batch import SetBatch
    from setpipe.models import build_model
    from setpipe.spec.models import ModelSpec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(ModelSpec(encoder=ENCODER, task="classify", num_classes=2), F).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def batch_of(size: int) -> SetBatch:
        return SetBatch(
            values=torch.randn(size, F, device=device),
            offsets=torch.tensor([0, size], device=device),
            targets=torch.tensor([1], device=device),
        )

    def step(batch: SetBatch) -> None:
        if mode == "inference":
            model.eval()
            with torch.no_grad():
                model.predict_chunked(batch, CHUNK)
            return
        model.train()
        if mode == "estimator":
            out = model.forward_estimated(batch, BUDGET, CHUNK, gen)
        else:
            out = model(batch)
        loss = torch.nn.functional.cross_entropy(out, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batch_of(64))  # warm-up: optimizer state, lazy kernels, thread pools
    batch = batch_of(n)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    before, maxrss_before = _rss_mb(), _maxrss_mb()
    t0 = time.perf_counter()
    step(batch)
    seconds = time.perf_counter() - t0
    result = {
        "mode": mode,
        "n": n,
        "growth_mb": _maxrss_mb() - before,
        "rss_before_mb": before,
        "stale_peak_mb": max(0.0, maxrss_before - before),  # > 0 would hide growth: flagged
        "seconds": seconds,
    }
    if device == "cuda":
        result["cuda_growth_mb"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    return result


def measure(mode: str, n: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n up to 1e5 (inference too)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return

    sizes = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6]
    inference_sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 10**7]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    key = "growth_mb"
    print(f"{'mode':<10} {'n':>10} {'peak growth MB':>15} {'seconds':>8}  (stale peak MB)")
    rows = []
    # Printed as measured: on a loaded machine a full run is long, partial rows still count.
    plan = [(m, n) for m in ("estimator", "backprop") for n in sizes]
    plan += [("inference", n) for n in inference_sizes]
    for mode, n in plan:
        r = measure(mode, n)
        rows.append(r)
        key = "cuda_growth_mb" if "cuda_growth_mb" in r else "growth_mb"
        print(
            f"{r['mode']:<10} {r['n']:>10} {r[key]:>15.1f} {r['seconds']:>8.2f}  "
            f"({r['stale_peak_mb']:.1f})",
            flush=True,
        )

    def ratio(mode: str, ns: list[int]) -> float:
        peak = {r["n"]: r[key] for r in rows if r["mode"] == mode}
        return peak[ns[-1]] / peak[ns[0]]

    inference_peak = next(
        r[key] for r in rows if r["mode"] == "inference" and r["n"] == inference_sizes[-1]
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"RESULT estimator_ratio={ratio('estimator', sizes):.2f} "
        f"backprop_ratio={ratio('backprop', sizes):.2f} "
        f"estimator_ratio_from_1e4={ratio('estimator', sizes[1:]):.2f} "
        f"inference_ratio={ratio('inference', inference_sizes):.2f} "
        f"inference_peak_mb={inference_peak:.1f} "
        f"largest_n={sizes[-1]} inference_n={inference_sizes[-1]} memory={key}"
    )


if __name__ == "__main__":
    main()
