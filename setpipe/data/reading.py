"""Read a job's sets with Ray Data: expand the sources, check every schema, then read.

``read_dataset`` returns a lazy ``ray.data.Dataset`` of Arrow rows with only the
columns the job names plus, from the reader, the file each row came from, its index in
that file and what is wrong with it if anything (``layout.READER_COLUMNS``), through
setpipe's own Ray Data source (``_read_task``: one read task per file's row groups, none
of ``read_parquet``'s per-pass listing, the bad-row checks run in the read tasks).
Training files are read in a shuffled file order drawn from ``data.shuffle.seed`` and
Ray's execution index (each epoch's pass), so the order differs between epochs and
repeats between runs. With ``data.split`` the validation and test datasets are the train
files filtered by a stable key hash.

``check_labels`` reads only the label columns of every split, before training, so that
a bad label in the test split stops the run in seconds rather than after training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setpipe.data._read_task import ReadUnit, SetParquetDatasource, SplitFilter, units_of
from setpipe.data.bad_rows import (
    LabelRule,
    RowCheck,
    check_rows,
    drop_problem_rows,
    first_reader_error,
    label_columns,
)
from setpipe.data.convert import reweight_values, table_to_batch
from setpipe.data.layout import PATH_COLUMN, ROW_COLUMN, check_files, needed_columns
from setpipe.data.packing import block_sizes
from setpipe.data.sources import Files, expand
from setpipe.data.transforms import FittedTransforms, fit_on_batches
from setpipe.data.weights import WeightFit
from setpipe.spec.models import DataSpec, ModelSpec

if TYPE_CHECKING:
    import ray.data

Split = Literal["train", "validation", "test"]


def source_of(spec: DataSpec, split: Split) -> str | list[str] | None:
    if split == "train" or spec.split is not None:
        return spec.train
    return spec.validation if split == "validation" else spec.test


def _units(files: Files, spec: DataSpec) -> list[ReadUnit]:
    """Every file's read units, after its schema is checked."""
    footers = check_files(files, spec)
    return [
        unit
        for path, display, footer in zip(files.paths, files.display, footers, strict=True)
        for unit in units_of(path, display, footer)
    ]


def read_dataset(
    spec: DataSpec, split: Split, *, model: ModelSpec | None = None, packed: bool = False
) -> ray.data.Dataset | None:
    """The job's ``split`` as a Ray Dataset of Arrow rows; None when it has no source.

    Every file's schema is checked (footers only) before any row is read. The read tasks
    check every row (``bad_rows``), labels against ``model``'s task when it is given.
    ``packed``: the read tasks also convert the rows (``packing``): each block holds the
    sets' features as one float32 ``[E, F]`` buffer, which ``table_to_batch`` and
    ``iter_set_batches`` view without converting; the job's raw columns are not kept
    (training reads this way; ``inspect`` and the benches that count raw lists do not).
    """
    import ray.data

    source = source_of(spec, split)
    if source is None:
        return None
    files = expand(source)
    units = _units(files, spec)
    split_filter = SplitFilter(split, spec.split) if spec.split is not None else None
    seed = spec.shuffle.seed if split == "train" and spec.shuffle.files else None
    check = RowCheck(spec, None if model is None else LabelRule.of(model))
    datasource = SetParquetDatasource(
        files.filesystem, units, needed_columns(spec), split_filter, seed, check, packed=packed
    )
    # One block per unit: Ray would otherwise cut each task's output into many small ones.
    return ray.data.read_datasource(datasource, override_num_blocks=max(1, len(units)))


