"""The GPU path in one run: MBC numerics on CUDA, bf16 training sets/s fed from tensors and
from Parquet, the GPU's busy fraction while fed, and the estimator's memory at 1e3-1e7.

Runs on torch + pyarrow + numpy (+ pydantic and PyYAML, carried as wheels) and nothing of
Ray or MLflow: it imports only setpipe's models, data conversion, transforms, losses and
optimizer, the parts tests/test_gpu_check.py proves import without them. On a machine
without CUDA it prints ``RESULT gpu=none`` and exits 0 (CI runs it so); ``--device cpu``
runs every section on the CPU at small sizes (a smoke test of the code, not a figure).

Sections (each bounded in time; the whole run < 8 min on one GPU):

1. float64 partition invariance on the device: every MBC encoder (DeepSets sum/mean/max,
   UMBC with each attention), one batch of sets of 1 to 5000 elements, chunked at 7 and
   333 elements vs whole; ``mbc_partition_max_err`` is the largest |difference| (target
   <= 1e-10).
2. the estimator's unbiasedness on the device: the mean gradient over ALL subsets of M=2
   of a 6-element set equals the full-set gradient; ``estimator_bias_max`` (<= 1e-10).
3. training sets/s under bf16 autocast (fp32 state) for the PFN, UMBC and the Set
   Transformer on jets of ~40 particles (setpipe's synthetic jets, element budget 16384):
   (a) from batches already on the GPU, the compute limit; (b) fed by setpipe's own
   Parquet -> SetBatch path (bad-row checks, table_to_batch, the job's transforms) in
   ``--loaders`` threads from a Parquet file the script writes, pinned memory and
   non-blocking copies. ``<model>_fed_ratio`` = (b)/(a): 1.0 means the GPU never waits.
4. NVML's GPU utilisation sampled every 50 ms during (b) (``<model>_gpu_busy``).
5. peak ``torch.cuda.max_memory_allocated`` of one estimator training step (UMBC, 256
   elements carry the gradient, chunks of 4096) on one set of n = 1e3 ... 1e7 elements;
   ``input_mb`` beside it is the set's own size.

    python bench/gpu_check.py [--quick] [--device auto|cuda|cpu] [--seconds S] [--loaders N]

Ends with one line: RESULT gpu=<name> mbc_partition_max_err=... estimator_bias_max=...
pfn_sets_s=... pfn_fed_sets_s=... pfn_fed_ratio=... pfn_gpu_busy=... (umbc_*, st_* alike)
est_peak_mb_1e3=... ... est_peak_mb_1e7=...
"""

from __future__ import annotations

import argparse
import itertools
import math
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from _common import result_line
from qg_auc import ENCODERS as QG_ENCODERS

from setpipe.data.bad_rows import check_rows
from setpipe.data.batch import SetBatch
from setpipe.data.batching import budget_bounds
from setpipe.data.convert import table_to_batch
from setpipe.data.datagen.jets import make_jets
from setpipe.data.transforms import FittedTransforms, fit_on_batches
from setpipe.models import SetModel, build_model
from setpipe.models.estimator import GradSubsets, estimated_forward
from setpipe.spec.models import DataSpec, ModelSpec, OptimizerSpec
from setpipe.train.losses import task_loss
from setpipe.train.optim import build_optimizer

ATTENTIONS = ("slot_sigmoid", "sigmoid", "slot_softmax", "set_softmax")
MBC_ENCODERS: dict[str, dict[str, Any]] = {
    **{
        f"deepsets-{p}": {"kind": "deepsets", "phi": [16, 16], "rho": [16], "pooling": p}
        for p in ("sum", "mean", "max")
    },
    **{
        f"umbc-{a}": {
            "kind": "umbc",
            "embed": [16],
            "slots": 8,
            "heads": 2,
            "dim": 16,
            "attention": a,
            "random_slots": False,
        }
        for a in ATTENTIONS
    },
}
# The jet taggers of bench/qg_auc.py, its own configurations: the PFN of Komiske et al.,
# UMBC, a Set Transformer.
JET_MODELS: dict[str, dict[str, Any]] = {
    "pfn": QG_ENCODERS["deepsets"],
    "umbc": QG_ENCODERS["umbc"],
    "st": QG_ENCODERS["set_transformer"],
}
# The quickstart job's data: parallel lists of particle pT, eta, phi, PDG id per jet.
JET_DATA: dict[str, Any] = {
    "train": "unused",
    "elements": {"layout": "parallel", "columns": ["part_pt", "part_eta", "part_phi", "part_pid"]},
    "features": [
        {"name": "log_pt", "source": "part_pt", "ops": [{"op": "log"}, {"op": "standardize"}]},
        {"name": "pt_frac", "source": "part_pt", "ops": [{"op": "fraction"}]},
        {"name": "eta_rel", "source": "part_eta", "ops": [{"op": "center", "weight": "part_pt"}]},
        {
            "name": "phi_rel",
            "source": "part_phi",
            "ops": [{"op": "center", "weight": "part_pt", "periodic": True}],
        },
    ],
    "context": ["jet_pt"],
    "label": "label",
}
ELEMENT_BUDGET = 16384
ESTIMATOR_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------- 1. numerics


