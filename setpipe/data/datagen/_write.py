"""Shared writing helpers: ragged numpy -> Arrow lists, tables -> numbered Parquet files,
and the one way a dataset reaches its output directory (``fresh_output``)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from setpipe.errors import DataError

SPLITS = ("train", "validation", "test")


def ragged(sizes: np.ndarray, values: np.ndarray | pa.Array) -> pa.ListArray:
    """A list array whose row i holds the next ``sizes[i]`` values (no Python loop)."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_files(table: pa.Table, out_dir: Path, rows_per_file: int, prefix: str) -> list[Path]:
    """``table`` as ``<prefix>-00000.parquet`` ... of at most ``rows_per_file`` rows each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        path = out_dir / f"{prefix}-{i:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_file), path)
        paths.append(path)
    return paths


def split_sizes(total: int, validation: float, test: float) -> dict[str, int]:
    n_val, n_test = round(total * validation), round(total * test)
    return {"train": total - n_val - n_test, "validation": n_val, "test": n_test}


def split_by_key(
    files: list[Path], out_dir: Path, key: str, validation: float, test: float, prefix: str
) -> dict[str, list[Path]]:
    """Re-write ``files`` into train/validation/test under ``out_dir`` by a stable key hash.

    The same hash as ``data.split`` (setpipe.data.split), so a row lands in the split
    a job with ``split: {key: ..., validation: ..., test: ...}`` would put it in.
    """
    from setpipe.data.split import assign
    from setpipe.spec.models import SplitSpec

    rule = SplitSpec(key=key, validation=validation, test=test)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    codes = assign(table.column(key), rule)
    written = {}
    for code, split in enumerate(SPLITS):
        part = table.filter(pa.array(codes == code))
        if part.num_rows:
            written[split] = write_files(part, Path(out_dir) / split, 10_000, prefix)
    return written


def check_output(out: Path, overwrite: bool) -> None:
    """DataError unless ``out`` may receive a new dataset: it is missing or empty, or, with
    ``overwrite``, it holds nothing but Parquet files (in it or in its subdirectories), so
    replacing it cannot delete anything of the user's that datagen did not make."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out {out}: is a file; give a directory for the dataset")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DataError(
            f"--out {out}: not empty ({len(entries)} entries: {shown}); give a new or empty "
            "directory, or add --overwrite to replace the dataset there"
        )
    for path in sorted(out.rglob("*")):
        if not (path.is_dir() and not path.is_symlink()) and path.suffix != ".parquet":
            raise DataError(
                f"--out {out} --overwrite: {path} is not a Parquet file, so this is not only a "
                "dataset and nothing was replaced; move it away or give another --out"
            )


@contextmanager
def fresh_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A staging directory beside ``out`` to generate into; it becomes ``out`` on success.

    Never mixes two datasets: ``out`` must be missing or empty, or, with ``overwrite``, a
    dataset (``check_output``) that is replaced whole, split directories and all. A failed
    or interrupted generator leaves ``out`` as it was and no staging directory behind.
    """
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final step is a rename on one filesystem; mkdir keeps the umask.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        _replace(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, out: Path, overwrite: bool) -> None:
    if overwrite and out.exists():
        check_output(out, overwrite)  # nothing of the user's arrived while generating
        old = staging.with_name(staging.name.replace(".partial-", ".old-"))
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
        return
    try:
        staging.rename(out)  # replaces an empty directory; fails on a non-empty one
    except OSError as err:
        raise DataError(
            f"--out {out}: something was written there while the dataset was generated "
            f"({err.strerror}); nothing was replaced. Give a new directory, or --overwrite"
        ) from None


def moved(written: dict[str, list[Path]], staging: Path, out: Path) -> dict[str, list[Path]]:
    """The paths ``fresh_output`` wrote under ``staging``, as they are now under ``out``."""
    return {
        split: [Path(out) / Path(p).relative_to(staging) for p in files]
        for split, files in written.items()
    }
