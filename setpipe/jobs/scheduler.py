"""The scheduler: submit the jobs of a directory when their ``schedule:`` says so.

One pass (``Scheduler.run_once``), top to bottom:
  1. poll Ray for every submission not yet finished and record its outcome; a SUCCEEDED
     run's data fingerprint becomes the job's "last successful" fingerprint: the one the
     run printed in its log for the files it read (``fingerprint_line``), else, from a run
     that printed none, the one taken when it was submitted;
  2. (re)load the job files that changed since the last pass;
  3. per scheduled job, the cron times in (last handled time, now] are due; catchup picks
     which of them run (none: the latest if it is within ``grace`` of now; latest: the
     latest; all: each, oldest first, at most ``max_catchup``), the rest are skipped;
  4. each time that runs passes on_new_data (skip if the data fingerprint equals the last
     successful run's) and concurrency (forbid: skip while an earlier run is unfinished;
     replace: stop it first; allow: run anyway), then is submitted as
     ``setpipe-<name>-<YYYYmmddTHHMMZ>``.
A job seen for the first time starts its schedule then: times before that are not due.

Crash safety comes from the deterministic submission id, not from locking: a time is
marked handled only after its submission is recorded, so after a crash the same time is
due again, its re-submission hits the same id, Ray refuses it as a duplicate and the
scheduler records it as already submitted. Nothing is repeated and nothing is lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from setpipe.data.fingerprint import fingerprint
from setpipe.errors import DataError, JobError, SetpipeError
from setpipe.jobs.state import State
from setpipe.jobs.submit import DuplicateSubmission, JobsClient, submission_id_for
from setpipe.spec.loading import load_job
from setpipe.spec.models import JobSpec

Action = Literal[
    "registered", "submitted", "already_submitted", "skipped", "stopped", "finished", "error"
]


_FINGERPRINT_LINE = re.compile(r"^\s*data fingerprint ([0-9a-f]{64})\s*$", re.MULTILINE)


def fingerprint_line(fingerprint: str) -> str:
    """The line ``setpipe run`` prints for the data it read; the scheduler reads it back
    from the job's log. The Ray Jobs log is the one channel from a finished run that the
    scheduler already reads, through the API it submits with; the run's MLflow store or
    work dir may not be reachable from where the scheduler runs."""
    return f"  data fingerprint {fingerprint}"


def read_fingerprint(logs: str) -> str | None:
    """The fingerprint of the last ``fingerprint_line`` in a run's log, or None."""
    found = _FINGERPRINT_LINE.findall(logs)
    return found[-1] if found else None


@dataclass(frozen=True)
class Event:
    """One thing a pass did, for the log and for tests."""

    job: str
    action: Action
    scheduled: datetime | None = None
    submission_id: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        when = f" {self.scheduled.astimezone(UTC):%Y-%m-%dT%H:%MZ}" if self.scheduled else ""
        sid = f" {self.submission_id}" if self.submission_id else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.job}{when} {self.action}{sid}{detail}"


