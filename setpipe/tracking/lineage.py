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
from typing import Any, Literal

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import ColSpec, Schema

from setpipe.data.fingerprint import FileStamp, digest, fingerprint, list_files
from setpipe.errors import SetpipeError
from setpipe.spec.models import DataSpec

Split = Literal["train", "validation", "test"]

CONTEXTS: dict[Split, str] = {"train": "training", "validation": "validation", "test": "test"}
"""MLflow's ``mlflow.data.context`` input tag for each split."""


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
    """One MLflow dataset input per split, tagged with its context (training/validation/test)."""
    # The element and set columns the job reads, so the run page shows what a set is.
    columns = [ColSpec("double", name) for name in data.elements.feature_names]
    columns += [ColSpec("double", name) for name in data.context]
    schema = Schema(columns)
    inputs = []
    for s in splits:
        dataset = MetaDataset(
            source=ParquetFilesSource(s.sources),
            name=f"{job_name}-{s.split}",
            # MLflow stores at most 36 characters of digest; the full sha256 is a run tag.
            digest=s.digest[:16],
            schema=schema,
        )
        inputs.append(
            DatasetInput(
                dataset=dataset._to_mlflow_entity(),
                tags=[InputTag(key="mlflow.data.context", value=CONTEXTS[s.split])],
            )
        )
    return inputs


class ParquetFilesSource(DatasetSource):
    """An MLflow dataset source naming the job's Parquet sources (several entries allowed)."""

    def __init__(self, uris: list[str]) -> None:
        self.uris = list(uris)

    @staticmethod
    def _get_source_type() -> str:
        return "setpipe_parquet"

    def load(self) -> Any:
        return self.uris

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> ParquetFilesSource:
        return cls(_as_list(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uris": self.uris}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> ParquetFilesSource:
        return cls(list(source_dict["uris"]))
