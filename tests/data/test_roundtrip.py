"""Parquet rows -> Ray Data -> SetBatches, for every element layout: nothing lost or changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from data_cases import Sets, elements_spec, make_sets, read_all, spec, to_table, write

from setpipe.data import SetBatch, table_to_batch

LAYOUTS = ["parallel", "struct", "vectors", "ragged_vectors"]
BUDGET = 20


def assert_rows(batch: SetBatch, sets: Sets, rows: np.ndarray) -> None:
    """``batch`` holds exactly ``rows`` of ``sets``, in that order, bit for bit."""
    sizes = np.array([len(sets.elements[r]) for r in rows])
    expected_offsets = np.concatenate([[0], np.cumsum(sizes)])
    assert batch.offsets.dtype == torch.int64
    assert batch.offsets.tolist() == expected_offsets.tolist()
    assert batch.values.dtype == torch.float32
    np.testing.assert_array_equal(
        batch.values.numpy(), np.concatenate([sets.elements[r] for r in rows])
    )
    assert batch.context is not None and batch.targets is not None
    np.testing.assert_array_equal(batch.context.numpy(), sets.context[rows])
    assert batch.targets.dtype == torch.int64
    assert batch.targets.tolist() == sets.label[rows].tolist()
    assert batch.element_targets is not None
    np.testing.assert_array_equal(
        batch.element_targets.numpy(), np.concatenate([sets.element_label[r] for r in rows])
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_row_arrives_exactly_once_and_unchanged(
    ray_local: None, tmp_path: Path, layout: str
) -> None:
    sets = make_sets(90, seed=LAYOUTS.index(layout))
    write(to_table(sets, layout), tmp_path, files=3)
    data = spec(
        str(tmp_path),
        elements_spec(layout),
        context=["row_id", "weight"],
        label="label",
        element_label="relevance",
        batch={"element_budget": BUDGET},
    )
    batches = read_all(data)
    seen = []
    for batch in batches:
        # The row id travels as the first context column: it names each set's source row.
        rows = batch.context[:, 0].numpy().astype(np.int64)  # type: ignore[index]
        assert_rows(batch, sets, rows)
        assert batch.num_elements <= BUDGET or batch.num_sets == 1
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(90))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_table_to_batch_respects_slices_and_chunks(layout: str) -> None:
    sets = make_sets(30, seed=7)
    table = to_table(sets, layout)
    # Two chunks per column, and a slice that starts and ends inside them.
    chunked = pa.concat_tables([table.slice(0, 11), table.slice(11)])
    part = chunked.slice(4, 20)
    assert part.column(0).num_chunks == 2
    assert_rows(
        table_to_batch(part, spec("unused", elements_spec(layout), **_labels())),
        sets,
        np.arange(4, 24),
    )


def _labels() -> dict[str, object]:
    return {"context": ["row_id", "weight"], "label": "label", "element_label": "relevance"}


def test_only_the_named_columns_are_read(ray_local: None, tmp_path: Path) -> None:
    sets = make_sets(10, seed=3)
    write(to_table(sets, "parallel"), tmp_path, files=1)
    ds = __import__("setpipe.data", fromlist=["read_dataset"]).read_dataset(
        spec(str(tmp_path), elements_spec("parallel"), label="label"), "train"
    )
    assert ds.schema().names == [
        "el_a",
        "el_b",
        "el_c",
        "label",
        "__setpipe_path",
        "__setpipe_row",
        "__setpipe_bad",
    ]


def test_float_labels_stay_float_and_missing_parts_are_none(tmp_path: Path) -> None:
    sets = make_sets(5, seed=4)
    table = to_table(sets, "parallel").set_column(4, "weight", pa.array(sets.context[:, 1]))
    batch = table_to_batch(table, spec("unused", elements_spec("parallel"), label="weight"))
    assert batch.targets is not None and batch.targets.dtype == torch.float32
    np.testing.assert_array_equal(batch.targets.numpy(), sets.context[:, 1])
    assert batch.context is None and batch.element_targets is None
