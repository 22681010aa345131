"""The shipped examples learn: every job in jobs/ trained on its generated data, beside a
simple baseline computed in the same run on the same test split.

- quickstart (synthetic jets) and qg_jets (Pythia 8 quark/gluon jets): test ROC AUC
  against the multiplicity alone (the number of particles; its sign is chosen on the
  training split); multihead (the quickstart's jets, a q/g head and a jet-pT head on one
  encoder): its q/g head's test AUC against the same baseline;
- digits: test accuracy against logistic regression (scikit-learn, default C=1) on the
  8x8 pixels of the same training and test images;
- passages: test nDCG@10 against random scores and an unsupervised heuristic, each
  passage's mean cosine similarity to its k nearest neighbours in its list (k of 1, 2,
  3, 5, 10 chosen on the validation split).

Each job runs as shipped, data made by the `setpipe datagen` command its YAML names,
except: train.workers=0 (in the driver process: two Ray Train workers would take both
CPUs of a 2-core machine from Ray Data), a temporary workdir, and qg_jets on
`--jets` Pythia jets (default 6000; ~10 jets/s per core, so minutes) split 80/10/10
by the job's own key hash. --quick makes small datasets (qg_jets: 200 jets) and
trains 1 epoch: it proves the script runs end to end; its figures mean nothing.

    python bench/examples.py [--quick] [--jobs quickstart,digits,passages,qg_jets]
                             [--jets N] [--qg-data DIR]

RESULT quickstart_auc=... quickstart_baseline=... digits_acc=... digits_baseline=...
passages_ndcg=... passages_random=... passages_heuristic=... qg_jets_auc=...
qg_jets_baseline=... multihead_qg_auc=... multihead_baseline=... beaten=N/M
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _common import REPO, result_line, start_ray

# Per job: the datagen command its YAML names (without --out) and what --quick adds.
DATAGEN: dict[str, tuple[list[str], list[str]]] = {
    "quickstart": (
        ["jets", "--train", "4000", "--validation", "1000", "--test", "1000"],
        ["--train", "400", "--validation", "100", "--test", "100"],
    ),
    "digits": (["digits"], []),
    "passages": (["passages"], ["--train", "200", "--validation", "50", "--test", "50"]),
    "qg_jets": (["pythia"], []),  # --num-jets from --jets / --quick
    "multihead": (
        ["jets", "--train", "4000", "--validation", "1000", "--test", "1000"],
        ["--train", "400", "--validation", "100", "--test", "100"],
    ),
}
METRIC = {
    "quickstart": "auc",
    "qg_jets": "auc",
    "digits": "accuracy",
    "passages": "ndcg",
    "multihead": "qg_auc",
}
SHORT = {"auc": "auc", "accuracy": "acc", "ndcg": "ndcg", "qg_auc": "qg_auc"}  # in RESULT


def read_split(job: Any, split: str) -> pa.Table:  # job: JobSpec
    """The columns the job reads of one split (a data.split is applied), as one table."""
    from setpipe.data import read_dataset

    dataset = read_dataset(job.data, split)
    return pa.concat_tables(dataset.iter_batches(batch_format="pyarrow"))


def multiplicity_auc(job: Any) -> dict[str, float]:
    """Test AUC of the particle count, its sign chosen on the training split."""
    from sklearn.metrics import roc_auc_score

    def counts(split: str) -> tuple[np.ndarray, np.ndarray]:
        table = read_split(job, split)
        n = pc.list_value_length(table.column(job.data.elements.columns[0]))
        label = job.data.set_label_columns[0]  # data.label, or the first head's target
        return n.to_numpy().astype(np.float64), table.column(label).to_numpy()

    n, y = counts("train")
    sign = 1.0 if roc_auc_score(y, n) >= 0.5 else -1.0
    n, y = counts("test")
    return {"baseline": float(roc_auc_score(y, sign * n))}


def pixel_logistic_regression(job: Any) -> dict[str, float]:
    """Test accuracy of logistic regression on the 8x8 pixels of the job's train/test images."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    pixels = load_digits().data
    train, test = read_split(job, "train"), read_split(job, "test")

    def xy(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return pixels[table.column(job.data.key).to_numpy()], table.column(
            job.data.label
        ).to_numpy()

    model = LogisticRegression(max_iter=5000).fit(*xy(train))
    return {"baseline": float(model.score(*xy(test)))}


def lists_of(job: Any, split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each list's vectors [n_i, D], all relevance grades [E] and list offsets [B+1]."""
    table = read_split(job, split)
    passages = table.column(job.data.elements.column).combine_chunks()
    vectors = (
        pc.list_flatten(pc.list_flatten(passages)).to_numpy().reshape(-1, job.data.elements.dim)
    )
    offsets = pc.list_value_length(passages).to_numpy().cumsum()
    offsets = np.concatenate([[0], offsets])
    relevance = pc.list_flatten(table.column(job.data.element_label)).to_numpy()
    lists = [vectors[a:b] for a, b in itertools.pairwise(offsets)]
    return lists, relevance, offsets


def neighbour_scores(lists: list[np.ndarray], k: int) -> np.ndarray:
    """Each passage's mean cosine similarity to its k nearest neighbours in its list."""
    scores = []
    for x in lists:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = unit @ unit.T
        np.fill_diagonal(cos, -np.inf)
        kk = min(k, len(x) - 1)
        scores.append(np.sort(cos, axis=1)[:, -kk:].mean(axis=1) if kk > 0 else np.zeros(len(x)))
    return np.concatenate(scores)


def ranking_baselines(job: Any) -> dict[str, float]:
    """Test nDCG@10 of random scores and of the nearest-neighbour heuristic."""
    from setpipe.train.metrics import ndcg_per_set

    def ndcg(scores: np.ndarray, relevance: np.ndarray, offsets: np.ndarray) -> float:
        return float(ndcg_per_set(scores, relevance, offsets).mean())

    lists, relevance, offsets = lists_of(job, "validation")
    k = max((1, 2, 3, 5, 10), key=lambda k: ndcg(neighbour_scores(lists, k), relevance, offsets))
    lists, relevance, offsets = lists_of(job, "test")
    print(f"passages heuristic: k = {k} nearest neighbours (best on validation)", flush=True)
    rng = np.random.default_rng(0)
    return {
        "random": ndcg(rng.random(len(relevance)), relevance, offsets),
        "heuristic": ndcg(neighbour_scores(lists, k), relevance, offsets),
    }


BASELINES: dict[str, Callable[[Any], dict[str, float]]] = {
    "quickstart": multiplicity_auc,
    "qg_jets": multiplicity_auc,
    "digits": pixel_logistic_regression,
    "passages": ranking_baselines,
    "multihead": multiplicity_auc,
}


def make_data(name: str, out: Path, quick: bool, jets: int) -> None:
    args, quick_args = DATAGEN[name]
    cmd = [sys.executable, "-m", "setpipe", "datagen", *args, "--out", str(out)]
    if name == "qg_jets":
        cmd += ["--num-jets", str(200 if quick else jets)]
    done = subprocess.run([*cmd, *(quick_args if quick else [])], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}{done.stdout[-2000:]}")
    # Its sets per split, not the banners Pythia and FastJet print.
    summary = [line.split()[:2] for line in done.stdout.splitlines() if " sets " in line]
    print(f"datagen {name}: " + ", ".join(f"{s} {n}" for s, n in summary) + " sets", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, 1 epoch (< 1 min)")
    parser.add_argument("--jobs", default=",".join(DATAGEN), help="comma-separated job names")
    parser.add_argument("--jets", type=int, default=6000, help="Pythia jets for qg_jets")
    parser.add_argument("--qg-data", default=None, help="existing Pythia jets for qg_jets")
    args = parser.parse_args()

    shipped = sorted(p.stem for p in (REPO / "jobs").glob("*.yaml"))
    if unknown := sorted(set(shipped) - set(DATAGEN)):
        raise SystemExit(f"jobs/ has {unknown}, unknown here: give each DATAGEN, METRIC, BASELINES")
    names = args.jobs.split(",")
    if bad := sorted(set(names) - set(shipped)):
        raise SystemExit(f"--jobs {bad}: not in jobs/ ({', '.join(shipped)})")

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-examples-"))
    os.environ["SETPIPE_DATA"] = str(tmp / "data")  # what every job's ${SETPIPE_DATA} reads
    started = time.monotonic()
    for name in names:
        if name == "qg_jets" and args.qg_data:
            (tmp / "data").mkdir(parents=True, exist_ok=True)
            (tmp / "data" / name).symlink_to(Path(args.qg_data).resolve())
        else:
            make_data(name, tmp / "data" / name, args.quick, args.jets)
    print(f"data made in {time.monotonic() - started:.0f}s", flush=True)

    from setpipe.pipeline import train
    from setpipe.spec import load_job

    start_ray()
    figures: dict[str, Any] = {}
    beaten = 0
    for name in names:
        overrides = ["train.workers=0", f"workdir={tmp / 'work'}"]
        job = load_job(
            REPO / "jobs" / f"{name}.yaml",
            [*overrides, *(["train.epochs=1"] if args.quick else [])],
        )
        base = BASELINES[name](job)
        t0 = time.monotonic()
        outcome = train(job).outcome
        figure = outcome.test_metrics[f"test_{METRIC[name]}"]
        beaten += figure > max(base.values())
        shown = "  ".join(
            f"{k} {v:.4f}" if k != "baseline" else f"{v:.4f}" for k, v in base.items()
        )
        print(
            f"== {name}: test {METRIC[name]} {figure:.4f}  baseline: {shown}  "
            f"({len(outcome.history)} epochs, {(time.monotonic() - t0) / 60:.1f} min)",
            flush=True,
        )
        figures[f"{name}_{SHORT[METRIC[name]]}"] = round(figure, 4)
        figures |= {f"{name}_{k}": round(v, 4) for k, v in base.items()}
    import ray

    ray.shutdown()
    shutil.rmtree(tmp)  # a --qg-data link is removed, not followed
    figures["beaten"] = f"{beaten}/{len(names)}"
    print(result_line(figures))


if __name__ == "__main__":
    main()
