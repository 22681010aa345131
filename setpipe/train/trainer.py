"""Ray Train setup: the job's train section becomes a TorchTrainer; fit() returns the outcome.

``train.workers == 0`` runs the same loop in the driver process (Ray Train V2 local mode,
``ScalingConfig(num_workers=0)``); those runs keep their own checkpoints under the run
directory, because local mode persists nothing. Otherwise Ray Train starts the workers,
splits every dataset among them, restarts them from the latest checkpoint after a
failure (``FailureConfig(max_failures)``), and a new fit() under the same Ray run name
and storage path resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from setpipe.errors import TrainError, setpipe_cause
from setpipe.spec.models import DataSpec, JobSpec
from setpipe.train import finetune
from setpipe.train.hooks import FailAtEpoch, LoopHooks
from setpipe.train.loop import EpochLog, LoopConfig, train_loop
from setpipe.train.resources import worker_resources


@dataclass
class TrainOutcome:
    """What a finished fit hands to tracking and the registry."""

    state_dict: dict[str, torch.Tensor]
    """Weights of the best validation epoch (by the monitored metric), else of the last."""
    history: list[dict[str, float]]
    """Per-epoch metrics (train_*, val_*, lr), every epoch of the run, resumed ones included."""
    best_epoch: int | None
    """0-based epoch whose weights are returned; None without validation."""
    test_metrics: dict[str, float] = field(default_factory=dict)
    start_epoch: int = 0
    """First epoch of the attempt that finished (> 0 when it resumed from a checkpoint)."""
    stopped_early: bool = False
    val_predictions: tuple[Any, Any] | None = None
    """(probabilities [N, C], targets [N]) of the returned weights on validation (classify)."""
    monitor: tuple[str, str] | None = None

    @property
    def val_metrics(self) -> dict[str, float]:
        """The returned weights' validation metrics."""
        if self.best_epoch is None:
            return {}
        chosen = next(h for h in self.history if h["epoch"] == self.best_epoch)
        return {k: v for k, v in chosen.items() if k.startswith("val_")}

    @property
    def skipped_rows(self) -> int:
        """Bad rows skipped in one pass over the training data (the last epoch's count)."""
        return int(self.history[-1]["train_skipped_rows"]) if self.history else 0


def monitored_metric(job: JobSpec, has_validation: bool) -> tuple[str, str] | None:
    """(metric, direction) that picks the best epoch: early stopping's, else the gate's.

    Both names are one of the task's validation metrics (``spec.models.TASK_METRICS``):
    the job validator checked them at load.
    """
    stop = job.train.early_stopping
    if not has_validation:
        if stop is not None:
            raise TrainError(
                f"{job.name}: train.early_stopping watches {stop.metric!r} but the job has no "
                "validation data; add data.validation or data.split, or remove early_stopping"
            )
        return None
    return (stop.metric, stop.direction) if stop else job.promotion


def estimate_steps(dataset: Any, spec: DataSpec, world: int) -> int:
    """Optimizer steps per epoch per rank, for the LR schedule's length.

    One pass over the element column's list lengths (cheap: offsets only). A batch closes
    when the next set would pass the element budget, so it holds about
    (budget - mean/2) / mean sets; a set over the budget is a batch alone.
    """
    from setpipe.data.reading import count_sets

    sets, elements = count_sets(dataset, spec)  # packed or not
    if sets == 0:
        raise TrainError("the training split is empty: no sets to train on")
    mean = elements / sets
    per_batch = max(1.0, (spec.batch.element_budget - mean / 2) / mean)
    return max(1, math.ceil(sets / max(1, world) / per_batch))


