"""The data version: the files the reader reads, and nothing else, stamped and digested."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from setpipe.data.fingerprint import fingerprint, list_files
from setpipe.data.sources import expand
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec


def _write(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"x": pa.array([[1.0] * 3] * rows, pa.list_(pa.float32())), "y": [0] * rows})
    pq.write_table(table, path)


def _spec(train: str) -> DataSpec:
    return DataSpec.model_validate(
        {"train": train, "elements": {"layout": "parallel", "columns": ["x"]}, "label": "y"}
    )


def test_side_files_change_nothing_and_a_new_parquet_file_changes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write(data / "part-0.parquet", 5)
    spec = _spec(str(data))
    before = fingerprint(spec)
    # What Spark and Hive leave beside the data, and a stray text file: not data.
    (data / "_SUCCESS").write_text("")
    (data / ".part-0.parquet.crc").write_bytes(b"\0" * 8)
    (data / "README.txt").write_text("notes")
    assert fingerprint(spec) == before
    assert [Path(s.path).name for s in list_files(str(data))] == ["part-0.parquet"]

    _write(data / "part-1.parquet", 3)
    after = fingerprint(spec)
    assert after != before
    # The listing is the reader's: the same files, in the same order.
    assert [s.path for s in list_files(str(data))] == expand(str(data)).display


def test_touching_a_file_changes_the_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "d" / "a.parquet"
    _write(path, 4)
    spec = _spec(str(path))
    before = fingerprint(spec)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert fingerprint(spec) != before


def test_a_source_with_no_parquet_file_names_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "_SUCCESS").write_text("")
    with pytest.raises(DataError) as err:
        fingerprint(_spec(str(empty)))
    assert str(err.value) == (
        f"data source {empty}: {empty} is a directory with no .parquet files; "
        "the data is not there (yet)"
    )
