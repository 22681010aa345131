"""Batch inference with Ray Data: a registered model over Parquet sets, predictions to Parquet.

``map_batches`` with a callable class: each actor loads the pinned model version once
and runs it over Arrow batches, packed into SetBatches of at most ``batch_elements``
elements (a set bigger than that goes alone and the model chunks it). The row key
columns (``job.data.key`` and any ``keep`` columns) ride along unchanged, so every
output row can be joined back to its input row.

Output columns: the keys, then by task
- classify: ``prob_0`` .. ``prob_{C-1}`` (float64) and ``label`` (int64, the argmax);
- regress: ``value`` (float64);
- rank: ``scores`` (list<float64>, one per element, in element order);
- several heads (``model.heads``): each head's columns as above, prefixed ``<head>_``
  (``qg_prob_0``, ``qg_label``, ``mass_value``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from setpipe.data.batching import budget_bounds
from setpipe.data.layout import element_columns
from setpipe.data.sources import Files, expand, no_bucket, remote_problem
from setpipe.errors import DataError, ServeError, setpipe_cause
from setpipe.spec.models import DataSpec, JobSpec
from setpipe.tracking.pyfunc import NON_FINITE_HINT, NonFiniteOutput


@dataclass(frozen=True)
class PredictSummary:
    name: str
    version: str
    rows: int
    skipped_rows: int
    output: str


def input_spec(job: JobSpec, source: str) -> DataSpec:
    """The job's data layout reading ``source``, with no labels (inputs need none)."""
    spec = job.data.model_copy(
        update={
            "train": source,
            "validation": None,
            "test": None,
            "split": None,
            "label": None,
            "element_label": None,
        }
    )
    spec.set_head_targets([])  # the heads' targets are labels too (model.heads)
    return spec


def output_schema_names(job: JobSpec) -> list[str]:
    if job.model.heads is not None:
        return [
            f"{h.name}_{name}"
            for h in job.model.heads
            for name in _task_columns(h.task, h.num_classes)
        ]
    return _task_columns(str(job.model.task), job.model.num_classes)


def _task_columns(task: str, num_classes: int | None) -> list[str]:
    if task == "classify":
        return [f"prob_{c}" for c in range(num_classes or 0)] + ["label"]
    if task == "pretrain_masked":
        return ["embedding"]
    return ["value"] if task == "regress" else ["scores"]


