"""The data version of a job: the files its sources name, stamped, and one digest of them.

The fingerprint is the SHA-256 of the sorted (path, size, mtime) of every file the job's
data sources name (train, validation and test: new validation data changes what the
gate compares too). The files are exactly the ones the reader reads: the listing is
``setpipe.data.sources.expand`` (so ``_SUCCESS``, ``.crc`` and non-Parquet files count
for neither). It is cheap (one listing and one batched stat, no file is read) and works
the same on local disks and on s3:// / gs:// through ``pyarrow.fs``, whose ``FileInfo``
carries size and last-modified time but no ETag; an object overwritten in place gets a
new last-modified time, so size + mtime still see the change.

Lineage tags on MLflow runs (``tracking.lineage``) and the scheduler's ``on_new_data``
trigger (``jobs.scheduler``) both use this module, so they agree on what "the data" is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from setpipe.data.sources import expand
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec


@dataclass(frozen=True)
class FileStamp:
    path: str
    """As the job names it: an absolute local path, or the URI with its scheme."""
    size: int
    mtime_ns: int


def data_sources(spec: DataSpec) -> list[str]:
    """Every source entry of the job's data, train first."""
    sources: list[str] = []
    for source in (spec.train, spec.validation, spec.test):
        if source is None:
            continue
        sources.extend([source] if isinstance(source, str) else source)
    return sources


def list_files(source: str | list[str]) -> list[FileStamp]:
    """The stamped Parquet files of a source (a file, a directory, a glob; local or a URI).

    DataError, with the reader's own message, when the source names no Parquet file.
    """
    files = expand(source)
    infos = files.filesystem.get_file_info(files.paths)
    return [
        FileStamp(shown, info.size or 0, info.mtime_ns or 0)
        for shown, info in zip(files.display, infos, strict=True)
    ]


def digest(stamps: Iterable[FileStamp]) -> str:
    """SHA-256 hex over the (path, size, mtime_ns) lines of ``stamps`` sorted by path."""
    h = hashlib.sha256()
    for stamp in sorted(set(stamps), key=lambda s: s.path):
        h.update(f"{stamp.path}\t{stamp.size}\t{stamp.mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint(spec: DataSpec) -> str:
    """SHA-256 hex of the job's data files; DataError when a source names no Parquet file."""
    stamps: list[FileStamp] = []
    for source in data_sources(spec):
        try:
            stamps.extend(list_files(source))
        except DataError as err:
            raise DataError(f"data source {source}: {err}; the data is not there (yet)") from None
    return digest(stamps)
