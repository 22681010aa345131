"""Set weights in the losses and the metrics: each weighted figure against scikit-learn or a
hand computation, the unweighted ones beside them, and an end-to-end run with data.weight."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve
from weights_ranks import binary_sample, gather_rank

from setpipe.data.batch import SetBatch
from setpipe.train.losses import loss_sets, task_loss
from setpipe.train.metrics import (
    Evaluation,
    accuracy,
    bootstrap_sigmas,
    rejection,
    rmse,
    roc_auc,
)

_binary = binary_sample  # the weighted sample every test here draws from


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_auc_equals_sklearn_sample_weight(seed: int) -> None:
    probabilities, y, w = _binary(2000, seed)
    expected = roc_auc_score(y, probabilities[:, 1], sample_weight=w)
    assert roc_auc(probabilities, y, w) == pytest.approx(expected, abs=1e-12)
    # Unit weights are the unweighted AUC (the Mann-Whitney path), to 1e-12 too.
    assert roc_auc(probabilities, y, np.ones(len(y))) == pytest.approx(
        roc_auc(probabilities, y), abs=1e-12
    )


def test_weighted_multiclass_auc_is_sklearn_macro_ovr() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 900)
    logits = rng.normal(size=(900, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    w = rng.uniform(0.1, 3.0, 900)
    expected = roc_auc_score(y, p, sample_weight=w, multi_class="ovr", average="macro")
    assert roc_auc(p, y, w) == pytest.approx(expected, abs=1e-12)


def test_weighted_accuracy_and_rmse_by_hand() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 0])
    w = np.array([1.0, 2.0, 3.0, 4.0])
    # Right: sets 0 and 1 -> (1 + 2) / 10.
    assert accuracy(p, y, w) == 0.3
    assert accuracy(p, y, w) == pytest.approx(accuracy_score(y, p.argmax(1), sample_weight=w))
    pred, target = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    # sqrt((1 * 1 + 1 * 0 + 2 * 9) / 4)
    assert rmse(pred, target, np.array([1.0, 1.0, 2.0])) == pytest.approx(
        math.sqrt(19 / 4), abs=1e-15
    )


def _sklearn_rejection(y: np.ndarray, score: np.ndarray, w: np.ndarray, eff: float) -> float:
    fpr, tpr, _ = roc_curve(y, score, sample_weight=w, drop_intermediate=False)
    i = int(np.searchsorted(tpr, eff, side="left"))
    eps_b = fpr[i - 1] + (fpr[i] - fpr[i - 1]) * (eff - tpr[i - 1]) / (tpr[i] - tpr[i - 1])
    return 1.0 / eps_b


@pytest.mark.parametrize("efficiency", [0.3, 0.5])
def test_weighted_rejection_reads_sklearn_weighted_roc(efficiency: float) -> None:
    probabilities, y, w = _binary(3000, 3)
    w = np.where(w > 0, w, 0.5)  # sklearn drops zero-weight sets from its points; keep all
    expected = _sklearn_rejection(y, probabilities[:, 1], w, efficiency)
    assert rejection(probabilities, y, efficiency, weights=w) == pytest.approx(expected, rel=1e-12)


def test_weighted_rejection_floor_is_one_background_set() -> None:
    # Perfect separation: eps_B is 0 at any efficiency, floored at one of the 4 background
    # sets of positive weight (the zero-weight one does not count) whatever the weights.
    p1 = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 0, 1, 1])
    w = np.array([5.0, 0.01, 2.0, 0.0, 7.0, 1.0, 3.0])
    assert rejection(np.stack([1 - p1, p1], 1), y, 0.5, weights=w) == 4.0


def test_weighted_bootstrap_sigma_is_seeded_and_differs_from_unweighted() -> None:
    probabilities, y, w = _binary(500, 4)
    first = bootstrap_sigmas(("auc",), probabilities, y, sample_weight=w, resamples=40)
    again = bootstrap_sigmas(("auc",), probabilities, y, sample_weight=w, resamples=40)
    plain = bootstrap_sigmas(("auc",), probabilities, y, resamples=40)
    assert first == again
    assert 0 < first["auc"] < 0.1 and first["auc"] != plain["auc"]


def _batch(weights: list[float] | None) -> SetBatch:
    sets = [torch.zeros(n, 1) for n in (2, 3, 1, 2)]
    return SetBatch.from_sets(
        sets,
        targets=torch.tensor([1, 0, 1, 1]),
        weights=None if weights is None else torch.tensor(weights),
    )


def test_weighted_loss_equals_a_hand_computation() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5], [3.0, 0.0]], dtype=torch.float64)
    batch = _batch([1.0, 2.0, 0.0, 0.5])
    ce = [-math.log(math.exp(x[t]) / sum(math.exp(v) for v in x)) for x, t in
          zip(logits.tolist(), [1, 0, 1, 1], strict=True)]  # fmt: skip
    expected = (1.0 * ce[0] + 2.0 * ce[1] + 0.0 * ce[2] + 0.5 * ce[3]) / 3.5
    assert float(task_loss("classify", logits, batch)) == pytest.approx(expected, abs=1e-6)
    assert float(task_loss("classify", logits, batch, weights=None)) == pytest.approx(
        sum(ce) / 4, abs=1e-6
    )
    # Regress: weighted MSE. Rank: the listwise loss's per-set terms, weighted.
    reg = SetBatch.from_sets(
        [torch.zeros(1, 1)] * 3, targets=torch.tensor([1.0, 2.0, 3.0]),
        weights=torch.tensor([1.0, 3.0, 0.0]),
    )  # fmt: skip
    pred = torch.tensor([[2.0], [0.0], [100.0]])
    assert float(task_loss("regress", pred, reg)) == pytest.approx((1 * 1 + 3 * 4) / 4)
    rank = SetBatch.from_sets(
        [torch.zeros(2, 1), torch.zeros(2, 1)],
        element_targets=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        weights=torch.tensor([1.0, 3.0]),
    )
    scores = torch.tensor([0.0, 0.0, 0.0, math.log(3.0)])
    # Set 0: -log(1/2); set 1: -log(3/4).
    expected_rank = (1 * math.log(2) + 3 * -math.log(0.75)) / 4
    assert float(task_loss("rank", scores, rank)) == pytest.approx(expected_rank, abs=1e-6)
    # All weights zero: loss 0 with a graph (DDP needs a gradient).
    zero = _batch([0.0, 0.0, 0.0, 0.0])
    out = logits.clone().requires_grad_(True)
    loss = task_loss("classify", out, zero)
    loss.backward()
    assert (
        float(loss.detach()) == 0.0 and out.grad is not None and float(out.grad.abs().sum()) == 0.0
    )


def test_loss_sets_combine_batches_into_the_concatenated_loss() -> None:
    """Accumulation's shares: sum_i loss_i * loss_sets_i / sum(loss_sets) is the loss of the
    concatenated batch (the losses are float32: to 1e-6 relative)."""
    rng = np.random.default_rng(0)
    parts = []
    for n in (3, 5, 2):
        parts.append(
            SetBatch.from_sets(
                [torch.zeros(1, 1)] * n,
                targets=torch.from_numpy(rng.integers(0, 2, n)),
                weights=torch.from_numpy(rng.uniform(0, 2, n)),
            )
        )
    logits = [torch.from_numpy(rng.normal(size=(b.num_sets, 2))) for b in parts]
    shares = [loss_sets("classify", b, weights=b.weights) for b in parts]
    combined = sum(
        float(task_loss("classify", x, b)) * s
        for x, b, s in zip(logits, parts, shares, strict=True)
    ) / sum(shares)
    whole = SetBatch.concat(parts)
    assert combined == pytest.approx(
        float(task_loss("classify", torch.cat(logits), whole)), rel=1e-6
    )


def test_evaluation_reports_weighted_figures_and_unweighted_beside() -> None:
    probabilities, y, w = _binary(400, 6)
    logits = torch.from_numpy(np.log(probabilities))
    evaluation = Evaluation("classify", sigma=True)
    for lo in range(0, 400, 150):  # three batches
        hi = min(lo + 150, 400)
        batch = SetBatch.from_sets(
            [torch.zeros(1, 1)] * (hi - lo),
            targets=torch.from_numpy(y[lo:hi]),
            weights=torch.from_numpy(w[lo:hi]).float(),
        )
        out = logits[lo:hi]
        evaluation.add(out, batch, float(task_loss("classify", out, batch)))
    m = evaluation.compute("test")
    w32 = w.astype(np.float32).astype(np.float64)  # the batch carries float32 weights
    nll = -np.log(probabilities[np.arange(400), y])
    assert m["test_auc"] == pytest.approx(
        roc_auc_score(y, probabilities[:, 1], sample_weight=w32), abs=1e-12
    )
    assert m["test_auc_unweighted"] == pytest.approx(roc_auc_score(y, probabilities[:, 1]), 1e-12)
    assert m["test_loss"] == pytest.approx(float(w32 @ nll / w32.sum()), rel=1e-6)
    assert m["test_loss_unweighted"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert m["test_accuracy"] == pytest.approx(
        accuracy_score(y, probabilities.argmax(1), sample_weight=w32), abs=1e-12
    )
    expected = {f"test_{n}{s}" for n in ("loss", "accuracy", "auc", "rej30", "rej50")
                for s in ("", "_unweighted")}  # fmt: skip
    expected |= {"test_auc_sigma", "test_rej30_sigma", "test_rej50_sigma"}
    assert set(m) == expected
    # Without weights nothing changes: no *_unweighted names.
    plain = Evaluation("classify")
    batch = SetBatch.from_sets([torch.zeros(1, 1)] * 400, targets=torch.from_numpy(y))
    plain.add(logits, batch, float(task_loss("classify", logits, batch)))
    assert not [k for k in plain.compute("val") if k.endswith("_unweighted")]


# --------------------------------------------------------------------------- end to end


def _write(path: Path, rows: int, seed: int, first_id: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 17, rows)
    label = rng.integers(0, 2, rows)
    x = [
        rng.normal(0.8 if c else -0.8, 1.0, n).astype(np.float32)
        for n, c in zip(sizes, label, strict=True)
    ]
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "x": pa.array(x, pa.list_(pa.float32())),
            "label": pa.array(label, pa.int64()),
            # Class 1 weighs 3 on average, class 0 one: the weighted figures differ.
            "w": pa.array(np.where(label == 1, 3.0, 1.0) * rng.uniform(0.5, 1.5, rows)),
            "event_id": pa.array(np.arange(first_id, first_id + rows), pa.int64()),
            # A set-level variable whose shape differs by class, for data.reweight.
            "pt": pa.array(rng.uniform(0.0, 60.0 + 40.0 * label)),
        }
    )
    pq.write_table(table, path / "part-0.parquet")


def test_end_to_end_run_with_data_weight_logs_both_figures(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from setpipe.pipeline import train
    from setpipe.spec import job_from_dict
    from setpipe.tracking.mlflow_run import close_run, open_run
    from setpipe.tracking.store import tracking_uri_for

    root = tmp_path / "data"
    _write(root / "train", 240, 1, 0)
    _write(root / "validation", 120, 2, 10_000)
    _write(root / "test", 120, 3, 20_000)
    job = job_from_dict(
        {
            "name": "weighted",
            "workdir": str(tmp_path / "work"),
            "data": {
                "train": str(root / "train"),
                "validation": str(root / "validation"),
                "test": str(root / "test"),
                "elements": {"layout": "parallel", "columns": ["x"]},
                "label": "label",
                "weight": "w",
                "reweight": {"vars": {"pt": [0, 20, 40, 60, 80, 100]}},
                "key": "event_id",
                "batch": {"element_budget": 400},
                "shuffle": {"buffer_sets": 0},
            },
            "model": {
                "task": "classify",
                "num_classes": 2,
                "class_weights": "balanced",
                "encoder": {"kind": "deepsets", "phi": [8], "rho": [8]},
                "head": {"hidden": [8]},
            },
            "train": {"epochs": 2, "workers": 0, "optimizer": {"lr": 0.01}, "seed": 3},
        }
    )
    run_id = open_run(job)
    try:
        trained = train(job, progress=False, run_id=run_id)
    finally:
        close_run(run_id, "FINISHED")
    labels = pq.read_table(root / "train").column("label").to_numpy()
    n1 = int(labels.sum())
    balanced = [240 / (2 * (240 - n1)), 240 / (2 * n1)]
    weights = trained.inputs.transforms.weights
    assert weights is not None and weights.class_weights == pytest.approx(balanced, abs=1e-15)
    # Flat reference: class 0 has no set above 60, so those two bins get max_weight 10.
    assert weights.reweight is not None and weights.reweight.histograms[0, 3:].sum() == 0
    assert weights.reweight.factors[0, 3:].tolist() == [10.0, 10.0]
    history = trained.outcome.history
    assert len(history) == 2
    for row in history:
        for name in ("loss", "accuracy", "auc", "rej30", "rej50"):
            assert math.isfinite(row[f"val_{name}"]) and math.isfinite(
                row[f"val_{name}_unweighted"]
            )
        assert row["val_loss"] != row["val_loss_unweighted"]
    # Both figures are logged to the run at every epoch (steps count epochs from 1).
    client = MlflowClient(tracking_uri_for(job))
    for name in ("val_auc", "val_auc_unweighted", "val_rej50", "val_rej50_unweighted"):
        logged = client.get_metric_history(run_id, name)
        assert [m.step for m in logged] == [1, 2]
        assert [m.value for m in logged] == pytest.approx([row[name] for row in history])
    test = trained.outcome.test_metrics
    assert math.isfinite(test["test_auc"]) and math.isfinite(test["test_auc_unweighted"])
    assert "test_auc_sigma" in test


def test_gather_across_ranks_carries_the_weights(tmp_path: Path) -> None:
    """Two gloo ranks, each with part of the sets: after gather every figure, weighted and
    unweighted, equals the one-process figure on all the sets (1e-12; the loss 1e-6)."""
    import torch.multiprocessing as mp

    out = tmp_path / "metrics.pt"
    mp.spawn(gather_rank, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    gathered = torch.load(out)
    probabilities, y, w = binary_sample(300, 8)
    logits = torch.from_numpy(np.log(probabilities))
    one = Evaluation("classify")
    batch = SetBatch.from_sets(
        [torch.zeros(1, 1)] * 300, targets=torch.from_numpy(y), weights=torch.from_numpy(w).float()
    )
    one.add(logits, batch, float(task_loss("classify", logits, batch)))
    expected = one.compute("val")
    assert set(gathered) == set(expected) and "val_auc_unweighted" in gathered
    for name, value in expected.items():
        tolerance = 1e-6 if "loss" in name else 1e-12
        assert gathered[name] == pytest.approx(value, rel=tolerance, abs=tolerance), name
