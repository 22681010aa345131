"""The search block: its space is checked at load by building every value as a job."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from setpipe.errors import SpecError
from setpipe.spec import job_from_dict, load_job
from setpipe.spec.space import trial_job

BASE: dict[str, Any] = {
    "name": "jets",
    "data": {
        "train": "data/train",
        "elements": {"layout": "parallel", "columns": ["pt", "eta"]},
        "label": "label",
    },
    "model": {
        "task": "classify",
        "num_classes": 2,
        "encoder": {"kind": "umbc", "dim": 16, "heads": 4, "slots": 4},
    },
}


def with_search(space: dict[str, Any], **search: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["search"] = {"space": space, "trials": 4, **search}
    return data


def problem(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        job_from_dict(data, source="t.yaml")
    return str(caught.value)


def test_a_valid_space_loads_with_defaults_and_builds_trials() -> None:
    job = job_from_dict(
        with_search(
            {
                "model.encoder.slots": [2, 8],
                "train.optimizer.lr": {"loguniform": [1e-4, 3e-3]},
                "train.epochs": {"randint": [1, 4]},
            }
        )
    )
    search = job.search
    assert search is not None and search.trials == 4 and search.concurrency == 1
    assert search.scheduler is not None
    assert (search.scheduler.grace_epochs, search.scheduler.reduction_factor) == (1, 2.0)
    assert job.search_objective == ("val_auc", "maximize")  # the gate's, no early stopping
    trial = trial_job(job, {"model.encoder.slots": 8, "train.optimizer.lr": 2e-4})
    assert trial.search is None
    assert trial.model.encoder.slots == 8  # type: ignore[union-attr]
    assert trial.train.optimizer.lr == 2e-4
    assert trial.model_dump(exclude={"model", "train", "search"}) == job.model_dump(
        exclude={"model", "train", "search"}
    )


def test_objective_follows_early_stopping_then_search_metric() -> None:
    data = with_search({"train.epochs": [1]})
    data["train"] = {"early_stopping": {"metric": "val_loss"}}
    assert job_from_dict(data).search_objective == ("val_loss", "minimize")
    data["search"]["metric"] = "val_accuracy"
    assert job_from_dict(data).search_objective == ("val_accuracy", "maximize")


def test_unknown_path_is_named_with_a_suggestion() -> None:
    text = problem(with_search({"model.encoder.slotz": [8]}))
    assert text == (
        "t.yaml: search.space.model.encoder.slotz: got [8]; the choice 8 does not make a valid "
        'job: override "model.encoder.slotz=8": model.encoder.slotz: unknown key; did you mean '
        '"slots"?'
    )


def test_distribution_on_a_non_numeric_field_is_named() -> None:
    text = problem(with_search({"train.optimizer.name": {"uniform": [0.1, 0.2]}}))
    assert text == (
        "t.yaml: search.space.train.optimizer.name: uniform samples numbers but "
        "train.optimizer.name does not take a number; give a list of choices instead, e.g. [a, b]"
    )


def test_real_distribution_on_an_integer_field_asks_for_randint() -> None:
    text = problem(with_search({"model.encoder.slots": {"loguniform": [2, 64]}}))
    assert "model.encoder.slots takes an integer and loguniform samples real numbers; use " in text
    assert "lograndint" in text


def test_a_choice_that_breaks_another_rule_is_named() -> None:
    text = problem(with_search({"model.encoder.heads": [4, 3]}))
    assert text.startswith(
        "t.yaml: search.space.model.encoder.heads: got [4, 3]; the choice 3 does not make a "
        "valid job: model.encoder: dim 16 is not a multiple of heads 3"
    )


def test_zero_trials_bad_ranges_and_metric_are_named() -> None:
    assert problem(with_search({"train.epochs": [1]}, trials=0)) == (
        "t.yaml: search.trials: got 0; expected a number of at least 1"
    )
    text = problem(with_search({"train.optimizer.lr": {"loguniform": [0.0, 1e-3]}}))
    assert "loguniform [0.0, 0.001]: low must be > 0 for a log scale" in text
    text = problem(with_search({"train.optimizer.lr": {"uniform": [1e-3, 1e-4]}}))
    assert "uniform [0.001, 0.0001]: expected [low, high] with low < high" in text
    text = problem(with_search({"train.epochs": {"normal": [1, 2]}}))
    assert "['normal'] is not a distribution" in text
    text = problem(with_search({"train.epochs": [1]}, metric="val_acc"))
    assert text.startswith('t.yaml: search.metric: got "val_acc"; expected one of val_loss, ')


def test_errors_name_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\n"
        "data:\n"
        "  train: d\n"
        "  elements: {layout: parallel, columns: [pt]}\n"
        "  label: label\n"
        "model: {task: classify, num_classes: 2, encoder: {kind: deepsets}}\n"
        "search:\n"
        "  trials: 2\n"
        "  space:\n"
        "    train.epochs: [1, 2]\n"
        "    train.optimiser.lr: [0.1]\n"
    )
    with pytest.raises(SpecError) as caught:
        load_job(path)
    assert str(caught.value).startswith(f"{path}:11: search.space.train.optimiser.lr: got [0.1]")
    assert 'did you mean "optimizer"?' in str(caught.value)
