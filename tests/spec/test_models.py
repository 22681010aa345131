"""The job models: derived names, task defaults and the cross-field rules, via job_from_dict."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from setpipe.errors import SpecError
from setpipe.spec import JobSpec, job_from_dict

BASE: dict[str, Any] = {
    "name": "jets",
    "data": {
        "train": "data/train",
        "elements": {"layout": "parallel", "columns": ["pt", "eta"]},
        "label": "label",
    },
    "model": {"task": "classify", "num_classes": 2, "encoder": {"kind": "deepsets"}},
}


def job(**changes: Any) -> JobSpec:
    """BASE with dotted-key changes ("data.label": None deletes)."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return job_from_dict(data, source="t.yaml")


def problem(**changes: Any) -> str:
    with pytest.raises(SpecError) as caught:
        job(**changes)
    return str(caught.value)


def test_defaults_and_derived_names() -> None:
    spec = job()
    assert spec.workdir == ".setpipe"
    assert spec.experiment_name == "jets"
    assert spec.model_name == "jets"
    assert spec.promotion == ("val_auc", "maximize")
    assert spec.data.feature_names == ["pt", "eta"]
    assert spec.train.epochs == 10 and spec.train.chunk_size == 4096
    assert spec.data.batch.element_budget == 16384


def test_tracking_names_and_promotion_override_defaults() -> None:
    spec = job(
        tracking={
            "experiment": "exp",
            "model_name": "m",
            "metric": "val_loss",
            "direction": "minimize",
        }
    )
    assert (spec.experiment_name, spec.model_name) == ("exp", "m")
    assert spec.promotion == ("val_loss", "minimize")


@pytest.mark.parametrize(
    ("task", "metric"),
    [("regress", ("val_rmse", "minimize")), ("rank", ("val_ndcg", "maximize"))],
)
def test_promotion_default_by_task(task: str, metric: tuple[str, str]) -> None:
    changes: dict[str, Any] = {"model__task": task, "model__num_classes": None}
    if task == "rank":
        changes |= {"data__label": None, "data__element_label": "rel"}
    assert job(**changes).promotion == metric


def test_feature_names_for_each_layout() -> None:
    struct = job(data__elements={"layout": "struct", "column": "points", "fields": ["x", "y"]})
    assert struct.data.feature_names == ["x", "y"]
    vectors = job(data__elements={"layout": "vectors", "column": "emb", "dim": 3})
    assert vectors.data.feature_names == ["emb_0", "emb_1", "emb_2"]
    named = job(data__elements={"layout": "vectors", "column": "p", "dim": 2, "names": ["u", "v"]})
    assert named.data.feature_names == ["u", "v"]
    featured = job(data__features=[{"name": "log_pt", "source": "pt", "ops": [{"op": "log"}]}])
    assert featured.data.feature_names == ["log_pt"]
    assert featured.data.elements.feature_names == ["pt", "eta"]


def test_vector_names_must_match_dim() -> None:
    assert problem(
        data__elements={"layout": "vectors", "column": "p", "dim": 3, "names": ["u"]}
    ) == (
        "t.yaml: data.elements: names has 1 entries but dim is 3; give one name per component "
        "or leave names out"
    )


def test_clip_needs_a_bound_in_order() -> None:
    ops = [{"op": "clip", "min": 2.0, "max": 1.0}]
    assert problem(data__features=[{"name": "c", "source": "pt", "ops": ops}]) == (
        "t.yaml: data.features[0].ops[0]: clip min 2.0 is greater than max 1.0"
    )
    ops = [{"op": "clip"}]
    assert problem(data__features=[{"name": "c", "source": "pt", "ops": ops}]) == (
        "t.yaml: data.features[0].ops[0]: clip needs min, max or both"
    )


def test_center_weight_must_be_an_element_feature() -> None:
    ops = [{"op": "center", "weight": "energy"}]
    assert problem(data__features=[{"name": "c", "source": "eta", "ops": ops}]) == (
        "t.yaml: data: feature 'c': center weight 'energy' is not an element feature; expected "
        "one of ['eta', 'pt']"
    )


def test_augment_names_model_features() -> None:
    assert problem(data__augment=[{"op": "reflect", "features": ["phi"]}]) == (
        "t.yaml: data: augment reflect: 'phi' is not a model feature; expected names from "
        "['eta', 'pt']"
    )
    assert problem(data__augment=[{"op": "rotate", "features": ["eta", "eta"]}]) == (
        "t.yaml: data: augment rotate needs two different features, got ('eta', 'eta')"
    )
    rotate = {"op": "rotate", "features": ["pt", "eta"]}
    assert job(data__augment=[rotate]).data.augment[0].features == ("pt", "eta")


def test_split_excludes_explicit_sources() -> None:
    assert problem(data__split={"key": "id"}, data__validation="v/") == (
        "t.yaml: data: give either split or validation/test sources, not both: split derives "
        "them from train"
    )


def test_num_classes_only_for_classify() -> None:
    assert problem(model__task="regress") == (
        "t.yaml: model: num_classes is only for task classify, not regress"
    )


