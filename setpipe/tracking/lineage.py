"""Dataset lineage: which Parquet files a run read, a cheap digest of them, and MLflow inputs.

A split's digest is sha256 over the sorted ``(path, size, mtime_ns)`` of its files:
listing only, no file is read, so it costs the same for 1 KB and 1 TB. It changes when a
file is added, removed, rewritten or touched. The listing and the line format are the
scheduler's (``setpipe.data.fingerprint``), and ``data.fingerprint`` is the exact figure
``schedule.on_new_data`` compares, so a run page answers "which data did this train on".
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Literal

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import ColSpec, Schema

from setpipe.data.fingerprint import FileStamp, digest, fingerprint, list_files
from setpipe.errors import SetpipeError
from setpipe.spec.models import DataSpec

Split = Literal["train", "validation", "test"]

CONTEXTS: dict[Split, str] = {"train": "training", "validation": "validation", "test": "test"}
"""MLflow's ``mlflow.data.context`` input tag for each split."""
SOURCE_TYPE = "setpipe_parquet"
"""The dataset source type on the run page; the source is ``{"uris": [the job's entries]}``."""


@dataclass(frozen=True)
class SplitFiles:
    """The files one split of a job reads, as the job names them and as found on disk."""

    split: Split
    sources: list[str]
    """The job's source entries (file, directory, glob or URI), in order."""
    files: list[FileStamp]
    """Every file those entries name, sorted by path."""

    @property
    def digest(self) -> str:
        """sha256 hex over the sorted (path, size, mtime_ns), as ``fingerprint`` computes it."""
        return digest(self.files)


def _as_list(source: str | list[str] | None) -> list[str]:
    if source is None:
        return []
    return [source] if isinstance(source, str) else list(source)


def split_files(data: DataSpec) -> list[SplitFiles]:
    """The splits that have their own sources (a ``split:`` rule derives the others from train)."""
    out = []
    for split, source in (
        ("train", data.train),
        ("validation", data.validation),
        ("test", data.test),
    ):
        sources = _as_list(source)
        if not sources:
            continue
        files = sorted(set(list_files(sources)), key=lambda f: f.path)
        out.append(SplitFiles(split, sources, files))  # type: ignore[arg-type]
    return out


def lineage_tags(data: DataSpec, splits: list[SplitFiles]) -> dict[str, str]:
    """Run tags: ``data.<split>.paths`` (JSON list), ``.files`` (count), ``.digest`` (sha256),
    and ``data.fingerprint`` (all splits, the scheduler's figure)."""
    tags: dict[str, str] = {}
    with contextlib.suppress(SetpipeError):  # a source with no files: the data layer said so
        tags["data.fingerprint"] = fingerprint(data)
    for s in splits:
        tags[f"data.{s.split}.paths"] = json.dumps(s.sources)
        tags[f"data.{s.split}.files"] = str(len(s.files))
        tags[f"data.{s.split}.digest"] = s.digest
    return tags


def dataset_inputs(job_name: str, data: DataSpec, splits: list[SplitFiles]) -> list[DatasetInput]:
    """One MLflow dataset input per split, tagged with its context (training/validation/test).

    Built as ``mlflow.entities.Dataset`` directly, field for field what a ``MetaDataset``
    over a custom source would store, without its private ``_to_mlflow_entity``.
    """
    # The element and set columns the job reads, so the run page shows what a set is.
    columns = [ColSpec("double", name) for name in data.elements.feature_names]
    columns += [ColSpec("double", name) for name in data.context]
    schema = json.dumps({"mlflow_colspec": Schema(columns).to_dict()})
    return [
        DatasetInput(
            dataset=Dataset(
                name=f"{job_name}-{s.split}",
                # MLflow stores at most 36 characters of digest; the full sha256 is a run tag.
                digest=s.digest[:16],
                source_type=SOURCE_TYPE,
                source=json.dumps({"uris": s.sources}),
                schema=schema,
            ),
            tags=[InputTag(key="mlflow.data.context", value=CONTEXTS[s.split])],
        )
        for s in splits
    ]
