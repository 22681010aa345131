"""Quark/gluon tagging with and without an EMA of the weights: PFN (DeepSets) and UMBC.

Real Pythia 8 jets, the models, features and split of bench/qg_auc.py (by a stable hash
of event_id: 65% train, 10% validation, 25% test), each model trained twice from the same
seed: plain, and with ``train.ema`` (the average is what validation, the best epoch and
the test score see). Reports per run the test AUC and background rejection 1/eps_B at 50%
signal efficiency, each with its bootstrap sigma over the test jets (test_*_sigma).

    python bench/qg_ema.py --data DIR [--epochs N] [--quick] [--models deepsets,umbc]

--quick checks the script end to end on one file (2 epochs); its figures mean nothing.

RESULT deepsets_auc=... deepsets_ema_auc=... umbc_auc=... umbc_ema_auc=...
       (and *_auc_sigma, *_rej50, *_rej50_sigma, best_auc)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import result_line, start_ray
from qg_auc import job_for


def train_one(job) -> dict[str, float]:  # job: JobSpec
    from setpipe.pipeline import train

    started = time.monotonic()
    outcome = train(job).outcome
    test = outcome.test_metrics
    return {
        "auc": test["test_auc"],
        "auc_sigma": test["test_auc_sigma"],
        "rej50": test["test_rej50"],
        "rej50_sigma": test["test_rej50_sigma"],
        "val_auc": outcome.val_metrics.get("val_auc", float("nan")),
        "epochs": len(outcome.history),
        "best_epoch": (outcome.best_epoch or 0) + 1,
        "minutes": (time.monotonic() - started) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of Pythia jet Parquet files")
    parser.add_argument("--quick", action="store_true", help="2 epochs on one file")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", default="deepsets,umbc")
    parser.add_argument("--decay", type=float, default=0.999)
    args = parser.parse_args()

    import ray

    from setpipe.spec import job_from_dict

    data = args.data
    if args.quick:
        data = str(sorted(Path(data).glob("*.parquet"))[0])
    epochs = 2 if args.quick else args.epochs
    tmp = Path(tempfile.mkdtemp(prefix="setpipe-qg-ema-"))
    start_ray()
    figures: dict[str, float] = {}
    for name in args.models.split(","):
        for ema in (False, True):
            job = job_for(name, data, tmp / "work", epochs, args.quick)
            raw = job.model_dump(mode="json", exclude_none=True)
            raw["name"] += "-ema" if ema else ""
            if ema:
                # warmup: min(decay, (1 + k) / (10 + k)), so the first epochs' average does
                # not remember the random initial weights.
                raw["train"]["ema"] = {"decay": args.decay, "warmup": True}
            label = f"{name}_ema" if ema else name
            print(f"== {label}", flush=True)
            out = train_one(job_from_dict(raw))
            print(f"== {label}: {out}", flush=True)
            figures |= {f"{label}_{k}": round(out[k], 4) for k in ("auc", "auc_sigma")}
            figures |= {f"{label}_{k}": round(out[k], 2) for k in ("rej50", "rej50_sigma")}
    ray.shutdown()
    figures["best_auc"] = max(v for k, v in figures.items() if k.endswith("_auc"))
    print(result_line(figures))


if __name__ == "__main__":
    main()
