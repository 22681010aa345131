"""Where the Parquet files of a source are: local paths, directories, globs, s3:// and gs://.

Globs are expanded here with ``pyarrow.fs`` listings and ``fnmatch`` (no fsspec): a
listing of the pattern's fixed prefix, then a match of every file's path against the
pattern. ``*`` may cross directory levels, so ``data/**/*.parquet`` and ``data/*.parquet``
both find the files under ``data``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from setpipe.errors import DataError

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Files:
    """The expanded files of one source, all on one filesystem."""

    filesystem: pafs.FileSystem
    paths: list[str]
    """Paths as the filesystem names them (no scheme)."""
    display: list[str]
    """The same files as a user wrote them (with the scheme for s3:// and gs://)."""


def _split_uri(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path on it, prefix to show before the path)."""
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme == "file":
            return pafs.LocalFileSystem(), os.path.abspath(uri[len("file://") :]), ""
        # Glob characters would confuse from_uri's path parsing: resolve the bucket only.
        head = uri
        for i, ch in enumerate(uri):
            if ch in _GLOB_CHARS:
                head = uri[: uri.rfind("/", 0, i)]
                break
        try:
            fs, _ = pafs.FileSystem.from_uri(head)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError by backend
            raise DataError(f"cannot open {uri}: {err}") from None
        return fs, uri.split("://", 1)[1], f"{scheme}://"
    return pafs.LocalFileSystem(), os.path.abspath(uri), ""


def endpoint() -> str:
    """The S3 server setpipe's reads go to, as a message names it."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return f"{os.environ[var]} ({var})"
    return "AWS (no AWS_ENDPOINT_URL_S3 set)"


_DENIED = ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "EXPIRED_TOKEN")


def remote_problem(uri: str, err: Exception) -> str | None:
    """What an object store's error means for ``uri`` and the fix, or None if it is not one
    setpipe can explain. The AWS SDK's own text is kept at the end; it holds no secret."""
    text = " ".join(str(err).split())
    if any(code in text for code in _DENIED):
        return (
            f"{uri}: the S3 server {endpoint()} refused the credentials ({text}). Check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may "
            "read this bucket"
        )
    if "NO_SUCH_BUCKET" in text:
        return no_bucket(uri)
    return None


def no_bucket(uri: str) -> str:
    """The message for a missing bucket: which, on which server, and the fix."""
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    return (
        f"{uri}: bucket {bucket} does not exist on {endpoint()}; check the bucket's name, "
        "or point AWS_ENDPOINT_URL_S3 at the server that holds it"
    )


def _check_bucket(fs: pafs.FileSystem, path: str, entry: str) -> None:
    """Nothing found at ``entry``: say so if its whole bucket is missing (object stores)."""
    remote = "://" in entry and not entry.startswith("file://")
    if remote and fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound:
        raise DataError(no_bucket(entry))


def _is_data_file(path: str) -> bool:
    # Spark/Hive write _SUCCESS and .crc side files next to the data.
    base = path.rsplit("/", 1)[-1]
    return not base.startswith(("_", ".")) and not base.endswith(".crc")


def expand(source: str | list[str]) -> Files:
    """Every Parquet file named by ``source``, sorted within each entry; DataError if none."""
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise DataError("the data source is an empty list; name at least one file or directory")
    filesystem: pafs.FileSystem | None = None
    paths: list[str] = []
    display: list[str] = []
    for entry in entries:
        fs, path, prefix = _split_uri(entry)
        if filesystem is None:
            filesystem = fs
        elif type(fs) is not type(filesystem):
            raise DataError(
                f"{entry}: all files of one source must be on one filesystem; this one is "
                f"{fs.type_name}, the first was {filesystem.type_name}"
            )
        try:
            found = _expand_one(fs, path, entry)
        except OSError as err:  # an object store refused or failed the listing
            raise DataError(remote_problem(entry, err) or f"cannot list {entry}: {err}") from None
        paths.extend(found)
        display.extend(prefix + p for p in found)
    assert filesystem is not None
    return Files(filesystem, paths, display)


def _expand_one(fs: pafs.FileSystem, path: str, entry: str) -> list[str]:
    if any(ch in path for ch in _GLOB_CHARS):
        first = min(path.index(ch) for ch in _GLOB_CHARS if ch in path)
        base = path[: path.rfind("/", 0, first)] or "/"
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as err:
            problem = remote_problem(entry, err)
            raise DataError(problem or f"cannot list {base} for {entry}: {err}") from None
        found = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and _is_data_file(i.path)
            and fnmatch.fnmatchcase(i.path, path)
        )
        if not found:
            _check_bucket(fs, path, entry)
            raise DataError(f"no files match {entry}; check the path and the pattern")
        return found
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        found = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and _is_data_file(i.path)
            and i.path.endswith((".parquet", ".pq", ".parq"))
        )
        if not found:
            raise DataError(f"{entry} is a directory with no .parquet files")
        return found
    _check_bucket(fs, path, entry)
    raise DataError(f"{entry} does not exist; expected a Parquet file, a directory or a glob")
