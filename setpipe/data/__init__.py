"""The set data pipeline: Parquet -> checked Arrow rows -> SetBatches by element budget.

Ray Data is imported here and nowhere else in setpipe's layers above.
"""

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

__all__ = [
    "BatchStats",
    "FittedTransforms",
    "SetBatch",
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
