"""HDF5 files through h5py: zero-padded ``(N, M, F)`` element arrays, padding dropped.

EnergyFlow's datasets (and many others) store N sets as one ``(N, M, F)`` array, each set
padded with all-zero rows up to M elements. Here an element whose F features are all
exactly 0 is padding and is dropped; the rest become F ``list<number>`` columns named by
``features``, in their original order and dtype. Every ``(N,)`` dataset in the file becomes
a set-level column named by its path (``/meta/y`` -> ``meta_y``), or only those named in
``columns``. Rows are read ``step`` sets at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa

from setpipe.data.datagen._write import ragged
from setpipe.errors import DataError


def _import_h5py() -> ModuleType:
    try:
        import h5py
    except ModuleNotFoundError:
        raise DataError(
            "setpipe convert --format hdf5 needs h5py: pip install 'setpipe[convert]' "
            "(or pip install h5py)"
        ) from None
    return h5py


def _datasets(file: object) -> dict[str, object]:
    """Every dataset in the file by its path without the leading '/'."""
    h5py = _import_h5py()
    found: dict[str, object] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    file.visititems(visit)  # type: ignore[attr-defined]
    return found


def _element_dataset(datasets: dict[str, object], elements: str | None, path: str) -> str:
    padded = sorted(n for n, d in datasets.items() if d.ndim == 3)  # type: ignore[attr-defined]
    if elements is None:
        if len(padded) != 1:
            raise DataError(
                f"{path}: {len(padded)} datasets of shape (N, M, F) ({', '.join(padded) or 'none'})"
                ", expected one; name the element array with --elements"
            )
        return padded[0]
    name = elements.lstrip("/")
    if name not in datasets:
        raise DataError(
            f"{path}: no dataset {elements!r} (--elements); the datasets are "
            f"{', '.join(sorted(datasets))}"
        )
    if datasets[name].ndim != 3:  # type: ignore[attr-defined]
        raise DataError(
            f"{path}: dataset {name!r} has shape {datasets[name].shape}, expected (N, M, F): "  # type: ignore[attr-defined]
            "sets x padded elements x features"
        )
    return name


def _set_columns(
    datasets: dict[str, object], element: str, n: int, columns: list[str] | None, path: str
) -> list[str]:
    if columns is None:
        return sorted(
            name
            for name, d in datasets.items()
            if name != element and d.ndim == 1 and d.shape[0] == n  # type: ignore[attr-defined]
        )
    names = [c.lstrip("/") for c in columns]
    for name in names:
        if name not in datasets:
            raise DataError(
                f"{path}: no dataset {name!r} (--columns); the datasets are "
                f"{', '.join(sorted(datasets))}"
            )
        shape = datasets[name].shape  # type: ignore[attr-defined]
        if shape != (n,):
            raise DataError(
                f"{path}: dataset {name!r} has shape {shape}, expected ({n},): one value per set "
                f"of {element!r}; leave it out of --columns"
            )
    return names


def padded_to_columns(block: np.ndarray, features: list[str]) -> dict[str, pa.Array]:
    """``(n, M, F)`` zero-padded -> F list columns; all-zero elements dropped, order kept."""
    real = (block != 0).any(axis=2)  # [n, M]: False on padding
    sizes = real.sum(axis=1)
    values = block[real]  # [E, F], row-major: set by set, element order kept
    return {
        name: ragged(sizes, pa.array(np.ascontiguousarray(values[:, j])))
        for j, name in enumerate(features)
    }


def iter_hdf5(
    paths: list[str | Path],
    *,
    features: list[str],
    elements: str | None = None,
    columns: list[str] | None = None,
    step: int = 20_000,
) -> Iterator[tuple[str, pa.Table]]:
    """``(path, table)`` chunks of at most ``step`` sets from each file."""
    h5py = _import_h5py()
    if step < 1:
        raise DataError(f"--step must be at least 1, got {step}")
    if not features:
        raise DataError(
            "--format hdf5 needs --features: one name per feature of the (N, M, F) array, e.g. "
            "--features part_pt,part_y,part_phi,part_pid"
        )
    for path in map(str, paths):
        try:
            file = h5py.File(path, "r")
        except OSError as err:
            raise DataError(f"{path}: cannot be read as an HDF5 file ({err})") from None
        with file:
            datasets = _datasets(file)
            name = _element_dataset(datasets, elements, path)
            array = datasets[name]
            n, _, width = array.shape  # type: ignore[attr-defined]
            if width != len(features):
                raise DataError(
                    f"{path}: dataset {name!r} has {width} features per element (shape "
                    f"{array.shape}), but --features names {len(features)}: "  # type: ignore[attr-defined]
                    f"{','.join(features)}; give {width} names"
                )
            scalars = _set_columns(datasets, name, n, columns, path)
            clash = sorted(set(features) & {s.replace("/", "_") for s in scalars})
            if clash:
                raise DataError(
                    f"{path}: --features name {clash[0]!r} is also a set-level dataset; "
                    "choose another feature name"
                )
            for start in range(0, max(n, 1), step):
                stop = min(start + step, n)
                table = padded_to_columns(array[start:stop], features)  # type: ignore[index]
                for s in scalars:
                    table[s.replace("/", "_")] = pa.array(datasets[s][start:stop])  # type: ignore[index]
                yield path, pa.table(table)
