"""The read task's packed block: one contiguous float32 [E, F] buffer with int64 offsets,
equal to the consumer's old conversion of the same rows, bad rows kept as empty sets with
the same verdicts, so skip counts and error messages do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from data_cases import (
    FIX,
    LABELS,
    PARALLEL,
    elements_spec,
    good_rows,
    make_sets,
    parallel_table,
    spec,
    to_table,
    write,
)

from setpipe.data import BatchStats, FittedTransforms, SetBatch, iter_set_batches, read_dataset
from setpipe.data._read_task import SplitFilter, read_unit, units_of
from setpipe.data.bad_rows import RowCheck, check_rows
from setpipe.data.batch import take_rows
from setpipe.data.convert import table_to_batch
from setpipe.data.layout import BAD_COLUMN, needed_columns
from setpipe.data.packing import (
    CONTEXT_COLUMN,
    ELEMENT_TARGETS_COLUMN,
    TARGETS_COLUMN,
    VALUES_COLUMN,
    WEIGHTS_COLUMN,
    set_arrays,
    unpack,
)
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec

LAYOUTS = ["parallel", "struct", "vectors", "ragged_vectors"]
NAN = float("nan")
ROW_2 = f"el_b has NaN at element 3; expected finite values {FIX}"


def read_file(path: Path, data: DataSpec, packed: bool) -> list[pa.Table]:
    """What the read tasks hand Ray for one file (in-process: the same function)."""
    footer = pq.ParquetFile(path).metadata
    (unit,) = units_of(str(path), str(path), footer)
    split = SplitFilter("train", data.split) if data.split is not None else None
    check = RowCheck(data)
    columns = needed_columns(data)
    fs = pafs.LocalFileSystem()
    return list(read_unit(fs, unit, columns, split, check, packed=packed))


def assert_same_batch(got: SetBatch, want: SetBatch) -> None:
    """Bit for bit, dtypes included."""
    for name in ("values", "offsets", "context", "targets", "element_targets", "weights"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            assert a.shape == b.shape, name
            assert torch.equal(a, b), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_read_task_packs_what_the_consumer_converted(tmp_path: Path, layout: str) -> None:
    sets = make_sets(40, seed=11)
    (path,) = write(to_table(sets, layout), tmp_path, files=1, row_group_size=16)
    data = spec(
        str(path),
        elements_spec(layout),
        context=["row_id", "weight"],
        label="label",
        element_label="relevance",
        weight="weight",
    )
    raw, packed = read_file(path, data, packed=False), read_file(path, data, packed=True)
    assert [t.num_rows for t in packed] == [16, 16, 8]  # one block per row group, as before
    for before, block in zip(raw, packed, strict=True):
        features = len(data.elements.feature_names)
        assert block.schema.field(VALUES_COLUMN).type == pa.large_list(
            pa.list_(pa.float32(), features)
        )
        assert block.schema.field(CONTEXT_COLUMN).type == pa.list_(pa.float32(), 2)
        assert block.schema.field(TARGETS_COLUMN).type == pa.int64()
        assert block.schema.field(ELEMENT_TARGETS_COLUMN).type == pa.large_list(pa.float32())
        assert block.schema.field(WEIGHTS_COLUMN).type == pa.float32()
        arrays = unpack(block, data)
        # One contiguous [E, F] float32 buffer, viewed (not copied) out of the block.
        assert arrays.values.dtype == np.float32 and arrays.values.flags.c_contiguous
        assert arrays.values.shape == (int(arrays.offsets[-1]), features)
        assert not arrays.values.flags.writeable  # a view of the Arrow buffer
        assert arrays.offsets.dtype == np.int64
        # Equal to the consumer's own conversion of the same checked rows (HEAD's path).
        assert_same_batch(table_to_batch(block, data), table_to_batch(before, data))
        want = set_arrays(before, data)
        np.testing.assert_array_equal(arrays.offsets, want.offsets)
        np.testing.assert_array_equal(arrays.values, want.values)


def _with_bad_rows(tmp_path: Path) -> tuple[Path, DataSpec]:
    """12 rows in row groups of 4: row 2 NaN, row 5 empty, row 9 unequal lists."""
    rows = good_rows(12)
    rows["el_b"][2][3] = NAN
    for c in [*PARALLEL["columns"], "relevance"]:
        rows[c][5] = []
    rows["el_c"][9] = rows["el_c"][9][:4]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "part-0000.parquet"
    pq.write_table(parallel_table(rows), path, row_group_size=4)
    return path, spec(str(path), PARALLEL, **LABELS)


def test_bad_rows_stay_as_empty_sets_with_the_same_verdicts(tmp_path: Path) -> None:
    path, data = _with_bad_rows(tmp_path)
    raw, packed = read_file(path, data, packed=False), read_file(path, data, packed=True)
    verdicts = [v for t in packed for v in t.column(BAD_COLUMN).to_pylist()]
    assert verdicts == [v for t in raw for v in t.column(BAD_COLUMN).to_pylist()]
    assert [i for i, v in enumerate(verdicts) if v is not None] == [2, 5, 9]
    sizes = np.concatenate([np.diff(unpack(t, data).offsets) for t in packed])
    assert sizes.tolist() == [0 if i in (2, 5, 9) else 5 for i in range(12)]
    skip = data.model_copy(update={"on_bad_row": "skip"})
    for before, block in zip(raw, packed, strict=True):
        kept_raw, dropped_raw = check_rows(before, skip, "the data")
        kept, dropped = check_rows(block, skip, "the data")
        assert dropped == dropped_raw
        assert_same_batch(table_to_batch(kept, skip), table_to_batch(kept_raw, skip))
    with pytest.raises(DataError) as err:
        check_rows(packed[0], data, "the data")
    assert str(err.value) == f"{path} row 2: {ROW_2}"


def test_a_packed_read_delivers_the_same_batches_through_ray(
    ray_local: None, tmp_path: Path
) -> None:
    sets = make_sets(90, seed=4)
    write(to_table(sets, "parallel"), tmp_path / "good", files=3)
    path, bad = _with_bad_rows(tmp_path / "bad")
    for data in [
        spec(
            str(tmp_path / "good"),
            elements_spec("parallel"),
            context=["row_id", "weight"],
            label="label",
            element_label="relevance",
            batch={"element_budget": 20},
        ),
        bad.model_copy(update={"on_bad_row": "skip"}),
    ]:
        runs = []
        for packed in (False, True):
            stats = BatchStats()
            ds = read_dataset(data, "train", packed=packed)
            transforms = FittedTransforms.from_spec(data)
            batches = list(iter_set_batches(ds, data, transforms, shuffle=False, stats=stats))
            runs.append((batches, stats))
        (raw, raw_stats), (packed_batches, stats) = runs
        assert (stats.sets, stats.elements, stats.skipped_rows) == (
            raw_stats.sets,
            raw_stats.elements,
            raw_stats.skipped_rows,
        )

        # Blocks may arrive in another order: compare the sets ordered by their first value.
        def by_row(batches: list[SetBatch]) -> SetBatch:
            whole = SetBatch.concat(batches)
            return whole.select(torch.argsort(whole.values[whole.offsets[:-1], 0]))

        assert_same_batch(by_row(packed_batches), by_row(raw))
    assert raw_stats.skipped_rows == 3
    with pytest.raises(DataError) as err:
        list(iter_set_batches(read_dataset(bad, "train", packed=True), bad, transforms))
    assert str(err.value) == f"{path} row 2: {ROW_2}"


@pytest.mark.parametrize("features", [1, 2, 3, 4, 5, 8])
def test_select_gathers_whole_rows_exactly(features: int) -> None:
    rng = np.random.default_rng(features)
    sizes = rng.integers(0, 9, 50)
    sets = [torch.from_numpy(rng.normal(size=(n, features)).astype(np.float32)) for n in sizes]
    batch = SetBatch.from_sets(
        sets,
        context=torch.arange(50.0)[:, None],
        targets=torch.arange(50),
        element_targets=torch.arange(float(sizes.sum())),
        weights=torch.rand(50),
    )
    order = rng.permutation(50)[:37]
    got = batch.select(torch.from_numpy(order))
    want = SetBatch.from_sets(
        [sets[i] for i in order],
        context=batch.context[order],  # type: ignore[index]
        targets=batch.targets[order],  # type: ignore[index]
        element_targets=torch.cat(
            [batch.element_targets[batch.offsets[i] : batch.offsets[i + 1]] for i in order]  # type: ignore[index]
        ),
        weights=batch.weights[order],  # type: ignore[index]
    )
    assert_same_batch(got, want)
    a = rng.normal(size=(20, features)).astype(np.float64)
    rows = rng.integers(0, 20, 33)
    np.testing.assert_array_equal(take_rows(a, rows), a[rows])


def test_the_packing_imports_neither_ray_nor_torch() -> None:
    # The read tasks run it (no torch there); bench/gpu_check.py runs it where Ray is absent.
    import subprocess
    import sys

    code = (
        "import sys, setpipe.data.packing; print([m for m in ('ray', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_damaged_row_group_packs_to_the_same_schema_and_message(tmp_path: Path) -> None:
    from test_corrupt_parquet import assert_one_line, corrupt_files

    path = corrupt_files(tmp_path)
    data = spec(str(path), PARALLEL, **LABELS)
    raw, packed = read_file(path, data, packed=False), read_file(path, data, packed=True)
    assert [t.num_rows for t in packed] == [t.num_rows for t in raw] == [10, 10, 1]
    # One schema for every block of the task (Ray concatenates them into one block).
    assert packed[2].schema == packed[0].schema
    for tables in (raw, packed):
        with pytest.raises(DataError) as err:
            check_rows(tables[2], data.model_copy(update={"on_bad_row": "skip"}), "the data")
        assert_one_line(str(err.value), path)
