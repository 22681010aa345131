"""Quark/gluon jet tagging: test ROC AUC of DeepSets (PFN), UMBC and the Set Transformer,
and of their variants: the Set Transformer with ParT's pairwise interactions, DeepSets
with LCM pooling (whose partition error is reported beside its AUC).

Real Pythia 8 jets (setpipe/data/datagen/pythia.py), the features of jobs/qg_jets.yaml
(log pT, pT fraction, y and phi relative to the pT-weighted axis, particle-type flags),
split by a stable hash of event_id: 65% train, 10% validation, 25% test (5k of 20k).
Each model trains in-process for at most 30 epochs with early stopping on val_auc; the
best epoch's weights are scored on the test split. Beside them, the AUC of the jet
multiplicity alone (fewer particles = quark) on the same test split.

    python bench/qg_auc.py [--data DIR] [--quick] [--models deepsets,umbc,set_transformer]
        [--max-jets N]   # at most N jets (whole files, in name order): a smaller run

Models: deepsets, umbc, set_transformer, set_transformer_pairwise (ln Δ, ln kT, ln z,
ln m² of each particle pair, one bias per head on every SAB's logits), deepsets_lcm
(the PFN with pooling: lcm, associativity weight 0.1; its test partition error, 3 chunks
against the whole jet, is reported as deepsets_lcm_partition_error).

Without --data, jets are generated with `setpipe datagen pythia` (slow: ~10 jets/s/core).
--quick only checks that the script runs end to end: ~14 steps on ~1,300 jets leave the
nets near their initialisation, and an untrained sum-pooled net scores multiplicity with
whatever sign its random weights give (DeepSets AUC 0.17 = 1 - multiplicity's 0.83).

RESULT deepsets_auc=... umbc_auc=... set_transformer_auc=... multiplicity_auc=...
       [set_transformer_pairwise_auc=... deepsets_lcm_auc=... deepsets_lcm_partition_error=...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from _common import REPO, result_line, start_ray

ENCODERS = {
    # PFN of Komiske et al.: Phi (100, 100, 256), F (100, 100, 100); sum pooling.
    "deepsets": {"kind": "deepsets", "phi": [100, 100, 256], "pooling": "sum", "rho": [100, 100]},
    "umbc": {
        "kind": "umbc",
        "embed": [128, 128],
        "slots": 16,  # 16 slots: most of the AUC of 32 at half the cost on 2 cores
        "heads": 4,
        "dim": 128,
        "slot_head": {"kind": "set_transformer", "sab_layers": 1},
    },
    "set_transformer": {"kind": "set_transformer", "dim": 64, "heads": 4, "layers": 2},
    # The same Set Transformer with ParT's pair features read back from log_pt, y_rel and
    # phi_rel (massless: the Pythia jets carry no mass column); a [32] pair MLP keeps the
    # B x n x n activations of ~180 jets of <= ~130 particles under ~1 GB on CPU.
    "set_transformer_pairwise": {
        "kind": "set_transformer",
        "dim": 64,
        "heads": 4,
        "layers": 2,
        "pairwise": {
            "kind": "jet",
            "pt": "log_pt",
            "rapidity": "y_rel",
            "phi": "phi_rel",
            "embed": [32],
            "max_set_size": 512,
        },
    },
    # The PFN with its sum replaced by a learned commutative operator (LCM). g's hidden
    # width 64: the operator runs on ~every element (n - 1 merges a set), so [128] made an
    # epoch ~10x the PFN's on 2 CPU cores.
    "deepsets_lcm": {
        "kind": "deepsets",
        "phi": [100, 100, 256],
        "pooling": "lcm",
        "rho": [100, 100],
        "lcm_hidden": [64],
        "lcm_assoc_weight": 0.1,
    },
}


def job_for(
    name: str,
    data: str,
    workdir: Path,
    epochs: int,
    quick: bool,
    warmup: int | None = None,
    budget: int = 8192,
):  # -> JobSpec
    from setpipe.spec import job_from_dict, load_job

    base = load_job(REPO / "jobs" / "qg_jets.yaml").model_dump(mode="json", exclude_none=True)
    base.pop("schedule", None)
    base["name"] = f"qg-{name.replace('_', '-')}"
    base["workdir"] = str(workdir)
    base["data"]["train"] = data
    base["data"]["split"] = {"key": "event_id", "validation": 0.1, "test": 0.25}
    # No jet pT context: in a 500-550 GeV window it carries nothing, and unscaled (~500)
    # beside unit-scale pooled features it slows the optimiser down.
    base["data"].pop("context", None)
    for feature in base["data"]["features"]:
        if feature["name"] in ("y_rel", "phi_rel") and {"op": "standardize"} not in feature["ops"]:
            # Centred y and phi spread over ~0.1: standardized, the MLP starts at unit scale.
            feature["ops"].append({"op": "standardize"})
    base["data"]["batch"]["element_budget"] = budget  # 8192: ~190 jets a step, ~90 steps an epoch
    base["model"]["encoder"] = ENCODERS[name]
    base["model"]["head"] = {"hidden": [64], "dropout": 0.0}
    base["train"] = {
        "epochs": epochs,
        "workers": 0,  # in-process: every core on the model, no worker start-up
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        "lr_schedule": {
            "kind": "cosine",
            "warmup_steps": warmup if warmup is not None else (20 if quick else 200),
        },
        "early_stopping": {"metric": "val_auc", "direction": "maximize", "patience": 6},
        "seed": 0,
    }
    return job_from_dict(base)


def multiplicity_auc(job) -> float:  # job: JobSpec
    """AUC of -n_particles on the test split (quark jets have fewer particles)."""
    from sklearn.metrics import roc_auc_score

    from setpipe.data import read_dataset

    test = read_dataset(job.data, "test")
    sizes, labels = [], []
    column = job.data.elements.columns[0]
    for table in test.iter_batches(batch_format="pyarrow"):
        sizes.append(pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False))
        labels.append(table.column(job.data.label).to_numpy())
    return float(roc_auc_score(np.concatenate(labels), -np.concatenate(sizes)))


def train_one(job) -> tuple[float, dict]:  # -> (test AUC, info)
    from setpipe.pipeline import train

    started = time.monotonic()
    outcome = train(job).outcome
    info = {
        "epochs": len(outcome.history),
        "best_epoch": outcome.best_epoch + 1 if outcome.best_epoch is not None else None,
        "val_auc": outcome.val_metrics.get("val_auc"),
        "minutes": (time.monotonic() - started) / 60,
    }
    if "test_lcm_partition_error" in outcome.test_metrics:
        info["partition_error"] = outcome.test_metrics["test_lcm_partition_error"]
    return outcome.test_metrics["test_auc"], info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="directory of Pythia jet Parquet files")
    parser.add_argument("--quick", action="store_true", help="2 epochs on a few thousand jets")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", default="deepsets,umbc,set_transformer")
    parser.add_argument("--jets", type=int, default=20000, help="jets to generate without --data")
    parser.add_argument(
        "--max-jets", type=int, default=None, help="use whole files up to this many jets"
    )
    parser.add_argument("--warmup-steps", type=int, default=None, help="default 200 (20 quick)")
    parser.add_argument("--element-budget", type=int, default=8192, help="elements per batch")
    args = parser.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-qg-"))
    data = args.data
    if data is None:
        data = str(tmp / "jets")
        jets = 400 if args.quick else args.jets  # ~19 jets/s/core
        cmd = [sys.executable, "-m", "setpipe", "datagen", "pythia", "--out", data]
        subprocess.run([*cmd, "--num-jets", str(jets)], check=True)
    if args.quick and args.data is not None:
        data = str(sorted(Path(data).glob("*.parquet"))[0])  # one file: 2000 jets
    elif args.max_jets is not None:
        data = subset(Path(data), args.max_jets, tmp / "subset")
    epochs = 2 if args.quick else args.epochs

    start_ray()
    results: dict[str, float] = {}
    extra: dict[str, float] = {}
    names = args.models.split(",")
    for name in names:
        job = job_for(
            name, data, tmp / "work", epochs, args.quick, args.warmup_steps, args.element_budget
        )
        if "multiplicity" not in results:
            results["multiplicity"] = multiplicity_auc(job)
            print(f"multiplicity alone: test AUC {results['multiplicity']:.4f}", flush=True)
        print(f"== {name}", flush=True)
        auc, info = train_one(job)
        results[name] = auc
        if "partition_error" in info:
            extra[f"{name}_partition_error"] = round(info["partition_error"], 5)
        print(f"== {name}: test AUC {auc:.4f}  {info}", flush=True)
    ray.shutdown()
    figures = {f"{n}_auc": round(results[n], 4) for n in [*names, "multiplicity"]}
    print(result_line(figures | extra))


def subset(data: Path, max_jets: int, out: Path) -> str:
    """Links to the first files (by name) holding at most ``max_jets`` jets in all."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    total = 0
    for path in sorted(data.glob("*.parquet")):
        rows = pq.ParquetFile(path).metadata.num_rows
        if total + rows > max_jets:
            break
        (out / path.name).symlink_to(path.resolve())
        total += rows
    print(f"using {total} jets of {data}", flush=True)
    return str(out)


if __name__ == "__main__":
    main()
