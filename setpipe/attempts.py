"""Which MLflow run and Ray run a ``setpipe run`` trains in: a new pair, or the unfinished one.

``<workdir>/runs/<name>/state.json`` keeps the job's last attempt: the MLflow run id, the
Ray run name, its status, and the resolved job it trained (with a digest of it). The next
``setpipe run`` of that name:

- after a FINISHED attempt: a new MLflow run and a new Ray run (a retrain; a finished model
  is never silently "resumed" into a no-op);
- after an attempt that did not finish (FAILED, KILLED, or still RUNNING when its process
  died): resumes it (the same MLflow run reopened, training from its last checkpoint) only
  if the job is the same. A changed job starts a new run and says which fields changed:
  resuming would mix two jobs' epochs in one run, and log params and a ``job.yaml`` that
  are not what trained the model (or loop on "size mismatch" when the model's shape moved).

``--fresh`` never resumes; ``--resume`` insists, and fails with the reason when it cannot.
Fields that do not change what is trained (``cluster``, ``schedule``) are not compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from setpipe.errors import TrainError
from setpipe.spec.models import JobSpec

ResumeMode = Literal["auto", "fresh", "resume"]
RESUME_MODES: tuple[ResumeMode, ...] = ("auto", "fresh", "resume")
_NOT_COMPARED = {"cluster", "schedule"}


@dataclass(frozen=True)
class Attempt:
    """Where this run trains and why."""

    run_id: str | None
    """The MLflow run to reopen; None: open a new one."""
    ray_run: str | None
    """The Ray run (checkpoints) to continue; None: one named after the new MLflow run."""
    note: str
    """One line for the user: what is resumed or started, and why."""

    @property
    def resumes(self) -> bool:
        return self.run_id is not None


def state_path(job: JobSpec) -> Path:
    return Path(job.workdir).resolve() / "runs" / job.name / "state.json"


def trained_fields(job: JobSpec) -> dict[str, Any]:
    """The resolved job as JSON, without the fields that do not change what is trained."""
    return job.model_dump(mode="json", exclude=_NOT_COMPARED)


def job_digest(job: JobSpec) -> str:
    """sha256 of ``trained_fields`` (keys sorted): equal iff the same job would be trained."""
    text = json.dumps(trained_fields(job), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def record(job: JobSpec, *, run_id: str, ray_run: str, status: str) -> None:
    """Write the attempt's state (called when it starts and when it ends)."""
    path = state_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "run_id": run_id,
        "ray_run": ray_run,
        "status": status,
        "job_digest": job_digest(job),
        "job": trained_fields(job),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)  # a crash mid-write never leaves half a state file


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): data}


def changed_fields(before: dict[str, Any], after: dict[str, Any], most: int = 4) -> str:
    """``a.b: old -> new; ...`` for the dotted fields that differ (at most ``most`` shown)."""
    old, new = _flat(before), _flat(after)
    unset = "<unset>"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, unset) != new.get(k, unset))
    shown = [
        f"{k}: {json.dumps(old.get(k, unset))} -> {json.dumps(new.get(k, unset))}"
        for k in keys[:most]
    ]
    if len(keys) > most:
        shown.append(f"and {len(keys) - most} more")
    return "; ".join(shown)


def _read(job: JobSpec) -> dict[str, Any] | None:
    path = state_path(job)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TrainError(
            f"{path}: cannot read the job's last attempt ({err}); remove the file to start a "
            "new run (the MLflow runs and checkpoints stay where they are)"
        ) from None
    if not isinstance(state, dict) or not {"run_id", "ray_run", "status"} <= state.keys():
        raise TrainError(
            f"{path}: expected run_id, ray_run and status, found {state!r}; remove the file to "
            "start a new run"
        )
    return state


def choose(job: JobSpec, mode: ResumeMode = "auto") -> Attempt:
    """The attempt this run continues, or a new one; TrainError when ``resume`` cannot be kept."""
    if mode not in RESUME_MODES:
        raise TrainError(f"resume mode {mode!r}: expected one of {', '.join(RESUME_MODES)}")
    state = _read(job)
    unfinished = state is not None and state["status"] != "FINISHED"
    if mode == "fresh":
        note = "starting a new run (--fresh)"
        if unfinished:
            note += f"; the unfinished MLflow run {state['run_id']} is left {state['status']}"
        return Attempt(None, None, note)
    if not unfinished:
        if mode == "resume":
            last = f"its last attempt {state['status']}" if state else "it has no attempt yet"
            raise TrainError(
                f"--resume: job {job.name!r} has nothing to resume ({last}, {state_path(job)}); "
                "run it without --resume to start a new run"
            )
        return Attempt(None, None, "starting a new run")
    assert state is not None
    if state.get("job_digest") == job_digest(job):
        return Attempt(
            state["run_id"],
            state["ray_run"],
            f"resuming MLflow run {state['run_id']} (its last attempt ended {state['status']})",
        )
    if "job" in state:
        what = f"the job changed since: {changed_fields(state['job'], trained_fields(job))}"
    else:
        what = "it was started by an older setpipe that did not record its job"
    if mode == "resume":
        raise TrainError(
            f"--resume: cannot resume MLflow run {state['run_id']} of job {job.name!r}: {what}. "
            "Resuming would train and log a different job than the run records; restore the "
            "job as it was to resume, or run without --resume to start a new run"
        )
    return Attempt(
        None,
        None,
        f"starting a new run: the unfinished MLflow run {state['run_id']} "
        f"({state['status']}) is not resumed because {what}",
    )