def test_element_label_only_for_rank() -> None:
    assert problem(data__element_label="rel") == (
        "t.yaml: data.element_label is only for task rank, not classify; remove it"
    )


def test_gpu_resources_need_use_gpu() -> None:
    assert problem(train={"resources_per_worker": {"GPU": 1}}) == (
        "t.yaml: train.resources_per_worker asks for GPU but train.use_gpu is false"
    )


def test_assignment_is_validated() -> None:
    spec = job()
    spec.train.epochs = 4
    assert spec.train.epochs == 4
    with pytest.raises(ValueError, match="greater than 0"):
        spec.train.epochs = 0


def test_umbc_defaults_take_a_set_transformer_slot_head() -> None:
    spec = job(model__encoder={"kind": "umbc"})
    assert spec.model.encoder.kind == "umbc"
    assert spec.model.encoder.slot_head.kind == "set_transformer"  # type: ignore[union-attr]
    assert (spec.model.encoder.slots, spec.model.encoder.dim) == (32, 128)  # type: ignore[union-attr]


def test_monitored_metrics_are_the_task_s_validation_metrics() -> None:
    rank: dict[str, Any] = {
        "model__task": "rank",
        "model__num_classes": None,
        "data__label": None,
        "data__element_label": "rel",
    }
    assert problem(**rank, tracking={"metric": "val_auc"}) == (
        't.yaml: tracking.metric: got "val_auc"; expected one of val_loss, val_ndcg, val_mrr '
        "(the validation metrics of task rank)"
    )
    # A training metric is not a validation metric, whatever the task.
    assert problem(train={"early_stopping": {"metric": "train_loss"}}) == (
        't.yaml: train.early_stopping.metric: got "train_loss"; expected one of val_loss, '
        "val_accuracy, val_auc, val_rej30, val_rej50 (the validation metrics of task classify); "
        "did you mean "
        '"val_loss"?'
    )
    regress = job(model__task="regress", model__num_classes=None, tracking={"metric": "val_loss"})
    assert regress.promotion == ("val_loss", "minimize")
    for name in ("val_loss", "val_ndcg", "val_mrr"):
        spec = job(**rank, train={"early_stopping": {"metric": name}}, tracking={"metric": name})
        assert spec.train.early_stopping is not None
        assert (spec.train.early_stopping.metric, spec.promotion[0]) == (name, name)


def test_background_class_is_a_class_of_a_classify_model() -> None:
    three = {"model__num_classes": 3}
    assert job(**three, model__background_class=2).model.background_class == 2
    assert problem(**three, model__background_class=3) == (
        "t.yaml: model: model.background_class 3 is not a class of num_classes 3; expected 0 to 2"
    )
    assert problem(model__task="regress", model__num_classes=None, model__background_class=0) == (
        "t.yaml: model: model.background_class is only for task classify, not regress; remove it"
    )


def test_rejection_metrics_are_watchable_and_multiclass_needs_a_background() -> None:
    spec = job(
        train={"early_stopping": {"metric": "val_rej50", "direction": "maximize"}},
        tracking={"metric": "val_rej30"},
    )
    assert spec.promotion == ("val_rej30", "maximize")
    assert problem(model__num_classes=4, tracking={"metric": "val_rej50"}) == (
        't.yaml: tracking.metric: got "val_rej50"; val_rej50 with 4 classes needs '
        "model.background_class (the class rejected); set it, e.g. background_class: 0"
    )
    assert problem(train={"early_stopping": {"metric": "val_rej50"}}) == (
        't.yaml: train.early_stopping.direction: got "minimize"; val_rej50 (background '
        "rejection) is better when larger; set direction: maximize"
    )
    multi = job(model__num_classes=4, model__background_class=0, tracking={"metric": "val_rej50"})
    assert multi.promotion == ("val_rej50", "maximize")


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("1sigma", ("sigma", 1.0)),
        ("2.5sigma", ("sigma", 2.5)),
        (" 0sigma ", ("sigma", 0.0)),
        (0.002, ("delta", 0.002)),
        ("0.002", ("delta", 0.002)),
        (0, ("delta", 0.0)),
    ],
)
def test_min_improvement_forms(value: Any, rule: tuple[str, float]) -> None:
    assert job(tracking={"min_improvement": value}).tracking.improvement_rule == rule
    assert job().tracking.improvement_rule is None


def test_min_improvement_refuses_other_forms() -> None:
    assert problem(tracking={"min_improvement": "1 sd"}) == (
        "t.yaml: tracking.min_improvement: got \"1 sd\"; expected 'Nsigma' (e.g. 1sigma: beat "
        "the champion by one paired-bootstrap σ) or an absolute delta (e.g. 0.002)"
    )
    assert problem(tracking={"min_improvement": -0.1}) == (
        "t.yaml: tracking.min_improvement: got -0.1; expected a finite number >= 0 (e.g. 0.002) "
        "or 'Nsigma' (e.g. 1sigma)"
    )