def prediction_columns(job: JobSpec, outputs: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Per-set outputs of ``LoadedSetModel.predict_batch`` as Arrow columns."""
    if job.model.heads is not None:
        return {
            f"{h.name}_{name}": column
            for h in job.model.heads
            for name, column in _task_arrays(
                h.task, h.num_classes, [o[h.name] for o in outputs]
            ).items()
        }
    return _task_arrays(str(job.model.task), job.model.num_classes, outputs)


def _task_arrays(
    task: str, num_classes: int | None, outputs: list[dict[str, Any]]
) -> dict[str, pa.Array]:
    if task == "classify":
        probs = np.asarray([o["probabilities"] for o in outputs], dtype=np.float64)
        probs = probs.reshape(len(outputs), num_classes or 0)
        columns = {f"prob_{c}": pa.array(probs[:, c]) for c in range(probs.shape[1])}
        columns["label"] = pa.array(probs.argmax(axis=1).astype(np.int64))
        return columns
    if task == "pretrain_masked":
        rows = [list(o["embedding"]) for o in outputs]
        return {"embedding": pa.array(rows, type=pa.list_(pa.float64()))}
    if task == "regress":
        return {"value": pa.array([float(o["value"]) for o in outputs], type=pa.float64())}
    return {"scores": pa.array([list(o["scores"]) for o in outputs], type=pa.list_(pa.float64()))}


class Predictor:
    """The Ray Data callable: one loaded model per actor, Arrow table in, predictions out."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str | None,
        source: str,
        batch_elements: int | None,
        keep: Sequence[str],
    ) -> None:
        from setpipe.tracking.pyfunc import load_set_model

        self.loaded = load_set_model(model_uri, tracking_uri)
        self.spec = input_spec(self.loaded.job, source)
        self.budget = batch_elements or self.spec.batch.element_budget
        self.keep = list(keep)
        self.source = source

    def __call__(self, table: pa.Table) -> pa.Table:
        from setpipe.data import check_rows, table_to_batch

        table, _ = check_rows(table, self.spec, self.source)
        sizes = pc.list_value_length(table.column(element_columns(self.spec)[0]))
        sizes = sizes.to_numpy(zero_copy_only=False)
        outputs: list[dict[str, Any]] = []
        bounds = budget_bounds(sizes, self.budget).tolist()
        for start, stop in itertools.pairwise(bounds):
            batch = table_to_batch(table.slice(start, stop - start), self.spec)
            try:
                outputs.extend(self.loaded.predict_batch(batch))
            except NonFiniteOutput as err:
                raise self._non_finite(table, start, err) from None
        columns = {name: table.column(name) for name in self.keep}
        columns.update(prediction_columns(self.loaded.job, outputs))
        return pa.table(columns)

    def _non_finite(self, table: pa.Table, start: int, err: NonFiniteOutput) -> ServeError:
        rows = [start + i for i in err.sets]
        key = self.spec.key
        if key is not None and key in table.column_names:
            values = table.column(key).take(rows[:5]).to_pylist()
            named = ", ".join(f"{key}={v}" for v in values)
        else:
            named = f"{len(rows)} row(s) (add the job's data.key to name them)"
        return ServeError(
            f"{self.source}: the model's output is not finite (NaN or infinite) for {named}; "
            f"no predictions were written. Likely cause: {NON_FINITE_HINT}"
        )


@dataclass(frozen=True)
class OutputLocation:
    """Where ``--output`` is, resolved once on the driver."""

    filesystem: pafs.FileSystem
    path: str
    """The directory on ``filesystem``: absolute for a local path."""
    shown: str
    """As messages and the summary name it: the absolute path, or the URI."""


def output_location(output: str | Path) -> OutputLocation:
    """``--output`` resolved HERE: Ray's write tasks run in the workers' own working
    directory (on a cluster, the head's or a worker node's), so a relative path handed to
    them lands there, not where the user stands. A URI (s3://, gs://) is left as given."""
    text = str(output)
    if "://" in text and not text.startswith("file://"):
        filesystem, path = pafs.FileSystem.from_uri(text)
        return OutputLocation(filesystem, path, text)
    local = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    return OutputLocation(pafs.LocalFileSystem(), local, local)


def check_output(location: OutputLocation) -> None:
    """ServeError unless the output directory is missing or empty (nothing is replaced), and,
    on an object store, its bucket exists and the store takes the credentials."""
    remote = not isinstance(location.filesystem, pafs.LocalFileSystem)
    try:
        info = location.filesystem.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound and remote:
            bucket = location.path.split("/", 1)[0]
            if location.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise ServeError(f"--output {no_bucket(location.shown)}")
    except OSError as err:  # the object store refused or failed the request
        problem = remote_problem(location.shown, err) or f"{location.shown}: {err}"
        raise ServeError(f"--output {problem}") from None
    if info.type == pafs.FileType.File:
        raise ServeError(
            f"--output {location.shown}: is a file; give a directory (new or empty) for the "
            "prediction Parquet files"
        )
    if info.type == pafs.FileType.Directory and location.filesystem.get_file_info(
        pafs.FileSelector(location.path)
    ):
        raise ServeError(f"--output {location.shown}: not empty; give a new or empty directory")


def preflight(source: str, output: str | Path) -> tuple[Files, OutputLocation]:
    """The input's files and the checked output, before any Ray or model work: a missing
    path or bucket, refused credentials or a non-empty output fail here in a second."""
    files = expand(source)
    out = output_location(output)
    check_output(out)
    return files, out


