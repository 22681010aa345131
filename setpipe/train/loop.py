"""The per-worker training loop, run by every Ray Train worker (or in-process).

``train_loop`` reads top to bottom: build this rank's model and optimizer, restore the
last checkpoint, then per epoch: train on this rank's shard (all ranks stop together),
validate on all ranks' predictions, choose the best epoch or stop early, log from rank 0,
checkpoint; after the last epoch, score the chosen weights on the test split and return
the outcome from rank 0.

Ray Train hands the loop one dict, ``train_loop_config``: ``LoopConfig.to_dict()`` under
"config" (built once by ``fit`` on the driver), the epoch logger under "log_epoch" and
the test hooks under "hooks" (``setpipe.train.hooks``; never set by a job).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from setpipe.data import BatchStats, equalize_batches, iter_set_batches, torch_all_reduce_min
from setpipe.data.batch import SetBatch
from setpipe.errors import TrainError
from setpipe.spec import dump_job
from setpipe.spec.models import JobSpec
from setpipe.train import checkpoint as ckpt
from setpipe.train.hooks import Attempt, LoopHooks
from setpipe.train.metrics import Evaluation
from setpipe.train.worker import Worker, build_worker, check_loss, evaluate, train_step

EpochLog = Callable[[int, dict[str, float]], None]
"""Called on rank 0 after each epoch with (0-based epoch, metrics), e.g. to log to MLflow.
It travels to the workers, so it must pickle: a module-level function or a partial of one."""


@dataclass(frozen=True)
class LoopConfig:
    """What every worker's loop needs besides its data shards: built once by ``fit``."""

    job: JobSpec
    transforms: dict[str, Any]
    """The fitted feature transforms, ``FittedTransforms.to_dict()``."""
    total_steps: int
    """Optimizer steps per rank over all epochs (an estimate): the LR schedule's length."""
    has_validation: bool
    has_test: bool
    monitor: tuple[str, str] | None
    """(metric, direction) that picks the best epoch and stops early; None: no validation."""
    in_process: bool
    """train.workers == 0: the loop runs in the driver process (Ray Train's local mode)."""
    checkpoint_dir: str | None
    """In-process runs keep their checkpoints here (local mode persists nothing); else None."""
    keep: int
    """Checkpoints kept in ``checkpoint_dir`` (Ray keeps the others' by its CheckpointConfig)."""
    progress: bool
    """Rank 0 prints a line per epoch and a batch line at most every 10 s."""
    init_weights: str | None = None
    """model.init_from resolved on the driver to a state-dict file every worker can read
    (under the Ray run directory); None: no init_from."""
    init_source: str | None = None
    """What ``init_weights`` was resolved from (models:/NAME/VERSION, a path), for messages."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``train_loop_config`` (the job as JSON)."""
        return asdict(self) | {"job": self.job.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopConfig:
        return cls(**data | {"job": JobSpec.model_validate(data["job"])})


@dataclass
class LoopState:
    """Where the run stands; every checkpoint saves it as loop.json (with the RNG states)."""

    epoch: int = -1
    """The last finished epoch (-1: none yet)."""
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    """One row of metrics per finished epoch (train_*, val_*, lr)."""
    best: float | None = None
    """The monitored metric's best value so far."""
    best_epoch: int | None = None
    since_best: int = 0
    """Epochs since the best one: early stopping's patience counter."""
    stopped_early: bool = False


@dataclass
class Best:
    """The best epoch's weights and, for the ROC plot, its validation outputs (classify).

    Not in loop.json: the weights are best_weights.pt, and the outputs are computed again
    at the end after a resume.
    """

    weights: dict[str, torch.Tensor] | None = None
    predictions: tuple[np.ndarray, np.ndarray] | None = None


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """The Ray Train per-worker function. Returns the outcome on rank 0, None elsewhere."""
    loop = LoopConfig.from_dict(config["config"])
    log_epoch: EpochLog | None = config.get("log_epoch")
    hooks: LoopHooks = config.get("hooks") or LoopHooks()
    worker = build_worker(
        loop.job, loop.transforms, loop.total_steps, loop.init_weights, loop.init_source
    )
    state, best = restore(loop, worker)
    attempt = Attempt(worker.rank, worker.world, state.epoch + 1, loop.in_process)
    progress = Progress(loop, worker.rank)
    progress.start(attempt.start_epoch)

    for epoch in range(attempt.start_epoch, loop.job.train.epochs):
        if state.stopped_early:
            break
        metrics, seconds = train_epoch(worker, state, epoch, hooks, attempt, progress)
        validation = evaluate(worker, "validation") if loop.has_validation else None
        if validation is not None:
            metrics |= validation.compute("val") | validation.counts("val")
        note = choose_best(loop, worker, state, best, epoch, metrics, validation)
        state.history.append(metrics)
        state.epoch = epoch
        if worker.rank == 0 and log_epoch is not None:
            log_epoch(epoch, metrics)
        note += report(loop, worker, state, best, metrics)
        progress.epoch(epoch, metrics, seconds, note)
    return finish(loop, worker, state, best, attempt.start_epoch)


def train_epoch(
    worker: Worker,
    state: LoopState,
    epoch: int,
    hooks: LoopHooks,
    attempt: Attempt,
    progress: Progress,
) -> tuple[dict[str, float], float]:
    """One pass over this rank's training shard: (the epoch's train metrics over all ranks,
    its seconds)."""
    import ray.train

    job = worker.job
    # Per-(seed, epoch, rank) draws: a resumed epoch draws what an uninterrupted one would.
    seed = job.train.seed * 1_000_003 + epoch * 1009 + worker.rank
    torch.manual_seed(seed)
    worker.generator.manual_seed(seed + 7)
    stats = BatchStats()
    shard = ray.train.get_dataset_shard("train")
    # Every rank stops at the step where the first runs out (one MIN all-reduce per
    # step); the others drain their rest, so no rank waits in a collective forever.
    batches = equalize_batches(
        iter_set_batches(
            shard, job.data, worker.transforms, epoch=epoch, shuffle=True, stats=stats
        ),
        torch_all_reduce_min(worker.device),
    )
    loss_sum, sets, elements = 0.0, 0, 0
    started = time.monotonic()
    step = 0
    # One optimizer step per train.accumulate batches; every rank sees as many batches
    # (equalize_batches), so every rank steps at the same batches, the last group too.
    for group in _groups(batches, job.train.accumulate):
        group = [raw.to(worker.device, non_blocking=True) for raw in group]
        losses = train_step(worker, group)
        state.global_step += 1
        for batch, value in zip(group, losses, strict=True):
            step += 1
            loss = float(value)
            check_loss(worker, loss, batch, epoch, step)
            loss_sum += loss * batch.num_sets
            sets += batch.num_sets
            elements += batch.num_elements
            progress.batch(epoch, step, loss_sum / sets, sets * worker.world, started)
            hooks.on_step(attempt, epoch, step, batch, worker.model)
    seconds = time.monotonic() - started
    hooks.on_epoch_end(attempt, epoch, worker.model)

    loss_sum, sets, elements, skipped = worker.sum_across(
        [loss_sum, sets, elements, stats.skipped_rows]
    )
    metrics = {
        "epoch": epoch,
        "train_loss": loss_sum / sets if sets else math.nan,
        "train_sets_per_s": sets / seconds,
        "train_elements_per_s": elements / seconds,
        "train_skipped_rows": skipped,
        "lr": worker.scheduler.get_last_lr()[0],
    }
    return metrics, seconds


def choose_best(
    loop: LoopConfig,
    worker: Worker,
    state: LoopState,
    best: Best,
    epoch: int,
    metrics: dict[str, float],
    validation: Evaluation | None,
) -> str:
    """Keep this epoch's weights if its monitored metric is the best yet, else count it
    towards early stopping. Every rank decides alike (they all hold the same metrics).
    Returns the note for the progress line."""
    if loop.monitor is None:
        return ""
    monitor, direction = loop.monitor
    value = metrics.get(monitor, math.nan)
    if not math.isfinite(value):
        raise TrainError(
            f"validation metric {monitor!r} is {value} in epoch {epoch + 1}; the metrics "
            f"are {sorted(metrics)}"
        )
    stop = loop.job.train.early_stopping
    delta = stop.min_delta if stop else 0.0
    better = state.best is None or (
        value < state.best - delta if direction == "minimize" else value > state.best + delta
    )
    if better:
        state.best, state.best_epoch, state.since_best = value, epoch, 0
        best.weights = worker.chosen_weights(copy=True)
        best.predictions = validation.predictions() if validation is not None else None
        return f"  [best {monitor}]"
    state.since_best += 1
    if stop is not None and state.since_best >= stop.patience:
        state.stopped_early = True
        return f"  [early stop: no better {monitor} in {stop.patience} epochs]"
    return ""


def report(
    loop: LoopConfig, worker: Worker, state: LoopState, best: Best, metrics: dict[str, float]
) -> str:
    """Report the epoch to Ray Train (a barrier: every rank calls it), with a checkpoint
    every checkpoint.every_epochs epochs and after the last. Returns the progress note."""
    import ray.train

    spec = loop.job.train
    last = state.epoch == spec.epochs - 1 or state.stopped_early
    if (state.epoch + 1) % spec.checkpoint.every_epochs != 0 and not last:
        ray.train.report(metrics)
        return ""
    write = partial(
        ckpt.save_checkpoint,
        model=worker.weights(),
        best_model=best.weights,
        ema=worker.ema.state_dict() if worker.ema is not None else None,
        optimizer=worker.optimizer.state_dict(),
        scheduler=worker.scheduler.state_dict(),
        generator=worker.generator,
        loop=asdict(state),
        job_yaml=dump_job(loop.job),
        transforms=loop.transforms,
    )
    _report_with_checkpoint(loop, worker.rank, state.epoch, metrics, write)
    return "  [checkpoint]"


def finish(
    loop: LoopConfig, worker: Worker, state: LoopState, best: Best, start_epoch: int
) -> dict[str, Any] | None:
    """Load the chosen weights (the best epoch's, else the last; the EMA's with train.ema)
    into the evaluated model, score them on test, and return rank 0's outcome (None on the
    other ranks)."""
    final = best.weights or worker.chosen_weights()
    worker.eval_model.load_state_dict(final)
    test_metrics: dict[str, float] = {}
    if loop.has_test:
        test = evaluate(worker, "test")
        test_metrics = test.compute("test") | test.counts("test")
    predictions = best.predictions
    if predictions is None and loop.has_validation and loop.job.model.task == "classify":
        # The chosen weights' validation outputs, for the ROC plot tracking draws.
        predictions = evaluate(worker, "validation").predictions()
    if worker.rank != 0:
        return None
    return {
        # numpy, not tensors: Ray Train refuses to return tensors from a worker.
        "state_dict": {k: v.detach().cpu().numpy() for k, v in final.items()},
        "history": state.history,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "start_epoch": start_epoch,
        "test_metrics": test_metrics,
        "val_predictions": predictions,
    }


def _groups(batches: Iterable[SetBatch], size: int) -> Iterator[list[SetBatch]]:
    """Consecutive lists of ``size`` batches; the last may be shorter."""
    group: list[SetBatch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


# --------------------------------------------------------------------------- checkpoints


def restore(loop: LoopConfig, worker: Worker) -> tuple[LoopState, Best]:
    """Resume from the latest checkpoint into ``worker``, or start fresh.

    The latest is Ray's (after a worker failure, or a re-run under the same Ray run name),
    or for in-process runs the newest in their own directory.
    """
    import ray.train

    saved: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = ckpt.load_checkpoint(directory)
    elif loop.checkpoint_dir and (found := ckpt.latest_local_checkpoint(loop.checkpoint_dir)):
        saved = ckpt.load_checkpoint(found)
    if saved is None:
        return LoopState(), Best()
    worker.model.load_state_dict(saved["model"])
    worker.optimizer.load_state_dict(saved["optimizer"])
    worker.scheduler.load_state_dict(saved["scheduler"])
    if worker.ema is not None:
        # A checkpoint without one (no train.ema when it was written) restarts the average.
        worker.ema.load_state_dict(saved["ema"] or {"weights": saved["model"], "updates": 0})
    ckpt.set_rng_state(saved["rng"], saved["loop"].pop("rng"), worker.generator)
    return LoopState(**saved["loop"]), Best(weights=saved["best_model"])


def _report_with_checkpoint(
    loop: LoopConfig,
    rank: int,
    epoch: int,
    metrics: dict[str, float],
    write: Callable[[str | Path], Path],
) -> None:
    """All ranks report (it is a barrier); rank 0 alone writes and attaches the files."""
    import ray.train
    from ray.train import Checkpoint

    if loop.checkpoint_dir:
        # In-process runs keep their checkpoints themselves: Ray's local mode persists nothing.
        directory = Path(loop.checkpoint_dir) / f"epoch_{epoch:06d}"
        write(directory)
        for old in sorted(Path(loop.checkpoint_dir).glob("epoch_*"))[: -loop.keep]:
            shutil.rmtree(old)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)))
        return
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="setpipe-ckpt-") as tmp:
        write(tmp)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


