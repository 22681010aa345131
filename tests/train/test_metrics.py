"""Metric functions against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score, roc_auc_score, roc_curve

from setpipe.data.batch import SetBatch
from setpipe.spec.models import TASK_METRICS
from setpipe.train import bootstrap
from setpipe.train.metrics import (
    Evaluation,
    accuracy,
    bootstrap_sigmas,
    metric_rows,
    metrics_rows,
    mrr,
    ndcg_at_k,
    paired_sigmas,
    rejection,
    rejection_per_class,
    rmse,
    roc_auc,
)

Y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
P1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.4])  # 0.4 twice: a tie across classes


def test_binary_auc_matches_sklearn_with_ties() -> None:
    probs = np.stack([1 - P1, P1], axis=1)
    assert roc_auc(probs, Y) == pytest.approx(roc_auc_score(Y, P1), abs=1e-15)
    assert roc_auc(probs, Y) == pytest.approx(11 / 15, abs=1e-15)  # U = 11 of 5*3 pairs


def test_multiclass_auc_is_macro_one_vs_rest() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0])
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=9)
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert roc_auc(probs, y) == pytest.approx(expected, abs=1e-15)
    assert roc_auc(probs, y) == pytest.approx(0.462962962962963, abs=1e-15)


def test_auc_undefined_with_one_class() -> None:
    assert math.isnan(roc_auc(np.array([[0.3, 0.7], [0.6, 0.4]]), np.array([1, 1])))


def test_accuracy_and_rmse_exact() -> None:
    probs = np.stack([1 - P1, P1], axis=1)
    assert accuracy(probs, Y) == 4 / 8  # argmax right on rows 0, 4, 5, 6
    assert rmse(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0])) == math.sqrt(13 / 3)


SCORES = np.array([0.3, 0.1, 0.9, 0.5, 0.2, 0.8, 0.4])
RELEVANCE = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 0.0, 0.0])
OFFSETS = np.array([0, 4, 7])


def test_ndcg_per_set_averaged_matches_sklearn() -> None:
    expected = np.mean(
        [ndcg_score([RELEVANCE[s]], [SCORES[s]], k=3) for s in (slice(0, 4), slice(4, 7))]
    )
    assert ndcg_at_k(SCORES, RELEVANCE, OFFSETS, 3) == pytest.approx(expected, abs=1e-15)
    assert ndcg_at_k(SCORES, RELEVANCE, OFFSETS, 3) == pytest.approx(0.6300937667159343, abs=1e-15)


def test_mrr_per_set_averaged() -> None:
    # Set 1: the first relevant element (score 0.9) ranks 1st; set 2: (score 0.2) ranks 3rd.
    assert mrr(SCORES, RELEVANCE, OFFSETS) == pytest.approx((1 + 1 / 3) / 2, abs=1e-15)


def test_evaluation_names_and_values_for_classify() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5]])
    batch = SetBatch.from_sets(
        [torch.zeros(2, 1), torch.zeros(1, 1), torch.zeros(3, 1)], targets=torch.tensor([1, 1, 0])
    )
    evaluation = Evaluation("classify")
    evaluation.add(logits, batch, loss=0.5)
    metrics = evaluation.compute("val")
    assert sorted(metrics) == ["val_accuracy", "val_auc", "val_loss", "val_rej30", "val_rej50"]
    assert metrics["val_loss"] == 0.5
    assert metrics["val_accuracy"] == pytest.approx(1 / 3, abs=1e-15)
    # class-1 probabilities 0.731 (y=1), 0.119 (y=1), 0.622 (y=0): one of two pairs ordered
    assert metrics["val_auc"] == 0.5


def test_evaluation_reports_the_task_table_s_names() -> None:
    """Evaluation.compute reports exactly TASK_METRICS, the names the job validator allows."""
    sets = [torch.zeros(2, 1), torch.zeros(3, 1)]
    batches = {
        "classify": SetBatch.from_sets(sets, targets=torch.tensor([1, 0])),
        "regress": SetBatch.from_sets(sets, targets=torch.tensor([0.5, 2.0])),
        "pretrain_masked": SetBatch.from_sets(sets),  # no labels at all
        "rank": SetBatch.from_sets(sets, element_targets=torch.tensor([0.0, 1, 0, 0, 0])),
    }
    outputs = {
        "classify": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        "regress": torch.tensor([[1.0], [1.0]]),
        # Per set: squared error summed over its masked entries, and their count.
        "pretrain_masked": torch.tensor([[2.0, 4.0], [1.0, 2.0]]),
        "rank": torch.tensor([0.9, 0.1, 0.3, 0.2, 0.1]),
    }
    assert sorted(TASK_METRICS) == sorted(batches)
    for task, batch in batches.items():
        evaluation = Evaluation(task)
        evaluation.add(outputs[task], batch, loss=0.25)
        metrics = evaluation.compute("test")
        assert list(metrics) == [f"test_{name}" for name in TASK_METRICS[task]], task
        assert metrics["test_loss"] == 0.25
        assert all(math.isfinite(v) for v in metrics.values()), (task, metrics)
        if task == "pretrain_masked":  # (2 + 1) / (4 + 2): over masked entries, not sets
            assert metrics["test_masked_mse"] == 0.5
    # Rank: set 1's relevant element ranks 2nd (nDCG 1/log2(3), RR 1/2); set 2 has none (0, 0).
    assert metrics["test_ndcg"] == pytest.approx(0.5 / math.log2(3), abs=1e-15)
    assert metrics["test_mrr"] == 0.25
    empty = Evaluation("regress").compute("val")
    assert list(empty) == ["val_loss"] and math.isnan(empty["val_loss"])


def _sklearn_rejection(signal: np.ndarray, score: np.ndarray, efficiency: float) -> float:
    """The stated rule on scikit-learn's ROC: the first point with tpr >= ε_S and the one
    before it joined by a line, read at ε_S; 1 / ε_B."""
    fpr, tpr, _ = roc_curve(signal, score, drop_intermediate=False)
    i = int(np.searchsorted(tpr, efficiency, side="left"))
    eps_b = fpr[i - 1] + (fpr[i] - fpr[i - 1]) * (efficiency - tpr[i - 1]) / (tpr[i] - tpr[i - 1])
    return 1.0 / eps_b


def _binary_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1.0 / (1.0 + np.exp(-np.round(rng.normal(1.5 * y, 1.0), 2)))  # rounded: many ties
    return np.stack([1 - p1, p1], axis=1), y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("efficiency", [0.3, 0.5])
def test_binary_rejection_matches_sklearn_roc(seed: int, efficiency: float) -> None:
    probs, y = _binary_sample(3000, seed)
    expected = _sklearn_rejection(y == 1, probs[:, 1], efficiency)
    assert rejection(probs, y, efficiency) == pytest.approx(expected, rel=1e-12)
    assert 3.0 < expected < 100.0  # a real interpolation, far from the floor n_B ~ 1500


def test_multiclass_rejection_is_each_signal_against_the_background() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 2000)
    logits = rng.normal(size=(2000, 4)) + 2.0 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    per_class = []
    for c in (0, 1, 3):  # background class 2
        rows = (y == c) | (y == 2)
        score = probs[rows, c] / (probs[rows, c] + probs[rows, 2])
        per_class.append(_sklearn_rejection(y[rows] == c, score, 0.5))
    assert rejection(probs, y, 0.5, background_class=2) == pytest.approx(
        np.mean(per_class), rel=1e-12
    )
    assert list(rejection_per_class(probs, y, 0.5, 2)) == [0, 1, 3]
    np.testing.assert_allclose(
        list(rejection_per_class(probs, y, 0.5, 2).values()), per_class, rtol=1e-12
    )
    # The vectorised rows (bootstrap path) give the same figures with unit weights.
    rows = metrics_rows(("auc", "rej50"), probs, y, np.ones((2, len(y))), background_class=2)
    assert rows["rej50"] == pytest.approx([np.mean(per_class)] * 2, rel=1e-12)
    assert rows["auc"] == pytest.approx([roc_auc(probs, y)] * 2, rel=1e-12)
    # A test split reports each signal class as JetClass papers do.
    logits_t = torch.tensor(np.log(probs), dtype=torch.float32)
    batch = SetBatch.from_sets([torch.zeros(1, 1)] * len(y), targets=torch.tensor(y))
    evaluation = Evaluation("classify", background_class=2, sigma=True)
    evaluation.add(logits_t, batch, loss=1.0)
    metrics = evaluation.compute("test")
    assert sorted(k for k in metrics if "_class" in k) == [
        f"test_rej{e}_class{c}" for e in (30, 50) for c in (0, 1, 3)
    ]
    p32, t32 = evaluation.predictions()  # type: ignore[misc]
    assert metrics["test_rej50_class3"] == rejection_per_class(p32, t32, 0.5, 2)[3]
    assert metrics["test_rej50"] == pytest.approx(rejection(p32, t32, 0.5, 2), rel=1e-12)
    assert math.isnan(rejection(probs, y, 0.5))  # 4 classes and no background: undefined


def test_rejection_floor_is_one_background_set() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.2, 0.8]])
    y = np.array([0, 0, 0, 1, 1])  # perfectly separated: ε_B = 0 at any ε_S <= 1
    assert rejection(probs, y, 0.5) == 3.0  # 1 / (1 / n_B), never infinity
    assert math.isnan(rejection(probs[:3], y[:3], 0.5))  # no signal


def test_metric_rows_with_counts_equal_the_metric_on_the_resample() -> None:
    probs, y = _binary_sample(400, 3)
    counts = bootstrap.resample_counts(len(y), resamples=5, seed=11)
    assert counts.shape == (5, 400) and (counts.sum(axis=1) == 400).all()
    for name in ("auc", "accuracy", "rej30", "rej50"):
        rows = metric_rows(name, probs, y, counts)
        for r in range(5):
            idx = np.repeat(np.arange(len(y)), counts[r].astype(int))
            p, t = probs[idx], y[idx]
            plain = {
                "auc": roc_auc(p, t),
                "accuracy": accuracy(p, t),
                "rej30": rejection(p, t, 0.3),
                "rej50": rejection(p, t, 0.5),
            }[name]
            assert rows[r] == pytest.approx(plain, rel=1e-12), (name, r)
    loss = metric_rows("loss", probs, y, np.ones(len(y)))[0]
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(len(y)), y])), rel=1e-12)


def test_bootstrap_sigma_is_seeded_and_is_the_resamples_std() -> None:
    probs, y = _binary_sample(300, 4)
    sigmas = bootstrap_sigmas(("auc", "rej50"), probs, y, resamples=60, seed=7)
    assert sigmas == bootstrap_sigmas(("auc", "rej50"), probs, y, resamples=60, seed=7)
    counts = bootstrap.resample_counts(len(y), resamples=60, seed=7)
    by_hand = []
    for row in counts:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        by_hand.append(roc_auc(probs[idx], y[idx]))
    assert sigmas["auc"] == pytest.approx(np.std(by_hand, ddof=1), rel=1e-10)
    # The textbook scale: σ(AUC) ~ sqrt(AUC (1 - AUC) / min(n_pos, n_neg)) within a factor 2.
    auc = roc_auc(probs, y)
    scale = math.sqrt(auc * (1 - auc) / min(int(y.sum()), int((1 - y).sum())))
    assert 0.5 * scale < sigmas["auc"] < 2.0 * scale


def test_paired_sigma_is_small_for_near_identical_models() -> None:
    probs, y = _binary_sample(2000, 6)
    nudged = probs.copy()
    nudged[:, 1] = np.clip(probs[:, 1] + 1e-4 * np.random.default_rng(0).normal(size=2000), 0, 1)
    nudged[:, 0] = 1 - nudged[:, 1]
    diff, first, second = paired_sigmas("auc", nudged, probs, y)
    assert first == pytest.approx(second, rel=0.05)
    assert diff < 0.05 * first  # the shared sets cancel: what pairing is for
    independent = bootstrap_sigmas(("auc",), probs, y)["auc"]
    assert second == pytest.approx(independent, rel=1e-12)  # same seed, same counts


def test_test_split_reports_bootstrap_sigmas() -> None:
    probs, y = _binary_sample(500, 8)
    logits = torch.tensor(np.log(probs), dtype=torch.float32)
    batch = SetBatch.from_sets([torch.zeros(1, 1)] * len(y), targets=torch.tensor(y))
    evaluation = Evaluation("classify", sigma=True)
    evaluation.add(logits, batch, loss=0.5)
    metrics = evaluation.compute("test")
    assert sorted(k for k in metrics if k.endswith("_sigma")) == [
        "test_auc_sigma", "test_rej30_sigma", "test_rej50_sigma",
    ]  # fmt: skip
    probabilities, targets = evaluation.predictions()  # type: ignore[misc]
    expected = bootstrap_sigmas(("auc", "rej30", "rej50"), probabilities, targets)
    assert metrics["test_auc_sigma"] == expected["auc"] and expected["auc"] > 0
    assert "val_auc_sigma" not in Evaluation("classify").compute("val")
