"""Read a job's sets with Ray Data: expand the sources, check every schema, then read.

``read_dataset`` returns a lazy ``ray.data.Dataset`` of Arrow rows with only the
columns the job names plus the file each row came from (``__setpipe_path``, for bad-row
messages). Training files are read in a shuffled file order, seeded by
``data.shuffle.seed``; Ray reseeds it on every execution (each epoch's pass), so the
order differs between epochs and repeats between runs. With ``data.split`` the
validation and test datasets are the train files filtered by a stable key hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from setpipe.data._read_task import prepare_block
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
    from ray.data import FileShuffleConfig

    source = source_of(spec, split)
    if source is None:
        return None
    files = expand(source)
    check_files(files, spec)
    shuffle = None
    if split == "train" and spec.shuffle.files:
        shuffle = FileShuffleConfig(seed=spec.shuffle.seed, reseed_after_execution=True)
    ds = ray.data.read_parquet(
        files.paths,
        filesystem=files.filesystem,
        columns=needed_columns(spec),
        include_paths=True,
        shuffle=shuffle,
        partitioning=None,
        file_extensions=None,
    )
    prefix = files.display[0][: len(files.display[0]) - len(files.paths[0])]
    return ds.map_batches(
        prepare_block,
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        fn_kwargs={
            "path_prefix": prefix,
            "split": split,
            "split_key": spec.split.key if spec.split else None,
            "val": spec.split.validation if spec.split else 0.0,
            "test": spec.split.test if spec.split else 0.0,
        },
    )


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
