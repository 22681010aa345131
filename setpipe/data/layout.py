"""The job's row layout as Arrow types: which columns to read and what each must be.

Every file's schema (its footer only) is checked against the layout before a row is
read, so a wrong file fails in seconds with its name, the column, the type found and
the type expected, not an hour into training.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from setpipe.data.sources import Files
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ParallelLists, StructList, VectorList

PATH_COLUMN = "__setpipe_path"
"""Added by the reader: the file each row came from (for error messages)."""
ROW_COLUMN = "__setpipe_row"
"""Added by the reader: the row's index in its file; null on the one row standing for a row
group that could not be read (``BAD_COLUMN`` then says why)."""
BAD_COLUMN = "__setpipe_bad"
"""Added by the reader's bad-row check: null for a good row, else what is wrong with it."""
READER_COLUMNS = (PATH_COLUMN, ROW_COLUMN, BAD_COLUMN)


def chunks_of(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    """The Arrow arrays of a column, whether it is chunked or not."""
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def list_sizes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 [rows]: elements in each row's list (a null list counts 0)."""
    parts = [
        pc.fill_null(pc.list_value_length(c), 0).to_numpy(zero_copy_only=False)
        for c in chunks_of(col)
    ]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64, copy=False)


def flat_children(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    """The child values of every row, chunk by chunk, slices respected."""
    return [c.flatten() for c in chunks_of(col)]


def element_columns(spec: DataSpec) -> list[str]:
    """The Parquet columns that hold the elements."""
    layout = spec.elements
    return list(layout.columns) if isinstance(layout, ParallelLists) else [layout.column]


def needed_columns(spec: DataSpec) -> list[str]:
    """Element columns, context, labels and key, each once, in that order."""
    names = [*element_columns(spec), *spec.context]
    names += spec.set_label_columns
    names += [c for c in (spec.element_label_column, spec.key) if c is not None]
    names += weight_columns(spec)
    if spec.split is not None:
        names.append(spec.split.key)
    return list(dict.fromkeys(names))


def weight_columns(spec: DataSpec) -> list[str]:
    """data.weight and data.reweight's variables: set-level numbers read with each set."""
    names = [spec.weight] if spec.weight is not None else []
    return names + (list(spec.reweight.vars) if spec.reweight is not None else [])


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _expected(spec: DataSpec) -> dict[str, tuple[str, object]]:
    """column -> (expected type in words, predicate on the Arrow type)."""
    layout = spec.elements
    out: dict[str, tuple[str, object]] = {}
    if isinstance(layout, ParallelLists):
        for col in layout.columns:
            out[col] = ("list<int|float>", lambda t: _is_list(t) and _is_number(t.value_type))
    elif isinstance(layout, StructList):
        fields = ", ".join(f"{f}: int|float" for f in layout.fields)

        def struct_ok(t: pa.DataType, names: list[str] = layout.fields) -> bool:
            if not (_is_list(t) and pa.types.is_struct(t.value_type)):
                return False
            st = t.value_type
            return all(st.get_field_index(n) >= 0 and _is_number(st.field(n).type) for n in names)

        out[layout.column] = (f"list<struct<{fields}>>", struct_ok)
    else:
        assert isinstance(layout, VectorList)
        dim = layout.dim

        def vectors_ok(t: pa.DataType) -> bool:
            if not _is_list(t):
                return False
            inner = t.value_type
            if pa.types.is_fixed_size_list(inner):
                return inner.list_size == dim and _is_number(inner.value_type)
            return _is_list(inner) and _is_number(inner.value_type)

        out[layout.column] = (
            f"list<fixed_size_list<float, {dim}>> or list<list<float>>",
            vectors_ok,
        )
    for col in spec.context:
        out[col] = ("int or float", _is_number)
    for label in spec.set_label_columns:
        out[label] = ("int or float", _is_number)
    if spec.element_label_column is not None:
        out[spec.element_label_column] = (
            "list<int|float>",
            lambda t: _is_list(t) and _is_number(t.value_type),
        )
    for col in weight_columns(spec):
        out.setdefault(col, ("int or float", _is_number))
    for col in (spec.key, spec.split.key if spec.split else None):
        if col is not None and col not in out:
            out[col] = (
                "a scalar (int, float, string or binary)",
                lambda t: (
                    _is_number(t)
                    or pa.types.is_string(t)
                    or pa.types.is_large_string(t)
                    or pa.types.is_binary(t)
                    or pa.types.is_large_binary(t)
                ),
            )
    return out


def check_schema(schema: pa.Schema, spec: DataSpec, source: str) -> None:
    """DataError naming ``source``, the column, the type found and the type expected."""
    for col, (words, ok) in _expected(spec).items():
        index = schema.get_field_index(col)
        if index < 0:
            have = ", ".join(n for n in schema.names if n not in READER_COLUMNS)
            raise DataError(
                f"{source}: column {col!r} not found; expected {words}. The file has: {have}"
            )
        found = schema.field(index).type
        if not ok(found):  # type: ignore[operator]
            raise DataError(f"{source}: column {col!r} has type {found}, expected {words}")


def check_files(files: Files, spec: DataSpec) -> list[pq.FileMetaData]:
    """Read every file's footer and check its schema; threads, because remote footers are I/O.

    Returns the footers (row groups and their sizes), in file order, for the reader.
    """

    def one(i: int) -> pq.FileMetaData:
        try:
            metadata = pq.read_metadata(files.paths[i], filesystem=files.filesystem)
            schema = metadata.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"{files.display[i]}: not a readable Parquet file ({err})") from None
        check_schema(schema, spec, files.display[i])
        return metadata

    if len(files.paths) <= 4:
        return [one(i) for i in range(len(files.paths))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        # list() re-raises the first error in file order.
        return list(pool.map(one, range(len(files.paths))))
