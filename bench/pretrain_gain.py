"""Does masked set pretraining help with few labels? Quark/gluon test AUC, pretrained vs scratch.

Real Pythia 8 jets (``setpipe datagen pythia``), ordered by a stable hash of event_id
(setpipe.data.split.key_unit, what data.split uses): the first --test jets are the test
split, the next --validation jets the validation split, the rest the pool. One
``pretrain_masked`` run (jobs/qg_pretrain.yaml's features and masking, this bench's
encoder) learns on the whole pool WITHOUT labels. Then for each labeled size N and seed s,
N jets drawn from the pool with seed s train a classifier twice on the same jets: from
scratch, and with the encoder initialised from the pretrained one (model.init_from with
parts [encoder], full fine-tuning). Both stop early on val_auc and are scored on the same
test jets. Reported: mean and spread (max - min) of the test AUC over the seeds, and the
gain (fine-tuned - scratch, paired by seed).

    python bench/pretrain_gain.py [--data DIR] [--quick] [--labeled 1000,5000] [--seeds 3]

--quick checks the script end to end on a few hundred jets (figures meaningless).

RESULT pretrain_val_mse=... auc_scratch_1000=... auc_pretrained_1000=... gain_1000=... ...
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from _common import REPO, result_line, start_ray

ENCODER = {
    # Smaller than jobs/qg_jets.yaml's (128 wide, 32 slots): 13 trainings on 2 shared cores.
    "kind": "umbc",
    "embed": [64, 64],
    "slots": 8,
    "heads": 4,
    "dim": 64,
    "slot_head": {"kind": "set_transformer", "sab_layers": 1},
}


def split_jets(data: str, out: Path, n_test: int, n_val: int) -> tuple[pa.Table, int]:
    """test/ and validation/ under ``out`` (hash order of event_id); returns the pool."""
    from setpipe.data.split import key_unit

    table = pads.dataset(data, format="parquet").to_table()
    order = np.argsort(key_unit(table.column("event_id")), kind="stable")
    table = table.take(pa.array(order))
    parts = {"test": table.slice(0, n_test), "validation": table.slice(n_test, n_val)}
    for name, part in parts.items():
        (out / name).mkdir(parents=True)
        pq.write_table(part, out / name / "part-0.parquet")
    return table.slice(n_test + n_val), table.num_rows


def write_labeled(pool: pa.Table, n: int, seed: int, out: Path) -> Path:
    rows = np.random.default_rng(seed).choice(pool.num_rows, size=n, replace=False)
    path = out / f"labeled_{n}_s{seed}"
    path.mkdir(parents=True)
    pq.write_table(pool.take(pa.array(np.sort(rows))), path / "part-0.parquet")
    return path


def job(kind: str, train: Path, root: Path, seed: int, epochs: int, init: Path | None = None):
    """A JobSpec: ``kind`` pretrain (jobs/qg_pretrain.yaml) or classify (jobs/qg_jets.yaml,
    the same features; fully fine-tuned from ``init``, or from scratch when it is None)."""
    from setpipe.spec import job_from_dict, load_job

    name = "qg_pretrain" if kind == "pretrain" else "qg_jets"
    base = load_job(REPO / "jobs" / f"{name}.yaml").model_dump(mode="json", exclude_none=True)
    # One Ray run name per training: a name with checkpoints would resume, not train.
    start = "pretrained" if init is not None else "scratch"
    base["name"] = f"gain-{kind}-{start}-{train.name}".replace("_", "-")
    base["workdir"] = str(root / "work")
    base["data"].pop("split", None)
    base.pop("schedule", None)
    base["data"]["train"] = str(train)
    base["data"]["validation"] = str(root / "validation")
    base["data"]["test"] = str(root / "test")
    base["data"]["batch"]["element_budget"] = 8192  # ~180 jets a step
    base["model"]["encoder"] = ENCODER
    if init is not None:
        base["model"]["init_from"] = {"uri": str(init), "parts": ["encoder"]}
    if kind == "pretrain":
        base["model"]["pretrain"]["decoder"] = [64]
    else:
        base["model"]["head"] = {"hidden": [64], "dropout": 0.0}
    metric = ("val_loss", "minimize") if kind == "pretrain" else ("val_auc", "maximize")
    base["train"] = {
        "epochs": epochs,
        "workers": 0,  # in-process: every core on the model, no worker start-up
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        "lr_schedule": {"kind": "cosine", "warmup_steps": 20},
        "early_stopping": {"metric": metric[0], "direction": metric[1], "patience": 4},
        "seed": seed,
    }
    return job_from_dict(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/data/qg30k", help="Pythia jet Parquet dir")
    parser.add_argument("--quick", action="store_true", help="a few hundred jets, 1-2 epochs")
    parser.add_argument("--labeled", default="1000,5000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument(
        "--pretrained", default=None, help="weights of an earlier run's pretraining (same split)"
    )
    args = parser.parse_args()
    if args.quick:
        args.labeled, args.seeds, args.test, args.validation = "200", 2, 300, 200
        args.pretrain_epochs, args.epochs = 1, 2

    from setpipe.pipeline import train

    # Two threads on the 2-core box, unless a scheduler gave this run fewer (OMP_NUM_THREADS).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    root = Path(tempfile.mkdtemp(prefix="setpipe-gain-"))
    pool, total = split_jets(args.data, root, args.test, args.validation)
    if args.quick:
        pool = pool.slice(0, 1000)
    (root / "pool").mkdir()
    pq.write_table(pool, root / "pool" / "part-0.parquet")
    print(f"{total} jets: test {args.test}, validation {args.validation}, pool {pool.num_rows}")
    start_ray()

    started = time.monotonic()
    figures: dict[str, float | int] = {"pretrain_jets": pool.num_rows}
    if args.pretrained:
        weights = Path(args.pretrained)
    else:
        pre = train(job("pretrain", root / "pool", root, 0, args.pretrain_epochs), progress=True)
        weights = root / "pretrained.pt"
        torch.save({k: torch.as_tensor(v) for k, v in pre.outcome.state_dict.items()}, weights)
        figures |= {
            "pretrain_val_mse": pre.outcome.val_metrics["val_masked_mse"],
            "pretrain_test_mse": pre.outcome.test_metrics["test_masked_mse"],
            "pretrain_epochs": len(pre.outcome.history),
            "pretrain_min": (time.monotonic() - started) / 60,
        }
        print(f"pretrained ({weights}): {figures}", flush=True)

    for n in (int(x) for x in args.labeled.split(",")):
        aucs: dict[str, list[float]] = {"scratch": [], "pretrained": []}
        for seed in range(args.seeds):
            labeled = write_labeled(pool, n, seed, root)
            for kind, init in (("scratch", None), ("pretrained", weights)):
                spec = job("classify", labeled, root, seed, args.epochs, init)
                outcome = train(spec, progress=False).outcome
                auc = outcome.test_metrics["test_auc"]
                aucs[kind].append(auc)
                print(
                    f"N={n} seed={seed} {kind}: test AUC {auc:.4f} (best epoch "
                    f"{(outcome.best_epoch or 0) + 1} of {len(outcome.history)})",
                    flush=True,
                )
        gain = np.array(aucs["pretrained"]) - np.array(aucs["scratch"])
        for kind, values in aucs.items():
            figures[f"auc_{kind}_{n}"] = float(np.mean(values))
            figures[f"spread_{kind}_{n}"] = float(np.ptp(values))
        figures[f"gain_{n}"] = float(gain.mean())
        figures[f"gain_min_{n}"] = float(gain.min())
        print(f"N={n}: {aucs}", flush=True)
    figures["minutes"] = (time.monotonic() - started) / 60
    print(result_line(figures))


if __name__ == "__main__":
    main()
