"""Batch inference with Ray Data: a registered model over Parquet sets, predictions to Parquet.

``map_batches`` with a callable class: each actor loads the pinned model version once
and runs it over Arrow batches, packed into SetBatches of at most ``batch_elements``
elements (a set bigger than that goes alone and the model chunks it). The row key
columns (``job.data.key`` and any ``keep`` columns) ride along unchanged, so every
output row can be joined back to its input row.

Output columns: the keys, then by task
- classify: ``prob_0`` .. ``prob_{C-1}`` (float64) and ``label`` (int64, the argmax);
- regress: ``value`` (float64);
- rank: ``scores`` (list<float64>, one per element, in element order).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from setpipe.data.batching import budget_bounds
from setpipe.data.layout import element_columns
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
    return job.data.model_copy(
        update={
            "train": source,
            "validation": None,
            "test": None,
            "split": None,
            "label": None,
            "element_label": None,
        }
    )


def output_schema_names(job: JobSpec) -> list[str]:
    task = job.model.task
    if task == "classify":
        return [f"prob_{c}" for c in range(job.model.num_classes or 0)] + ["label"]
    return ["value"] if task == "regress" else ["scores"]


def prediction_columns(job: JobSpec, outputs: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Per-set outputs of ``LoadedSetModel.predict_batch`` as Arrow columns."""
    task = job.model.task
    if task == "classify":
        probs = np.asarray([o["probabilities"] for o in outputs], dtype=np.float64)
        probs = probs.reshape(len(outputs), job.model.num_classes or 0)
        columns = {f"prob_{c}": pa.array(probs[:, c]) for c in range(probs.shape[1])}
        columns["label"] = pa.array(probs.argmax(axis=1).astype(np.int64))
        return columns
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
) -> PredictSummary:
    """Predict every row of the Parquet ``source`` with ``model_uri``; write Parquet to ``output``.

    The alias is resolved once, here, so every actor runs the same version.
    """
    import ray.data

    from setpipe.tracking.pyfunc import load_set_model
    from setpipe.tracking.store import resolve

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ServeError(f"--output {out}: not empty; give a new or empty directory")
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
        ds = ray.data.read_parquet(source, columns=wanted)
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
    out.mkdir(parents=True, exist_ok=True)
    try:
        predicted.write_parquet(str(out))
    except Exception as err:
        cause = setpipe_cause(err)
        if cause is None:
            raise
        for partial in out.glob("*.parquet"):  # never leave half the predictions behind
            partial.unlink()
        raise cause from None
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(out.glob("*.parquet")))
    skipped = ds.count() - rows
    return PredictSummary(name, str(version), rows, skipped, str(out))