def check_labels(spec: DataSpec, model: ModelSpec) -> None:
    """Under ``on_bad_row: error``, the first label that does not fit ``model``'s task in any
    split, as a DataError naming its file and row; before training, not after it.

    Reads only the label columns (and, for a relevance list, the set sizes' column) of
    every file of every split in Ray read tasks, which hand back one bad row per row group
    at most. Under ``skip`` it reads nothing: the passes drop and count those rows.
    """
    import ray.data

    if spec.on_bad_row != "error" or not label_columns(spec):
        return
    sources = [spec.train] if spec.split is not None else [spec.train, spec.validation, spec.test]
    check = RowCheck(spec, LabelRule.of(model), labels_only=True)
    order: dict[str, int] = {}  # file -> its place among all the splits' files
    datasets = []
    for source in (s for s in sources if s is not None):
        files = expand(source)
        for display in files.display:
            order.setdefault(display, len(order))
        units = _units(files, spec)
        datasource = SetParquetDatasource(
            files.filesystem, units, label_columns(spec), check=check, only_bad=True
        )
        datasets.append(ray.data.read_datasource(datasource, override_num_blocks=len(units)))
    every_split = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    found = [t for t in iter_tables(every_split) if t.num_rows]  # type: ignore[attr-defined]
    if not found:
        return
    bad = pa.concat_tables(found)
    rows = bad.column(ROW_COLUMN).to_numpy(zero_copy_only=False)
    # A row group that could not be read (null row) first, then in file and row order.
    files_at = np.array([order[p] for p in bad.column(PATH_COLUMN).to_pylist()])
    first = np.lexsort((np.nan_to_num(rows, nan=-1.0), files_at, ~np.isnan(rows)))[0]
    raise first_reader_error(bad.slice(int(first), 1), np.ones(1, dtype=bool))


def _count(table: pa.Table, spec: DataSpec) -> pa.Table:
    sizes = block_sizes(table, spec)
    return pa.table({"sets": [len(sizes)], "elements": [int(sizes.sum())]})


def count_sets(dataset: ray.data.Dataset, spec: DataSpec) -> tuple[int, int]:
    """(sets, elements) of a Dataset from ``read_dataset``, packed or not. Counted in the
    read tasks: only two numbers per block reach the driver."""
    counts = dataset.map_batches(
        _count, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None
    )
    sets = elements = 0
    for table in counts.iter_batches(batch_size=None, batch_format="pyarrow"):
        sets += int(pc.sum(table.column("sets")).as_py() or 0)
        elements += int(pc.sum(table.column("elements")).as_py() or 0)
    return sets, elements


def iter_tables(source: ray.data.Dataset | ray.data.DataIterator) -> object:
    """Arrow blocks of a Dataset or a DataIterator (a Ray Train shard), as they come."""
    return source.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def fit_transforms(
    spec: DataSpec, dataset: ray.data.Dataset | None, *, model: ModelSpec | None = None
) -> FittedTransforms:
    """The job's transforms with standardize fitted in one pass over ``dataset`` (training);
    with ``model``, the set weights too (``model.class_weights``, ``data.reweight``: class
    counts and histograms filled in the same pass)."""
    transforms = FittedTransforms.from_spec(spec)
    weights = WeightFit(spec, model) if model and WeightFit.needed(spec, model) else None
    if weights is not None and not weights.needs_pass:
        transforms.weights = weights.result()  # explicit class weights: nothing to count
        weights = None
    if (not transforms.to_fit and weights is None) or dataset is None:
        return transforms

    def raw_batches():  # type: ignore[no-untyped-def]
        for table in iter_tables(dataset):  # type: ignore[attr-defined]
            table, _ = check_rows(table, spec, "the training data")
            if not table.num_rows:
                continue
            batch = table_to_batch(table, spec)
            # Fitted on the sets training will keep: none that a transform makes non-finite.
            problem = transforms.nonfinite_rows(batch)
            if problem is not None:
                keep = drop_problem_rows(table, problem, spec, "the training data")
                batch = batch.select(np.flatnonzero(keep).tolist())
                table = table.filter(pa.array(keep))
            if batch.num_sets and weights is not None:
                weights.add(batch, reweight_values(table, spec))
            if batch.num_sets:
                yield batch

    if not transforms.to_fit:
        for _ in raw_batches():  # the pass only counts classes and fills histograms
            pass
        fitted = transforms
    else:
        fitted = fit_on_batches(transforms, raw_batches())
    if weights is not None:
        fitted.weights = weights.result()
    return fitted
