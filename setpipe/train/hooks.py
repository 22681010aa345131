"""Test hooks of the per-worker loop: one callback object that tests pass to ``fit(hooks=)``.

The loop calls ``on_step`` after every optimizer step and ``on_epoch_end`` after each
epoch's training pass. A job never sets hooks: production runs ``LoopHooks`` itself,
whose methods do nothing. Hooks travel to the Ray Train workers inside the loop's
config, so they must pickle (dataclasses of plain fields do); each worker gets its own
copy.

  FailAtEpoch   a worker exits with os._exit(1) after its first step of an epoch, in the
                attempt that started from scratch (so the retry succeeds); in-process
                (workers 0) it raises instead, as exiting would kill the driver. Also
                set by the environment variable SETPIPE_FAIL_AT_EPOCH (``from_env``).
  TraceWeights  every rank writes trace-r<rank>-e<epoch>.json: the first context column of
                each set it trained on and a checksum of its weights after the first and
                the last step of the epoch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from setpipe._compat import train_health_check_interval_s
from setpipe.data.batch import SetBatch
from setpipe.errors import TrainError

FAIL_ENV = "SETPIPE_FAIL_AT_EPOCH"
"""Test hook: a worker exits during this epoch (0-based) of an attempt started from scratch."""


@dataclass(frozen=True)
class Attempt:
    """Where a hook runs: this worker's rank and the attempt of the run it belongs to."""

    rank: int
    world: int
    start_epoch: int
    """First epoch of this attempt: 0 from scratch, more when resumed from a checkpoint."""
    in_process: bool
    """train.workers == 0: the loop runs in the driver process."""


class LoopHooks:
    """The loop's callbacks; these do nothing. Tests subclass it (picklable, see above)."""

    def on_step(
        self, attempt: Attempt, epoch: int, step: int, batch: SetBatch, model: nn.Module
    ) -> None:
        """After optimizer step ``step`` (1-based) of ``epoch`` on ``batch`` (on the device)."""

    def on_epoch_end(self, attempt: Attempt, epoch: int, model: nn.Module) -> None:
        """After the training pass of ``epoch``, before validation and the checkpoint."""


def weight_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: equal across ranks iff DDP kept them in sync."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


@dataclass
class FailAtEpoch(LoopHooks):
    """The last rank dies in ``epoch`` (0-based) of an attempt that started from scratch."""

    epoch: int

    @classmethod
    def from_env(cls) -> FailAtEpoch | None:
        """The hook $SETPIPE_FAIL_AT_EPOCH asks for (tests of whole runs set it), else None."""
        value = os.environ.get(FAIL_ENV)
        return cls(int(value)) if value else None

    def on_step(
        self, attempt: Attempt, epoch: int, step: int, batch: SetBatch, model: nn.Module
    ) -> None:
        if epoch != self.epoch or attempt.start_epoch != 0 or attempt.rank != attempt.world - 1:
            return
        if attempt.in_process:
            raise TrainError(f"injected failure in epoch {epoch} (fail_at_epoch test hook)")
        # Ray Train V2 collects what workers reported (the last epoch's checkpoint) when its
        # controller polls them, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a worker dying
        # sooner after its report would take the checkpoint with it and the retry would start
        # from scratch (seen once epochs took well under a second). Let two polls pass.
        time.sleep(2.5 * train_health_check_interval_s())
        print(f"injected failure: rank {attempt.rank} exits in epoch {epoch}", flush=True)
        os._exit(1)


@dataclass
class TraceWeights(LoopHooks):
    """Writes ``directory``/trace-r<rank>-e<epoch>.json: which sets each rank trained on, and
    its weights' checksum after the first and the last step (DDP must keep them equal)."""

    directory: Path
    seen: list[float] = field(default_factory=list)
    first_step: float | None = None

    def on_step(
        self, attempt: Attempt, epoch: int, step: int, batch: SetBatch, model: nn.Module
    ) -> None:
        if step == 1:
            self.seen, self.first_step = [], weight_checksum(model)
        if batch.context is not None:
            self.seen.extend(batch.context[:, 0].tolist())

    def on_epoch_end(self, attempt: Attempt, epoch: int, model: nn.Module) -> None:
        record = {"seen": self.seen, "first_step": self.first_step}
        record["last_step"] = weight_checksum(model)
        path = Path(self.directory) / f"trace-r{attempt.rank}-e{epoch}.json"
        path.write_text(json.dumps(record))
        self.seen, self.first_step = [], None