def loop_config(
    job: JobSpec,
    datasets: dict[str, Any],
    transforms: Any,
    run_dir: Path,
    progress: bool,
    init: tuple[str, str] | None = None,
) -> LoopConfig:
    """What every worker's loop needs, computed once here on the driver. ``init``: (the
    state-dict file model.init_from was resolved to, what it was resolved from)."""
    spec = job.train
    init_weights, init_source = init or (None, None)
    finetune.check(job, init_weights, init_source)  # before any worker starts
    has_validation = "validation" in datasets
    checkpoint_dir = None
    if spec.workers == 0:
        checkpoint_dir = run_dir / "local_checkpoints"
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    batches_per_epoch = estimate_steps(datasets["train"], job.data, max(1, spec.workers))
    steps_per_epoch = math.ceil(batches_per_epoch / spec.accumulate)  # optimizer steps
    return LoopConfig(
        job=job,
        transforms=transforms.to_dict(),
        total_steps=steps_per_epoch * spec.epochs,
        has_validation=has_validation,
        has_test="test" in datasets,
        monitor=monitored_metric(job, has_validation),
        in_process=spec.workers == 0,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        keep=spec.checkpoint.keep,
        progress=progress,
        init_weights=init_weights,
        init_source=init_source,
    )


def fit(
    job: JobSpec,
    *,
    storage_path: str | Path,
    run_name: str,
    transforms: Any,
    datasets: dict[str, Any],
    log_epoch: EpochLog | None = None,
    progress: bool = True,
    hooks: LoopHooks | None = None,
    init: tuple[str, str] | None = None,
    callbacks: list[Any] | None = None,
) -> TrainOutcome:
    """Train ``job`` on Ray Train; ``datasets`` maps train/validation/test to Ray Datasets.

    ``run_name`` under ``storage_path`` is the Ray run: the same name resumes its latest
    checkpoint. ``log_epoch(epoch, metrics)`` runs on rank 0 after each epoch (e.g. MLflow
    logging bound on the driver to its run and store: a worker's cwd and environment are
    not the driver's). ``hooks``: test callbacks (``setpipe.train.hooks``); without them,
    $SETPIPE_FAIL_AT_EPOCH sets the injected-failure hook. ``init``: (state-dict file,
    source) that model.init_from was resolved to (``setpipe.tracking.init_from``).
    ``callbacks``: Ray Train user callbacks for the run (a search passes Tune's reporter).
    """
    datasets = {k: v for k, v in datasets.items() if v is not None}
    if "train" not in datasets:
        raise TrainError(f"{job.name}: no training data (data.train read to nothing)")
    storage_path = Path(storage_path).resolve()
    loop = loop_config(job, datasets, transforms, storage_path / run_name, progress, init)
    config = {
        "config": loop.to_dict(),
        "log_epoch": log_epoch,
        "hooks": hooks or FailAtEpoch.from_env(),
    }
    trainer = _torch_trainer(job, config, storage_path, run_name, datasets, progress, callbacks)
    try:
        result = trainer.fit()
    except TrainError:
        raise
    except Exception as err:
        cause = setpipe_cause(err)
        if cause is not None:  # the job's or the data's fault: resuming would not help
            raise cause from None
        raise TrainError(
            f"{job.name}: training failed after {job.train.max_failures} allowed restarts: "
            f"{type(err).__name__}: {err}. Re-run the same job to resume from its last "
            f"checkpoint under {storage_path / run_name}"
        ) from err
    out = result.return_value
    if out is None:
        raise TrainError(f"{job.name}: training ended without an outcome from rank 0")
    return TrainOutcome(
        # Copied: arrays from a Ray worker arrive read-only (zero-copy deserialisation).
        state_dict={k: torch.tensor(v) for k, v in out["state_dict"].items()},
        history=out["history"],
        best_epoch=out["best_epoch"],
        test_metrics=out["test_metrics"],
        start_epoch=out["start_epoch"],
        stopped_early=out["stopped_early"],
        val_predictions=out["val_predictions"],
        monitor=loop.monitor,
    )


def _torch_trainer(
    job: JobSpec,
    config: dict[str, Any],
    storage_path: Path,
    run_name: str,
    datasets: dict[str, Any],
    progress: bool = True,
    callbacks: list[Any] | None = None,
) -> Any:  # ray.train.torch.TorchTrainer
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = job.train
    resources, note = worker_resources(
        spec.workers, dict(spec.resources_per_worker), ray.cluster_resources().get("CPU", 0.0)
    )
    if note and progress:
        print(f"note: {note}", flush=True)
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.use_gpu,
            resources_per_worker=resources or None,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            # Ray Train's own INFO lines (worker group started, each report and checkpoint)
            # would outnumber setpipe's progress lines; its warnings and errors still show.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
    )
