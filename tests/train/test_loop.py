"""The loop's config, state and hooks as they travel: to workers (pickled dicts), into
checkpoints (loop.json), and what the injected-failure hook does where. No Ray needed."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from sets_data import job_dict

from setpipe.data.batch import SetBatch
from setpipe.errors import TrainError
from setpipe.spec import job_from_dict
from setpipe.train.hooks import FAIL_ENV, Attempt, FailAtEpoch, LoopHooks, TraceWeights
from setpipe.train.loop import LoopConfig, LoopState

LOOP_JSON_KEYS = [
    "epoch",
    "global_step",
    "history",
    "best",
    "best_epoch",
    "since_best",
    "stopped_early",
]
"""loop.json's keys (besides "rng") as checkpoints have always written them."""


def config(tmp_path: Path) -> LoopConfig:
    job = job_from_dict(job_dict(tmp_path / "data", tmp_path / "work", epochs=4))
    return LoopConfig(
        job=job,
        transforms={"features": []},
        total_steps=48,
        has_validation=True,
        has_test=False,
        monitor=("val_auc", "maximize"),
        in_process=True,
        checkpoint_dir=str(tmp_path / "ckpt"),
        keep=2,
        progress=False,
    )


def test_loop_config_travels_as_a_plain_dict(tmp_path: Path) -> None:
    loop = config(tmp_path)
    data = loop.to_dict()
    assert data["job"] == loop.job.model_dump(mode="json")
    # JSON-able throughout (tuples read back as lists), and unchanged through a pickle.
    assert json.loads(json.dumps(data)) == data | {"monitor": ["val_auc", "maximize"]}
    assert LoopConfig.from_dict(pickle.loads(pickle.dumps(data))) == loop


def test_loop_state_is_loop_json(tmp_path: Path) -> None:
    state = LoopState()
    assert list(asdict(state)) == LOOP_JSON_KEYS
    assert asdict(state) == {
        "epoch": -1,
        "global_step": 0,
        "history": [],
        "best": None,
        "best_epoch": None,
        "since_best": 0,
        "stopped_early": False,
    }
    state = LoopState(3, 48, [{"epoch": 3.0, "val_auc": 0.9}], 0.9, 2, 1, True)
    written = json.dumps({**asdict(state), "rng": {}})  # what save_checkpoint writes
    read = json.loads(written)
    read.pop("rng")  # what restore hands to LoopState
    assert LoopState(**read) == state


def batch(context: list[float]) -> SetBatch:
    sets = [torch.zeros(2, 1) for _ in context]
    return SetBatch.from_sets(sets, context=torch.tensor(context).reshape(-1, 1))


@pytest.mark.parametrize(
    ("epoch", "rank", "world", "start_epoch", "fails"),
    [
        (1, 1, 2, 0, True),
        (1, 0, 1, 0, True),
        (0, 1, 2, 0, False),  # another epoch
        (1, 0, 2, 0, False),  # not the last rank
        (1, 1, 2, 1, False),  # an attempt resumed from a checkpoint
    ],
)
def test_fail_at_epoch_fires_only_where_asked(
    epoch: int, rank: int, world: int, start_epoch: int, fails: bool
) -> None:
    hook = pickle.loads(pickle.dumps(FailAtEpoch(1)))  # as a Ray worker receives it
    # In-process the hook raises where a worker would exit (that would end this test too).
    at = Attempt(rank, world, start_epoch, in_process=True)
    model = torch.nn.Linear(1, 1)
    if fails:
        with pytest.raises(TrainError, match=r"^injected failure in epoch 1 \(fail_at_epoch "):
            hook.on_step(at, epoch, 1, batch([1.0]), model)
    else:
        assert hook.on_step(at, epoch, 1, batch([1.0]), model) is None


def test_fail_at_epoch_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAIL_ENV, raising=False)
    assert FailAtEpoch.from_env() is None
    monkeypatch.setenv(FAIL_ENV, "2")
    assert FailAtEpoch.from_env() == FailAtEpoch(2)


def test_trace_weights_records_sets_and_checksums(tmp_path: Path) -> None:
    hook = pickle.loads(pickle.dumps(TraceWeights(tmp_path)))
    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, 0.25)
    torch.nn.init.constant_(model.bias, 1.0)
    at = Attempt(rank=1, world=2, start_epoch=0, in_process=False)
    hook.on_step(at, 3, 1, batch([7.0, 8.0]), model)  # checksum after step 1: 0.5 + 1
    torch.nn.init.constant_(model.bias, -1.0)
    hook.on_step(at, 3, 2, batch([9.0]), model)
    hook.on_epoch_end(at, 3, model)
    record = json.loads((tmp_path / "trace-r1-e3.json").read_text())
    assert record == {"seen": [7.0, 8.0, 9.0], "first_step": 1.5, "last_step": -0.5}


def test_default_hooks_do_nothing() -> None:
    hooks = LoopHooks()
    at = Attempt(rank=0, world=1, start_epoch=0, in_process=True)
    model = torch.nn.Linear(1, 1)
    before = [p.detach().clone() for p in model.parameters()]
    assert hooks.on_step(at, 0, 1, batch([1.0]), model) is None
    assert hooks.on_epoch_end(at, 0, model) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