def _random_batch(sizes: list[int], device: torch.device, seed: int = 0) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64)
    offsets = torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.long)
    return SetBatch(values=values, offsets=offsets).to(device)


def _mbc_model(encoder: dict[str, Any], device: torch.device) -> SetModel:
    torch.manual_seed(0)
    spec = ModelSpec(encoder=encoder, task="classify", num_classes=3, head={"hidden": [8]})
    return build_model(spec, num_features=3).to(device=device, dtype=torch.float64).eval()


def partition_error(device: torch.device, quick: bool) -> float:
    """Largest |chunked - whole| over every MBC encoder, float64 on ``device``."""
    batch = _random_batch([1, 2, 7, 64, 300 if quick else 5000], device)
    worst = 0.0
    with torch.no_grad():
        for encoder in MBC_ENCODERS.values():
            model = _mbc_model(encoder, device)
            whole = model(batch)
            for chunk in (7, 333):
                chunked = model.predict_chunked(batch, chunk)
                worst = max(worst, float((chunked - whole).abs().max()))
    return worst


def estimator_bias(device: torch.device) -> float:
    """Largest |mean over all subsets - full gradient| for DeepSets-sum and UMBC."""
    batch = _random_batch([6], device, seed=1)
    target = torch.tensor([1], device=device)
    worst = 0.0
    for name in ("deepsets-sum", "umbc-slot_sigmoid"):
        model = _mbc_model(MBC_ENCODERS[name], device).train()

        def grads(out: torch.Tensor, model: SetModel = model) -> list[torch.Tensor]:
            model.zero_grad(set_to_none=True)
            (torch.nn.functional.cross_entropy(out, target) + (out**4).mean()).backward()
            return [
                p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for p in model.parameters()
            ]

        full = grads(model(batch))
        factor = torch.tensor([3.0], dtype=torch.float64, device=device)  # n/M = 6/2
        subsets = [torch.tensor(c, device=device) for c in itertools.combinations(range(6), 2)]
        total = [torch.zeros_like(g) for g in full]
        for chosen in subsets:
            out = estimated_forward(
                model.encoder, model.head, batch, GradSubsets(chosen, factor), 2
            )
            for t, g in zip(total, grads(out), strict=True):
                t += g
        worst = max(
            worst,
            max(
                float((t / len(subsets) - g).abs().max()) for t, g in zip(total, full, strict=True)
            ),
        )
    return worst


# ------------------------------------------------------------------- 3-4. throughput


def write_jets(path: Path, num_jets: int) -> None:
    pq.write_table(make_jets(num_jets, seed=20261129), path, row_group_size=2000)


def fit_jet_transforms(spec: DataSpec, path: Path) -> FittedTransforms:
    table, _ = check_rows(pq.read_table(path), spec, str(path))
    return fit_on_batches(FittedTransforms.from_spec(spec), [table_to_batch(table, spec)])


def convert(table: Any, spec: DataSpec, transforms: FittedTransforms, path: Path) -> SetBatch:
    """What a read task and the consumer do to one Arrow block: check, pack, transform."""
    table, _ = check_rows(table, spec, str(path))
    return transforms.apply(table_to_batch(table, spec))


def budget_slices(batch: SetBatch) -> Iterator[SetBatch]:
    bounds = budget_bounds(batch.sizes().numpy(), ELEMENT_BUDGET)
    for lo, hi in itertools.pairwise(bounds.tolist()):
        yield batch.slice_sets(lo, hi)


