"""Arrow rows -> SetBatch, straight from list offsets and flattened child arrays.

No Python loop over rows: per chunk of a column, ``ListArray.flatten()`` gives the
child values of exactly the rows in the (possibly sliced) chunk, and
``list_value_length`` gives the set sizes. Loops run over chunks and features only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from setpipe.data.batch import SetBatch
from setpipe.data.layout import chunks_of, element_columns, flat_children, list_sizes
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ParallelLists, StructList, VectorList


def _numpy(arrays: list[pa.Array], dtype: type) -> np.ndarray:
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
        cols = [_numpy(flat_children(table.column(c)), np.float32) for c in layout.columns]
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
            out[:, j] = _numpy([f.field(name) for f in flat], np.float32)
        return out
    assert isinstance(layout, VectorList)
    values = _numpy([f.flatten() for f in flat], np.float32)
    if values.size % layout.dim:
        raise DataError(
            f"{layout.column}: {values.size} vector components are not a multiple of dim "
            f"{layout.dim}; run check_rows first to find the rows with wrong-length vectors"
        )
    # A view when the child buffer already is float32; copied once otherwise.
    return values.reshape(-1, layout.dim)


def table_to_batch(table: pa.Table, spec: DataSpec) -> SetBatch:
    """One SetBatch holding every row of ``table``: raw element features, context, labels."""
    sizes = set_sizes(table, spec)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    values = element_values(table, spec)
    context = None
    if spec.context:
        ctx = np.empty((table.num_rows, len(spec.context)), dtype=np.float32)
        for j, name in enumerate(spec.context):
            ctx[:, j] = _numpy(chunks_of(table.column(name)), np.float32)
        context = torch.from_numpy(ctx)
    targets = None
    if spec.has_heads:
        # Several heads: one float32 column per set-level head, in model.heads order (class
        # ids are whole numbers, exact in float32 up to 2**24).
        columns = spec.set_label_columns
        if columns:
            heads = np.empty((table.num_rows, len(columns)), dtype=np.float32)
            for j, name in enumerate(columns):
                heads[:, j] = _numpy(chunks_of(table.column(name)), np.float32)
            targets = torch.from_numpy(heads)
    elif spec.label is not None:
        col = table.column(spec.label)
        is_int = pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)
        targets = torch.from_numpy(
            _writable(_numpy(chunks_of(col), np.int64 if is_int else np.float32))
        )
    element_targets = None
    if spec.element_label_column is not None:
        labels = _numpy(flat_children(table.column(spec.element_label_column)), np.float32)
        element_targets = torch.from_numpy(_writable(labels))
    return SetBatch(
        values=torch.from_numpy(_writable(values)),
        offsets=torch.from_numpy(offsets),
        context=context,
        targets=targets,
        element_targets=element_targets,
        weights=set_weights(table, spec),
    )


def set_weights(table: pa.Table, spec: DataSpec) -> torch.Tensor | None:
    """float32 [rows]: ``data.weight`` of each row, or None when the job has none."""
    if spec.weight is None:
        return None
    return torch.from_numpy(_numpy(chunks_of(table.column(spec.weight)), np.float32).copy())


def reweight_values(table: pa.Table, spec: DataSpec) -> np.ndarray | None:
    """float64 [rows, V]: ``data.reweight``'s variables of each row, or None without it."""
    if spec.reweight is None:
        return None
    out = np.empty((table.num_rows, len(spec.reweight.vars)), dtype=np.float64)
    for j, name in enumerate(spec.reweight.vars):
        out[:, j] = _numpy(chunks_of(table.column(name)), np.float64)
    return out


def _writable(a: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays (Arrow buffers are immutable).
    return a if a.flags.writeable else a.copy()
