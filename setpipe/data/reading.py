"""Read a job's sets with Ray Data: expand the sources, check every schema, then read.

``read_dataset`` returns a lazy ``ray.data.Dataset`` of Arrow rows with only the
columns the job names plus the file each row came from (``__setpipe_path``, for bad-row
messages), through setpipe's own Ray Data source (``_read_task``: one read task per
file's row groups, none of ``read_parquet``'s per-pass listing). Training files are
read in a shuffled file order drawn from ``data.shuffle.seed`` and Ray's execution
index (each epoch's pass), so the order differs between epochs and repeats between
runs. With ``data.split`` the validation and test datasets are the train files
filtered by a stable key hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from setpipe.data._read_task import SetParquetDatasource, SplitFilter, units_of
from setpipe.data.bad_rows import check_rows
from setpipe.data.convert import table_to_batch
from setpipe.data.layout import check_files, needed_columns
from setpipe.data.sources import expand
from setpipe.data.transforms import FittedTransforms, fit_on_batches
from setpipe.spec.models import DataSpec

if TYPE_CHECKING:
    import ray.data

Split = Literal["train", "validation", "test"]


def source_of(spec: DataSpec, split: Split) -> str | list[str] | None:
    if split == "train" or spec.split is not None:
        return spec.train
    return spec.validation if split == "validation" else spec.test


def read_dataset(spec: DataSpec, split: Split) -> ray.data.Dataset | None:
    """The job's ``split`` as a Ray Dataset of Arrow rows; None when it has no source.

    Every file's schema is checked (footers only) before any row is read.
    """
    import ray.data

    source = source_of(spec, split)
    if source is None:
        return None
    files = expand(source)
    footers = check_files(files, spec)
    units = [
        unit
        for path, display, footer in zip(files.paths, files.display, footers, strict=True)
        for unit in units_of(path, display, footer)
    ]
    split_filter = SplitFilter(split, spec.split) if spec.split is not None else None
    seed = spec.shuffle.seed if split == "train" and spec.shuffle.files else None
    datasource = SetParquetDatasource(
        files.filesystem, units, needed_columns(spec), split_filter, shuffle_seed=seed
    )
    # One block per unit: Ray would otherwise cut each task's output into many small ones.
    return ray.data.read_datasource(datasource, override_num_blocks=max(1, len(units)))


def iter_tables(source: ray.data.Dataset | ray.data.DataIterator) -> object:
    """Arrow blocks of a Dataset or a DataIterator (a Ray Train shard), as they come."""
    return source.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def fit_transforms(spec: DataSpec, dataset: ray.data.Dataset | None) -> FittedTransforms:
    """The job's transforms with standardize fitted in one pass over ``dataset`` (training)."""
    transforms = FittedTransforms.from_spec(spec)
    if not transforms.to_fit or dataset is None:
        return transforms

    def raw_batches():  # type: ignore[no-untyped-def]
        for table in iter_tables(dataset):  # type: ignore[attr-defined]
            table, _ = check_rows(table, spec, "the training data")
            if table.num_rows:
                yield table_to_batch(table, spec)

    return fit_on_batches(transforms, raw_batches())
