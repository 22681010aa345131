"""One rank's training objects, and the two things they do to batches: a step, an evaluation.

``build_worker`` makes them the same way on every rank (one seed: identical initial
weights; DDP keeps them identical after every step). ``train_step`` is one optimizer step
on train.accumulate batches (then the weights' EMA moves, when train.ema asks for one);
``evaluate`` is one pass of the evaluated model (the EMA, else the trained one) over this
rank's shard of a split, gathered so that every rank holds every rank's outputs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from setpipe.data import BatchStats, FittedTransforms, augment_batch, iter_set_batches
from setpipe.data.batch import SetBatch
from setpipe.errors import TrainError
from setpipe.models import build_model
from setpipe.spec.models import JobSpec
from setpipe.train import finetune
from setpipe.train.ema import EMA
from setpipe.train.heads import HeadsEvaluation, evaluation_for, model_loss
from setpipe.train.losses import loss_sets
from setpipe.train.metrics import Evaluation
from setpipe.train.optim import build_optimizer, build_scheduler


@dataclass
class Worker:
    """This rank's place in the run and the objects it trains with."""

    job: JobSpec
    rank: int
    world: int
    device: torch.device
    amp: bool
    """Autocast (bf16, else fp16 with loss scaling): train.amp on a CUDA device."""
    transforms: FittedTransforms
    model: nn.Module
    """The SetModel itself: its state dict, checksums, evaluation."""
    ddp_model: nn.Module
    """What training steps call: DDP's wrapper when world > 1, else the model itself."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    """Draws of the gradient estimator and of augmentation (seeded per epoch by the loop)."""
    ema: EMA | None = None
    """The weights' moving average (train.ema), updated after every optimizer step."""

    @property
    def eval_model(self) -> nn.Module:
        """What validation, the best epoch, test scoring and registration use: the EMA's
        averaged model when train.ema is set, else the trained model."""
        return self.ema.model if self.ema is not None else self.model

    def weights(self, *, copy: bool = False) -> dict[str, torch.Tensor]:
        """The trained model's state dict on the CPU; ``copy``: cloned, safe from later steps."""
        return _cpu_state(self.model, copy=copy)

    def chosen_weights(self, *, copy: bool = False) -> dict[str, torch.Tensor]:
        """``eval_model``'s state dict on the CPU (the EMA's when there is one)."""
        return _cpu_state(self.eval_model, copy=copy)

    def sum_across(self, values: list[float]) -> list[float]:
        """Each value summed over all ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def build_worker(
    job: JobSpec,
    transforms: dict[str, Any],
    total_steps: int,
    init_weights: str | None = None,
    init_source: str | None = None,
) -> Worker:
    """This rank's model, its DDP wrapper, optimizer, LR schedule and loss scaler.

    ``init_weights``: the state-dict file model.init_from was resolved to on the driver
    (``init_source``: what it was resolved from); loaded before DDP, as train.freeze is."""
    import ray.train
    import ray.train.torch

    spec = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cuda = spec.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", context.get_local_rank()) if cuda else torch.device("cpu")
    amp = spec.amp and device.type == "cuda"
    _seed_everything(spec.seed)  # same seed on every rank: identical initial weights
    model = build_model(
        job.model,
        num_features=len(job.data.feature_names),
        num_context=len(job.data.context),
        feature_names=job.data.feature_names,
        transforms=FittedTransforms.from_dict(transforms),
    ).to(device)
    # Before DDP: it registers gradient hooks on the trainable parameters only.
    groups = finetune.prepare(model, job, init_weights, init_source)
    # DDP runs SetModel.forward, which reaches the gradient estimator too (grad_budget=...),
    # so every step goes through DDP's own forward and its gradient hooks.
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = build_optimizer(groups, spec.optimizer)
    return Worker(
        job=job,
        rank=rank,
        world=world,
        device=device,
        amp=amp,
        transforms=FittedTransforms.from_dict(transforms),
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total_steps, spec.lr_schedule),
        # fp16 autocast needs loss scaling; bf16 and fp32 do not.
        scaler=torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported()),
        generator=torch.Generator(),
        # A copy of the initial weights, made after DDP's wrapper so it is on the device.
        ema=EMA(model, spec.ema) if spec.ema is not None else None,
    )


def train_step(worker: Worker, batches: Sequence[SetBatch]) -> list[torch.Tensor]:
    """One optimizer step on ``batches`` (on the device; train.accumulate of them, fewer at
    an epoch's end), equal to one step on their concatenation. Returns each batch's mean
    loss, detached.

    The task loss is a mean over sets (over the sets with a relevant element for the
    listwise loss; a weighted mean with set weights), so batch i's loss (with the encoder's
    regulariser, if any) is weighted by its share n_i / sum(n) of those sets (of their
    weights) before its backward: the summed gradient is then the combined batch's. Under
    DDP the inner backwards run in ``no_sync`` (no all-reduce); the last one all-reduces
    the sum.
    """
    job, spec = worker.job, worker.job.train
    counts = [_loss_sets(job.model.task, batch) for batch in batches]
    total = sum(counts)
    worker.optimizer.zero_grad(set_to_none=True)
    losses = []
    for i, batch in enumerate(batches):
        inner = i < len(batches) - 1 and worker.world > 1
        with worker.ddp_model.no_sync() if inner else nullcontext():
            loss = _batch_loss(worker, batch)
            # total 0 (listwise, no relevant element anywhere): the zero loss keeps its graph.
            share = counts[i] / total if total else 0.0
            worker.scaler.scale(loss * share).backward()
        losses.append(loss.detach())
    if spec.grad_clip is not None:
        worker.scaler.unscale_(worker.optimizer)
        nn.utils.clip_grad_norm_(worker.model.parameters(), spec.grad_clip)
    worker.scaler.step(worker.optimizer)
    worker.scaler.update()
    worker.scheduler.step()
    if worker.ema is not None:
        worker.ema.update(worker.model)
    return losses


def _batch_loss(worker: Worker, batch: SetBatch) -> torch.Tensor:
    """``batch``'s mean task loss through the training forward (augmented, estimated)."""
    job, spec = worker.job, worker.job.train
    if job.data.augment:
        batch = augment_batch(batch, job.data.augment, job.data.feature_names, worker.generator)
    budget = spec.grad_element_budget
    if budget is not None and int(batch.sizes().max()) <= budget:
        budget = None  # every set fits the budget: the plain full-gradient pass
    with _autocast(worker):
        outputs = worker.ddp_model(
            batch, grad_budget=budget, chunk_size=spec.chunk_size, generator=worker.generator
        )
    loss = model_loss(job.model, outputs, batch)
    # Regularisers the encoder added in this forward (pooling lcm: associativity).
    take_aux = getattr(getattr(worker.model, "encoder", None), "take_aux_loss", None)
    aux = take_aux() if take_aux is not None else None
    return loss if aux is None else loss + aux


