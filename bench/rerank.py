"""Re-ranking that uses the list: test nDCG@10 of jobs/passages.yaml's UMBC with each element
reading its list's slots (model.head.context=slots) against the same model scoring every
element against the pooled list embedding (context=pooled), an unsupervised
nearest-neighbour heuristic and random scores, all on one `setpipe datagen passages`
dataset in one run (issue 17 item 3; target: slots above the heuristic).

The heuristic and random scores are bench/examples.py's (each passage's mean cosine to
its k nearest neighbours in its list, k chosen on validation). Each variant trains as
jobs/passages.yaml ships, with train.workers=0 (in the driver process) and the given
--seeds (train.seed); the figure per variant is the mean over seeds. --quick makes
200/50/50 lists and trains 1 epoch: it proves the script runs; its figures mean nothing.

    python bench/rerank.py [--quick] [--seeds 0,1] [--epochs N] [--contexts slots,pooled]

RESULT slots_ndcg=... pooled_ndcg=... heuristic=... random=... slots_vs_heuristic=...
pooled_vs_heuristic=... slots_vs_pooled=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import REPO, result_line, start_ray
from examples import make_data, ranking_baselines

CONTEXTS = ("slots", "pooled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, 1 epoch (< 1 min)")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--contexts", default=",".join(CONTEXTS), help="slots,pooled or one")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    contexts = args.contexts.split(",")
    if bad := sorted(set(contexts) - set(CONTEXTS)):
        raise SystemExit(f"--contexts {bad}: expected slots and/or pooled")

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-rerank-"))
    os.environ["SETPIPE_DATA"] = str(tmp / "data")  # what jobs/passages.yaml reads
    make_data("passages", tmp / "data" / "passages", args.quick, jets=0)

    from setpipe.pipeline import train
    from setpipe.spec import load_job

    start_ray()
    epochs = 1 if args.quick else args.epochs
    base = ["train.workers=0", f"workdir={tmp / 'work'}"]
    base += [f"train.epochs={epochs}"] if epochs else []
    figures: dict[str, float] = {}
    for context in contexts:
        per_seed = []
        for seed in seeds:
            job = load_job(
                REPO / "jobs" / "passages.yaml",
                [*base, f"model.head.context={context}", f"train.seed={seed}"],
            )
            if not figures:
                figures |= ranking_baselines(job)
            t0 = time.monotonic()
            outcome = train(job, ray_run=f"passages-{context}-{seed}").outcome
            per_seed.append(outcome.test_metrics["test_ndcg"])
            print(
                f"== {context} seed {seed}: test nDCG@10 {per_seed[-1]:.4f} "
                f"({len(outcome.history)} epochs, {(time.monotonic() - t0) / 60:.1f} min)",
                flush=True,
            )
        figures[f"{context}_ndcg"] = sum(per_seed) / len(per_seed)
        if len(seeds) > 1:
            figures[f"{context}_spread"] = max(per_seed) - min(per_seed)
    import ray

    ray.shutdown()
    shutil.rmtree(tmp)
    for context in contexts:
        figures[f"{context}_vs_heuristic"] = figures[f"{context}_ndcg"] - figures["heuristic"]
    if len(contexts) == 2:
        figures["slots_vs_pooled"] = figures["slots_ndcg"] - figures["pooled_ndcg"]
    order = [*(f"{c}_ndcg" for c in contexts), "heuristic", "random"]
    print(
        result_line(
            {k: figures[k] for k in order} | {k: figures[k] for k in figures if k not in order}
        )
    )


if __name__ == "__main__":
    main()
