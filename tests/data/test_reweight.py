"""Set weights in the data path: data.weight's bad rows, balanced class weights, histogram
reweighting on known data, the combined weight, and their round trip with the transforms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_cases import FIX, PARALLEL, good_rows, parallel_table, spec

from setpipe.data import FittedTransforms, check_rows, table_to_batch
from setpipe.data.convert import reweight_values
from setpipe.data.layout import check_schema, needed_columns
from setpipe.data.weights import WeightFit, bin_index
from setpipe.errors import DataError, SpecError
from setpipe.spec import job_from_dict
from setpipe.spec.models import DataSpec, ModelSpec

NAN = float("nan")
CLASSIFY = ModelSpec.model_validate(
    {"encoder": {"kind": "deepsets"}, "task": "classify", "num_classes": 2}
)


def weighted_table(w: list[Any], w_type: pa.DataType | None = None) -> pa.Table:
    rows = good_rows()
    rows.pop("relevance")
    return parallel_table(rows).append_column("w", pa.array(w, w_type or pa.float64()))


# --------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (NAN, "w is NaN; expected a finite number"),
        (float("inf"), "w is inf; expected a finite number"),
        (None, "w is null; expected a number"),
        (-0.5, "w is -0.5; expected a weight >= 0 (data.weight)"),
    ],
    ids=["nan", "inf", "null", "negative"],
)
def test_bad_weight_is_a_bad_row_named_like_the_others(value: Any, message: str) -> None:
    table = weighted_table([1.0, 2.0, 0.0, value, 1.0, 1.0])
    data = spec("unused", PARALLEL, label="label", weight="w")
    with pytest.raises(DataError) as err:
        check_rows(table, data, "part-0.parquet")
    assert str(err.value) == f"part-0.parquet row 3: {message} {FIX}"
    kept, skipped = check_rows(table, data.model_copy(update={"on_bad_row": "skip"}), "x")
    assert skipped == 1 and kept.column("w").to_pylist() == [1.0, 2.0, 0.0, 1.0, 1.0]


def test_weight_column_missing_or_not_a_number_is_named() -> None:
    data = spec("unused", PARALLEL, label="label", weight="w")
    assert needed_columns(data)[-1] == "w"
    with pytest.raises(DataError) as err:
        check_schema(weighted_table([1.0] * 6).drop_columns(["w"]).schema, data, "f.parquet")
    assert str(err.value) == (
        "f.parquet: column 'w' not found; expected int or float. The file has: el_a, el_b, "
        "el_c, weight, label"
    )
    with pytest.raises(DataError) as err:
        check_schema(weighted_table(["1"] * 6, pa.string()).schema, data, "f.parquet")
    assert str(err.value) == "f.parquet: column 'w' has type string, expected int or float"


def test_reweight_variable_nan_is_a_bad_row() -> None:
    table = weighted_table([1.0] * 6).append_column("pt", pa.array([1.0, 2, 3, NAN, 5, 6]))
    data = spec("unused", PARALLEL, label="label", reweight={"vars": {"pt": [0, 10]}})
    with pytest.raises(DataError) as err:
        check_rows(table, data, "p.parquet")
    assert str(err.value) == f"p.parquet row 3: pt is NaN; expected a finite number {FIX}"


def test_weights_ride_through_the_batch() -> None:
    data = spec("unused", PARALLEL, label="label", weight="w")
    batch = table_to_batch(weighted_table([1.0, 2.0, 0.0, 3.5, 1.0, 0.25]), data)
    assert batch.weights is not None and batch.weights.dtype == torch.float32
    assert batch.select([3, 5]).weights.tolist() == [3.5, 0.25]
    assert batch.slice_sets(1, 3).weights.tolist() == [2.0, 0.0]
    assert batch.concat([batch, batch]).weights.tolist() == [1.0, 2.0, 0.0, 3.5, 1.0, 0.25] * 2
    assert (
        table_to_batch(weighted_table([1.0] * 6), spec("u", PARALLEL, label="label")).weights
        is None
    )


# --------------------------------------------------------------------------- class weights


def _fit(data: DataSpec, model: ModelSpec, tables: list[pa.Table]) -> FittedTransforms:
    """The streaming fit the reader runs, batch by batch (``reading.fit_transforms``)."""
    fit = WeightFit(data, model)
    for table in tables:
        fit.add(table_to_batch(table, data), reweight_values(table, data))
    transforms = FittedTransforms.from_spec(data)
    transforms.weights = fit.result()
    return transforms


def test_balanced_class_weights_are_n_over_classes_times_n_c() -> None:
    model = ModelSpec.model_validate(
        {"encoder": {"kind": "deepsets"}, "task": "classify", "num_classes": 3,
         "class_weights": "balanced"}
    )  # fmt: skip
    data = spec("unused", PARALLEL, label="label")
    labels = [0] * 5 + [1] * 3 + [2] * 12  # n = 20 in two streamed batches
    rows = good_rows(n=20)
    rows.pop("relevance")
    rows["label"] = labels
    table = parallel_table(rows)
    transforms = _fit(data, model, [table.slice(0, 7), table.slice(7)])
    assert transforms.weights is not None
    assert transforms.weights.class_weights == [20 / (3 * 5), 20 / (3 * 3), 20 / (3 * 12)]
    weighed = transforms.weigh(table_to_batch(table, data), None)
    assert weighed.weights.tolist() == pytest.approx(
        [20 / 15] * 5 + [20 / 9] * 3 + [20 / 36] * 12, rel=1e-7
    )
    empty = parallel_table({**rows, "label": [0] * 8 + [1] * 12})
    with pytest.raises(DataError, match=r"balanced: class 2 has no sets in the training data"):
        _fit(data, model, [empty])


# --------------------------------------------------------------------------- reweighting


def _pt_table(labels: list[int], pt: list[float], w: list[float] | None = None) -> pa.Table:
    n = len(labels)
    table = pa.table(
        {
            "el_a": pa.array([[1.0]] * n, pa.list_(pa.float32())),
            "label": pa.array(labels, pa.int64()),
            "pt": pa.array(pt, pa.float64()),
        }
    )
    return table if w is None else table.append_column("w", pa.array(w, pa.float64()))


def test_one_dimensional_reweighting_on_known_data() -> None:
    # Bins [0,10) [10,20) [20,30) [30,40]. Class 0: 4, 2, 0, 2 sets (one below 0 and one above
    # 40 are counted in the end bins); class 1 (the reference): 1 in each bin.
    pt0 = [-5.0, 1, 2, 3, 12, 15, 35, 99]
    pt1 = [5.0, 15, 25, 35]
    table = _pt_table([0] * 8 + [1] * 4, pt0 + pt1)
    layout = {"layout": "parallel", "columns": ["el_a"]}
    reweight = {"vars": {"pt": [0, 10, 20, 30, 40]}, "reference": 1, "max_weight": 3.0}
    data = spec("u", layout, label="label", reweight=reweight)
    transforms = _fit(data, CLASSIFY, [table.slice(0, 5), table.slice(5)])
    fitted = transforms.weights.reweight
    assert fitted.histograms.tolist() == [[4, 2, 0, 2], [1, 1, 1, 1]]
    # p_ref = 1/4 each; p_0 = 4/8, 2/8, 0, 2/8 -> 0.5, 1, empty bin -> max_weight 3, 1.
    assert fitted.factors.tolist() == [[0.5, 1.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    weighed = transforms.weigh(table_to_batch(table, data), reweight_values(table, data))
    assert weighed.weights.tolist() == [0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1] + [1.0] * 4
    # Normalised histograms: class 0 keeps its total but for the reference's share in the
    # bin class 0 leaves empty: 8 * (1 - 1/4) = 0.5 * 4 + 1 * 2 + 1 * 2.
    assert sum(weighed.weights.tolist()[:8]) == 6.0


def test_reweighting_fills_with_data_weight_caps_and_flat_reference() -> None:
    # Class 0 weighted histogram: bin 0 gets 3 + 1 = 4, bin 1 gets 0.5 -> p = 8/9, 1/9.
    table = _pt_table([0, 0, 0, 1, 1], [1.0, 2.0, 15.0, 5.0, 15.0], w=[3.0, 1.0, 0.5, 1.0, 1.0])
    layout = {"layout": "parallel", "columns": ["el_a"]}
    reweight = {"vars": {"pt": [0, 10, 20]}, "classes": [0], "max_weight": 4.0}
    data = spec("u", layout, label="label", weight="w", reweight=reweight)
    transforms = _fit(data, CLASSIFY, [table])
    fitted = transforms.weights.reweight
    assert fitted.histograms.tolist() == [[4.0, 0.5], [1.0, 1.0]]
    # flat: 1/2 per bin. Class 0: (1/2)/(8/9) = 9/16, (1/2)/(1/9) = 4.5 -> capped at 4.
    # Class 1 is not in classes: factor 1.
    assert fitted.factors.tolist() == [[9 / 16, 4.0], [1.0, 1.0]]
    weighed = transforms.weigh(table_to_batch(table, data), reweight_values(table, data))
    assert weighed.weights.tolist() == pytest.approx([3 * 9 / 16, 9 / 16, 0.5 * 4, 1, 1], 1e-7)


def test_two_dimensional_bins_and_combined_weight() -> None:
    edges = [[0.0, 1.0, 2.0], [-1.0, 0.0, 1.0, 2.0]]
    values = np.array([[0.5, -0.5], [1.5, 1.5], [-3.0, 5.0], [1.0, 0.0]])
    # Row-major over (2 x 3) bins: (0, 0) -> 0, (1, 2) -> 5, clipped (0, 2) -> 2, (1, 1) -> 4.
    assert bin_index(values, edges).tolist() == [0, 5, 2, 4]
    table = _pt_table([0, 0, 1, 1], [0.5, 1.5, 0.5, 1.5], w=[2.0, 1.0, 1.0, 1.0])
    table = table.append_column("eta", pa.array([-0.5, 1.5, -0.5, -0.5]))
    layout = {"layout": "parallel", "columns": ["el_a"]}
    data = spec("u", layout, label="label", weight="w",
                reweight={"vars": {"pt": edges[0], "eta": edges[1]}, "reference": 1})  # fmt: skip
    model = CLASSIFY.model_copy(update={"class_weights": [1.0, 2.0]})
    transforms = _fit(data, model, [table])
    reweight = transforms.weights.reweight
    # Class 0 (weighted): 2 in bin 0, 1 in bin 5 -> p 2/3, 1/3; class 1: bins 0 and 3, 1/2 each.
    assert reweight.histograms.tolist() == [[2, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]]
    # Bin 0: (1/2)/(2/3) = 3/4; bin 5: reference empty -> 0; bin 3: class 0 empty, reference
    # not -> max_weight 10; bins empty in both -> 1.
    assert reweight.factors[0].tolist() == [0.75, 1.0, 1.0, 10.0, 1.0, 0.0]
    weighed = transforms.weigh(table_to_batch(table, data), reweight_values(table, data))
    # data.weight x class weight x factor.
    assert weighed.weights.tolist() == [2 * 1 * 0.75, 1 * 1 * 0.0, 1 * 2 * 1, 1 * 2 * 1]


def test_fitted_weights_round_trip_with_the_transforms(tmp_path: Path) -> None:
    table = _pt_table([0, 0, 0, 1], [1.0, 2.0, 15.0, 5.0])
    layout = {"layout": "parallel", "columns": ["el_a"]}
    data = spec("u", layout, label="label", reweight={"vars": {"pt": [0, 10, 20]}})
    model = CLASSIFY.model_copy(update={"class_weights": "balanced"})
    transforms = _fit(data, model, [table])
    saved = json.loads(json.dumps(transforms.to_dict()))
    loaded = FittedTransforms.from_dict(saved)
    assert loaded.weights is not None and loaded.weights.class_weights == [4 / 6, 4 / 2]
    batch = table_to_batch(table, data)
    values = reweight_values(table, data)
    assert torch.equal(loaded.weigh(batch, values).weights, transforms.weigh(batch, values).weights)
    # A model saved before weights existed has no "weights" key: none are applied.
    old = {k: v for k, v in saved.items() if k != "weights"}
    assert FittedTransforms.from_dict(old).weigh(batch, values) is batch


def test_reading_fits_the_weights_in_the_transforms_pass(tmp_path: Path) -> None:
    """fit_transforms over a real Ray Dataset: one pass gives the same histograms."""
    from setpipe.data import fit_transforms, read_dataset

    table = _pt_table([0, 0, 0, 1, 1, 0], [1.0, 2.0, 15.0, 5.0, 15.0, 18.0])
    pq.write_table(table.slice(0, 3), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(3), tmp_path / "part-1.parquet")
    data = spec(str(tmp_path), {"layout": "parallel", "columns": ["el_a"]}, label="label",
                reweight={"vars": {"pt": [0, 10, 20]}, "reference": 1})  # fmt: skip
    fitted = fit_transforms(data, read_dataset(data, "train", model=CLASSIFY), model=CLASSIFY)
    assert fitted.weights is not None
    assert fitted.weights.reweight.histograms.tolist() == [[2, 2], [1, 1]]
    assert fitted.weights.reweight.factors.tolist() == [[1.0, 1.0], [1.0, 1.0]]


# --------------------------------------------------------------------------- the job


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": "w",
        "data": {"train": "x", "elements": {"layout": "parallel", "columns": ["a"]},
                 "label": "label"},
        "model": {"encoder": {"kind": "deepsets"}, "task": "classify", "num_classes": 2},
    }  # fmt: skip
    for where, value in changes.items():
        section, key = where.split("__")
        job[section][key] = value
    return job


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model__class_weights": [1.0]},
            "model.class_weights has 1 entries but num_classes is 2; give one weight per class "
            "or write balanced",
        ),
        ({"model__class_weights": [0.0, 0.0]}, "model.class_weights are all 0"),
        (
            {"data__reweight": {"vars": {"pt": [0, 1]}, "reference": 2}},
            "data.reweight names class 2, not a class of num_classes 2; expected 0 to 1",
        ),
        (
            {"data__reweight": {"vars": {"pt": [0, 5, 5]}}},
            "pt: bin edges [0.0, 5.0, 5.0] must be at least two strictly increasing numbers",
        ),
        (
            {"data__reweight": {"vars": {"a": [0, 1], "b": [0, 1], "c": [0, 1]}}},
            "3 variables given; reweighting fills 1-D or 2-D histograms: name one or two "
            "set-level columns",
        ),
    ],
    ids=["length", "zeros", "reference", "edges", "three_vars"],
)
def test_job_refuses_inconsistent_weights(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        job_from_dict(_job(**changes))
    assert message in str(err.value)


def test_job_refuses_weights_for_other_tasks() -> None:
    regress = {"encoder": {"kind": "deepsets"}, "task": "regress"}
    with pytest.raises(SpecError, match=r"model\.class_weights is only for one classify head"):
        job_from_dict(_job() | {"model": {**regress, "class_weights": "balanced"}})
    job = _job(data__reweight={"vars": {"pt": [0, 1]}})
    with pytest.raises(SpecError, match=r"data\.reweight reweights classes"):
        job_from_dict(job | {"model": regress})
