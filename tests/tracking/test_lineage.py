"""Dataset lineage: the files each split reads, their digest, the run tags and MLflow inputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_job, write_split

from setpipe.data.fingerprint import fingerprint
from setpipe.tracking.lineage import SOURCE_TYPE, dataset_inputs, lineage_tags, split_files


def _by_hand(paths: list[Path]) -> str:
    """sha256 over "path\\tsize\\tmtime_ns\\n" of the files, sorted by path."""
    h = hashlib.sha256()
    for path in sorted(paths):
        stat = os.stat(path)
        h.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def test_split_files_lists_what_the_reader_reads(workdir: Path) -> None:
    job = make_job(workdir, "classify")
    train = Path(job.data.train)
    (train / "_SUCCESS").write_text("")  # written by Spark; not data
    (train / ".part-0.parquet.crc").write_bytes(b"\0")
    splits = split_files(job.data)
    assert [s.split for s in splits] == ["train", "validation"]  # no test source: no entry
    assert [Path(f.path).name for f in splits[0].files] == ["part-0.parquet", "part-1.parquet"]
    assert splits[0].sources == [job.data.train]
    assert splits[0].digest == _by_hand(sorted(train.glob("*.parquet")))
    assert splits[1].digest == _by_hand([Path(job.data.validation) / "part-0.parquet"])


def test_a_split_of_several_sources_counts_each_file_once(workdir: Path, tmp_path: Path) -> None:
    extra = write_split(tmp_path / "extra", {"label": [1]}, files=1)
    job = make_job(workdir, "classify")
    both = job.data.model_copy(update={"train": [job.data.train, str(extra), job.data.train]})
    (train,) = [s for s in split_files(both) if s.split == "train"]
    assert len(train.files) == 3
    assert train.sources == [job.data.train, str(extra), job.data.train]
    assert train.digest == _by_hand([*Path(job.data.train).glob("*.parquet"), *extra.glob("*")])


def test_lineage_tags(workdir: Path) -> None:
    job = make_job(workdir, "classify")
    splits = split_files(job.data)
    files = [*Path(job.data.train).glob("*.parquet"), *Path(job.data.validation).glob("*")]
    assert lineage_tags(job.data, splits) == {
        "data.fingerprint": _by_hand(files),
        "data.train.paths": json.dumps([job.data.train]),
        "data.train.files": "2",
        "data.train.digest": splits[0].digest,
        "data.validation.paths": json.dumps([job.data.validation]),
        "data.validation.files": "1",
        "data.validation.digest": splits[1].digest,
    }
    # The run's figure is the one the scheduler's new-data trigger compares.
    assert lineage_tags(job.data, splits)["data.fingerprint"] == fingerprint(job.data)


def test_a_touched_file_changes_the_digest(workdir: Path) -> None:
    job = make_job(workdir, "classify")
    before = split_files(job.data)[0].digest
    part = Path(job.data.train) / "part-1.parquet"
    pq.write_table(pa.table({"label": [0, 1, 1]}), part)
    os.utime(part, ns=(1, 1))
    assert split_files(job.data)[0].digest != before


def test_dataset_inputs(workdir: Path) -> None:
    job = make_job(workdir, "classify")
    splits = split_files(job.data)
    inputs = dataset_inputs(job.name, job.data, splits)
    schema = {
        "mlflow_colspec": [
            {"type": "double", "name": name, "required": True}
            for name in ("part_pt", "part_eta", "part_phi", "jet_pt")
        ]
    }
    assert [
        (
            i.dataset.name,
            i.dataset.digest,
            i.dataset.source_type,
            json.loads(i.dataset.source),
            json.loads(i.dataset.schema),
            i.dataset.profile,
            [(t.key, t.value) for t in i.tags],
        )
        for i in inputs
    ] == [
        (
            "t-classify-train",
            splits[0].digest[:16],
            SOURCE_TYPE,
            {"uris": [job.data.train]},
            schema,
            None,
            [("mlflow.data.context", "training")],
        ),
        (
            "t-classify-validation",
            splits[1].digest[:16],
            "setpipe_parquet",
            {"uris": [job.data.validation]},
            schema,
            None,
            [("mlflow.data.context", "validation")],
        ),
    ]
