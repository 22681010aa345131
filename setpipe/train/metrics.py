"""Evaluation metrics on plain numpy arrays, and the per-split accumulator the loop uses.

The functions are exact re-implementations of the usual definitions, checked against
scikit-learn in tests: ROC AUC is the Mann-Whitney statistic with tied scores counted
one half; nDCG uses linear gains and log2 discounts like ``sklearn.metrics.ndcg_score``
(scores are assumed untied; tied scores keep their input order). Ranking metrics are
computed per set and averaged over sets.

Background rejection ``rej30``/``rej50`` is 1/ε_B at signal efficiency ε_S = 0.3/0.5 on the
ROC curve of one signal class against the background class (binary: class 1 against class
0; multi-class: each class against ``model.background_class`` on the sets of those two
classes with the score p_s / (p_s + p_b), as JetClass papers report, averaged over the
signal classes). The interpolation rule: the ROC points are (ε_B, ε_S) after each run of
tied scores, from (0, 0); the first point with ε_S >= the target and the point before it
are joined by a straight line, read at the target. ε_B is floored at one background set
(1 / n_B), so a perfect separation reads n_B, never infinity. Test figures get a bootstrap
σ (``test_auc_sigma``...; 200 seeded resamples, ``setpipe.train.bootstrap``).

Set weights (``SetBatch.weights``: data.weight x class weight x reweight factor) weight every
figure: accuracy, the losses, rmse and the per-set nDCG/MRR are weighted means; the ROC curve
behind AUC and rejection sums weights, not counts (the AUC is scikit-learn's ``roc_auc_score``
with ``sample_weight``); the bootstrap resamples sets with their weights. Rejection's floor
stays one background set: 1 / (background sets of positive weight). When a split's sets carry
weights, ``Evaluation`` reports the weighted figures under the usual names and the unweighted
ones beside them as ``<name>_unweighted`` (val_auc, val_auc_unweighted).

Across Ray Train ranks, every rank gathers all predictions (``all_gather_object``) and
computes the same figures, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from setpipe.spec.models import TASK_METRICS, Task
from setpipe.train import bootstrap
from setpipe.train.losses import loss_sets, task_loss

NDCG_K = 10
"""k of ``<split>_ndcg`` (nDCG@10): the first page of a re-ranked list."""


def accuracy(
    probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """(Weighted) fraction of sets whose most probable class is the target. probabilities
    [N, C]; weights [N] or None."""
    if len(targets) == 0:
        return math.nan
    hit = np.argmax(probabilities, axis=1) == targets
    return _mean(hit, weights)


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Plain or weighted mean; NaN when the weights sum to 0."""
    if weights is None:
        return float(np.mean(values))
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    return float(w @ np.asarray(values, dtype=np.float64) / total) if total > 0 else math.nan


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


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> float:
    return float(_auc_rows(*roc_rows(scores, positive, weights)[:2])[0])


