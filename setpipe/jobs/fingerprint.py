"""A data fingerprint: has a job's data changed since its last successful run?

The fingerprint is the SHA-256 of the sorted (path, size, mtime) of every file the job's
data sources name (train, validation and test: new validation data changes what the
gate compares too). It is cheap (one listing, no file is read) and works the same on
local disks and on s3:// / gs:// through ``pyarrow.fs``, whose ``FileInfo`` carries size
and last-modified time but no ETag; an object overwritten in place gets a new
last-modified time, so size + mtime still see the change.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from setpipe.errors import JobError
from setpipe.spec.models import DataSpec

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FileStamp:
    path: str
    size: int
    mtime_ns: int


def data_sources(spec: DataSpec) -> list[str]:
    """Every source string of the job's data, train first."""
    sources: list[str] = []
    for source in (spec.train, spec.validation, spec.test):
        if source is None:
            continue
        sources.extend([source] if isinstance(source, str) else source)
    return sources


def list_files(source: str) -> list[FileStamp]:
    """The files a source names (a file, a directory, a glob; local or a pyarrow URI)."""
    import pyarrow.fs as pafs

    if "://" not in source:
        return _local_files(source)
    try:
        fs, path = pafs.FileSystem.from_uri(_glob_root(source))
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError per scheme
        raise JobError(f"{source}: cannot open its filesystem ({err})") from None
    pattern = source.split("://", 1)[1] if any(c in source for c in _GLOB_CHARS) else None
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    else:
        infos = []
    return [
        FileStamp(f"{source.split('://', 1)[0]}://{i.path}", i.size or 0, i.mtime_ns or 0)
        for i in infos
        if i.type == pafs.FileType.File and (pattern is None or fnmatch.fnmatch(i.path, pattern))
    ]


def _glob_root(source: str) -> str:
    """The directory part of a URI above its first glob segment."""
    if not any(c in source for c in _GLOB_CHARS):
        return source
    scheme, rest = source.split("://", 1)
    parts = rest.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
    return f"{scheme}://{'/'.join(parts[:first])}"


def _local_files(source: str) -> list[FileStamp]:
    path = Path(source).expanduser()
    if path.is_dir():
        paths = [p for p in path.rglob("*") if p.is_file()]
    elif any(c in source for c in _GLOB_CHARS):
        paths = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    else:
        paths = [path] if path.is_file() else []
    stamps = []
    for p in paths:
        stat = p.stat()
        stamps.append(FileStamp(str(p.resolve()), stat.st_size, stat.st_mtime_ns))
    return stamps


def fingerprint(spec: DataSpec) -> str:
    """SHA-256 hex of the job's data files; JobError when a source names no file."""
    stamps: set[FileStamp] = set()
    for source in data_sources(spec):
        files = list_files(source)
        if not files:
            raise JobError(f"data source {source} names no files; the data is not there (yet)")
        stamps.update(files)
    digest = hashlib.sha256()
    for stamp in sorted(stamps, key=lambda s: s.path):
        digest.update(f"{stamp.path}\t{stamp.size}\t{stamp.mtime_ns}\n".encode())
    return digest.hexdigest()