def _pinned(batch: SetBatch) -> SetBatch:
    def pin(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.contiguous().pin_memory()

    return SetBatch(
        values=pin(batch.values),  # type: ignore[arg-type]
        offsets=pin(batch.offsets),  # type: ignore[arg-type]
        context=pin(batch.context),
        targets=pin(batch.targets),
    )


def parquet_feed(
    path: Path, spec: DataSpec, transforms: FittedTransforms, loaders: int, pin: bool
) -> tuple[queue.Queue, threading.Event]:
    """Endless budget batches from ``path`` made by ``loaders`` threads (row groups dealt
    round-robin), into a bounded queue; set the event to stop them."""
    out: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()
    groups = pq.ParquetFile(path).num_row_groups

    def load(first: int) -> None:
        file = pq.ParquetFile(path)
        for group in itertools.cycle(range(first, groups, loaders)):
            batch = convert(file.read_row_group(group), spec, transforms, path)
            for piece in budget_slices(batch):
                piece = _pinned(piece) if pin else piece
                while not stop.is_set():
                    try:
                        out.put(piece, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return

    for i in range(min(loaders, groups)):
        threading.Thread(target=load, args=(i,), daemon=True).start()
    return out, stop


class BusySampler:
    """NVML GPU utilisation sampled every 50 ms in a thread; None without NVML."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception as err:  # no nvidia-ml-py or no driver: report it missing
            print(f"NVML unavailable ({err}); no busy fraction", file=sys.stderr)

    def __enter__(self) -> BusySampler:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


def train_rate(
    model: SetModel, next_batch: Callable[[], SetBatch], device: torch.device, seconds: float
) -> float:
    """Training sets/s over ``seconds`` after 5 warm-up steps (bf16 autocast on CUDA)."""
    optimizer = build_optimizer(model.parameters(), OptimizerSpec(lr=1e-4))
    amp = device.type == "cuda"

    def step() -> int:
        batch = next_batch().to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(batch)
        loss = task_loss("classify", outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return batch.num_sets

    for _ in range(5):
        step()
    _synchronize(device)
    sets, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sets += step()
    _synchronize(device)
    return sets / (time.perf_counter() - start)


def throughput(
    device: torch.device, seconds: float, loaders: int, num_jets: int
) -> dict[str, float | None]:
    spec = DataSpec.model_validate(JET_DATA)
    out: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jets.parquet"
        write_jets(path, num_jets)
        transforms = fit_jet_transforms(spec, path)
        whole = convert(pq.read_table(path), spec, transforms, path)
        resident = [b.to(device) for b in budget_slices(whole)]
        print(
            f"{num_jets} jets, {whole.num_elements / whole.num_sets:.1f} particles each, "
            f"{len(resident)} batches of <= {ELEMENT_BUDGET} elements",
            file=sys.stderr,
        )
        for name, encoder in JET_MODELS.items():
            torch.manual_seed(0)
            model_spec = ModelSpec(encoder=encoder, task="classify", num_classes=2)
            model = build_model(model_spec, num_features=4, num_context=1).to(device)
            cycle = itertools.cycle(resident)
            limit = train_rate(model, lambda c=cycle: next(c), device, seconds)
            feed, stop = parquet_feed(path, spec, transforms, loaders, pin=device.type == "cuda")
            try:
                with BusySampler(device) as sampler:
                    fed = train_rate(model, lambda q=feed: q.get(timeout=60), device, seconds)
            finally:
                stop.set()
            out |= {
                f"{name}_sets_s": round(limit),
                f"{name}_fed_sets_s": round(fed),
                f"{name}_fed_ratio": round(fed / limit, 3),
                f"{name}_gpu_busy": None if sampler.busy is None else round(sampler.busy, 3),
            }
            print(f"{name}: {out}", file=sys.stderr)
    return out


# ---------------------------------------------------------------------- 5. memory


def estimator_memory(device: torch.device, sizes: tuple[int, ...]) -> dict[str, float]:
    """Peak memory (MB) of one estimator training step on one set of n elements."""
    torch.manual_seed(0)
    spec = ModelSpec(encoder=JET_MODELS["umbc"], task="classify", num_classes=2)
    model = build_model(spec, num_features=4).to(device)
    optimizer = build_optimizer(model.parameters(), OptimizerSpec(lr=1e-4))
    out: dict[str, float] = {}
    for n in sizes:
        batch = SetBatch(
            values=torch.randn(n, 4, device=device),
            offsets=torch.tensor([0, n], device=device),
            targets=torch.tensor([1], device=device),
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=True):
            outputs = model(batch, grad_budget=256, chunk_size=4096)
        loss = task_loss("classify", outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        tag = f"1e{round(math.log10(n))}"
        if device.type == "cuda":
            out[f"est_peak_mb_{tag}"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out[f"input_mb_{tag}"] = round(n * 4 * 4 / 2**20, 1)
        del batch, outputs, loss
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short sections, small sizes")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--seconds", type=float, help="seconds per throughput measurement")
    parser.add_argument("--loaders", type=int, default=4, help="Parquet loader threads")
    args = parser.parse_args()
    if args.device == "cpu":
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    elif args.device == "cuda":
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    else:
        print(result_line({"gpu": "none"}))
        return 0
    quick = args.quick or device.type == "cpu"
    seconds = args.seconds or (2.0 if quick else 20.0)
    gpu = torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"
    print(f"device {gpu}, torch {torch.__version__}", file=sys.stderr)
    figures: dict[str, Any] = {"gpu": gpu}
    began = time.perf_counter()
    figures["mbc_partition_max_err"] = f"{partition_error(device, quick):.2e}"
    figures["estimator_bias_max"] = f"{estimator_bias(device):.2e}"
    print(f"numerics: {figures} ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    figures |= throughput(device, seconds, args.loaders, 2000 if quick else 40_000)
    print(f"throughput done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    sizes = ESTIMATOR_SIZES[:3] if quick else ESTIMATOR_SIZES
    figures |= estimator_memory(device, sizes)
    figures["seconds"] = round(time.perf_counter() - began)
    print(result_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
