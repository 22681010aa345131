"""Arrow rows -> SetBatch, straight from list offsets and flattened child arrays.

No Python loop over rows: per chunk of a column, ``ListArray.flatten()`` gives the
child values of exactly the rows in the (possibly sliced) chunk, and
``list_value_length`` gives the set sizes. Loops run over chunks and features only.
The conversion itself is torch-free (``packing.set_arrays``: Ray's read tasks run it);
a block the read tasks already packed is only viewed (``packing.unpack``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch

from setpipe.data.batch import SetBatch
from setpipe.data.layout import chunks_of
from setpipe.data.packing import (
    as_numpy,
    element_values,
    is_packed,
    set_arrays,
    set_sizes,
    unpack,
)
from setpipe.spec.models import DataSpec

__all__ = ["element_values", "reweight_values", "set_sizes", "table_to_batch"]


def _view(a: np.ndarray | None) -> torch.Tensor | None:
    """``a`` as a tensor over the same memory, read-only or not."""
    if a is None or a.flags.writeable:
        return None if a is None else torch.from_numpy(a)
    # A view of a packed block's Arrow buffer (Ray's object store): nothing in setpipe writes
    # into a batch's tensors in place (transforms, augmentation, the shuffle make new ones).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _owned(a: np.ndarray | None) -> torch.Tensor | None:
    """``a`` as a tensor, copied when it is a read-only view of an Arrow buffer."""
    return None if a is None else torch.from_numpy(a if a.flags.writeable else a.copy())


def table_to_batch(table: pa.Table, spec: DataSpec) -> SetBatch:
    """One SetBatch holding every row of ``table``: raw element features, context, labels.

    A packed block (``packing.pack``: ``read_dataset(..., packed=True)``) is viewed, not
    converted: where it is one chunk its tensors are read-only views of its buffers.
    """
    if is_packed(table):
        arrays, tensor = unpack(table, spec), _view
    else:
        arrays, tensor = set_arrays(table, spec), _owned
    return SetBatch(
        values=tensor(arrays.values),  # type: ignore[arg-type]
        offsets=tensor(arrays.offsets),  # type: ignore[arg-type]
        context=tensor(arrays.context),
        targets=tensor(arrays.targets),
        element_targets=tensor(arrays.element_targets),
        weights=tensor(arrays.weights),
    )


def reweight_values(table: pa.Table, spec: DataSpec) -> np.ndarray | None:
    """float64 [rows, V]: ``data.reweight``'s variables of each row, or None without it."""
    if spec.reweight is None:
        return None
    out = np.empty((table.num_rows, len(spec.reweight.vars)), dtype=np.float64)
    for j, name in enumerate(spec.reweight.vars):
        out[:, j] = as_numpy(chunks_of(table.column(name)), np.float64)
    return out