def check_written(location: OutputLocation, predicted: int, read: int) -> int:
    """The rows of the Parquet files this machine finds at ``location``; ServeError unless
    they are the ``predicted`` rows (of ``read`` rows read) that Ray's write tasks wrote."""
    files = [
        info.path
        for info in location.filesystem.get_file_info(
            pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
        )
        if info.type == pafs.FileType.File and info.path.endswith(".parquet")
    ]
    rows = 0
    for path in files:
        with location.filesystem.open_input_file(path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    if rows != predicted:
        raise ServeError(
            f"--output {location.shown}: {rows} prediction rows are there after writing, but "
            f"the model predicted {predicted} (of {read} rows read): the Ray workers wrote to "
            "a disk this machine does not see. On a cluster give --output a directory every "
            "node shares, or an s3:// / gs:// URI"
        )
    return rows


def predict_dataset(
    model_uri: str,
    source: str,
    output: str | Path,
    *,
    tracking_uri: str | None = None,
    batch_elements: int | None = None,
    keep: Sequence[str] = (),
    concurrency: int = 1,
    num_cpus: float = 1.0,
    checked: tuple[Files, OutputLocation] | None = None,
) -> PredictSummary:
    """Predict every row of the Parquet ``source`` with ``model_uri``; write Parquet to ``output``.

    The alias is resolved once, here, so every actor runs the same version. ``output`` is
    resolved and checked here too (``checked``: ``preflight(source, output)`` when the
    caller ran it already, before starting Ray), and what was written is counted here
    against what the model predicted, so predictions that went to another machine's disk
    are an error.
    """
    import ray.data

    from setpipe.tracking.pyfunc import load_set_model
    from setpipe.tracking.store import resolve

    files, out = checked or preflight(source, output)
    name, version = resolve(model_uri, tracking_uri)
    pinned = f"models:/{name}/{version}"
    job = load_set_model(pinned, tracking_uri).job
    spec = input_spec(job, source)
    keys = [spec.key] if spec.key else []
    keep_columns = list(dict.fromkeys([*keys, *keep]))
    clash = [k for k in keep_columns if k in output_schema_names(job)]
    if clash:
        raise ServeError(
            f"--keep {clash[0]}: the output already has a prediction column of that name; "
            "rename the input column or leave it out"
        )
    wanted = list(dict.fromkeys([*element_columns(spec), *spec.context, *keep_columns]))
    try:
        ds = ray.data.read_parquet(files.paths, filesystem=files.filesystem, columns=wanted)
        ds.schema()  # opens the first file: a missing column fails here, before the actors start
    except (
        FileNotFoundError,
        OSError,
        ValueError,
        pa.ArrowInvalid,
        ray.exceptions.RayError,
    ) as err:
        raise DataError(
            f"{source}: cannot read the columns {', '.join(wanted)} ({err}); the input needs the "
            "job's element and context columns and every --keep column"
        ) from None
    predicted = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "model_uri": pinned,
            "tracking_uri": tracking_uri,
            "source": source,
            "batch_elements": batch_elements,
            "keep": keep_columns,
        },
        batch_format="pyarrow",
        # Rows per call; the callable packs them by element budget (Ray Data counts rows).
        batch_size=1024,
        concurrency=concurrency,
        num_cpus=num_cpus,
    )
    try:
        # Predictions (keys and a few numbers per set) are held in the object store, so a
        # failing model writes nothing and the rows predicted are counted by Ray, not by
        # listing the output: the two are compared after the write.
        predicted = predicted.materialize()
    except Exception as err:
        cause = setpipe_cause(err)
        if cause is None:
            raise
        raise cause from None
    read, produced = ds.count(), predicted.count()
    out.filesystem.create_dir(out.path, recursive=True)
    predicted.write_parquet(out.path, filesystem=out.filesystem)
    rows = check_written(out, produced, read)
    return PredictSummary(name, str(version), rows, read - produced, out.shown)
