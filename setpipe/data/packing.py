"""Arrow rows -> packed set arrays, and those arrays as one Arrow block: torch-free.

``set_arrays`` is the conversion every reader uses: element features interleaved into one
contiguous float32 ``[E, F]`` array with int64 offsets, straight from list offsets and
flattened child arrays (no Python loop over rows), and the set-level context, targets,
per-element targets and ``data.weight``. ``convert.table_to_batch`` wraps its arrays as
a SetBatch; Ray Data's read tasks run it where the rows are read (``pack``) and hand
the consumer a block it only has to view (``unpack``), so the training process only
shuffles and slices.

A packed block keeps one row per set (Ray counts, splits and limits rows), with the
reader's columns (file, row, bad-row verdict), ``data.reweight``'s variables as read,
and the arrays as Arrow columns whose buffers are the arrays themselves:

- ``VALUES_COLUMN``: ``large_list<fixed_size_list<float32, F>>``: its child buffer is the
  ``[E, F]`` array and its int64 list offsets are the set offsets;
- ``CONTEXT_COLUMN``: ``fixed_size_list<float32, C>`` (``data.context``);
- ``TARGETS_COLUMN``: int64 or float32 ``[B]`` (``data.label``), or
  ``fixed_size_list<float32, H>`` (the set-level heads' targets);
- ``ELEMENT_TARGETS_COLUMN``: ``large_list<float32>`` (a per-element label);
- ``WEIGHTS_COLUMN``: float32 (``data.weight``).

A bad row stays in the block as an empty set (zeros elsewhere) with its verdict, so the
consumer drops and counts it, or raises its message, exactly as for an unpacked table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setpipe.data.layout import (
    BAD_COLUMN,
    PATH_COLUMN,
    ROW_COLUMN,
    chunks_of,
    element_columns,
    flat_children,
    list_sizes,
)
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ParallelLists, StructList, VectorList

VALUES_COLUMN = "__setpipe_values"
CONTEXT_COLUMN = "__setpipe_context"
TARGETS_COLUMN = "__setpipe_targets"
ELEMENT_TARGETS_COLUMN = "__setpipe_element_targets"
WEIGHTS_COLUMN = "__setpipe_weights"


@dataclass(frozen=True)
class SetArrays:
    """The numpy form of a SetBatch (``batch.SetBatch`` documents each field)."""

    values: np.ndarray
    """float32 [E, F], C-contiguous."""
    offsets: np.ndarray
    """int64 [B+1], offsets[0] == 0."""
    context: np.ndarray | None = None
    """float32 [B, C]."""
    targets: np.ndarray | None = None
    """int64 [B] (integer or boolean labels), float32 [B], or float32 [B, H] (heads)."""
    element_targets: np.ndarray | None = None
    """float32 [E]."""
    weights: np.ndarray | None = None
    """float32 [B]."""


def as_numpy(arrays: list[pa.Array], dtype: type) -> np.ndarray:
    """Arrow arrays (a column's chunks) as one numpy array of ``dtype``."""
    parts = [np.asarray(a.to_numpy(zero_copy_only=False), dtype=dtype) for a in arrays]
    if not parts:
        return np.empty(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def set_sizes(table: pa.Table, spec: DataSpec) -> np.ndarray:
    """int64 [rows]: elements per set (the first element column decides)."""
    return list_sizes(table.column(element_columns(spec)[0]))


def element_values(table: pa.Table, spec: DataSpec) -> np.ndarray:
    """float32 [E, F]: raw element features in ``spec.elements.feature_names`` order."""
    layout = spec.elements
    if isinstance(layout, ParallelLists):
        cols = [as_numpy(flat_children(table.column(c)), np.float32) for c in layout.columns]
        out = np.empty((len(cols[0]), len(cols)), dtype=np.float32)
        for j, col in enumerate(cols):
            if len(col) != len(out):
                raise DataError(
                    f"{layout.columns[j]} has {len(col)} elements in all, {layout.columns[0]} "
                    f"has {len(out)}; run check_rows first to find the unequal rows"
                )
            out[:, j] = col
        return out
    flat = flat_children(table.column(layout.column))
    if isinstance(layout, StructList):
        out = np.empty((sum(len(f) for f in flat), len(layout.fields)), dtype=np.float32)
        for j, name in enumerate(layout.fields):
            # StructArray.field() is already offset to the struct's slice.
            out[:, j] = as_numpy([f.field(name) for f in flat], np.float32)
        return out
    assert isinstance(layout, VectorList)
    values = as_numpy([f.flatten() for f in flat], np.float32)
    if values.size % layout.dim:
        raise DataError(
            f"{layout.column}: {values.size} vector components are not a multiple of dim "
            f"{layout.dim}; run check_rows first to find the rows with wrong-length vectors"
        )
    # A view when the child buffer already is float32; copied once otherwise.
    return values.reshape(-1, layout.dim)


def _integer_label(spec: DataSpec, schema: pa.Schema) -> bool:
    """Whether ``data.label`` becomes int64 class ids (integer or boolean column)."""
    kind = schema.field(spec.label).type if spec.label is not None else pa.float32()
    return pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def set_arrays(table: pa.Table, spec: DataSpec) -> SetArrays:
    """Every row of ``table`` (bad rows already dropped) as packed arrays."""
    sizes = set_sizes(table, spec)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    context = None
    if spec.context:
        context = np.empty((table.num_rows, len(spec.context)), dtype=np.float32)
        for j, name in enumerate(spec.context):
            context[:, j] = as_numpy(chunks_of(table.column(name)), np.float32)
    targets = None
    if spec.has_heads:
        # Several heads: one float32 column per set-level head, in model.heads order (class
        # ids are whole numbers, exact in float32 up to 2**24).
        columns = spec.set_label_columns
        if columns:
            targets = np.empty((table.num_rows, len(columns)), dtype=np.float32)
            for j, name in enumerate(columns):
                targets[:, j] = as_numpy(chunks_of(table.column(name)), np.float32)
    elif spec.label is not None:
        is_int = _integer_label(spec, table.schema)
        targets = as_numpy(chunks_of(table.column(spec.label)), np.int64 if is_int else np.float32)
    element_targets = None
    if spec.element_label_column is not None:
        labels = flat_children(table.column(spec.element_label_column))
        element_targets = as_numpy(labels, np.float32)
    weights = None
    if spec.weight is not None:
        weights = as_numpy(chunks_of(table.column(spec.weight)), np.float32)
    return SetArrays(
        values=element_values(table, spec),
        offsets=offsets,
        context=context,
        targets=targets,
        element_targets=element_targets,
        weights=weights,
    )


def _expand(a: np.ndarray | None, good: np.ndarray, rows: int) -> np.ndarray | None:
    """Set-level ``a`` of the good rows spread over all ``rows`` (zeros at the bad ones)."""
    if a is None or len(a) == rows:  # no bad row: nothing to spread
        return a
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    out[good] = a
    return out


def _fixed(a: np.ndarray) -> pa.Array:
    """float32 [B, K] as ``fixed_size_list<float32, K>`` over the same buffer."""
    flat = pa.array(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, a.shape[1])


def pack(table: pa.Table, spec: DataSpec) -> pa.Table:
    """A checked table (``BAD_COLUMN`` filled by the read task) as a packed block.

    The good rows are converted by ``set_arrays``; a bad row keeps its file, row and
    verdict and holds an empty set. ``data.reweight``'s variables pass through as read.
    """
    rows = table.num_rows
    bad = table.column(BAD_COLUMN)
    good = np.ones(rows, dtype=bool)
    if bad.null_count < rows:
        good = np.asarray(pc.is_null(bad).to_numpy(zero_copy_only=False))
    kept = table if good.all() else table.filter(pa.array(good))
    arrays = set_arrays(kept, spec)
    offsets = arrays.offsets
    if not good.all():
        sizes = np.zeros(rows, dtype=np.int64)
        sizes[good] = np.diff(arrays.offsets)
        offsets = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
    # The offsets array is taken as Arrow's list offsets, the values as its child: no copy.
    columns: dict[str, pa.Array] = {
        PATH_COLUMN: table.column(PATH_COLUMN),
        ROW_COLUMN: table.column(ROW_COLUMN),
        BAD_COLUMN: bad,
        VALUES_COLUMN: pa.LargeListArray.from_arrays(pa.array(offsets), _fixed(arrays.values)),
    }
    if arrays.context is not None:
        columns[CONTEXT_COLUMN] = _fixed(_expand(arrays.context, good, rows))  # type: ignore[arg-type]
    if arrays.targets is not None:
        targets = _expand(arrays.targets, good, rows)
        assert targets is not None
        columns[TARGETS_COLUMN] = _fixed(targets) if targets.ndim == 2 else pa.array(targets)
    if arrays.element_targets is not None:
        columns[ELEMENT_TARGETS_COLUMN] = pa.LargeListArray.from_arrays(
            pa.array(offsets), pa.array(arrays.element_targets)
        )
    if arrays.weights is not None:
        columns[WEIGHTS_COLUMN] = pa.array(_expand(arrays.weights, good, rows))
    for name in spec.reweight.vars if spec.reweight is not None else ():
        columns.setdefault(name, table.column(name))
    return pa.table(columns)


def is_packed(table: pa.Table) -> bool:
    return VALUES_COLUMN in table.column_names


def block_sizes(table: pa.Table, spec: DataSpec) -> np.ndarray:
    """int64 [rows]: elements per set of a block, packed or not (a bad packed row: 0)."""
    return list_sizes(table.column(VALUES_COLUMN)) if is_packed(table) else set_sizes(table, spec)


def _child(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(child values, int64 offsets from 0) of a large_list column, one chunk or several."""
    chunks = [c for c in col.chunks if len(c)]
    if len(chunks) == 1:
        c = chunks[0]
        offsets = c.offsets.to_numpy()
        child = c.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        return child, offsets - offsets[0]
    # Several chunks (a block of several row groups, a filtered table): one copy.
    child = pa.concat_arrays([c.flatten() for c in chunks] or [pa.array([], col.type.value_type)])
    sizes = [np.diff(c.offsets.to_numpy()) for c in chunks]
    offsets = np.zeros(len(col) + 1, dtype=np.int64)
    if sizes:
        np.cumsum(np.concatenate(sizes), out=offsets[1:])
    return child, offsets


def _flat(chunks: list[pa.Array], dtype: type) -> np.ndarray:
    """Arrow arrays as one numpy array: a view of the buffer when there is one."""
    if len(chunks) == 1:
        return chunks[0].to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return as_numpy(chunks, dtype)


def _matrix(col: pa.ChunkedArray, width: int) -> np.ndarray:
    """float32 [rows, width] of a ``fixed_size_list<float32, width>`` column."""
    return _flat([c.flatten() for c in col.chunks if len(c)], np.float32).reshape(-1, width)


def unpack(table: pa.Table, spec: DataSpec) -> SetArrays:
    """A packed block's arrays: views of its Arrow buffers (read-only) where it is one chunk.

    ``table`` holds only good rows (``bad_rows.check_rows`` has dropped the others)."""
    child, offsets = _child(table.column(VALUES_COLUMN))
    features = len(spec.elements.feature_names)
    values = _flat([child.flatten()], np.float32).reshape(-1, features)
    names = table.column_names
    context = targets = element_targets = weights = None
    if CONTEXT_COLUMN in names:
        context = _matrix(table.column(CONTEXT_COLUMN), len(spec.context))
    if TARGETS_COLUMN in names:
        col = table.column(TARGETS_COLUMN)
        if pa.types.is_fixed_size_list(col.type):
            targets = _matrix(col, col.type.list_size)
        else:
            targets = _flat([c for c in col.chunks if len(c)], col.type.to_pandas_dtype())
    if ELEMENT_TARGETS_COLUMN in names:
        element_targets = _flat([_child(table.column(ELEMENT_TARGETS_COLUMN))[0]], np.float32)
    if WEIGHTS_COLUMN in names:
        weights = _flat([c for c in table.column(WEIGHTS_COLUMN).chunks if len(c)], np.float32)
    return SetArrays(values, offsets, context, targets, element_targets, weights)
