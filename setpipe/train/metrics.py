"""Evaluation metrics on plain numpy arrays, and the per-split accumulator the loop uses.

The functions are exact re-implementations of the usual definitions, checked against
scikit-learn in tests: ROC AUC is the Mann-Whitney statistic with tied scores counted
one half; nDCG uses linear gains and log2 discounts like ``sklearn.metrics.ndcg_score``
(scores are assumed untied; tied scores keep their input order). Ranking metrics are
computed per set and averaged over sets.

Across Ray Train ranks, every rank gathers all predictions (``all_gather_object``) and
computes the same figures, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from setpipe.spec.models import TASK_METRICS, Task

NDCG_K = 10
"""k of ``<split>_ndcg`` (nDCG@10): the first page of a re-ranked list."""


def accuracy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of sets whose most probable class is the target. probabilities [N, C]."""
    if len(targets) == 0:
        return math.nan
    return float(np.mean(np.argmax(probabilities, axis=1) == targets))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan  # undefined with one class present
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of tied scores (1-based), as the Mann-Whitney U needs.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC: binary = AUC of the class-1 probability; multiclass = macro one-vs-rest.

    probabilities [N, C] (C >= 2), targets [N] int class ids. NaN where undefined
    (a class absent from targets).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.shape[1] == 2:
        return _binary_auc(probabilities[:, 1], targets == 1)
    classes = range(probabilities.shape[1])
    per_class = [_binary_auc(probabilities[:, c], targets == c) for c in classes]
    return float(np.mean(per_class))


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    if len(targets) == 0:
        return math.nan
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def _sets(offsets: np.ndarray) -> list[slice]:
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(offsets)]


def ndcg_per_set(
    scores: np.ndarray, relevance: np.ndarray, offsets: np.ndarray, k: int = NDCG_K
) -> np.ndarray:
    """nDCG@k of each set (linear gain, log2 discount); 0 for a set with no relevant element."""
    out = np.zeros(len(offsets) - 1, dtype=np.float64)
    for i, s in enumerate(_sets(offsets)):
        rel = np.asarray(relevance[s], dtype=np.float64)
        order = np.argsort(-np.asarray(scores[s], dtype=np.float64), kind="mergesort")[:k]
        discount = 1.0 / np.log2(np.arange(2, len(order) + 2))
        ideal = np.sort(rel)[::-1][:k]
        idcg = float(np.sum(ideal * discount[: len(ideal)]))
        out[i] = float(np.sum(rel[order] * discount)) / idcg if idcg > 0 else 0.0
    return out


def mrr_per_set(scores: np.ndarray, relevance: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Reciprocal rank of the first relevant (relevance > 0) element; 0 when there is none."""
    out = np.zeros(len(offsets) - 1, dtype=np.float64)
    for i, s in enumerate(_sets(offsets)):
        order = np.argsort(-np.asarray(scores[s], dtype=np.float64), kind="mergesort")
        hits = np.flatnonzero(np.asarray(relevance[s])[order] > 0)
        out[i] = 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return out


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, offsets: np.ndarray, k: int) -> float:
    """Mean over sets of nDCG@k."""
    return float(np.mean(ndcg_per_set(scores, relevance, offsets, k)))


def mrr(scores: np.ndarray, relevance: np.ndarray, offsets: np.ndarray) -> float:
    """Mean reciprocal rank over sets."""
    return float(np.mean(mrr_per_set(scores, relevance, offsets)))


class Evaluation:
    """Accumulates one split's outputs batch by batch, then reports ``<prefix>_<metric>``.

    Keeps what the metrics need and nothing more: class probabilities for classify,
    predictions for regress, per-set nDCG/MRR values for rank (a set is never cut
    across batches, so per-set values are final when its batch is seen).
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.loss_sum = 0.0
        self.sets = 0
        self.skipped_rows = 0
        """Bad rows the reader dropped from this split (``on_bad_row: skip``)."""
        self.non_finite_sets = 0
        """Sets whose output held a NaN or an infinity."""
        self.parts: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def add(self, outputs: torch.Tensor, batch, loss: float) -> None:  # batch: SetBatch
        """outputs as SetModel.forward returns them; loss = the batch's mean loss over sets."""
        n = batch.num_sets
        self.loss_sum += loss * n
        self.sets += n
        out = outputs.detach().float().cpu()
        finite = torch.isfinite(out)
        if self.task == "rank":  # one score per element: a set is bad if any of its is
            bad = torch.zeros(n, dtype=torch.bool)
            bad.index_fill_(0, batch.set_index().cpu()[~finite.reshape(-1)], True)
        else:
            bad = ~finite.reshape(n, -1).all(dim=1)
        self.non_finite_sets += int(bad.sum())
        if self.task == "classify":
            self.parts.append(torch.softmax(out, dim=-1).numpy())
            self.targets.append(batch.targets.cpu().numpy())
        elif self.task == "regress":
            self.parts.append(out.numpy())
            self.targets.append(batch.targets.float().cpu().numpy())
        else:
            offsets = batch.offsets.cpu().numpy()
            relevance = batch.element_targets.float().cpu().numpy()
            scores = out.numpy()
            per_set = np.stack(
                [ndcg_per_set(scores, relevance, offsets), mrr_per_set(scores, relevance, offsets)],
                axis=1,
            )
            self.parts.append(per_set)

    def gather(self) -> None:
        """Pull every rank's share in, so all ranks compute the same figures."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mine = (
            self.loss_sum, self.sets, self.parts, self.targets, self.skipped_rows,
            self.non_finite_sets,
        )  # fmt: skip
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        self.loss_sum = sum(e[0] for e in everyone)
        self.sets = sum(e[1] for e in everyone)
        self.parts = [p for e in everyone for p in e[2]]
        self.targets = [t for e in everyone for t in e[3]]
        self.skipped_rows = sum(e[4] for e in everyone)
        self.non_finite_sets = sum(e[5] for e in everyone)

    def predictions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities [N, C], targets [N]) for classify, else None."""
        if self.task != "classify" or not self.parts:
            return None
        return np.concatenate(self.parts), np.concatenate(self.targets)

    def compute(self, prefix: str) -> dict[str, float]:
        """``<prefix>_<name>`` for each name of the task in ``TASK_METRICS`` (loss alone when
        the split held no sets)."""
        values = {"loss": self.loss_sum / self.sets if self.sets else math.nan}
        if self.parts:
            values |= self._scores(np.concatenate(self.parts))
        return {
            f"{prefix}_{name}": values[name] for name in TASK_METRICS[self.task] if name in values
        }

    def counts(self, prefix: str) -> dict[str, float]:
        """``<prefix>_skipped_rows``: the bad rows the reader dropped from this split."""
        return {f"{prefix}_skipped_rows": float(self.skipped_rows)}

    def _scores(self, parts: np.ndarray) -> dict[str, float]:
        if self.task == "classify":
            targets = np.concatenate(self.targets)
            return {"accuracy": accuracy(parts, targets), "auc": roc_auc(parts, targets)}
        if self.task == "regress":
            return {"rmse": rmse(parts, np.concatenate(self.targets))}
        return {"ndcg": float(parts[:, 0].mean()), "mrr": float(parts[:, 1].mean())}
