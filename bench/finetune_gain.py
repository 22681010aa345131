"""Fine-tuning on a shifted sample: a model trained on many 500-550 GeV jets, fine-tuned on 2k
jets of another pT window, against the same 2k jets trained from scratch.

Source: the PFN (DeepSets, jobs/qg_jets.yaml's features) trained on ``--source-jets`` jets of
``--source`` (split by event_id; default 20k train). Shifted sample: ``--shifted`` split by
event_id into train (80%, ~2k of 2.5k) and validation (20%); scored on ``--shifted-test``, a
second shifted sample made with another seed (the test split). Three runs on the same
shifted train/validation/test, same seed and schedule:

- scratch: random initial weights;
- finetune: ``model.init_from`` = the source's best weights, encoder at 0.1x the lr
  (``train.lr_multipliers``);
- probe: the same, encoder frozen (``train.freeze``), only the head trains.

Test AUC with its bootstrap σ (200 resamples) for each; with ``--seeds S`` every shifted run
is repeated for train.seed 0..S-1 (head initialisation, scratch weights, batch order; the
source is trained once) and the mean, spread (max - min) and paired gain are reported.
Make the data (hep extra):

    setpipe datagen pythia --out /work/data/qg30k --num-jets 30000 --seed 4242
    setpipe datagen pythia --out /work/data/qg_pt300 --num-jets 2500 --seed 1313 --jet-pt 300,350
    setpipe datagen pythia --out /work/data/qg_pt300_test --num-jets 2500 --seed 1314 \\
        --jet-pt 300,350
    python bench/finetune_gain.py [--quick]

--quick checks the script end to end: the source on one 2000-jet file for 2 epochs, the
shifted runs 2 epochs each (figures near chance).

RESULT scratch_auc=... scratch_sigma=... finetune_auc=... finetune_sigma=... probe_auc=...
probe_sigma=... source_auc=... gain=... (AUCs and σ: means over the seeds; with --seeds > 1
also *_spread, gain_min and gain_max)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import REPO, result_line, start_ray

PFN = {"kind": "deepsets", "phi": [100, 100, 256], "pooling": "sum", "rho": [100, 100]}


def base_job(name: str, workdir: Path, epochs: int, quick: bool) -> dict[str, Any]:
    """jobs/qg_jets.yaml with the PFN, in-process. No early stopping: every run trains all its
    epochs and keeps its best val_auc epoch (patience 5 stopped the scratch run at epoch 7,
    during its warmup, with a one-class accuracy of 0.5)."""
    from setpipe.spec import load_job

    base = load_job(REPO / "jobs" / "qg_jets.yaml").model_dump(mode="json", exclude_none=True)
    base.pop("schedule", None)
    base["name"] = name
    base["workdir"] = str(workdir)
    base["data"]["batch"]["element_budget"] = 8192  # ~190 jets a step
    base["model"]["encoder"] = PFN
    base["model"]["head"] = {"hidden": [64], "dropout": 0.0}
    base["train"] = {
        "epochs": epochs,
        "workers": 0,  # in-process: every core on the model, no worker start-up
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        "lr_schedule": {"kind": "cosine", "warmup_steps": 10 if quick else 100},
        "seed": 0,
    }
    return base


def train(raw: dict[str, Any]) -> tuple[dict[str, float], Any]:
    from setpipe.pipeline import train as train_job
    from setpipe.spec import job_from_dict

    started = time.monotonic()
    outcome = train_job(job_from_dict(raw), progress=False).outcome
    figures = outcome.test_metrics | {
        "epochs": len(outcome.history),
        "best_epoch": (outcome.best_epoch or 0) + 1,
        "minutes": (time.monotonic() - started) / 60,
    }
    print(f"== {raw['name']}: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    return figures, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/work/data/qg30k")
    parser.add_argument("--shifted", default="/work/data/qg_pt300")
    parser.add_argument("--shifted-test", default="/work/data/qg_pt300_test")
    parser.add_argument("--source-test", type=float, default=0.2333, help="test fraction")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--source-weights",
        default=None,
        help="weights of a source trained before (skips training it; source_auc=nan)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="shifted runs per variant")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    from setpipe.data.datagen._write import split_by_key

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-finetune-"))
    epochs = 2 if args.quick else args.epochs
    files = sorted(Path(args.source).glob("*.parquet"))
    shifted_files = sorted(Path(args.shifted).glob("*.parquet"))
    test_files = sorted(Path(args.shifted_test).glob("*.parquet"))
    if not files or not shifted_files or not test_files:
        raise SystemExit("no Parquet files in --source/--shifted/--shifted-test: see the docstring")
    # 80/20 train/validation of the shifted sample by event_id (the split data.split makes).
    shifted = split_by_key(shifted_files, tmp / "shifted", "event_id", 0.2, 0.0, "shifted")
    start_ray()

    weights = tmp / "source_weights.pt"
    source_figures = {"test_auc": float("nan")}
    if args.source_weights:
        weights = Path(args.source_weights)
    else:
        source = base_job("ft-source", tmp / "work", epochs, args.quick)
        source["data"]["train"] = str(files[0]) if args.quick else args.source
        split = {"key": "event_id", "validation": 0.1, "test": args.source_test}
        source["data"]["split"] = split
        source_figures, outcome = train(source)
        torch.save(outcome.state_dict, weights)

    results: dict[str, list[dict[str, float]]] = {}
    variants = {
        "scratch": {},
        "finetune": {"init": True, "train": {"lr_multipliers": {"encoder": 0.1}}},
        "probe": {"init": True, "train": {"freeze": ["encoder"]}},
    }
    for name, variant in variants.items():
        results[name] = []
        for seed in range(args.seeds):
            # One Ray run name per training: a name with checkpoints would resume, not train.
            raw = base_job(f"ft-{name}-s{seed}", tmp / "work", epochs, args.quick)
            raw["data"].pop("split", None)
            raw["data"]["train"] = str(tmp / "shifted" / "train")
            raw["data"]["validation"] = str(tmp / "shifted" / "validation")
            raw["data"]["test"] = args.shifted_test
            if variant.get("init"):
                raw["model"]["init_from"] = str(weights)
            raw["train"] |= variant.get("train", {}) | {"seed": seed}
            results[name].append(train(raw)[0])

    print(f"shifted sample: {', '.join(f'{k} {len(v)} files' for k, v in shifted.items())}")
    figures: dict[str, float] = {}
    aucs = {name: np.array([r["test_auc"] for r in results[name]]) for name in variants}
    for name in variants:
        print(f"{name}: test AUC per seed {np.round(aucs[name], 4).tolist()}")
        figures[f"{name}_auc"] = round(float(aucs[name].mean()), 4)
        sigmas = [r["test_auc_sigma"] for r in results[name]]
        figures[f"{name}_sigma"] = round(float(np.mean(sigmas)), 4)
        if args.seeds > 1:
            figures[f"{name}_spread"] = round(float(np.ptp(aucs[name])), 4)
    figures["source_auc"] = round(source_figures["test_auc"], 4)
    gain = aucs["finetune"] - aucs["scratch"]  # paired by seed
    figures["gain"] = round(float(gain.mean()), 4)
    if args.seeds > 1:
        figures["gain_min"] = round(float(gain.min()), 4)
        figures["gain_max"] = round(float(gain.max()), 4)
    print(result_line(figures))


if __name__ == "__main__":
    main()
