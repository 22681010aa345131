"""The per-worker training loop: one function, run by every Ray Train worker (or in-process).

Top to bottom: seed, build the model, wrap it for DDP, restore the last checkpoint,
then per epoch: train on this rank's shard (all ranks stop together), validate on all
ranks' predictions, log from rank 0, checkpoint, stop early or go on. After the last
epoch the best weights are scored on the test split and rank 0 returns the outcome.

Test hooks (set by tests through ``train_loop_config``, never by a job):
  fail_at_epoch  a worker exits with os._exit(1) after its first batch of that epoch,
                 only in an attempt that started from scratch (so the retry succeeds);
                 in-process (workers 0) it raises instead, as exiting would kill the driver.
  trace_dir      every rank writes trace-r<rank>-e<epoch>.json: the first context column of
                 each set it trained on and a checksum of its weights after the first and
                 the last step of the epoch.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from setpipe.errors import TrainError
from setpipe.spec.models import JobSpec
from setpipe.train import checkpoint as ckpt
from setpipe.train.losses import task_loss
from setpipe.train.metrics import Evaluation
from setpipe.train.optim import build_optimizer, build_scheduler


def weight_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: equal across ranks iff DDP kept them in sync."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _sum_across(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def evaluate(
    model: nn.Module,
    source: Any,
    job: JobSpec,
    transforms: Any,
    device: torch.device,
    amp: bool,
) -> Evaluation:
    """This rank's shard's outputs, gathered across ranks (every rank holds them all)."""
    from setpipe.data import iter_set_batches

    evaluation = Evaluation(job.model.task)
    model.eval()
    with torch.no_grad():
        for batch in iter_set_batches(source, job.data, transforms, shuffle=False):
            batch = batch.to(device)
            with _autocast(device, amp):
                # Constant memory in the set size for MBC encoders; whole sets otherwise.
                outputs = model.predict_chunked(batch, job.train.chunk_size)
            loss = task_loss(job.model.task, outputs, batch)
            evaluation.add(outputs, batch, float(loss))
    model.train()
    evaluation.gather()
    return evaluation


class _Progress:
    """Rank 0's progress lines: a batch line at most every ``every_s``, one line per epoch."""

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int, every_s: float = 10.0):
        self.enabled, self.epochs, self.steps_per_epoch = enabled, epochs, steps_per_epoch
        self.every_s = every_s
        self.last = time.monotonic()

    def batch(self, epoch: int, step: int, loss: float, sets: int, started: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - started
        eta = max(0.0, elapsed / step * (self.steps_per_epoch - step)) if step else 0.0
        print(
            f"  epoch {epoch + 1}/{self.epochs}  batch {step}/~{self.steps_per_epoch}  "
            f"loss {loss:.4f}  {sets / elapsed:.0f} sets/s  epoch ETA {eta:.0f}s",
            flush=True,
        )

    def epoch(self, epoch: int, metrics: dict[str, float], seconds: float, note: str) -> None:
        if not self.enabled:
            return
        shown = "  ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train_loss", "val_"))
        )
        print(f"epoch {epoch + 1}/{self.epochs}  {seconds:.1f}s  {shown}{note}", flush=True)


def _maybe_fail(config: dict, epoch: int, start_epoch: int, rank: int, world: int) -> None:
    if config.get("fail_at_epoch") != epoch or start_epoch != 0 or rank != world - 1:
        return
    if config.get("in_process"):
        raise TrainError(f"injected failure in epoch {epoch} (fail_at_epoch test hook)")
    # Ray Train V2 collects what workers reported (the last epoch's checkpoint) when its
    # controller polls them, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a worker dying
    # sooner after its report would take the checkpoint with it and the retry would start
    # from scratch (seen once epochs took well under a second). Let two polls pass.
    interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2"))
    time.sleep(2.5 * interval)
    print(f"injected failure: rank {rank} exits in epoch {epoch}", flush=True)
    os._exit(1)


