"""A Parquet file with a corrupt page: one line naming the file and the row group."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from data_cases import LABELS, PARALLEL, good_rows, parallel_table, read_all, spec

from setpipe.cli import main
from setpipe.errors import DataError


def corrupt_files(tmp_path: Path) -> Path:
    """A good file and a bad one: 40 rows in row groups of 10, el_b's page in group 2 broken."""
    pq.write_table(parallel_table(good_rows(40)), tmp_path / "part-0000.parquet")
    path = tmp_path / "part-0001.parquet"
    pq.write_table(parallel_table(good_rows(40)), path, row_group_size=10)
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(1)
    assert chunk.path_in_schema == "el_b.list.element"
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 16] = b"\xff" * 16  # the page header: thrift cannot decode it
    path.write_bytes(bytes(data))
    return path


def assert_one_line(message: str, path: Path) -> None:
    assert "\n" not in message
    assert message.startswith(f"{path} row group 2 (rows 20-29) cannot be read (")
    assert message.endswith(
        "); the file is damaged: write it again, or move it out of the job's data"
    )


def test_corrupt_page_through_the_ray_read_path(
    ray_local: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = corrupt_files(tmp_path)
    capfd.readouterr()
    data = spec(str(tmp_path), PARALLEL, **LABELS)
    for on_bad_row in ("error", "skip"):  # a damaged file is never a row to skip
        with pytest.raises(DataError) as err:
            read_all(data.model_copy(update={"on_bad_row": on_bad_row}))
        assert_one_line(str(err.value), path)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out


def test_corrupt_page_through_inspect(
    ray_local: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = corrupt_files(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "corrupt",
                "data": {"train": str(tmp_path), "elements": PARALLEL, "label": "label"},
                "model": {"task": "classify", "num_classes": 2, "encoder": {"kind": "deepsets"}},
            }
        )
    )
    capfd.readouterr()
    assert main(["inspect", str(job)]) == 1
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    errors = [line for line in printed.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert_one_line(errors[0].removeprefix("error: "), path)