# --------------------------------------------------------------------------- progress


class Progress:
    """Rank 0's progress lines: a batch line at most every ``every_s``, one line per epoch."""

    def __init__(self, loop: LoopConfig, rank: int, every_s: float = 10.0) -> None:
        self.enabled = loop.progress and rank == 0
        self.epochs = loop.job.train.epochs
        # total_steps counts optimizer steps; the batch lines count batches.
        self.steps_per_epoch = max(1, loop.total_steps // self.epochs) * loop.job.train.accumulate
        self.every_s = every_s
        self.last = time.monotonic()

    def start(self, start_epoch: int) -> None:
        if self.enabled and start_epoch > 0:
            _say(f"resuming from the checkpoint of epoch {start_epoch}")

    def batch(self, epoch: int, step: int, loss: float, sets: int, started: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - started
        eta = max(0.0, elapsed / step * (self.steps_per_epoch - step)) if step else 0.0
        _say(
            f"  epoch {epoch + 1}/{self.epochs}  batch {step}/~{self.steps_per_epoch}  "
            f"loss {loss:.4f}  {sets / elapsed:.0f} sets/s  epoch ETA {eta:.0f}s"
        )

    def epoch(self, epoch: int, metrics: dict[str, float], seconds: float, note: str) -> None:
        if not self.enabled:
            return
        shown = "  ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train_loss", "val_"))
        )
        _say(f"epoch {epoch + 1}/{self.epochs}  {seconds:.1f}s  {shown}{note}")


def _say(line: str) -> None:
    """One progress line on stdout, once. Not print(): in a Ray Train worker, print is
    patched to log the line (to stderr, forwarded to the driver) and also copy it to
    stdout (forwarded too), so every epoch line reached the terminal twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
