"""train.accumulate and train.ema on one real Worker (float64, no Ray), then through fit().

Accumulation: N batches in one optimizer step move the weights exactly as one step on
their concatenation (the per-set-mean losses weighted by each batch's share of the sets).
EMA: the average after 3 steps equals d³p0 + d²(1-d)p1 + d(1-d)p2 + (1-d)p3 by hand.
Both through the real loop: an interrupted in-process run resumes to bit-identical EMA
weights, and 2 DDP workers train with accumulation and keep their weights equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sets_data import job_dict, make_data

from setpipe.data import FittedTransforms, fit_transforms, read_dataset
from setpipe.data.batch import SetBatch
from setpipe.errors import SpecError, TrainError
from setpipe.models import build_model
from setpipe.spec import job_from_dict
from setpipe.spec.models import EMASpec, JobSpec
from setpipe.train import fit
from setpipe.train.checkpoint import load_checkpoint
from setpipe.train.ema import EMA, ema_decay
from setpipe.train.hooks import FailAtEpoch, TraceWeights
from setpipe.train.optim import build_optimizer, build_scheduler
from setpipe.train.worker import Worker, train_step

TOL = 1e-12  # float64: the two orders of summation differ by a few ulps


def unit_job(task: str, **train: Any) -> JobSpec:
    raw = job_dict(Path("/nonexistent"), Path("/nonexistent"), **train)
    if task == "rank":
        raw["model"] = {"task": "rank", "encoder": {"kind": "umbc", "slots": 4, "heads": 2}}
        raw["data"].pop("label")
        raw["data"]["element_label"] = "rel"
    return job_from_dict(raw)


def unit_worker(job: JobSpec, seed: int = 0) -> Worker:
    """A Worker as build_worker makes one on a 1-rank CPU run, in float64."""
    torch.manual_seed(seed)
    model = build_model(job.model, num_features=2).double()
    optimizer = build_optimizer(model.parameters(), job.train.optimizer)
    return Worker(
        job=job,
        rank=0,
        world=1,
        device=torch.device("cpu"),
        amp=False,
        transforms=FittedTransforms.from_spec(job.data),
        model=model,
        ddp_model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, 10, job.train.lr_schedule),
        scaler=torch.amp.GradScaler("cuda", enabled=False),
        generator=torch.Generator(),
        ema=EMA(model, job.train.ema) if job.train.ema is not None else None,
    )


def batch_of(task: str, num_sets: int, seed: int, weighted: bool = False) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 9, (num_sets,), generator=g).tolist()
    sets = [torch.randn(n, 2, generator=g, dtype=torch.float64) for n in sizes]
    if task == "rank":
        # Some sets without a relevant element: the listwise loss leaves them out.
        rel = [torch.randint(0, 3, (n,), generator=g).double() * (i % 3 != 0) for i, n in
               enumerate(sizes)]  # fmt: skip
        return SetBatch.from_sets(sets, element_targets=torch.cat(rel))
    targets = torch.randint(0, 2, (num_sets,), generator=g)
    if not weighted:
        return SetBatch.from_sets(sets, targets=targets)
    # Multiples of 1/2: their sums are exact in the float32 that loss_sets counts in.
    weights = torch.randint(1, 5, (num_sets,), generator=g).double() / 2
    return SetBatch.from_sets(sets, targets=targets, weights=weights)


def params(worker: Worker) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in worker.model.named_parameters()}


def grads(worker: Worker) -> dict[str, torch.Tensor]:
    return {k: v.grad.clone() for k, v in worker.model.named_parameters() if v.grad is not None}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(
    ("task", "weighted"), [("classify", False), ("classify", True), ("rank", False)]
)
def test_three_accumulated_batches_step_like_their_concatenation(task: str, weighted: bool) -> None:
    # SGD with momentum: Adam divides by sqrt(v) + eps, which turns the last-ulp differences
    # of near-zero gradients (~1e-17) into weight differences of lr / eps = 1e6 times that.
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    job = unit_job(task, accumulate=3, optimizer=sgd, lr_schedule={"kind": "constant"})
    accumulated, combined, first_only = unit_worker(job), unit_worker(job), unit_worker(job)
    assert max_diff(params(accumulated), params(combined)) == 0.0
    moved = params(accumulated)
    for step in range(2):  # the second step also checks the momentum buffers
        parts = [batch_of(task, n, 10 * step + i, weighted) for i, n in enumerate((5, 11, 3))]
        losses = train_step(accumulated, parts)
        [loss] = train_step(combined, [SetBatch.concat(parts)])
        train_step(first_only, parts[:1])
        assert len(losses) == 3
        if task == "classify" and not weighted:  # the combined mean, from the parts' means
            summed = sum(float(x) * b.num_sets for x, b in zip(losses, parts, strict=True))
            assert abs(summed / 19 - float(loss)) < TOL
        assert max_diff(grads(accumulated), grads(combined)) < TOL  # clipped to norm 1
    assert max_diff(params(accumulated), params(combined)) < TOL
    # The step is not a no-op, and not what the first batch alone would give.
    assert max_diff(params(accumulated), moved) > 1e-4
    assert max_diff(params(accumulated), params(first_only)) > 1e-4


def test_accumulation_counts_optimizer_steps_in_the_lr_schedule() -> None:
    job = unit_job("classify", accumulate=3, lr_schedule={"kind": "linear", "warmup_steps": 2})
    worker = unit_worker(job)
    for step in range(2):
        train_step(worker, [batch_of("classify", 4, seed=3 * step + i) for i in range(3)])
    # Six batches, two optimizer steps: the schedule stands at step 2, the end of the
    # 2-step warmup, so lr_factor = 1 (counting batches it would be at step 6: 1 - 4/8).
    assert worker.scheduler.last_epoch == 2
    assert worker.scheduler.get_last_lr() == [0.01]


def test_ema_is_the_hand_computed_average_of_three_steps() -> None:
    d = 0.9
    job = unit_job("classify", ema={"decay": d}, lr_schedule={"kind": "constant"})
    worker = unit_worker(job)
    assert worker.ema is not None
    trajectory = [params(worker)]  # p0: the average starts as a copy of the initial weights
    for step in range(3):
        train_step(worker, [batch_of("classify", 6, seed=step)])
        trajectory.append(params(worker))
    p0, p1, p2, p3 = trajectory
    ema = dict(worker.ema.model.named_parameters())
    for name in p0:
        by_hand = d**3 * p0[name] + d**2 * (1 - d) * p1[name] + d * (1 - d) * p2[name]
        by_hand = by_hand + (1 - d) * p3[name]
        assert float((ema[name] - by_hand).abs().max()) < TOL, name
        assert float((ema[name] - p3[name]).abs().max()) > 1e-4, name  # it is not the weights
    assert worker.ema.updates == 3
    # Evaluation, the best epoch and the registered model use the average.
    assert worker.eval_model is worker.ema.model
    chosen = worker.chosen_weights()
    assert all(torch.equal(chosen[k], ema[k]) for k in ema)
    assert not worker.ema.model.training and not any(
        p.requires_grad for p in worker.ema.model.parameters()
    )


def test_ema_decay_schedule_with_start_step_and_warmup() -> None:
    plain = EMASpec(decay=0.99)
    assert [ema_decay(n, plain) for n in (1, 2, 1000)] == [0.99, 0.99, 0.99]
    late = EMASpec(decay=0.99, start_step=2)
    assert [ema_decay(n, late) for n in (1, 2, 3, 4)] == [0.0, 0.0, 0.99, 0.99]
    warm = EMASpec(decay=0.99, start_step=1, warmup=True)
    # k-th averaged step: min(0.99, (1 + k) / (10 + k)); k = n - start_step.
    assert [ema_decay(n, warm) for n in (1, 2, 3, 900)] == [0.0, 2 / 11, 3 / 12, 0.99]


def test_ema_copies_buffers_and_a_zero_decay_copies_the_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).double()
    ema = EMA(model, EMASpec(decay=0.5, start_step=1))
    model.train()
    model(torch.randn(4, 2, dtype=torch.float64))  # moves the running statistics
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # step 1 < start_step: a copy
    trained = model.state_dict()
    for name, value in ema.model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    with torch.no_grad():
        model[0].weight.add_(2.0)
    before = ema.model[0].weight.clone()
    ema.update(model)
    assert torch.equal(ema.model[0].weight, before + 1.0)  # halfway: 0.5 * 2
    assert int(ema.model[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"accumulate": 0}, "train.accumulate: got 0; expected a number greater than 0"),
        ({"accumulate": 1.5}, "train.accumulate: got 1.5; expected a whole number"),
        ({"ema": {"decay": 1.0}}, "train.ema.decay: got 1.0; expected a number less than 1.0"),
        ({"ema": {"decay": 0}}, "train.ema.decay: got 0; expected a number greater than 0.0"),
        (
            {"ema": {"start_step": -1}},
            "train.ema.start_step: got -1; expected a number of at least 0",
        ),
        ({"ema": {"decya": 0.9}}, 'train.ema.decya: unknown key; did you mean "decay"?'),
    ],
)
def test_bad_values_are_refused_at_load_by_name(train: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        job_from_dict(job_dict(Path("d"), Path("w"), **train), source="jobs/x.yaml")
    assert str(caught.value) == f"jobs/x.yaml: {message}"


# --------------------------------------------------------------------------- through fit()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"))


def fit_job(data: Path, workdir: Path, name: str, hooks: Any = None, **train: Any) -> Any:
    raw = job_dict(data, workdir, **train)
    if isinstance(hooks, TraceWeights):
        raw["data"]["context"] = ["event_id"]  # the trace hook records context column 0
    job = job_from_dict(raw)
    datasets = {s: read_dataset(job.data, s) for s in ("train", "validation", "test")}
    return fit(
        job,
        storage_path=workdir / "ray_results",
        run_name=name,
        transforms=fit_transforms(job.data, datasets["train"]),
        datasets=datasets,
        progress=False,
        hooks=hooks,
    )


def test_an_interrupted_run_resumes_to_bit_identical_ema_weights(
    ray_local, data: Path, workdir: Path
) -> None:
    train = {"epochs": 3, "ema": {"decay": 0.9, "warmup": True}, "accumulate": 2}
    whole = fit_job(data, workdir, "whole", **train)
    with pytest.raises(TrainError, match="injected failure in epoch 1"):
        fit_job(data, workdir, "broken", hooks=FailAtEpoch(1), **train)
    resumed = fit_job(data, workdir, "broken", **train)
    assert (whole.start_epoch, resumed.start_epoch) == (0, 1)
    last = [load_checkpoint(workdir / f"ray_results/{n}/local_checkpoints/epoch_000002")
            for n in ("whole", "broken")]  # fmt: skip
    a, b = (c["ema"] for c in last)
    assert a["updates"] == b["updates"] == last[0]["loop"]["global_step"]  # optimizer steps
    for key, value in a["weights"].items():
        assert torch.equal(value, b["weights"][key]), key
        assert not torch.equal(value, last[0]["model"][key]), key  # the average, not the weights
    # The returned (registered) weights are the best epoch's average, and score like it.
    timeless = [[{k: v for k, v in h.items() if not k.endswith("_per_s")} for h in run.history]
                for run in (whole, resumed)]  # fmt: skip
    assert timeless[0] == timeless[1]
    best = next(h for h in whole.history if h["epoch"] == whole.best_epoch)
    assert whole.val_metrics["val_auc"] == best["val_auc"] > 0.9
    for key, value in whole.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


@pytest.mark.slow
def test_two_ddp_workers_accumulate_and_keep_equal_weights(
    ray_local, data: Path, workdir: Path, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    out = fit_job(
        data,
        workdir,
        "ddp-accumulate",
        hooks=TraceWeights(trace),
        workers=2,
        epochs=1,
        accumulate=3,
        ema={"decay": 0.9},
    )
    ranks = [json.loads((trace / f"trace-r{r}-e0.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen"] and ranks[1]["seen"]
    assert ranks[0]["first_step"] == ranks[1]["first_step"]
    assert ranks[0]["last_step"] == ranks[1]["last_step"]
    assert out.history[0]["train_loss"] > 0 and 0.0 <= out.history[0]["val_auc"] <= 1.0