def _loss_sets(task: str | None, batch: SetBatch) -> float:
    """What ``batch``'s loss divides by (``losses.loss_sets``: its sets, for the listwise loss
    those holding a relevant element, or their weights' sum); for masked pretraining the sets
    of 2 or more elements (those that get a masked element). Several heads (task None): all
    sets or their weights, exact while every head is a set-level one."""
    if task == "pretrain_masked":
        return float((batch.sizes() >= 2).sum())
    return loss_sets(task or "set-level", batch, weights=batch.weights)


def _cpu_state(model: nn.Module, *, copy: bool) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {k: v.clone() for k, v in state.items()} if copy else state


def evaluate(worker: Worker, split: str) -> Evaluation | HeadsEvaluation:
    """This rank's shard of ``split``, gathered across ranks (every rank holds them all)."""
    import ray.train

    job = worker.job
    shard = ray.train.get_dataset_shard(split)
    evaluation = evaluation_for(job.model, sigma=split == "test")
    reading = BatchStats()
    model = worker.eval_model
    model.eval()
    # pooling lcm: how far chunking moves the pooled vector (the operator is learned, so
    # chunked and whole sets agree only as far as it is associative).
    encoder = getattr(model, "encoder", None)
    partition = encoder.partition_error if getattr(encoder, "logs_partition_error", False) else None
    partition_sum, partition_sets = 0.0, 0
    with torch.no_grad():
        batches = iter_set_batches(shard, job.data, worker.transforms, shuffle=False, stats=reading)
        for batch in batches:
            batch = batch.to(worker.device)
            with _autocast(worker):
                # Constant memory in the set size for MBC encoders; whole sets otherwise.
                outputs = model.predict_chunked(batch, job.train.chunk_size)
            loss = model_loss(job.model, outputs, batch)
            evaluation.add(outputs, batch, float(loss))
            if partition is not None:
                errors = partition(batch)
                partition_sum += float(errors.double().sum())
                partition_sets += errors.numel()
    if model is worker.model:
        model.train()  # the EMA's model stays in eval mode
    evaluation.skipped_rows = reading.skipped_rows
    evaluation.gather()
    if partition is not None:
        partition_sum, partition_sets = worker.sum_across([partition_sum, partition_sets])
        mean = partition_sum / partition_sets if partition_sets else math.nan
        evaluation.extra["lcm_partition_error"] = mean
    if evaluation.non_finite_sets:
        # Every rank holds the gathered count, so every rank stops here alike.
        raise TrainError(
            f"{job.name}: the model's outputs on the {split} split are not finite (NaN or "
            f"infinite) for {evaluation.non_finite_sets} of {evaluation.sets} sets; the model "
            "is not registered. Likely cause: weights that diverged (lower "
            "train.optimizer.lr or set train.grad_clip) or features a transform made "
            "non-finite (check the data with `setpipe inspect`)"
        )
    return evaluation


def check_loss(worker: Worker, loss: float, batch: SetBatch, epoch: int, step: int) -> None:
    """Stop at once on a non-finite training loss, saying where and the likely cause."""
    if math.isfinite(loss):
        return
    lr = worker.scheduler.get_last_lr()[0]
    if not bool(torch.isfinite(batch.values).all()):
        cause = (
            "the batch's features are not finite (a transform such as log of a value <= 0, "
            "or NaN in the data): check the data with `setpipe inspect`"
        )
    else:
        cause = (
            f"the batch's features are finite, so the weights diverged: lower "
            f"train.optimizer.lr (now {lr:.3g}) or set train.grad_clip"
        )
    raise TrainError(
        f"{worker.job.name}: the training loss is {loss} in epoch {epoch + 1}, batch {step} "
        f"({batch.num_sets} sets, {batch.num_elements} elements); training stopped. Likely "
        f"cause: {cause}"
    )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _autocast(worker: Worker) -> AbstractContextManager[Any]:
    if not worker.amp:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
