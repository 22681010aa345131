"""The MLflow run of a job: open (or reopen), per-epoch metrics, the model, close.

Everything goes through an ``MlflowClient`` on an explicit tracking URI, never through
``mlflow.start_run``'s process-global active run: ``log_epoch`` runs inside a Ray Train
worker, and a resumed attempt must continue the run it names, not whatever is active.

One run per job attempt chain: ``open_run(job, run_id)`` with the id kept by the pipeline
sets that run RUNNING again, so a restarted job continues its run instead of leaving a
RUNNING orphan behind and starting a second one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from setpipe._version import __version__
from setpipe.data.batch import SetBatch
from setpipe.errors import RegistryError
from setpipe.spec import dump_job
from setpipe.spec.models import JobSpec
from setpipe.tracking import lineage, plots
from setpipe.tracking.store import artifact_location, tracking_uri_for

MAX_PARAM_LENGTH = 6000
"""MLflow refuses longer param values (``MAX_PARAM_VAL_LENGTH`` in mlflow 3.17)."""
TRUNCATED = "...[truncated; the whole job is the run's job.yaml]"
SYSTEM_METRICS_SWITCH = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
MODEL_NAME = "model"
"""Name of the logged model inside the run (``models:/m-...`` is what callers keep)."""


@dataclass
class _OpenRun:
    tracking_uri: str
    monitor: Any | None  # mlflow SystemMetricsMonitor while it samples


_OPEN: dict[str, _OpenRun] = {}
_OPEN_LOCK = threading.Lock()


def _experiment_id(client: MlflowClient, job: JobSpec, tracking_uri: str) -> str:
    name = job.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another run
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise RegistryError(
            f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it (mlflow "
            f"experiments restore --experiment-id {experiment.experiment_id}) or set "
            "tracking.experiment to another name"
        )
    return experiment.experiment_id


# --------------------------------------------------------------------------- params, tags


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - len(TRUNCATED)] + TRUNCATED
    return text


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys; lists, numbers, booleans and null as JSON; long values cut.

    ``{"model": {"encoder": {"phi": [64, 64]}}}`` -> ``{"model.encoder.phi": "[64, 64]"}``.
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{dotted}."))
        else:
            out[dotted] = _param_value(value)
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git checkout the job runs from, or None outside one (or without git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


# --------------------------------------------------------------------------- the run


def _start_system_metrics(run_id: str, tracking_uri: str, resume: bool) -> Any | None:
    """mlflow's system metrics sampler (CPU, memory, disk, network; GPU when present).

    On unless $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is false; needs psutil.
    """
    if os.environ.get(SYSTEM_METRICS_SWITCH, "true").strip().lower() in ("false", "0", "no"):
        return None
    from setpipe._compat import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def open_run(job: JobSpec, run_id: str | None = None, *, tags: dict[str, str] | None = None) -> str:
    """A new MLflow run for ``job``, or, with ``run_id``, that same run reopened (RUNNING).

    A new run gets: params = the resolved job flattened; tags = setpipe version, git
    commit, dataset paths/file counts/digests; the resolved ``job.yaml`` artifact; one
    dataset input per split (context training/validation/test). ``tags``: more tags for a
    new run, set as it is created (a search's parent and trial id: ``mlflow.parentRunId``).
    """
    tracking_uri = tracking_uri_for(job)
    client = MlflowClient(tracking_uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(
                f"cannot resume MLflow run {run_id} of job {job.name!r}: no such run at "
                f"{tracking_uri}; remove {Path(job.workdir) / 'runs' / job.name / 'state.json'} "
                "to start a new run"
            ) from None
        client.update_run(run_id, status="RUNNING")
        attempts = int(run.data.tags.get("setpipe.attempts", "1")) + 1
        client.set_tag(run_id, "setpipe.attempts", str(attempts))
        monitor = _start_system_metrics(run_id, tracking_uri, resume=True)
        with _OPEN_LOCK:
            _OPEN[run_id] = _OpenRun(tracking_uri, monitor)
        return run_id

    experiment_id = _experiment_id(client, job, tracking_uri)
    splits = lineage.split_files(job.data)
    tags = {
        "setpipe.version": __version__,
        "setpipe.job": job.name,
        "setpipe.task": job.model.task_names,
        "setpipe.attempts": "1",
        **lineage.lineage_tags(job.data, splits),
        **(tags or {}),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit  # the tag MLflow's UI shows as the commit
    run = client.create_run(experiment_id, tags=tags, run_name=job.name)
    run_id = run.info.run_id
    # Named as its Ray run is (<job>-<run id prefix>, pipeline.run), so that a job's runs
    # can be told apart in the UI and each found beside its checkpoints.
    client.update_run(run_id, name=f"{job.name}-{run_id[:8]}")
    params = [Param(k, v) for k, v in flatten_params(job.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params a call
        client.log_batch(run_id, params=params[start : start + 100])
    client.log_text(run_id, dump_job(job), "job.yaml")
    inputs = lineage.dataset_inputs(job.name, job.data, splits)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    monitor = _start_system_metrics(run_id, tracking_uri, resume=False)
    with _OPEN_LOCK:
        _OPEN[run_id] = _OpenRun(tracking_uri, monitor)
    return run_id


def log_epoch(run_id: str, tracking_uri: str, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics at step ``epoch + 1`` (call on rank 0 only; safe in a Ray worker).

    ``epoch`` counts from 0, as the training loop does; wherever a user sees an epoch (the
    CLI's lines, MLflow steps, ``history.json``, the loss plot) the first one is epoch 1.

    ``tracking_uri`` is resolved on the driver (``tracking_uri_for``) and handed over: a
    worker resolving it from the job would see its own cwd (Ray Train runs workers in a
    directory of their own) and its own $MLFLOW_TRACKING_URI, so another store. The
    ``epoch`` key itself is the step, not a metric; None values are left out.
    """
    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    rows = [
        Metric(key, float(value), now, int(epoch) + 1)
        for key, value in metrics.items()
        if key != "epoch" and value is not None
    ]
    if rows:
        client.log_batch(run_id, metrics=rows)


def example_request(job: JobSpec, raw: SetBatch, max_sets: int = 2) -> list[dict[str, Any]]:
    """The pyfunc request for the first sets of a raw batch (the model's input example)."""
    names = job.data.elements.feature_names
    out = []
    for b in range(min(max_sets, raw.num_sets)):
        lo, hi = int(raw.offsets[b]), int(raw.offsets[b + 1])
        values = raw.values[lo:hi].double()
        item: dict[str, Any] = {
            "features": {name: values[:, f].tolist() for f, name in enumerate(names)}
        }
        if job.data.context and raw.context is not None:
            item["context"] = {
                name: float(raw.context[b, c]) for c, name in enumerate(job.data.context)
            }
        out.append(item)
    return out


def log_model(
    run_id: str,
    job: JobSpec,
    state_dict: dict[str, torch.Tensor],
    transforms: Any,
    history: list[dict[str, Any]],
    example: SetBatch | None,
    *,
    validation: tuple[Any, Any] | None = None,
) -> str:
    """Log the pyfunc model and the run's plots; return the logged model URI (``models:/m-...``).

    ``transforms`` is the fitted ``FittedTransforms``; ``example`` a RAW batch whose first
    sets become the input example; ``validation`` optional ``(probabilities [N, C],
    targets [N])`` of the chosen weights, drawn as the ROC curve (classify) and logged as its
    table ``plots/roc.json`` (``plots.roc_table``).
    """
    from setpipe.tracking.pyfunc import log_pyfunc

    tracking_uri = _OPEN[run_id].tracking_uri if run_id in _OPEN else tracking_uri_for(job)
    client = MlflowClient(tracking_uri)
    input_example = example_request(job, example) if example is not None else None
    model_uri = log_pyfunc(
        run_id, tracking_uri, job, state_dict, transforms.to_dict(), input_example
    )
    client.set_tag(run_id, "setpipe.model_uri", model_uri)
    shown = [{**row, "epoch": int(row["epoch"]) + 1} if "epoch" in row else row for row in history]
    client.log_dict(run_id, _json_safe(shown), "history.json")  # epochs from 1, as log_epoch
    figure = plots.loss_curves(shown)
    if figure is not None:
        client.log_figure(run_id, figure, "plots/loss.png")
    if validation is not None and job.model.task == "classify":
        figure = plots.roc_curve(*validation)
        if figure is not None:
            client.log_figure(run_id, figure, "plots/roc.png")
        curves = plots.roc_table(*validation, background_class=job.model.background_class)
        if curves:
            client.log_dict(run_id, _json_safe(curves), "plots/roc.json")
    return model_uri


def _json_safe(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN/inf as null (JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        for row in history
    ]


def close_run(
    run_id: str,
    status: Literal["FINISHED", "FAILED", "KILLED"],
    *,
    tracking_uri: str | None = None,
) -> None:
    """End the run with ``status`` and stop its system metrics sampler.

    The tracking URI is the one ``open_run`` used in this process, else ``tracking_uri``.
    """
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise RegistryError(f"close_run status {status!r}: expected FINISHED, FAILED or KILLED")
    with _OPEN_LOCK:
        opened = _OPEN.pop(run_id, None)
    uri = opened.tracking_uri if opened else tracking_uri
    if uri is None:
        raise RegistryError(
            f"close_run({run_id!r}): this process did not open the run; pass tracking_uri="
        )
    if opened is not None and opened.monitor is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened.monitor.finish()
    MlflowClient(uri).set_terminated(run_id, status=status)


__all__ = [
    "close_run",
    "flatten_params",
    "log_epoch",
    "log_model",
    "open_run",
]
