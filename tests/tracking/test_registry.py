"""The registry gate: every run registers a version; the champion alias moves only on merit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import make_job
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.spec.models import JobSpec
from setpipe.tracking.registry import CHALLENGER, GateDecision, decide, register_and_gate


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
