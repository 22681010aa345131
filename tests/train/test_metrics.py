"""Metric functions against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score, roc_auc_score

from setpipe.data.batch import SetBatch
from setpipe.spec.models import TASK_METRICS
from setpipe.train.metrics import Evaluation, accuracy, mrr, ndcg_at_k, rmse, roc_auc

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
    assert sorted(metrics) == ["val_accuracy", "val_auc", "val_loss"]
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
        "rank": SetBatch.from_sets(sets, element_targets=torch.tensor([0.0, 1, 0, 0, 0])),
    }
    outputs = {
        "classify": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        "regress": torch.tensor([[1.0], [1.0]]),
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
    # Rank: set 1's relevant element ranks 2nd (nDCG 1/log2(3), RR 1/2); set 2 has none (0, 0).
    assert metrics["test_ndcg"] == pytest.approx(0.5 / math.log2(3), abs=1e-15)
    assert metrics["test_mrr"] == 0.25
    empty = Evaluation("regress").compute("val")
    assert list(empty) == ["val_loss"] and math.isnan(empty["val_loss"])
