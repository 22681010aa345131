"""The run's figures: loss curves per epoch and, for classify, the validation ROC curve.

Matplotlib's Agg backend (no display: these run on cluster nodes and in CI), and the
object API on a fresh Figure, never pyplot's global state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from setpipe.train.metrics import roc_rows, signal_pairs

ROC_TABLE_POINTS = 200
"""Most points per curve in ``plots/roc.json``: enough to read rejection off, small to log."""


def _figure() -> Figure:
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def loss_curves(history: list[dict[str, Any]]) -> Figure | None:
    """Every ``*_loss`` key of the per-epoch history against ``epoch``; None with no loss."""
    keys = sorted({k for row in history for k in row if k.endswith("_loss")})
    if not keys:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for key in keys:
        points = [
            (int(row.get("epoch", i)), float(row[key]))
            for i, row in enumerate(history)
            if key in row and row[key] is not None and math.isfinite(float(row[key]))
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0).

    Tied scores form one step, so the area under these points is the Mann-Whitney AUC
    that ``setpipe.train.metrics.roc_auc`` reports.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    # The last index of each run of equal scores: one point per threshold.
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
    tp = np.cumsum(positive)[last]
    fp = np.cumsum(~positive)[last]
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def roc_curve(probabilities: np.ndarray, targets: np.ndarray) -> Figure | None:
    """One-vs-rest ROC per class (class 1 only when binary); None if a curve is undefined."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.ndim != 2 or len(targets) == 0:
        return None
    classes = [1] if probabilities.shape[1] == 2 else list(range(probabilities.shape[1]))
    fig = _figure()
    ax = fig.add_subplot()
    drawn = 0
    for c in classes:
        positive = targets == c
        if positive.all() or not positive.any():
            continue  # one class only: no curve
        fpr, tpr = roc_points(probabilities[:, c], positive)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, label=f"class {c} (AUC {auc:.3f})")
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("validation ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def roc_table(
    probabilities: np.ndarray,
    targets: np.ndarray,
    background_class: int | None = None,
    max_points: int = ROC_TABLE_POINTS,
) -> list[dict[str, Any]]:
    """The ROC curves the rejection metrics read, as data: one entry per signal class with
    ``threshold``, ``fpr`` (ε_B), ``tpr`` (ε_S) lists, highest threshold first.

    Binary: class 1 against class 0; multi-class with a background class: each other class
    against it on the score p_s / (p_s + p_b). The first point is (0, 0) at threshold
    None (above every score). Longer curves keep ``max_points`` points evenly spaced in
    the curve's order, the first and the last among them.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    classes = probabilities.shape[1]
    background = 0 if background_class is None and classes == 2 else background_class
    if background is None:
        return []  # multi-class without a background class: no rejection curves
    curves = []
    for c, (rows, score, signal) in zip(
        [c for c in range(classes) if c != background],
        signal_pairs(probabilities, targets, background_class),
        strict=True,
    ):
        fpr, tpr, _ = roc_rows(score, signal, np.ones(int(rows.sum())))
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            continue  # no signal or no background in this split
        thresholds = np.r_[np.nan, np.unique(score)[::-1]]
        keep = np.unique(np.linspace(0, len(thresholds) - 1, min(max_points, len(thresholds))))
        keep = keep.round().astype(int)
        curves.append(
            {
                "signal_class": c,
                "background_class": background,
                "threshold": [None if math.isnan(t) else float(t) for t in thresholds[keep]],
                "fpr": fpr[0, keep].tolist(),
                "tpr": tpr[0, keep].tolist(),
            }
        )
    return curves