def _trace(config: dict, rank: int, epoch: int, record: dict) -> None:
    if config.get("trace_dir"):
        path = Path(config["trace_dir"]) / f"trace-r{rank}-e{epoch}.json"
        path.write_text(json.dumps(record))


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """The Ray Train per-worker function. Returns the outcome on rank 0, None elsewhere."""
    import ray.train
    import ray.train.torch

    from setpipe.data import (
        BatchStats,
        FittedTransforms,
        augment_batch,
        equalize_batches,
        iter_set_batches,
        torch_all_reduce_min,
    )
    from setpipe.models import build_model
    from setpipe.spec import dump_job

    job = JobSpec.model_validate(config["job"])
    spec = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = (
        torch.device("cuda", context.get_local_rank())
        if spec.use_gpu and torch.cuda.is_available()
        else torch.device("cpu")
    )
    amp = spec.amp and device.type == "cuda"
    transforms = FittedTransforms.from_dict(config["transforms"])

    _seed_everything(spec.seed)  # same seed on every rank: identical initial weights
    model = build_model(
        job.model, num_features=len(job.data.feature_names), num_context=len(job.data.context)
    ).to(device)
    # DDP runs SetModel.forward, which reaches the gradient estimator too (grad_budget=...),
    # so every step goes through DDP's own forward and its gradient hooks.
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    total_steps = int(config["total_steps"])
    scheduler = build_scheduler(optimizer, total_steps, spec.lr_schedule)
    # fp16 autocast needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    generator = torch.Generator()

    loop: dict[str, Any] = {
        "epoch": -1,
        "global_step": 0,
        "history": [],
        "best": None,
        "best_epoch": None,
        "since_best": 0,
        "stopped_early": False,
    }
    best_state: dict[str, torch.Tensor] | None = None
    # The best epoch's validation outputs, for the ROC plot; kept from that epoch's pass
    # (not in checkpoints: after a resume they are computed again at the end).
    best_predictions: tuple[np.ndarray, np.ndarray] | None = None
    state = _restore(config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"], state["loop"].pop("rng"), generator)
        loop = state["loop"]
        best_state = state["best_model"]
    start_epoch = loop["epoch"] + 1
    monitor, direction = config.get("monitor") or (None, "minimize")
    stop = job.train.early_stopping
    progress = _Progress(
        bool(config.get("progress")) and rank == 0,
        spec.epochs,
        max(1, total_steps // spec.epochs),
    )
    if progress.enabled and start_epoch > 0:
        print(f"resuming from the checkpoint of epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, spec.epochs):
        if loop["stopped_early"]:
            break
        # Per-(seed, epoch, rank) draws: a resumed epoch draws what an uninterrupted one would.
        torch.manual_seed(spec.seed * 1_000_003 + epoch * 1009 + rank)
        generator.manual_seed(spec.seed * 1_000_003 + epoch * 1009 + rank + 7)
        stats = BatchStats()
        shard = ray.train.get_dataset_shard("train")
        # Every rank stops at the step where the first runs out (one MIN all-reduce per
        # step); the others drain their rest, so no rank waits in a collective forever.
        batches = equalize_batches(
            iter_set_batches(shard, job.data, transforms, epoch=epoch, shuffle=True, stats=stats),
            torch_all_reduce_min(device),
        )
        loss_sum, sets, elements = 0.0, 0, 0
        seen: list[float] = []
        first_checksum = None
        started = time.monotonic()
        for steps, raw in enumerate(batches, start=1):
            batch = raw.to(device, non_blocking=True)
            if job.data.augment:
                batch = augment_batch(batch, job.data.augment, job.data.feature_names, generator)
            budget = spec.grad_element_budget
            if budget is not None and int(batch.sizes().max()) <= budget:
                budget = None  # every set fits the budget: the plain full-gradient pass
            with _autocast(device, amp):
                outputs = ddp_model(
                    batch, grad_budget=budget, chunk_size=spec.chunk_size, generator=generator
                )
            loss = task_loss(job.model.task, outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if spec.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loop["global_step"] += 1
            loss_sum += float(loss.detach()) * batch.num_sets
            sets += batch.num_sets
            elements += batch.num_elements
            if config.get("trace_dir"):
                if batch.context is not None:
                    seen.extend(batch.context[:, 0].tolist())
                if first_checksum is None:
                    first_checksum = weight_checksum(model)
            progress.batch(epoch, steps, loss_sum / sets, sets * world, started)
            _maybe_fail(config, epoch, start_epoch, rank, world)
        seconds = time.monotonic() - started
        _trace(
            config,
            rank,
            epoch,
            {"seen": seen, "first_step": first_checksum, "last_step": weight_checksum(model)},
        )

        loss_sum, sets, elements, skipped = _sum_across(
            [loss_sum, sets, elements, stats.skipped_rows], world, device
        )
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / sets if sets else math.nan,
            "train_sets_per_s": sets / seconds,
            "train_elements_per_s": elements / seconds,
            "train_skipped_rows": skipped,
            "lr": scheduler.get_last_lr()[0],
        }
        validation = None
        if config.get("has_validation"):
            shard = ray.train.get_dataset_shard("validation")
            validation = evaluate(model, shard, job, transforms, device, amp)
            metrics |= validation.compute("val")
        note = ""
        if monitor is not None:
            value = metrics.get(monitor, math.nan)
            if not math.isfinite(value):
                raise TrainError(
                    f"validation metric {monitor!r} is {value} in epoch {epoch + 1}; the metrics "
                    f"are {sorted(metrics)}"
                )
            delta = stop.min_delta if stop else 0.0
            best = loop["best"]
            better = best is None or (
                value < best - delta if direction == "minimize" else value > best + delta
            )
            if better:
                loop["best"], loop["best_epoch"], loop["since_best"] = value, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best_predictions = validation.predictions() if validation is not None else None
                note += f"  [best {monitor}]"
            else:
                loop["since_best"] += 1
                if stop is not None and loop["since_best"] >= stop.patience:
                    loop["stopped_early"] = True
                    note += f"  [early stop: no better {monitor} in {stop.patience} epochs]"
        loop["history"].append(metrics)
        loop["epoch"] = epoch
        if rank == 0 and config.get("run_id"):
            from setpipe.tracking.mlflow_run import log_epoch

            log_epoch(config["run_id"], job, epoch, metrics)

        last = epoch == spec.epochs - 1 or loop["stopped_early"]
        if (epoch + 1) % spec.checkpoint.every_epochs == 0 or last:
            note += "  [checkpoint]"
            _report_with_checkpoint(
                config,
                metrics,
                rank,
                epoch,
                partial(
                    ckpt.save_checkpoint,
                    model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    best_model=best_state,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    generator=generator,
                    loop=loop,
                    job_yaml=dump_job(job),
                    transforms=config["transforms"],
                ),
            )
        else:
            ray.train.report(metrics)
        progress.epoch(epoch, metrics, seconds, note)

    final_state = best_state or {k: v.detach().cpu() for k, v in model.state_dict().items()}
    model.load_state_dict(final_state)
    test_metrics: dict[str, float] = {}
    if config.get("has_test"):
        shard = ray.train.get_dataset_shard("test")
        test_metrics = evaluate(model, shard, job, transforms, device, amp).compute("test")
    val_predictions = best_predictions
    if val_predictions is None and config.get("has_validation") and job.model.task == "classify":
        # The chosen weights' validation outputs, for the ROC plot tracking draws.
        shard = ray.train.get_dataset_shard("validation")
        val_predictions = evaluate(model, shard, job, transforms, device, amp).predictions()
    if rank != 0:
        return None
    return {
        # numpy, not tensors: Ray Train refuses to return tensors from a worker.
        "state_dict": {k: v.detach().cpu().numpy() for k, v in final_state.items()},
        "history": loop["history"],
        "best_epoch": loop["best_epoch"],
        "stopped_early": loop["stopped_early"],
        "start_epoch": start_epoch,
        "test_metrics": test_metrics,
        "val_predictions": val_predictions,
    }


def _restore(config: dict) -> dict[str, Any] | None:
    """The checkpoint to resume from: Ray's latest (after a worker failure, or a re-run under
    the same Ray run name), or for in-process runs the newest in their own directory."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return ckpt.load_checkpoint(directory)
    local = config.get("local_checkpoint_dir")
    found = ckpt.latest_local_checkpoint(local) if local else None
    return ckpt.load_checkpoint(found) if found else None


def _report_with_checkpoint(config: dict, metrics: dict, rank: int, epoch: int, write) -> None:
    """All ranks report (it is a barrier); rank 0 alone writes and attaches the files."""
    import ray.train
    from ray.train import Checkpoint

    local = config.get("local_checkpoint_dir")
    if local:
        # In-process runs keep their checkpoints themselves: Ray's local mode persists nothing.
        directory = Path(local) / f"epoch_{epoch:06d}"
        write(directory)
        for old in sorted(Path(local).glob("epoch_*"))[: -config["keep"]]:
            shutil.rmtree(old)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)))
        return
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="setpipe-ckpt-") as tmp:
        write(tmp)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
