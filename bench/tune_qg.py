"""A 16-trial ASHA search over the q/g UMBC job against its hand-set values, same split.

Real Pythia 8 quark/gluon jets: ``--jets`` rows drawn at random, half quark and half
gluon, from every readable file of ``--data`` (the classes are balanced only over the
whole directory, so rows are sampled, never whole files), split by a stable hash of
event_id. The base job is ``jobs/qg_jets.yaml`` (its UMBC, features, augmentation, early
stopping) with ``--epochs`` epochs on one Ray Train worker; ``setpipe.search.tune`` runs
``--trials`` trials of the space below under ASHA (grace 1 epoch, reduction factor 2),
``--concurrency`` at a time, each a nested MLflow run, the best through the gate. Then
the hand-set job trains on the same split for the same epochs (``pipeline.train``).

    python bench/tune_qg.py --data DIR [--jets N] [--epochs E] [--trials T] [--quick]

--quick: 400 jets, 2 trials of 2 epochs: checks the script end to end; its figures mean
nothing.

RESULT wall_s=... trials=... stopped_early=... failed=... trial_epochs=... epoch_s=...
       best_val_auc=... best_test_auc=... handset_val_auc=... handset_test_auc=...
       (and *_test_auc_sigma, handset_s, jets, epochs)
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, result_line, start_ray

SPACE: dict[str, Any] = {
    "train.optimizer.lr": {"loguniform": [2.0e-4, 5.0e-3]},
    "model.encoder.slots": [8, 16, 32],
    "model.encoder.dim": [64, 128],
    # qg_jets.yaml's 200 warmup steps outlast a short run on a few thousand jets.
    "train.lr_schedule.warmup_steps": [20, 200],
    "model.head.dropout": [0.0, 0.1],
}


def sample_jets(data: Path, jets: int, out: Path, seed: int = 0) -> dict[str, int]:
    """``jets`` rows, half of each label, drawn from every readable file; 4 files in ``out``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in sorted(data.glob("*.parquet")):
        try:  # a file still being written has no footer yet: not a jet of it is read
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowInvalid):
            print(f"skipped {path.name}: not readable (still being written?)", flush=True)
    table = pa.concat_tables(tables)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), jets // 2, replace=False) for c in (0, 1)]
    )
    rows = rng.permutation(rows)
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(rows, 4)):
        pq.write_table(table.take(part), out / f"part-{i}.parquet")
    return {"quark": int((labels[rows] == 1).sum()), "gluon": int((labels[rows] == 0).sum())}


def base_job(data: Path, workdir: Path, epochs: int) -> dict[str, Any]:
    """jobs/qg_jets.yaml with this bench's data, split and epochs, on one worker."""
    from setpipe.spec import load_job

    base = load_job(REPO / "jobs" / "qg_jets.yaml").model_dump(mode="json", exclude_none=True)
    base.pop("schedule", None)
    base["name"] = "qg-tune"
    base["workdir"] = str(workdir)
    base["data"]["train"] = str(data)
    # Test larger than qg_jets.yaml's 10%: on a few thousand jets it is the AUC's error bar.
    base["data"]["split"] = {"key": "event_id", "validation": 0.15, "test": 0.25}
    base["train"]["epochs"] = epochs
    base["train"]["workers"] = 1  # what a trial trains on (workers: 0 cannot run in a trial)
    return base


def trial_epochs(workdir: Path, parent: str) -> tuple[dict[str, int], float]:
    """(epochs each trial ran, by Tune trial id; the median seconds between two epochs of a
    trial), from the nested runs' val_auc steps and their timestamps."""
    import statistics

    from mlflow.tracking import MlflowClient

    from setpipe.search import PARENT_TAG, TRIAL_TAG

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    epochs, gaps = {}, []
    for run in runs:
        history = sorted(
            client.get_metric_history(run.info.run_id, "val_auc"), key=lambda m: m.step
        )
        epochs[run.data.tags[TRIAL_TAG]] = len(history)
        gaps += [(b.timestamp - a.timestamp) / 1000 for a, b in itertools.pairwise(history)]
    return epochs, statistics.median(gaps) if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of Pythia jet Parquet files")
    parser.add_argument("--jets", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="400 jets, 2 trials of 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.jets, args.epochs, args.trials = 400, 2, 2

    import ray

    from setpipe.pipeline import train
    from setpipe.search import tune
    from setpipe.spec import job_from_dict

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-tune-qg-"))
    counts = sample_jets(Path(args.data), args.jets, tmp / "jets")
    print(f"sampled {counts} into {tmp / 'jets'}", flush=True)
    base = base_job(tmp / "jets", tmp / "work", args.epochs)
    searched = base | {
        "search": {
            "space": SPACE,
            "trials": args.trials,
            "concurrency": args.concurrency,
            "scheduler": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
            "seed": 0,
        }
    }
    start_ray()
    summary = tune(job_from_dict(searched), progress=False)
    epochs, epoch_s = trial_epochs(tmp / "work", summary.parent_run_id)
    print(f"search: {summary}", flush=True)
    print(f"epochs per trial: {json.dumps(epochs, sort_keys=True)}", flush=True)

    base["name"] = "qg-handset"
    started = time.monotonic()
    handset = train(job_from_dict(base), progress=False).outcome
    handset_s = time.monotonic() - started
    ray.shutdown()
    print(f"hand-set: val {handset.val_metrics} test {handset.test_metrics}", flush=True)

    best = summary.metrics
    print(
        result_line(
            {
                "wall_s": round(summary.wall_s),
                "trials": summary.trials,
                "stopped_early": len(summary.stopped_early),
                "failed": len(summary.failed),
                "trial_epochs": sum(epochs.values()),
                "epoch_s": round(epoch_s, 1),
                "best_val_auc": round(best["val_auc"], 4),
                "best_test_auc": round(best["test_auc"], 4),
                "best_test_auc_sigma": round(best["test_auc_sigma"], 4),
                "handset_val_auc": round(handset.val_metrics["val_auc"], 4),
                "handset_test_auc": round(handset.test_metrics["test_auc"], 4),
                "handset_test_auc_sigma": round(handset.test_metrics["test_auc_sigma"], 4),
                "handset_s": round(handset_s),
                "jets": args.jets,
                "epochs": args.epochs,
            }
        )
    )


if __name__ == "__main__":
    main()
