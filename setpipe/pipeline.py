"""The whole run on one page: spec → data → transforms → MLflow run → train → model → registry.

Re-running a job name: <workdir>/runs/<name>/state.json keeps the MLflow run id, the Ray
run name and the status of the last attempt. An attempt that did not finish (a crash,
or more worker failures than train.max_failures) is resumed by the next `setpipe run`:
the same MLflow run is reopened and training continues from its last checkpoint. After
a FINISHED attempt, a re-run is a retrain: a new MLflow run and a new Ray run
(<name>-<run id prefix>), so a finished model is never silently "resumed" into a no-op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from setpipe.spec.models import JobSpec


@dataclass
class RunSummary:
    run_id: str
    model_uri: str
    """models:/<name>/<version> of the version this run registered."""
    version: str
    decision: Any
    """setpipe.tracking.registry.GateDecision: whether the alias moved, and why."""
    metrics: dict[str, float]
    """The chosen epoch's val_* metrics, test_* metrics, and the run's last train_* ones."""
    artifacts: dict[str, str]
    """Where things are: tracking URI, Ray run directory (checkpoints), state file."""
    resumed_from_epoch: int = 0
    prediction: dict[str, Any] = field(default_factory=dict)
    """The champion's output on the first test set (loaded back from the registry)."""


def _state_path(job: JobSpec) -> Path:
    return Path(job.workdir).resolve() / "runs" / job.name / "state.json"


def _write_state(job: JobSpec, **state: str) -> None:
    path = _state_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1) + "\n")


def _previous_unfinished(job: JobSpec) -> dict[str, str] | None:
    path = _state_path(job)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return None if state.get("status") == "FINISHED" else state


def connect(address: str | None) -> None:
    """No address: a local Ray in this process (token auth left on); else join the cluster."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(address=address)
    # setpipe prints its own progress; Ray Data's would add a block of lines every 10 s.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _first_sets(datasets: dict[str, Any], count: int) -> Any:
    """The first ``count`` sets of the test split (else validation, else train) in file order.

    Ray Data hands blocks over as they finish unless told to keep order, so without it
    each run of a job would log a different input example and print the champion's
    prediction on a different set.
    """
    source = datasets["test"] or datasets["validation"] or datasets["train"]
    # A derived Dataset shares its parent's context; a deep copy keeps the ordering
    # to this small read instead of slowing the split's own passes.
    ordered = type(source).copy(source.limit(count), _deep_copy=True)
    ordered.context.execution_options.preserve_order = True
    return ordered.take_batch(count, batch_format="pyarrow")


def run(job: JobSpec, *, address: str | None = None, progress: bool = True) -> RunSummary:
    from setpipe.data import fit_transforms, read_dataset, table_to_batch
    from setpipe.tracking.mlflow_run import (
        close_run,
        log_epoch,
        log_model,
        open_run,
        tracking_uri_for,
    )
    from setpipe.tracking.pyfunc import load_set_model
    from setpipe.tracking.registry import register_and_gate
    from setpipe.train import fit

    connect(address or job.cluster.address)
    datasets = {split: read_dataset(job.data, split) for split in ("train", "validation", "test")}
    transforms = fit_transforms(job.data, datasets["train"])
    example = table_to_batch(_first_sets(datasets, 4), job.data)

    previous = _previous_unfinished(job)
    run_id = open_run(job, run_id=previous["run_id"] if previous else None)
    ray_run = previous["ray_run"] if previous else f"{job.name}-{run_id[:8]}"
    _write_state(job, run_id=run_id, ray_run=ray_run, status="RUNNING")
    storage = Path(job.workdir).resolve() / "ray_results"
    if progress:
        verb = "resuming" if previous else "starting"
        print(f"{verb} MLflow run {run_id} (Ray run {storage / ray_run})", flush=True)
    try:
        outcome = fit(
            job,
            run_id=run_id,
            storage_path=storage,
            run_name=ray_run,
            transforms=transforms,
            datasets=datasets,
            progress=progress,
        )
        last_epoch = outcome.history[-1]["epoch"]
        if outcome.test_metrics:
            log_epoch(run_id, job, last_epoch, outcome.test_metrics)
        logged_uri = log_model(
            run_id,
            job,
            outcome.state_dict,
            transforms,
            outcome.history,
            example,
            validation=outcome.val_predictions,
        )
        metric, _ = job.promotion
        decision = register_and_gate(job, run_id, logged_uri, outcome.val_metrics.get(metric))
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        close_run(run_id, status)
        _write_state(job, run_id=run_id, ray_run=ray_run, status=status)
        raise
    close_run(run_id, "FINISHED")
    _write_state(job, run_id=run_id, ray_run=ray_run, status="FINISHED")

    tracking_uri = tracking_uri_for(job)
    champion = load_set_model(f"models:/{job.model_name}@{job.tracking.alias}", tracking_uri)
    last_train = {k: v for k, v in outcome.history[-1].items() if k.startswith("train_")}
    return RunSummary(
        run_id=run_id,
        model_uri=f"models:/{decision.name}/{decision.version}",
        version=str(decision.version),
        decision=decision,
        metrics=last_train | outcome.val_metrics | outcome.test_metrics,
        artifacts={
            "tracking_uri": tracking_uri,
            "ray_run": str(storage / ray_run),
            "state": str(_state_path(job)),
            "logged_model": logged_uri,
        },
        resumed_from_epoch=outcome.start_epoch,
        prediction=champion.predict_batch(example.select([0]))[0],
    )