@dataclass
class _Loaded:
    stamp: tuple[int, int]
    job: JobSpec | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Submits the scheduled jobs of ``jobs_dir`` through ``client``; state in ``state``."""

    def __init__(
        self,
        jobs_dir: str | Path,
        client: JobsClient,
        state: State,
        *,
        now: Callable[[], datetime] = _utc_now,
        grace: timedelta = timedelta(minutes=5),
        max_catchup: int = 50,
        entrypoint: str | None = None,
    ) -> None:
        self.jobs_dir = Path(jobs_dir)
        if not self.jobs_dir.is_dir():
            raise JobError(f"{self.jobs_dir}: not a directory; give the directory of job YAMLs")
        self.client = client
        self.state = state
        self.now = now
        self.grace = grace
        self.max_catchup = max_catchup
        # None runs `setpipe run` of the resolved job; another command (a wrapper script,
        # or a quick stand-in in tests) gets the same runtime env and ids.
        self.entrypoint = entrypoint
        self._files: dict[Path, _Loaded] = {}
        self._scheduled: list[JobSpec] = []

    # ------------------------------------------------------------------ passes

    def run_once(self) -> list[Event]:
        """One pass: record outcomes, reload changed files, submit what is due."""
        now = self.now()
        if now.tzinfo is None:
            raise JobError("the scheduler clock returned a naive datetime; give it a timezone")
        events = self._poll()
        jobs, load_events = self._load_jobs()
        self._scheduled = jobs
        events += load_events
        for job in jobs:
            events += self._schedule(job, now)
        return events

    def idle_note(self) -> str:
        """What a pass that did nothing says: each scheduled job's next time, soonest first."""
        from croniter import croniter

        now = self.now()
        upcoming = []
        for job in self._scheduled:
            assert job.schedule is not None
            last = self.state.last_fire(job.name)
            start = max(now, last) if last is not None else now
            zone = ZoneInfo(job.schedule.timezone)
            upcoming.append(
                (croniter(job.schedule.cron, start.astimezone(zone)).get_next(datetime), job.name)
            )
        if not upcoming:
            return f"nothing due: no job in {self.jobs_dir} has a schedule: block"
        return "nothing due; next: " + ", ".join(
            f"{name} at {_z(when)}" for when, name in sorted(upcoming)
        )

    def run_forever(self, interval: float, log: Callable[[str], None] = print) -> None:
        """Passes every ``interval`` seconds until interrupted; a failing pass is logged."""
        while True:
            try:
                for event in self.run_once():
                    log(str(event))
            except SetpipeError as err:
                log(f"error: {err}")
            time.sleep(interval)

    # ------------------------------------------------------------------ 1. outcomes

    def _poll(self) -> list[Event]:
        events = []
        for sub in self.state.unfinished():
            try:
                status = self.client.status(sub.submission_id)
                message = self.client.message(sub.submission_id) if status != sub.status else ""
            except DuplicateSubmission:  # pragma: no cover - status never raises it
                continue
            except JobError as err:
                if "no job" not in str(err):
                    return [Event(sub.job, "error", sub.scheduled, sub.submission_id, str(err))]
                # The cluster forgot the job (it was restarted): its outcome is unknowable.
                status, message = "LOST", "the cluster no longer knows this job"
            if status == sub.status:
                continue
            if status == "SUCCEEDED":
                read = self._read_fingerprint(sub.submission_id)
                if read is not None:
                    self.state.set_read_fingerprint(sub.submission_id, read)
                data = read or sub.fingerprint
                if data:
                    self.state.set_success_fingerprint(sub.job, data, sub.submission_id)
            # Last: a pass that crashes before this line polls the submission again.
            self.state.set_status(sub.submission_id, status, message)
            if status in ("SUCCEEDED", "FAILED", "STOPPED", "LOST"):
                events.append(Event(sub.job, "finished", sub.scheduled, sub.submission_id, status))
        return events

    def _read_fingerprint(self, submission_id: str) -> str | None:
        """What the run printed for the files it read; None if it printed nothing (a
        stand-in entrypoint, an older setpipe) or its log cannot be read."""
        try:
            return read_fingerprint(self.client.logs(submission_id))
        except JobError:
            return None

    # ------------------------------------------------------------------ 2. job files

    def _load_jobs(self) -> tuple[list[JobSpec], list[Event]]:
        paths = sorted(
            p for p in self.jobs_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        events: list[Event] = []
        for path in paths:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._files.get(path)
            if cached is not None and cached.stamp == stamp:
                continue
            try:
                job = load_job(path)
            except SetpipeError as err:
                # A broken file must not stop the other jobs; it is reported once per change.
                events.append(Event(path.name, "error", detail=str(err)))
                job = None
            self._files[path] = _Loaded(stamp, job)
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        jobs: dict[str, JobSpec] = {}
        for path in paths:
            job = self._files[path].job
            if job is None or job.schedule is None:
                continue
            if job.name in jobs:
                events.append(
                    Event(job.name, "error", detail=f"{path.name}: job name used by another file")
                )
                continue
            jobs[job.name] = job
        return list(jobs.values()), events

    # ------------------------------------------------------------------ 3. due times

    def _schedule(self, job: JobSpec, now: datetime) -> list[Event]:
        from croniter import croniter

        assert job.schedule is not None
        schedule = job.schedule
        last = self.state.last_fire(job.name)
        if last is None:
            self.state.set_last_fire(job.name, now)
            upcoming = croniter(schedule.cron, now.astimezone(ZoneInfo(schedule.timezone)))
            nxt = upcoming.get_next(datetime)
            return [Event(job.name, "registered", detail=f"first run at {_z(nxt)}")]
        # Walk back from now: bounded by max_catchup however long the scheduler was down.
        walk = croniter(
            schedule.cron,
            (now + timedelta(microseconds=1)).astimezone(ZoneInfo(schedule.timezone)),
        )
        due: list[datetime] = []
        while len(due) <= self.max_catchup:
            when = walk.get_prev(datetime)
            if when <= last:
                break
            due.append(when)
        if not due:
            return []
        due.reverse()  # oldest first
        if schedule.catchup == "all":
            run = due[-self.max_catchup :]
        elif schedule.catchup == "latest" or now - due[-1] <= self.grace:
            run = due[-1:]
        else:
            run = []
        events = []
        missed = [t for t in due if t not in run]
        if missed:
            more = "+" if len(due) > self.max_catchup else ""
            events.append(
                Event(
                    job.name,
                    "skipped",
                    missed[-1],
                    detail=f"{len(missed)}{more} missed time(s) {_z(missed[0])} .. "
                    f"{_z(missed[-1])} (catchup {schedule.catchup})",
                )
            )
            self.state.set_last_fire(job.name, missed[-1])
        for when in run:
            event = self._fire(job, when)
            events.append(event)
            if event.action == "error":
                break  # not marked handled: the next pass tries this time again
            self.state.set_last_fire(job.name, when)
        return events

    # ------------------------------------------------------------------ 4. one run

    def _fire(self, job: JobSpec, when: datetime) -> Event:
        assert job.schedule is not None
        schedule = job.schedule
        sid = submission_id_for(job, when)
        if any(s.submission_id == sid for s in self.state.submissions(job.name)):
            return Event(job.name, "already_submitted", when, sid, "recorded before")
        try:
            data = fingerprint(job.data)
        except DataError as err:
            if schedule.on_new_data:
                return Event(job.name, "skipped", when, sid, str(err))
            data = None  # without on_new_data a missing listing is the run's problem
        if schedule.on_new_data:
            last = self.state.last_success_fingerprint(job.name)
            if data == last:
                return Event(
                    job.name, "skipped", when, sid, "data unchanged since the last success"
                )
        unfinished = self.state.unfinished(job.name)
        if unfinished and schedule.concurrency == "forbid":
            ids = ", ".join(s.submission_id for s in unfinished)
            return Event(
                job.name, "skipped", when, sid, f"{ids} still running (concurrency forbid)"
            )
        stopped = []
        if unfinished and schedule.concurrency == "replace":
            for sub in unfinished:
                self.client.stop(sub.submission_id)
                stopped.append(sub.submission_id)
        try:
            self.client.submit(
                job,
                sid,
                entrypoint=self.entrypoint,
                metadata={"setpipe_scheduled": when.isoformat()},
            )
            action: Action = "submitted"
        except DuplicateSubmission:
            action = "already_submitted"
        except JobError as err:
            return Event(job.name, "error", when, sid, str(err))
        self.state.record_submission(sid, job.name, when, self.now(), data)
        detail = f"replacing {', '.join(stopped)}" if stopped else ""
        return Event(job.name, action, when, sid, detail)


def _z(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%dT%H:%MZ}"
