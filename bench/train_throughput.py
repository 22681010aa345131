"""Training throughput: setpipe on Ray Train (1 CPU worker) vs a plain PyTorch loop.

Both train the same DeepSets on the same Parquet files with the same SetBatch packing
(a batch closes when the next set would pass the element budget), the same fitted
transforms, loss, optimizer and gradient clipping. The plain loop reads the files with
pyarrow in the training process and never shuffles; setpipe streams them through Ray
Data (reads in other processes), shuffles in a local buffer, and checks bad rows.
Both run with one torch thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1).
sets/s is the last epoch's (warm) training rate, validation excluded; the plain rate is
the mean of one run before and one after setpipe's (the machine's load drifts).

    python bench/train_throughput.py [--quick] [--sets N] [--epochs E]

RESULT vs_plain=<setpipe / plain> sets_per_s=<setpipe> plain_sets_per_s=<plain>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from _common import result_line, start_ray

BUDGET = 4096


def write_jets(root: Path, sets: int, files: int = 4, seed: int = 0) -> None:
    """Jet-like sets: ~40 particles with pT, eta, phi, pid; label shifts the multiplicity."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, sets)
    sizes = np.maximum(4, rng.poisson(np.where(label == 1, 32, 48))).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, kind))

    table = pa.table(
        {
            "part_pt": lists(rng.exponential(10.0, n).astype(np.float32) + 0.5, pa.float32()),
            "part_eta": lists(rng.normal(0, 0.2, n).astype(np.float32), pa.float32()),
            "part_phi": lists(rng.normal(0, 0.2, n).astype(np.float32), pa.float32()),
            "part_pid": lists(rng.choice([22, 211, -211, 130], n).astype(np.int32), pa.int32()),
            "label": pa.array(label, pa.int64()),
            "event_id": pa.array(np.arange(sets), pa.int64()),
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    step = -(-sets // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), root / f"part-{i}.parquet")


def job_for(root: Path, workdir: Path, epochs: int):  # -> JobSpec
    from setpipe.spec import job_from_dict

    return job_from_dict(
        {
            "name": "throughput",
            "workdir": str(workdir),
            "data": {
                "train": str(root),
                "elements": {
                    "layout": "parallel",
                    "columns": ["part_pt", "part_eta", "part_phi", "part_pid"],
                },
                "features": [
                    {
                        "name": "log_pt",
                        "source": "part_pt",
                        "ops": [{"op": "log"}, {"op": "standardize"}],
                    },
                    {"name": "eta", "source": "part_eta"},
                    {"name": "phi", "source": "part_phi"},
                ],
                "label": "label",
                "batch": {"element_budget": BUDGET},
            },
            "model": {
                "task": "classify",
                "num_classes": 2,
                "encoder": {"kind": "deepsets", "phi": [64, 64, 64], "rho": [64]},
            },
            "train": {
                "epochs": epochs,
                "workers": 1,
                "resources_per_worker": {"CPU": 1},
                "lr_schedule": {"kind": "constant"},
            },
        }
    )


def plain_batches(files: list[Path], spec):  # -> Iterator[SetBatch]
    """The same packing as setpipe, straight from pyarrow: no Ray, no shuffle."""
    from setpipe.data import table_to_batch

    column = spec.elements.columns[0]
    for path in files:
        table = pq.read_table(path, columns=[*spec.elements.columns, spec.label])
        sizes = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
        start, used = 0, 0
        for row, size in enumerate(sizes):
            if used and used + size > BUDGET:
                yield table_to_batch(table.slice(start, row - start), spec)
                start, used = row, 0
            used += int(size)
        if start < len(sizes):
            yield table_to_batch(table.slice(start), spec)


def plain_loop(job, transforms, files: list[Path], epochs: int) -> float:
    """sets/s of the last epoch of a hand-written loop with the same model and step."""
    from setpipe.models import build_model
    from setpipe.train.losses import task_loss
    from setpipe.train.optim import build_optimizer

    torch.manual_seed(job.train.seed)
    model = build_model(job.model, num_features=len(job.data.feature_names))
    optimizer = build_optimizer(model.parameters(), job.train.optimizer)
    rate = 0.0
    for _ in range(epochs):
        started, sets = time.monotonic(), 0
        for raw in plain_batches(files, job.data):
            batch = transforms.apply(raw)
            loss = task_loss(job.model.task, model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
            optimizer.step()
            sets += batch.num_sets
        rate = sets / (time.monotonic() - started)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, finishes in a minute")
    parser.add_argument("--sets", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    sets = args.sets or (6000 if args.quick else 40000)
    epochs = args.epochs or (2 if args.quick else 3)

    import ray

    from setpipe.pipeline import read_inputs, train

    with tempfile.TemporaryDirectory(prefix="setpipe-bench-") as tmp:
        root = Path(tmp) / "jets"
        write_jets(root, sets)
        job = job_for(root, Path(tmp) / "work", epochs)
        files = sorted(root.glob("*.parquet"))
        start_ray(num_cpus=4)
        inputs = read_inputs(job)
        transforms = inputs.transforms
        # The plain loop runs before and after setpipe and the two rates are averaged, so a
        # change in load from other processes during the run tilts neither side.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        plain_before = plain_loop(job, transforms, files, epochs)
        torch.set_num_threads(threads)
        outcome = train(job, inputs=inputs, progress=False).outcome
        ray.shutdown()
        setpipe_rate = outcome.history[-1]["train_sets_per_s"]
        torch.set_num_threads(1)
        plain_after = plain_loop(job, transforms, files, epochs)
    plain_rate = (plain_before + plain_after) / 2
    print(f"sets={sets} epochs={epochs} element_budget={BUDGET}")
    print(f"setpipe (TorchTrainer, 1 worker): {setpipe_rate:.0f} sets/s")
    print(
        f"plain PyTorch loop (pyarrow):     {plain_rate:.0f} sets/s "
        f"(before {plain_before:.0f}, after {plain_after:.0f})"
    )
    figures = {"vs_plain": round(setpipe_rate / plain_rate, 3), "sets_per_s": round(setpipe_rate)}
    print(result_line(figures | {"plain_sets_per_s": round(plain_rate)}))


if __name__ == "__main__":
    main()
