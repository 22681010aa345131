"""Bad files and bad rows: each error's full wording is pinned; skip drops and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_cases import FIX, LABELS, PARALLEL, good_rows, parallel_table, read_all, spec

from setpipe.data import BatchStats, check_rows, read_dataset
from setpipe.errors import DataError

STRUCT = {"layout": "struct", "column": "points", "fields": ["a", "b"]}
VECTORS = {"layout": "vectors", "column": "vecs", "dim": 3}
NAN, INF = float("nan"), float("inf")


def with_row3(column: str, value: Any) -> pa.Table:
    rows = good_rows()
    rows[column][3] = value
    return parallel_table(rows)


# (id, table, elements layout, extra spec, the message after "<file> row 3: ")
ROW_CASES = [
    (
        "nan",
        with_row3("el_b", [0.0, 1.0, NAN, 2.0, 3.0]),
        PARALLEL,
        {},
        "el_b has NaN at element 2; expected finite values",
    ),
    (
        "inf",
        with_row3("el_c", [INF, 1.0, 1.0, 2.0, 3.0]),
        PARALLEL,
        {},
        "el_c has inf at element 0; expected finite values",
    ),
    (
        "minus_inf",
        with_row3("el_a", [0.0, 1.0, 1.0, 2.0, -INF]),
        PARALLEL,
        {},
        "el_a has -inf at element 4; expected finite values",
    ),
    (
        "null_element",
        with_row3("el_b", [0.0, None, 1.0, 2.0, 3.0]),
        PARALLEL,
        {},
        "el_b has a null at element 1; expected a number",
    ),
    ("null_list", with_row3("el_b", None), PARALLEL, {}, "el_b is null; expected a list"),
    (
        "empty",
        parallel_table(
            {**good_rows(), **{c: [[1.0]] * 3 + [[]] + [[1.0]] * 2 for c in PARALLEL["columns"]}}
        ),
        PARALLEL,
        {"context": [], "label": None, "element_label": None},
        "el_a is an empty set; expected at least one element",
    ),
    (
        "unequal",
        with_row3("el_c", [0.0, 1.0, 2.0, 3.0]),
        PARALLEL,
        {},
        "el_c has 4 elements, el_a has 5; expected equal lengths",
    ),
    (
        "oversize",
        parallel_table(
            {
                **good_rows(),
                **{c: [[1.0] * 5] * 3 + [[1.0] * 9] + [[1.0] * 5] * 2 for c in PARALLEL["columns"]},
                "relevance": [[1.0] * 5] * 3 + [[1.0] * 9] + [[1.0] * 5] * 2,
            }
        ),
        PARALLEL,
        {"batch": {"max_set_size": 8}},
        "el_a has 9 elements; expected at most 8 (data.batch.max_set_size)",
    ),
    (
        "context_nan",
        with_row3("weight", NAN),
        PARALLEL,
        {},
        "weight is NaN; expected a finite number",
    ),
    ("label_null", with_row3("label", None), PARALLEL, {}, "label is null; expected a number"),
    (
        "element_labels_short",
        with_row3("relevance", [1.0] * 4),
        PARALLEL,
        {},
        "relevance has 4 labels, el_a has 5 elements; expected one label per element",
    ),
    (
        "struct_nan",
        pa.table(
            {
                "points": pa.array(
                    [[{"a": 1.0, "b": 2.0}] * 2] * 3
                    + [[{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": NAN}]]
                    + [[{"a": 1.0, "b": 2.0}]],
                    pa.list_(pa.struct([("a", pa.float32()), ("b", pa.float32())])),
                )
            }
        ),
        STRUCT,
        {"context": [], "label": None, "element_label": None},
        "points.b has NaN at element 1; expected finite values",
    ),
    (
        "vector_short",
        pa.table(
            {
                "vecs": pa.array(
                    [[[1.0, 2.0, 3.0]]] * 3 + [[[1.0, 2.0, 3.0], [1.0, 2.0]]],
                    pa.list_(pa.list_(pa.float32())),
                )
            }
        ),
        VECTORS,
        {"context": [], "label": None, "element_label": None},
        "vecs element 1 has 2 components; expected 3 (elements.dim)",
    ),
    (
        "vector_inf",
        pa.table(
            {
                "vecs": pa.array(
                    [[[1.0, 2.0, 3.0]]] * 3 + [[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, INF, 0]]],
                    pa.list_(pa.list_(pa.float32(), 3)),
                )
            }
        ),
        VECTORS,
        {"context": [], "label": None, "element_label": None},
        "vecs has inf at element 2; expected finite values",
    ),
]


@pytest.mark.parametrize(
    ("table", "elements", "extra", "message"),
    [c[1:] for c in ROW_CASES],
    ids=[c[0] for c in ROW_CASES],
)
def test_bad_row_error_names_file_row_and_column(
    tmp_path: Path, table: pa.Table, elements: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    path = tmp_path / "part-0000.parquet"
    pq.write_table(table, path)
    data = spec(str(path), elements, **{**LABELS, **extra})
    with pytest.raises(DataError) as err:
        check_rows(pq.read_table(path), data, str(path))
    assert str(err.value) == f"{path} row 3: {message} {FIX}"
    # skip: exactly that row goes, and is counted.
    kept, skipped = check_rows(
        pq.read_table(path), data.model_copy(update={"on_bad_row": "skip"}), "x"
    )
    assert skipped == 1
    assert kept.num_rows == table.num_rows - 1
    assert kept.equals(pa.concat_tables([table.slice(0, 3), table.slice(4)]).combine_chunks())


def test_first_row_offsets_the_reported_row() -> None:
    data = spec("unused", PARALLEL, **LABELS)
    with pytest.raises(DataError) as err:
        check_rows(with_row3("el_a", [NAN] * 5), data, "batch.parquet", first_row=100)
    assert (
        str(err.value)
        == f"batch.parquet row 103: el_a has NaN at element 0; expected finite values {FIX}"
    )


# (id, how the file differs, the message after "<file>: ")
SCHEMA_CASES = [
    (
        "missing_column",
        lambda t: t.drop_columns(["el_c"]),
        "column 'el_c' not found; expected list<int|float>. The file has: el_a, el_b, weight, "
        "label, relevance",
    ),
    (
        "strings_not_numbers",
        lambda t: t.set_column(1, "el_b", pa.array([["x"]] * t.num_rows, pa.list_(pa.string()))),
        "column 'el_b' has type list<element: string>, expected list<int|float>",
    ),
    (
        "scalar_not_list",
        lambda t: t.set_column(0, "el_a", pa.array([1.0] * t.num_rows)),
        "column 'el_a' has type double, expected list<int|float>",
    ),
    (
        "context_is_text",
        lambda t: t.set_column(3, "weight", pa.array(["1"] * t.num_rows)),
        "column 'weight' has type string, expected int or float",
    ),
    (
        "label_is_a_list",
        lambda t: t.set_column(4, "label", pa.array([[1]] * t.num_rows)),
        "column 'label' has type list<element: int64>, expected int or float",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
def test_schema_mismatch_names_file_column_found_and_expected(
    tmp_path: Path, change: Any, message: str
) -> None:
    pq.write_table(parallel_table(good_rows()), tmp_path / "part-0000.parquet")
    bad = tmp_path / "part-0001.parquet"
    pq.write_table(change(parallel_table(good_rows())), bad)
    # Raised by read_dataset itself, from the footers, before Ray reads a row.
    with pytest.raises(DataError) as err:
        read_dataset(spec(str(tmp_path), PARALLEL, **LABELS), "train")
    assert str(err.value) == f"{bad}: {message}"


@pytest.mark.parametrize(
    ("elements", "column", "message"),
    [
        (
            STRUCT,
            pa.array([[{"a": 1.0}]], pa.list_(pa.struct([("a", pa.float32())]))),
            "column 'points' has type list<element: struct<a: float>>, expected "
            "list<struct<a: int|float, b: int|float>>",
        ),
        (
            VECTORS,
            pa.array([[[1.0, 2.0]]], pa.list_(pa.list_(pa.float32(), 2))),
            "column 'vecs' has type list<element: fixed_size_list<element: float>[2]>, expected "
            "list<fixed_size_list<float, 3>> or list<list<float>>",
        ),
    ],
    ids=["struct_field_missing", "vector_size"],
)
def test_schema_mismatch_in_struct_and_vector_layouts(
    tmp_path: Path, elements: dict[str, Any], column: pa.Array, message: str
) -> None:
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({elements["column"]: column}), path)
    with pytest.raises(DataError) as err:
        read_dataset(spec(str(path), elements), "train")
    assert str(err.value) == f"{path}: {message}"


def test_not_parquet_and_missing_source(tmp_path: Path) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(DataError) as err:
        read_dataset(spec(str(junk), PARALLEL), "train")
    assert str(err.value).startswith(f"{junk}: not a readable Parquet file (")
    with pytest.raises(DataError) as err:
        read_dataset(spec(str(tmp_path / "nope"), PARALLEL), "train")
    assert str(err.value) == (
        f"{tmp_path / 'nope'} does not exist; expected a Parquet file, a directory or a glob"
    )


def two_files_with_bad_rows(tmp_path: Path) -> tuple[Path, int]:
    """30 + 30 rows in row groups of 4; file 1 has bad rows 17 (NaN) and 25 (empty)."""
    rows = good_rows(30)
    for path, bad in [
        (tmp_path / "part-0000.parquet", False),
        (tmp_path / "part-0001.parquet", True),
    ]:
        if bad:
            rows["el_b"][17][1] = NAN
            for c in [*PARALLEL["columns"], "relevance"]:
                rows[c][25] = []
        pq.write_table(parallel_table(rows), path, row_group_size=4)
    return tmp_path / "part-0001.parquet", 2


def test_bad_rows_through_ray_error_and_skip(ray_local: None, tmp_path: Path) -> None:
    bad_file, num_bad = two_files_with_bad_rows(tmp_path)
    data = spec(str(tmp_path), PARALLEL, **LABELS)
    # Blocks start inside the file; the message still gives the row's index in its file.
    with pytest.raises(DataError) as err:
        read_all(data)
    assert str(err.value) == (
        f"{bad_file} row 17: el_b has NaN at element 1; expected finite values {FIX}"
    )
    stats = BatchStats()
    batches = read_all(data.model_copy(update={"on_bad_row": "skip"}), stats=stats)
    assert stats.skipped_rows == num_bad
    assert stats.sets == sum(b.num_sets for b in batches) == 60 - num_bad
    assert stats.elements == 5 * (60 - num_bad)


def test_the_read_tasks_checks_import_no_torch() -> None:
    # The bad-row checks run in every Ray read task: importing torch there costs seconds
    # and ~150 MB per worker process.
    import subprocess
    import sys

    code = "import sys, setpipe.data._read_task; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
