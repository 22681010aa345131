"""Labels checked against the task: a bad label is a bad row of its file, row and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_cases import FIX, LABELS, PARALLEL, good_rows, parallel_table, read_all, spec

from setpipe.data import BatchStats, check_rows
from setpipe.data.bad_rows import LabelRule
from setpipe.data.reading import check_labels
from setpipe.errors import DataError
from setpipe.spec.models import ModelSpec

NAN, INF = float("nan"), float("inf")
CLASSIFY = LabelRule("classify", 3)


def with_label3(value: Any, dtype: pa.DataType | None = None) -> pa.Table:
    labels = [i % 3 for i in range(6)]
    labels[3] = value
    return parallel_table(good_rows()).set_column(4, "label", pa.array(labels, dtype or pa.int64()))


def with_relevance3(value: list[float]) -> pa.Table:
    rows = good_rows()
    rows["relevance"][3] = value
    return parallel_table(rows)


SET_LABEL = {"context": ["weight"], "label": "label", "element_label": None}
ELEMENT_LABEL = {"context": ["weight"], "label": None, "element_label": "relevance"}
WHOLE = "expected a class id, a whole number from 0 to 2 (model.num_classes: 3)"

# (id, table, rule, spec columns, the message after "<file> row 3: ")
CASES = [
    ("class_too_large", with_label3(3), CLASSIFY, SET_LABEL, f"label is 3; {WHOLE}"),
    ("class_negative", with_label3(-1), CLASSIFY, SET_LABEL, f"label is -1; {WHOLE}"),
    (
        "class_fractional",
        with_label3(1.5, pa.float64()),
        CLASSIFY,
        SET_LABEL,
        f"label is 1.5; {WHOLE}",
    ),
    (
        "class_float_too_large",
        with_label3(3.0, pa.float32()),
        CLASSIFY,
        SET_LABEL,
        f"label is 3.0; {WHOLE}",
    ),
    (
        "class_nan",
        with_label3(NAN, pa.float64()),
        CLASSIFY,
        SET_LABEL,
        "label is NaN; expected a finite number",
    ),
    (
        "regress_inf",
        with_label3(INF, pa.float64()),
        LabelRule("regress"),
        SET_LABEL,
        "label is inf; expected a finite number",
    ),
    (
        "rank_length",
        with_relevance3([1.0] * 4),
        LabelRule("rank"),
        ELEMENT_LABEL,
        "relevance has 4 labels, el_a has 5 elements; expected one label per element",
    ),
    (
        "rank_nan",
        with_relevance3([1.0, 0.0, NAN, 1.0, 0.0]),
        LabelRule("rank"),
        ELEMENT_LABEL,
        "relevance has NaN at element 2; expected finite values",
    ),
]


@pytest.mark.parametrize(
    ("table", "rule", "columns", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_label_names_file_row_and_column(
    tmp_path: Path, table: pa.Table, rule: LabelRule, columns: dict[str, Any], message: str
) -> None:
    path = tmp_path / "part-0000.parquet"
    pq.write_table(table, path)
    data = spec(str(path), PARALLEL, **columns)
    with pytest.raises(DataError) as err:
        check_rows(pq.read_table(path), data, str(path), labels=rule)
    assert str(err.value) == f"{path} row 3: {message} {FIX}"
    kept, skipped = check_rows(
        pq.read_table(path), data.model_copy(update={"on_bad_row": "skip"}), "x", labels=rule
    )
    assert skipped == 1
    assert kept.equals(pa.concat_tables([table.slice(0, 3), table.slice(4)]).combine_chunks())


@pytest.mark.parametrize(
    "column",
    [
        pa.array([0, 1, 2, 2, 1, 0], pa.int8()),
        pa.array([0.0, 1.0, 2.0, 2.0, 1.0, 0.0], pa.float32()),
        pa.array([True, False, True, True, False, False]),
    ],
    ids=["int8", "whole_floats", "bool"],
)
def test_every_valid_class_id_passes(column: pa.Array) -> None:
    table = parallel_table(good_rows()).set_column(4, "label", column)
    kept, skipped = check_rows(table, spec("unused", PARALLEL, **SET_LABEL), "x", labels=CLASSIFY)
    assert (skipped, kept.num_rows) == (0, 6)


def test_without_a_rule_a_class_id_is_only_a_number() -> None:
    # Callers with no task (batch prediction of inputs) keep the old checks.
    kept, skipped = check_rows(with_label3(7), spec("unused", PARALLEL, **SET_LABEL), "x")
    assert (skipped, kept.num_rows) == (0, 6)


def model(task: str = "classify", num_classes: int | None = 2) -> ModelSpec:
    return ModelSpec.model_validate(
        {"task": task, "num_classes": num_classes, "encoder": {"kind": "deepsets"}}
    )


def two_files_with_a_bad_label(tmp_path: Path) -> Path:
    """30 + 30 rows in row groups of 4; file 1 has class id 2 (of 2) at row 21."""
    rows = good_rows(30)
    for i in range(2):
        if i == 1:
            rows["label"][21] = 2
        pq.write_table(parallel_table(rows), tmp_path / f"part-{i:04d}.parquet", row_group_size=4)
    return tmp_path / "part-0001.parquet"


def test_bad_label_through_ray_error_and_skip(ray_local: None, tmp_path: Path) -> None:
    bad_file = two_files_with_a_bad_label(tmp_path)
    data = spec(str(tmp_path), PARALLEL, **LABELS)
    with pytest.raises(DataError) as err:
        read_all(data, model=model())
    assert str(err.value) == f"{bad_file} row 21: label is 2; expected a class id, a whole " + (
        f"number from 0 to 1 (model.num_classes: 2) {FIX}"
    )
    stats = BatchStats()
    batches = read_all(data.model_copy(update={"on_bad_row": "skip"}), model=model(), stats=stats)
    assert stats.skipped_rows == 1
    assert sum(b.num_sets for b in batches) == 59
    assert all(set(b.targets.tolist()) <= {0, 1} for b in batches)


def split_job(tmp_path: Path, bad_row: int, value: Any) -> tuple[Any, Path]:
    """200 rows split by key into train/validation/test; one bad label at ``bad_row``."""
    rows = good_rows(200)
    rows["label"][bad_row] = value
    table = parallel_table(rows).append_column("key", pa.array(np.arange(200)))
    path = tmp_path / "all.parquet"
    pq.write_table(table, path, row_group_size=32)
    data = spec(
        str(path),
        PARALLEL,
        **SET_LABEL,
        split={"key": "key", "validation": 0.2, "test": 0.2},
    )
    return data, path


def split_of(data: Any, row: int) -> str:
    from setpipe.data.split import SPLIT_CODE, assign

    code = int(assign(pa.chunked_array([pa.array([row])]), data.split)[0])
    return {v: k for k, v in SPLIT_CODE.items()}[code]


def test_a_bad_test_label_fails_before_training(ray_local: None, tmp_path: Path) -> None:
    data, path = split_job(tmp_path, 0, 0)
    test_row = next(r for r in range(200) if split_of(data, r) == "test")
    data, path = split_job(tmp_path, test_row, 5)
    # check_labels reads the label columns of every split: a test-split label that would
    # only be read after training fails here, with the row's index in its file.
    with pytest.raises(DataError) as err:
        check_labels(data, model())
    assert str(err.value) == f"{path} row {test_row}: label is 5; expected a class id, a " + (
        f"whole number from 0 to 1 (model.num_classes: 2) {FIX}"
    )
    # skip: nothing to stop for; the passes drop and count the row.
    check_labels(data.model_copy(update={"on_bad_row": "skip"}), model())
    check_labels(data, model("regress", None))  # 5 is a fine regression target


def test_rows_skipped_in_validation_are_counted(ray_local: None, tmp_path: Path) -> None:
    from setpipe.data import FittedTransforms, iter_set_batches, read_dataset

    data, _ = split_job(tmp_path, 0, 0)
    rows = [r for r in range(200) if split_of(data, r) == "validation"][:3]
    table = pq.read_table(tmp_path / "all.parquet")
    labels = table.column("label").to_pylist()
    for r in rows:
        labels[r] = 9
    pq.write_table(table.set_column(4, "label", pa.array(labels)), tmp_path / "all.parquet")
    data = data.model_copy(update={"on_bad_row": "skip"})
    stats = BatchStats()
    validation = read_dataset(data, "validation", model=model())
    transforms = FittedTransforms.from_spec(data)
    batches = list(iter_set_batches(validation, data, transforms, shuffle=False, stats=stats))
    expected = sum(split_of(data, r) == "validation" for r in range(200)) - 3
    assert stats.skipped_rows == 3
    assert stats.sets == sum(b.num_sets for b in batches) == expected
