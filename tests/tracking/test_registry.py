"""The registry gate: every run registers a version; the champion alias moves only on merit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_job
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.spec.models import JobSpec
from setpipe.tracking.registry import CHALLENGER, GateDecision, decide, register_and_gate
from setpipe.train.metrics import paired_sigmas, roc_auc


@pytest.mark.parametrize(
    ("challenger", "champion_version", "champion", "metric", "direction", "expected"),
    [
        (0.7, None, None, "val_auc", "maximize", (True, "no champion yet")),
        (None, None, None, "val_auc", "maximize", (True, "no champion yet")),
        (
            None, "1", 0.7, "val_auc", "maximize",
            (False, "no val_auc for this version (no validation data)"),
        ),
        (
            math.nan, "1", 0.7, "val_auc", "maximize",
            (False, "val_auc is nan: a model without a finite figure is never promoted"),
        ),
        (
            0.7, "1", None, "val_auc", "maximize",
            (True, "champion version 1 has no recorded val_auc"),
        ),
        (
            0.8, "1", 0.7, "val_auc", "maximize",
            (True, "val_auc 0.8 > 0.7 of version 1: beats the champion (maximize)"),
        ),
        (
            0.7, "1", 0.7, "val_auc", "maximize",
            (False, "val_auc 0.7 = 0.7 of version 1: does not beat the champion (maximize)"),
        ),
        (
            0.3, "2", 0.4, "val_rmse", "minimize",
            (True, "val_rmse 0.3 < 0.4 of version 2: beats the champion (minimize)"),
        ),
        (
            0.5, "2", 0.4, "val_rmse", "minimize",
            (False, "val_rmse 0.5 > 0.4 of version 2: does not beat the champion (minimize)"),
        ),
    ],
)  # fmt: skip
def test_decide(
    challenger: float | None,
    champion_version: str | None,
    champion: float | None,
    metric: str,
    direction: str,
    expected: tuple[bool, str],
) -> None:
    assert decide(challenger, champion_version, champion, metric, direction) == expected


def _run(job: JobSpec, store: str) -> str:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(job.name) or client.create_experiment(job.name)
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    return client.create_run(experiment_id).info.run_id


def test_register_and_gate_moves_the_champion_only_on_merit(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the job's own store
    job = make_job(workdir, "classify")
    model_dir = tmp_path / "model"  # a model source that is not a logged model
    model_dir.mkdir()
    client = MlflowClient(store, registry_uri=store)
    decisions: list[GateDecision] = []
    run_ids = []
    for value in (0.7, 0.6, None, 0.8):
        run_ids.append(_run(job, store))
        decisions.append(register_and_gate(job, run_ids[-1], str(model_dir), value))
        challenger = client.get_model_version_by_alias("t-classify", CHALLENGER)
        assert str(challenger.version) == decisions[-1].version
    assert [d.version for d in decisions] == ["1", "2", "3", "4"]
    assert [d.moved for d in decisions] == [True, False, False, True]
    assert [d.reason for d in decisions] == [
        "no champion yet",
        "val_auc 0.6 < 0.7 of version 1: does not beat the champion (maximize)",
        "no val_auc for this version (no validation data)",
        "val_auc 0.8 > 0.7 of version 1: beats the champion (maximize)",
    ]
    assert [d.challenger_metric for d in decisions] == [0.7, 0.6, None, 0.8]
    assert [d.champion_version_before for d in decisions] == [None, "1", "1", "1"]
    assert [d.champion_metric_before for d in decisions] == [None, 0.7, 0.7, 0.7]
    assert str(client.get_model_version_by_alias("t-classify", "champion").version) == "4"

    tags = [client.get_model_version("t-classify", str(v)).tags for v in range(1, 5)]
    assert [t.get("setpipe.metric") for t in tags] == ["0.7", "0.6", None, "0.8"]
    assert {t["setpipe.metric_name"] for t in tags} == {"val_auc"}
    assert {t["setpipe.job"] for t in tags} == {"t-classify"}
    assert client.get_model_version("t-classify", "2").run_id == run_ids[1]

    second = client.get_run(run_ids[1]).data
    assert second.metrics == {
        "gate.moved": 0.0,
        "gate.challenger_metric": 0.6,
        "gate.champion_metric_before": 0.7,
    }
    assert {k: v for k, v in second.tags.items() if k.startswith("gate.")} == {
        "gate.model": "t-classify",
        "gate.version": "2",
        "gate.alias": "champion",
        "gate.metric": "val_auc",
        "gate.direction": "maximize",
        "gate.moved": "false",
        "gate.champion_version_before": "1",
        "gate.reason": "val_auc 0.6 < 0.7 of version 1: does not beat the champion (maximize)",
    }
    first = client.get_run(run_ids[0]).data
    assert first.metrics == {"gate.moved": 1.0, "gate.challenger_metric": 0.7}
    assert first.tags["gate.champion_version_before"] == "none"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gate_metric_is_never_registered(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: float
) -> None:
    """Before: a NaN val_auc was taken as "no figure", and with no champion yet the NaN
    model was registered and became champion."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_job(workdir, "classify")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    run_id = _run(job, store)
    with pytest.raises(RegistryError) as err:
        register_and_gate(job, run_id, str(model_dir), value)
    assert str(err.value) == (
        f"t-classify: the gate metric val_auc is {value}, not a number; the model is not "
        "registered (non-finite outputs or loss: check the learning rate and the data)"
    )
    client = MlflowClient(store, registry_uri=store)
    assert client.search_model_versions("name = 't-classify'") == []
    assert decide(value, None, None, "val_auc", "maximize") == (
        False,
        f"val_auc is {value}: a model without a finite figure is never promoted",
    )


