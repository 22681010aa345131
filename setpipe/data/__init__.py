"""The set data pipeline: Parquet -> checked Arrow rows -> SetBatches by element budget.

Ray Data is imported here and nowhere else in setpipe's layers above.

Names are resolved on first use: Ray Data's read tasks unpickle functions from
``setpipe.data._read_task``, and a worker process must not pay for importing torch
(seconds per worker, ~150 MB each) just to rename a column.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setpipe.data.augment import augment_batch
    from setpipe.data.bad_rows import check_rows
    from setpipe.data.batch import SetBatch
    from setpipe.data.batching import (
        BatchStats,
        budget_bounds,
        equalize_batches,
        iter_set_batches,
        padding_fraction,
        torch_all_reduce_min,
    )
    from setpipe.data.convert import table_to_batch
    from setpipe.data.reading import fit_transforms, read_dataset
    from setpipe.data.transforms import FittedTransforms

_WHERE = {
    "BatchStats": "batching",
    "FittedTransforms": "transforms",
    "SetBatch": "batch",
    "augment_batch": "augment",
    "budget_bounds": "batching",
    "check_rows": "bad_rows",
    "equalize_batches": "batching",
    "fit_transforms": "reading",
    "iter_set_batches": "batching",
    "padding_fraction": "batching",
    "read_dataset": "reading",
    "table_to_batch": "convert",
    "torch_all_reduce_min": "batching",
}

__all__ = [
    "BatchStats",
    "FittedTransforms",
    "SetBatch",
    "augment_batch",
    "budget_bounds",
    "check_rows",
    "equalize_batches",
    "fit_transforms",
    "iter_set_batches",
    "padding_fraction",
    "read_dataset",
    "table_to_batch",
    "torch_all_reduce_min",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"setpipe.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'setpipe.data' has no attribute {name!r}")
