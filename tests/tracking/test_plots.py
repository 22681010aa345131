"""The ROC table artifact: the points scikit-learn's roc_curve gives, downsampled."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from setpipe.tracking.plots import roc_table


def _sample(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = np.round(rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[y], 1)  # ties
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), y


def test_binary_table_is_sklearn_s_roc_points() -> None:
    probs, y = _sample(300, 2, 0)
    (curve,) = roc_table(probs, y, max_points=10_000)
    fpr, tpr, thresholds = roc_curve(y, probs[:, 1], drop_intermediate=False)
    assert (curve["signal_class"], curve["background_class"]) == (1, 0)
    np.testing.assert_allclose(curve["fpr"], fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(curve["tpr"], tpr, rtol=0, atol=1e-15)
    assert curve["threshold"][0] is None  # sklearn's inf: above every score
    np.testing.assert_array_equal(curve["threshold"][1:], thresholds[1:])


def test_multiclass_table_downsampled_per_signal_class() -> None:
    probs, y = _sample(3000, 3, 1)
    curves = roc_table(probs, y, background_class=1, max_points=50)
    assert [(c["signal_class"], c["background_class"]) for c in curves] == [(0, 1), (2, 1)]
    for curve in curves:
        c = curve["signal_class"]
        rows = (y == c) | (y == 1)
        score = probs[rows, c] / (probs[rows, c] + probs[rows, 1])
        fpr, tpr, _ = roc_curve(y[rows] == c, score, drop_intermediate=False)
        assert len(curve["fpr"]) == 50 and len(fpr) > 50
        assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
        assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
        keep = np.unique(np.linspace(0, len(fpr) - 1, 50).round().astype(int))
        np.testing.assert_allclose(curve["fpr"], fpr[keep], rtol=0, atol=1e-15)
        np.testing.assert_allclose(curve["tpr"], tpr[keep], rtol=0, atol=1e-15)
    assert roc_table(probs, y) == []  # 3 classes, no background: no rejection curves


@pytest.mark.parametrize("targets", [[1, 1, 1], [0, 0, 0]])
def test_no_curve_without_both_classes(targets: list[int]) -> None:
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert roc_table(probs, np.array(targets)) == []
