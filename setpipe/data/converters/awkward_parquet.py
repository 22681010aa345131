"""Awkward arrays, in memory or as Parquet files written by ``ak.to_parquet``.

A file is read ``step`` rows at a time with pyarrow (``ak.from_parquet`` would load a
whole row group, and ``ak.to_parquet`` writes one row group by default) and each batch
becomes an awkward array again, awkward's own types restored from the file's metadata;
records are then laid out as setpipe's columns (``_columns``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from setpipe.data.converters._columns import _import_awkward, columns_table
from setpipe.errors import DataError

if TYPE_CHECKING:
    import awkward as ak


def _selected(table: pa.Table, columns: list[str] | None, where: str) -> list[str] | None:
    if not columns:
        return None
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise DataError(
            f"{where}: no field {missing[0]!r} (--columns); the fields are "
            f"{', '.join(table.schema.names)}"
        )
    return columns


def iter_awkward_parquet(
    paths: list[str | Path], *, columns: list[str] | None = None, step: int = 20_000
) -> Iterator[tuple[str, pa.Table]]:
    """``(path, table)`` chunks of at most ``step`` sets from each file; ``columns`` picks
    top-level fields (a record field keeps all its own)."""
    ak = _import_awkward()
    if step < 1:
        raise DataError(f"--step must be at least 1, got {step}")
    for path in map(str, paths):
        try:
            file = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{path}: cannot be read as a Parquet file ({err})") from None
        with file:
            schema = file.schema_arrow
            chosen = _selected(schema.empty_table(), columns, path)
            batches = file.iter_batches(batch_size=step, columns=chosen)
            empty = True
            for batch in batches:
                empty = False
                table = pa.Table.from_batches([batch], schema=batch.schema)
                yield path, columns_table(ak.from_arrow(table), path)
            if empty:
                yield path, columns_table(ak.from_arrow(schema.empty_table()), path)


def iter_awkward_array(
    array: ak.Array, *, step: int = 20_000, source: str = "awkward array"
) -> Iterator[tuple[str, pa.Table]]:
    """``(source, table)`` chunks of at most ``step`` sets of an in-memory awkward array."""
    if step < 1:
        raise DataError(f"step must be at least 1, got {step}")
    for start in range(0, max(len(array), 1), step):
        yield source, columns_table(array[start : start + step], source)