def test_gate_follows_the_jobs_metric_and_alias(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_job(
        workdir, "classify", metric="val_loss", direction="minimize", alias="prod", model_name="qg"
    )
    (tmp_path / "model").mkdir()
    first = register_and_gate(job, _run(job, store), str(tmp_path / "model"), 0.5)
    second = register_and_gate(job, _run(job, store), str(tmp_path / "model"), 0.4)
    assert (first.name, first.moved, second.moved) == ("qg", True, True)
    assert second.reason == "val_loss 0.4 < 0.5 of version 1: beats the champion (minimize)"
    client = MlflowClient(store, registry_uri=store)
    assert client.get_registered_model("qg").aliases == {"prod": 2, "challenger": 2}


# --------------------------------------------------------------------------- noise-aware gate

_N = 2000
_Y = np.random.default_rng(100).integers(0, 2, _N)
_SHARED = np.random.default_rng(101).normal(size=_N)  # what every model finds easy or hard


def _outputs(seed: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """A binary model's validation outputs: the shared difficulty plus its own noise."""
    own = 0.4 * np.random.default_rng(seed).normal(size=_N)
    p1 = 1.0 / (1.0 + np.exp(-(separation * _Y + _SHARED + own)))
    return np.stack([1 - p1, p1], axis=1).astype(np.float32), _Y.copy()


CHAMPION = _outputs(1, 1.2)  # val_auc 0.77356
LUCKY = _outputs(4, 1.2)  # the same model trained again: +0.0033, within the noise
CLEAR = _outputs(50, 1.6)  # a better model: +0.076


def _gate(job: JobSpec, store: str, model_dir: Path, outputs: Any, **tags: str) -> GateDecision:
    run_id = _run(job, store)
    for key, value in tags.items():
        MlflowClient(store).set_tag(run_id, key, value)
    value = roc_auc(*outputs) if outputs is not None else 0.7
    return register_and_gate(job, run_id, str(model_dir), value, outputs)


def test_noise_aware_gate_refuses_a_lucky_challenger_and_takes_a_clear_one(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "model").mkdir()
    # Today's rule (no min_improvement): the lucky +0.0033 moves the alias.
    strict = make_job(workdir, "classify", model_name="strict")
    _gate(strict, store, tmp_path / "model", CHAMPION)
    assert _gate(strict, store, tmp_path / "model", LUCKY).moved is True

    job = make_job(workdir, "classify", model_name="noisy", min_improvement="1sigma")
    first = _gate(job, store, tmp_path / "model", CHAMPION)
    lucky = _gate(job, store, tmp_path / "model", LUCKY)
    clear = _gate(job, store, tmp_path / "model", CLEAR)
    assert (first.moved, lucky.moved, clear.moved) == (True, False, True)

    auc = {name: roc_auc(*o) for name, o in [("c", CHAMPION), ("l", LUCKY), ("x", CLEAR)]}
    assert auc["l"] - auc["c"] == pytest.approx(0.0032973, abs=1e-6)
    sigma, lucky_sigma, champion_sigma = paired_sigmas("auc", LUCKY[0], CHAMPION[0], _Y)
    assert lucky.noise is not None and clear.noise is not None
    assert (lucky.noise.sigma, lucky.noise.margin) == (sigma, sigma)
    assert sigma == pytest.approx(0.0052, abs=0.0003)  # > 0.0033: within the noise
    # Each model alone varies twice as much: without pairing the gate could tell nothing.
    assert champion_sigma > 1.8 * sigma and lucky_sigma > 1.8 * sigma
    assert lucky.reason == (
        f"val_auc {auc['l']:.6g} > {auc['c']:.6g} of version 1 by {auc['l'] - auc['c']:.3g}, "
        f"needed more than {sigma:.3g} (min_improvement 1sigma, σ {sigma:.3g}, paired "
        "bootstrap, 200 resamples of 2000 validation sets): does not beat the champion (maximize)"
    )
    assert clear.reason.startswith(f"val_auc {auc['x']:.6g} > {auc['c']:.6g} of version 1 by")
    assert clear.reason.endswith("beats the champion (maximize)")
    assert auc["x"] - auc["c"] > 10 * clear.noise.sigma

    client = MlflowClient(store, registry_uri=store)
    assert client.get_registered_model("noisy").aliases == {"champion": 3, "challenger": 3}
    run = client.get_run(client.get_model_version("noisy", "2").run_id).data
    assert run.metrics["gate.moved"] == 0.0
    assert run.metrics["gate.sigma"] == pytest.approx(sigma, rel=1e-12)
    assert run.metrics["gate.margin"] == pytest.approx(sigma, rel=1e-12)
    assert run.metrics["gate.challenger_sigma"] == pytest.approx(lucky_sigma, rel=1e-12)
    assert run.metrics["gate.champion_sigma"] == pytest.approx(champion_sigma, rel=1e-12)
    assert run.tags["gate.min_improvement"] == "1sigma"
    assert run.tags["gate.noise"] == "paired bootstrap, 200 resamples of 2000 validation sets"


def test_noise_aware_gate_with_an_absolute_delta_and_reordered_sets(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "model").mkdir()
    job = make_job(workdir, "classify", model_name="delta", min_improvement=0.002)
    _gate(job, store, tmp_path / "model", CHAMPION)
    order = np.random.default_rng(3).permutation(_N)  # Ray Data's blocks in another order
    lucky = _gate(job, store, tmp_path / "model", (LUCKY[0][order], LUCKY[1][order]))
    assert lucky.moved is True  # +0.0033 > 0.002
    assert lucky.noise is not None and lucky.noise.margin == 0.002
    assert lucky.noise.method.startswith("unpaired bootstrap (the sets came in another order)")
    # Unpaired: each model's own σ in quadrature, far above the paired σ (0.0052).
    expected = math.hypot(lucky.noise.challenger_sigma, lucky.noise.champion_sigma)
    assert lucky.noise.sigma == pytest.approx(expected, rel=1e-12) and lucky.noise.sigma > 0.012


def test_noise_aware_gate_falls_back_to_the_strict_rule_and_says_why(
    workdir: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "model").mkdir()
    job = make_job(workdir, "classify", model_name="fallback", min_improvement="1sigma")
    _gate(job, store, tmp_path / "model", None)  # version 1: a champion from before (no outputs)
    champion = roc_auc(*CHAMPION)
    digest = "data.validation.digest"
    no_outputs = _gate(job, store, tmp_path / "model", CHAMPION, **{digest: "a" * 64})
    assert no_outputs.moved is True and no_outputs.noise is None
    assert no_outputs.reason == (
        f"val_auc {champion:.6g} > 0.7 of version 1: beats the champion (maximize); "
        "min_improvement 1sigma not applied: champion version 1 stored no validation outputs "
        "(strict rule)"
    )
    other_data = _gate(job, store, tmp_path / "model", LUCKY, **{digest: "b" * 64})
    assert other_data.moved is True and other_data.noise is None  # strict: +0.0033 > 0
    assert other_data.reason.endswith(
        "; min_improvement 1sigma not applied: the validation data differs from champion "
        "version 2's (data.validation.digest bbbbbbbbbbbb vs aaaaaaaaaaaa) (strict rule)"
    )
    client = MlflowClient(store, registry_uri=store)
    tags = client.get_run(client.get_model_version("fallback", "3").run_id).data.tags
    assert tags["gate.noise"] == "none"