def roc_auc(
    probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """ROC AUC: binary = AUC of the class-1 probability; multiclass = macro one-vs-rest.

    probabilities [N, C] (C >= 2), targets [N] int class ids, weights [N] set weights or None.
    NaN where undefined (a class absent from targets, or of zero weight).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if weights is None:
        auc = _binary_auc
    else:
        w = np.asarray(weights, dtype=np.float64)

        def auc(scores: np.ndarray, positive: np.ndarray) -> float:
            return _weighted_auc(scores, positive, w)

    if probabilities.shape[1] == 2:
        return auc(probabilities[:, 1], targets == 1)
    classes = range(probabilities.shape[1])
    per_class = [auc(probabilities[:, c], targets == c) for c in classes]
    return float(np.mean(per_class))


SIGNAL_EFFICIENCY = {"rej30": 0.3, "rej50": 0.5}
"""Rejection metric name -> the signal efficiency it is read at."""
SIGMA_METRICS = ("auc", "rej30", "rej50")
"""The classify figures a test split reports with a bootstrap σ (``test_<name>_sigma``)."""


def roc_rows(
    scores: np.ndarray,
    positive: np.ndarray,
    weights: np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ε_B [R, K+1], ε_S [R, K+1], background sets [R]) for each row of ``weights`` [R, N]
    (bootstrap counts), each set also weighted by ``sample_weight`` [N]: one point per
    distinct score, highest first, from (0, 0). The third is the count of background sets
    (of positive sample weight): the rejection floor's one set. NaN rows where a row has no
    positive or no negative weight."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    last = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1]
    counts = np.atleast_2d(weights)[:, order]
    pos = positive[order]
    w = counts
    background = (counts * ~pos).sum(axis=1)
    if sample_weight is not None:
        s = np.asarray(sample_weight, dtype=np.float64)[order]
        w = counts * s
        background = (counts * (~pos & (s > 0))).sum(axis=1)
    tp = np.cumsum(w * pos, axis=1)[:, last]
    fp = np.cumsum(w * ~pos, axis=1)[:, last]
    zero = np.zeros((len(w), 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.hstack([zero, tp / tp[:, -1:]])
        fpr = np.hstack([zero, fp / fp[:, -1:]])
    return fpr, tpr, background


def _auc_rows(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    # Trapezoids between tie-grouped points: the Mann-Whitney U with ties counted one half.
    return np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)


def _rejection_rows(
    fpr: np.ndarray, tpr: np.ndarray, background: np.ndarray, efficiency: float
) -> np.ndarray:
    reached = tpr >= efficiency
    i = np.argmax(reached, axis=1)  # first point at or past the target (never 0: tpr[0] = 0)
    r = np.arange(len(tpr))
    t0, t1, f0, f1 = tpr[r, i - 1], tpr[r, i], fpr[r, i - 1], fpr[r, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_b = np.maximum(f0 + (f1 - f0) * (efficiency - t0) / (t1 - t0), 1.0 / background)
        out = 1.0 / eps_b
    out[~reached.any(axis=1)] = np.nan  # no signal, or NaN rows
    return out


def signal_pairs(
    probabilities: np.ndarray, targets: np.ndarray, background_class: int | None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, score, is_signal) per signal class; [] for multi-class without a background."""
    classes = probabilities.shape[1]
    if classes == 2:
        b = 0 if background_class is None else background_class
        rows = np.ones(len(targets), dtype=bool)
        return [(rows, probabilities[:, 1 - b], targets == 1 - b)]
    if background_class is None:
        return []
    pairs = []
    for c in range(classes):
        if c == background_class:
            continue
        rows = (targets == c) | (targets == background_class)
        p_s, p_b = probabilities[rows, c], probabilities[rows, background_class]
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(p_s + p_b > 0, p_s / (p_s + p_b), 0.5)
        pairs.append((rows, score, targets[rows] == c))
    return pairs


def metric_rows(
    name: str,
    probabilities: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    background_class: int | None = None,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """A classify metric (loss, accuracy, auc, rej30, rej50) once per row of per-set
    ``weights`` [R, N] (bootstrap counts; a row of ones is the plain figure), each set also
    weighted by ``sample_weight`` [N] when given. ``loss`` is the mean negative
    log-likelihood of the target class."""
    found = metrics_rows((name,), probabilities, targets, weights, background_class, sample_weight)
    return found[name]


def metrics_rows(
    names: tuple[str, ...] | list[str],
    probabilities: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    background_class: int | None = None,
    sample_weight: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``metric_rows`` for several names at once: each ROC curve is built once and read
    for AUC and every rejection (binary: one curve serves them all)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    counts = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    s = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weighted = counts if s is None else counts * s  # accuracy's and the loss's weights
    total = weighted.sum(axis=1)
    curves: dict[tuple[int, int | None], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def curve(
        signal_class: int, against: int | None, rows: np.ndarray | None, score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (signal_class, against)  # against None: the rest (one-vs-rest)
        if key not in curves:
            w = counts if rows is None else counts[:, rows]
            t = targets if rows is None else targets[rows]
            sw = None if s is None else (s if rows is None else s[rows])
            curves[key] = roc_rows(score, t == signal_class, w, sw)
        return curves[key]

    classes = probabilities.shape[1]
    # The binary AUC curve is class 1 against class 0: the default rejection curve too.
    binary_against = 0 if classes == 2 else None
    # Multi-class without a background: signal_pairs gives none, so rejection is NaN.
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "accuracy":
            out[name] = weighted @ (np.argmax(probabilities, axis=1) == targets) / total
        elif name == "loss":
            p = probabilities[np.arange(len(targets)), targets]
            with np.errstate(divide="ignore"):
                out[name] = weighted @ -np.log(p) / total
        elif name == "auc":
            if classes == 2:
                out[name] = _auc_rows(*curve(1, 0, None, probabilities[:, 1])[:2])
            else:
                per_class = [
                    _auc_rows(*curve(c, None, None, probabilities[:, c])[:2])
                    for c in range(classes)
                ]
                out[name] = np.mean(per_class, axis=0)
        elif name in SIGNAL_EFFICIENCY:
            pairs = signal_pairs(probabilities, targets, background_class)
            b = binary_against if background_class is None else background_class
            signals = [c for c in range(classes) if c != b]
            per_class = [
                _rejection_rows(
                    *curve(c, b, None if rows.all() else rows, score), SIGNAL_EFFICIENCY[name]
                )
                for c, (rows, score, _) in zip(signals, pairs, strict=False)
            ]
            out[name] = np.mean(per_class, axis=0) if per_class else np.full(len(counts), np.nan)
        else:
            raise ValueError(f"metric_rows: no classify metric {name!r}")
    return out


def rejection_per_class(
    probabilities: np.ndarray,
    targets: np.ndarray,
    efficiency: float,
    background_class: int | None = None,
    weights: np.ndarray | None = None,
) -> dict[int, float]:
    """{signal class: 1/ε_B at ``efficiency``} against the background (module docstring),
    with set ``weights`` [N] when given; NaN where undefined; {} for multi-class without a
    background class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    classes = probabilities.shape[1]
    b = (0 if classes == 2 else None) if background_class is None else background_class
    signals = [c for c in range(classes) if c != b]
    pairs = signal_pairs(probabilities, targets, background_class)
    ones = np.ones(len(targets))
    sw = None if weights is None else np.asarray(weights, dtype=np.float64)
    return {
        c: float(
            _rejection_rows(
                *roc_rows(score, signal, ones[rows], None if sw is None else sw[rows]), efficiency
            )[0]
        )
        for c, (rows, score, signal) in zip(signals, pairs, strict=False)
    }


def rejection(
    probabilities: np.ndarray,
    targets: np.ndarray,
    efficiency: float,
    background_class: int | None = None,
    weights: np.ndarray | None = None,
) -> float:
    """Background rejection 1/ε_B at signal efficiency ``efficiency`` (module docstring),
    averaged over the signal classes, with set ``weights`` [N] when given; NaN where
    undefined (no signal or no background, or multi-class without a background class)."""
    per_class = rejection_per_class(probabilities, targets, efficiency, background_class, weights)
    return float(np.mean(list(per_class.values()))) if per_class else math.nan


def bootstrap_sigmas(
    names: tuple[str, ...] | list[str],
    probabilities: np.ndarray,
    targets: np.ndarray,
    background_class: int | None = None,
    *,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = bootstrap.SEED,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """Bootstrap standard deviation (ddof 1) of each classify metric over seeded resamples
    of the sets (each keeping its ``sample_weight``); resamples where a figure is undefined
    are left out."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for counts in bootstrap.chunks(len(targets), resamples, seed):
        found = metrics_rows(names, probabilities, targets, counts, background_class, sample_weight)
        for name in names:
            rows[name].append(found[name])
    return {name: _sigma(np.concatenate(parts)) for name, parts in rows.items()}


def paired_sigmas(
    name: str,
    first: np.ndarray,
    second: np.ndarray,
    targets: np.ndarray,
    background_class: int | None = None,
    *,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = bootstrap.SEED,
) -> tuple[float, float, float]:
    """(σ of first - second, σ of first, σ of second): two models' outputs on the same sets
    in the same order, resampled with the same counts (a paired bootstrap)."""
    a, b = [], []
    for counts in bootstrap.chunks(len(targets), resamples, seed):
        a.append(metric_rows(name, first, targets, counts, background_class))
        b.append(metric_rows(name, second, targets, counts, background_class))
    fa, fb = np.concatenate(a), np.concatenate(b)
    return _sigma(fa - fb), _sigma(fa), _sigma(fb)


def _sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def rmse(predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Root of the (weighted) mean squared error; weights [N] or None."""
    if len(targets) == 0:
        return math.nan
    if weights is None:
        diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
        return float(np.sqrt(np.mean(diff * diff)))
    diff = np.asarray(predictions, dtype=np.float64).reshape(-1) - np.asarray(
        targets, dtype=np.float64
    ).reshape(-1)
    return float(np.sqrt(_mean(diff * diff, weights)))


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

    def __init__(
        self, task: Task, *, background_class: int | None = None, sigma: bool = False
    ) -> None:
        self.task = task
        self.background_class = background_class
        """``model.background_class``: what multi-class rejection is measured against."""
        self.sigma = sigma
        """Also report ``<prefix>_<name>_sigma`` (bootstrap) for SIGMA_METRICS (test)."""
        self.loss_sum = 0.0
        self.loss_norm = 0.0
        """What ``loss_sum`` is divided by: sets, or their weights' sum (``loss_sets``)."""
        self.plain_loss_sum = 0.0
        """Unweighted batch loss x sets, for ``<prefix>_loss_unweighted`` (weighted splits)."""
        self.weights: list[np.ndarray] = []
        """Each batch's set weights (``SetBatch.weights``); empty when the sets have none."""
        self.sets = 0
        self.skipped_rows = 0
        """Bad rows the reader dropped from this split (``on_bad_row: skip``)."""
        self.extra: dict[str, float] = {}
        """Figures computed beside the outputs, already over all ranks (the LCM partition
        error); reported by ``counts`` as ``<prefix>_<name>``."""
        self.non_finite_sets = 0
        """Sets whose output held a NaN or an infinity."""
        self.parts: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def add(self, outputs: torch.Tensor, batch, loss: float) -> None:  # batch: SetBatch
        """outputs as SetModel.forward returns them; loss = the batch's mean loss over sets
        (``task_loss``: weighted by ``batch.weights`` when the sets carry weights)."""
        n = batch.num_sets
        if batch.weights is None:
            self.loss_sum += loss * n
            self.loss_norm += n
        else:
            norm = loss_sets(self.task, batch, weights=batch.weights)
            self.loss_sum += loss * norm
            self.loss_norm += norm
            plain = task_loss(self.task, outputs.detach(), batch, weights=None)
            self.plain_loss_sum += float(plain) * n
            self.weights.append(batch.weights.detach().float().cpu().numpy())
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
        elif self.task == "pretrain_masked":
            self.parts.append(out.double().numpy())  # [B, 2]: squared error, masked count
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
            self.non_finite_sets, self.loss_norm, self.plain_loss_sum, self.weights,
        )  # fmt: skip
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        self.loss_sum = sum(e[0] for e in everyone)
        self.sets = sum(e[1] for e in everyone)
        self.parts = [p for e in everyone for p in e[2]]
        self.targets = [t for e in everyone for t in e[3]]
        self.skipped_rows = sum(e[4] for e in everyone)
        self.non_finite_sets = sum(e[5] for e in everyone)
        self.loss_norm = sum(e[6] for e in everyone)
        self.plain_loss_sum = sum(e[7] for e in everyone)
        self.weights = [w for e in everyone for w in e[8]]

    def predictions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities [N, C], targets [N]) for classify, else None."""
        if self.task != "classify" or not self.parts:
            return None
        return np.concatenate(self.parts), np.concatenate(self.targets)

    def set_weights(self) -> np.ndarray | None:
        """float [N]: the sets' weights in ``predictions`` order, or None without weights."""
        return np.concatenate(self.weights) if self.weights else None

    def compute(self, prefix: str) -> dict[str, float]:
        """``<prefix>_<name>`` for each name of the task in ``TASK_METRICS`` (loss alone when
        the split held no sets); weighted when the sets carry weights, with the unweighted
        figures beside them as ``<prefix>_<name>_unweighted``."""
        names = TASK_METRICS[self.task]
        weights = self.set_weights()
        values = {"loss": self.loss_sum / self.loss_norm if self.loss_norm else math.nan}
        if self.parts:
            values |= self._scores(np.concatenate(self.parts), weights)
        out = {f"{prefix}_{name}": values[name] for name in names if name in values}
        if weights is not None:
            plain = {"loss": self.plain_loss_sum / self.sets if self.sets else math.nan}
            if self.parts:
                plain |= self._scores(np.concatenate(self.parts), None)
            out |= {f"{prefix}_{name}_unweighted": plain[name] for name in names if name in plain}
        if self.sigma and self.task == "classify" and self.parts:
            names = [name for name in SIGMA_METRICS if name in values]
            probabilities, targets = np.concatenate(self.parts), np.concatenate(self.targets)
            sigmas = bootstrap_sigmas(
                names, probabilities, targets, self.background_class, sample_weight=weights
            )
            out |= {f"{prefix}_{name}_sigma": value for name, value in sigmas.items()}
            b = self.background_class
            if probabilities.shape[1] > 2 and b is not None:  # JetClass-style, per class
                for name, efficiency in SIGNAL_EFFICIENCY.items():
                    per_class = rejection_per_class(probabilities, targets, efficiency, b, weights)
                    out |= {f"{prefix}_{name}_class{c}": v for c, v in per_class.items()}
        return out

    def counts(self, prefix: str) -> dict[str, float]:
        """``<prefix>_skipped_rows``: the bad rows the reader dropped from this split; and
        ``<prefix>_<name>`` for each figure in ``extra``."""
        extra = {f"{prefix}_{name}": value for name, value in self.extra.items()}
        return {f"{prefix}_skipped_rows": float(self.skipped_rows)} | extra

    def _scores(self, parts: np.ndarray, weights: np.ndarray | None) -> dict[str, float]:
        if self.task == "classify":
            targets = np.concatenate(self.targets)
            scores = {
                "accuracy": accuracy(parts, targets, weights),
                "auc": roc_auc(parts, targets, weights),
            }
            if parts.shape[1] == 2 or self.background_class is not None:
                scores |= {
                    name: rejection(parts, targets, efficiency, self.background_class, weights)
                    for name, efficiency in SIGNAL_EFFICIENCY.items()
                }
            return scores
        if self.task == "pretrain_masked":
            sse, count = parts.sum(axis=0)
            return {"masked_mse": float(sse / count) if count else math.nan}
        if self.task == "regress":
            return {"rmse": rmse(parts, np.concatenate(self.targets), weights)}
        return {"ndcg": _mean(parts[:, 0], weights), "mrr": _mean(parts[:, 1], weights)}
