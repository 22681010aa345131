"""The scheduler with an injected clock, submitting for real to the test head.

Every test uses its own job name (submission ids are global on the shared head) and a
quick stand-in entrypoint instead of `setpipe run` (the scheduler's `entrypoint` seam):
what is under test is when and what it submits, not training.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jobs_helpers import Head, write_data, write_job

from setpipe.cli import main
from setpipe.data.fingerprint import fingerprint
from setpipe.jobs.scheduler import Event, Scheduler, fingerprint_line, read_fingerprint
from setpipe.jobs.state import State
from setpipe.jobs.submit import JobsClient

QUICK = "python -c \"print('scheduled run')\""
SLEEP = 'python -c "import time; time.sleep(300)"'
T0 = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def at(self, hour: int, minute: int = 0, second: int = 10) -> None:
        self.now = T0.replace(hour=hour, minute=minute, second=second)


def summary(events: list[Event]) -> list[tuple[str, str, str | None]]:
    return [(e.action, f"{e.scheduled:%H%M}" if e.scheduled else "", e.detail) for e in events]


def ids_on_head(client: JobsClient, name: str) -> dict[str, str]:
    return {r.submission_id: r.status for r in client.list() if f"-{name}-" in r.submission_id}


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0)


def make(tmp_path: Path, client: JobsClient, clock: Clock, name: str, schedule: str, **kw):
    data = write_data(tmp_path / "data" / "part-0.parquet")
    write_job(tmp_path / "jobs" / f"{name}.yaml", name, data.parent, schedule)
    state = State(tmp_path / "work" / "scheduler.db")
    kw.setdefault("entrypoint", QUICK)
    return Scheduler(tmp_path / "jobs", client, state, now=clock, **kw), state, data


def test_due_and_not_due(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, state, _ = make(tmp_path, client, clock, "sched-due", "cron: '0 * * * *'")
    # First sight starts the schedule: 10:00 is already past, 11:00 is the first run.
    assert summary(sched.run_once()) == [("registered", "", "first run at 2026-11-25T11:00Z")]
    clock.at(10, 59, 59)
    assert sched.run_once() == []
    clock.at(11, 0, 5)
    events = sched.run_once()
    assert summary(events) == [("submitted", "1100", "")]
    sid = "setpipe-sched-due-20261125T1100Z"
    assert events[0].submission_id == sid
    assert sched.run_once() == []  # same minute again: nothing new is due
    assert client.wait(sid, timeout=120) == "SUCCEEDED"
    clock.at(11, 30)
    assert summary(sched.run_once()) == [("finished", "1100", "SUCCEEDED")]
    assert [(s.submission_id, s.status) for s in state.submissions()] == [(sid, "SUCCEEDED")]
    assert ids_on_head(client, "sched-due") == {sid: "SUCCEEDED"}
    assert "scheduled run" in client.logs(sid)


def test_new_data_trigger_fires_only_on_change(
    tmp_path: Path, client: JobsClient, clock: Clock
) -> None:
    sched, _, data = make(
        tmp_path, client, clock, "sched-data", "cron: '0 * * * *'\non_new_data: true"
    )
    sched.run_once()
    clock.at(11)
    assert summary(sched.run_once()) == [("submitted", "1100", "")]  # no success yet: run
    client.wait("setpipe-sched-data-20261125T1100Z", timeout=120)
    clock.at(11, 30)
    assert summary(sched.run_once()) == [("finished", "1100", "SUCCEEDED")]
    clock.at(12)
    assert summary(sched.run_once()) == [
        ("skipped", "1200", "data unchanged since the last success")
    ]
    write_data(data, rows=6)  # new rows land in the training file
    clock.at(13)
    assert summary(sched.run_once()) == [("submitted", "1300", "")]
    assert set(ids_on_head(client, "sched-data")) == {
        "setpipe-sched-data-20261125T1100Z",
        "setpipe-sched-data-20261125T1300Z",
    }
    client.wait("setpipe-sched-data-20261125T1300Z", timeout=120)
    clock.at(13, 30)
    sched.run_once()
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))  # touched
    clock.at(14)
    assert summary(sched.run_once()) == [("submitted", "1400", "")]


def test_restart_neither_repeats_nor_loses(
    tmp_path: Path, client: JobsClient, clock: Clock
) -> None:
    schedule = "cron: '0 * * * *'\nconcurrency: allow\ncatchup: all"
    first, state, _ = make(tmp_path, client, clock, "sched-restart", schedule)
    first.run_once()
    clock.at(11)
    assert summary(first.run_once()) == [("submitted", "1100", "")]
    # The process dies right after Ray accepted the 12:00 run, before recording it.
    job = next(iter(first._files.values())).job
    assert job is not None
    client.submit(job, "setpipe-sched-restart-20261125T1200Z", entrypoint=QUICK)
    state.close()
    # Down until 13:00:10; a new scheduler over the same sqlite file.
    clock.at(13)
    second = Scheduler(tmp_path / "jobs", client, State(state.path), now=clock, entrypoint=QUICK)
    events = second.run_once()
    assert [(a, t) for a, t, _ in summary(events) if a != "finished"] == [
        ("already_submitted", "1200"),
        ("submitted", "1300"),
    ]
    again = second.run_once()  # the same minute once more: nothing is submitted twice
    assert {e.action for e in again} <= {"finished"}
    assert sorted(ids_on_head(client, "sched-restart")) == [
        "setpipe-sched-restart-20261125T1100Z",
        "setpipe-sched-restart-20261125T1200Z",
        "setpipe-sched-restart-20261125T1300Z",
    ]
    assert [s.submission_id[-5:] for s in second.state.submissions()] == [
        "1100Z",
        "1200Z",
        "1300Z",
    ]


def test_catchup_latest_after_downtime(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, _, _ = make(tmp_path, client, clock, "sched-latest", "cron: '0 * * * *'")
    sched.run_once()
    clock.at(14, 30)  # 11:00, 12:00, 13:00 and 14:00 went by while it was down
    assert summary(sched.run_once()) == [
        (
            "skipped",
            "1300",
            "3 missed time(s) 2026-11-25T11:00Z .. 2026-11-25T13:00Z (catchup latest)",
        ),
        ("submitted", "1400", ""),
    ]
    clock.at(14, 31)
    assert sched.run_once() == []


def test_catchup_none_runs_only_on_time(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, _, _ = make(tmp_path, client, clock, "sched-none", "cron: '0 * * * *'\ncatchup: none")
    sched.run_once()
    clock.at(11, 30)  # 30 minutes late: beyond the 5-minute grace
    assert summary(sched.run_once()) == [
        (
            "skipped",
            "1100",
            "1 missed time(s) 2026-11-25T11:00Z .. 2026-11-25T11:00Z (catchup none)",
        )
    ]
    assert ids_on_head(client, "sched-none") == {}


def test_forbid_skips_while_running(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, _, _ = make(
        tmp_path, client, clock, "sched-forbid", "cron: '0 * * * *'", entrypoint=SLEEP
    )
    sched.run_once()
    clock.at(11)
    assert summary(sched.run_once()) == [("submitted", "1100", "")]
    first = "setpipe-sched-forbid-20261125T1100Z"
    assert client.wait(first, timeout=120, until=lambda s: s != "PENDING") == "RUNNING"
    clock.at(12)
    assert summary(sched.run_once()) == [
        ("skipped", "1200", f"{first} still running (concurrency forbid)")
    ]
    client.stop(first)
    assert client.wait(first, timeout=60) == "STOPPED"
    clock.at(13)
    events = sched.run_once()
    assert summary(events) == [("finished", "1100", "STOPPED"), ("submitted", "1300", "")]
    client.stop(events[1].submission_id)
    assert ids_on_head(client, "sched-forbid").keys() == {first, events[1].submission_id}


def test_replace_stops_the_running_one(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, _, _ = make(
        tmp_path,
        client,
        clock,
        "sched-replace",
        "cron: '0 * * * *'\nconcurrency: replace",
        entrypoint=SLEEP,
    )
    sched.run_once()
    clock.at(11)
    sched.run_once()
    first = "setpipe-sched-replace-20261125T1100Z"
    client.wait(first, timeout=120, until=lambda s: s != "PENDING")
    clock.at(12)
    events = sched.run_once()
    assert summary(events) == [("submitted", "1200", f"replacing {first}")]
    assert client.wait(first, timeout=60) == "STOPPED"
    client.stop(events[0].submission_id)


def test_bad_job_file_is_reported_once(tmp_path: Path, client: JobsClient, clock: Clock) -> None:
    sched, _, _ = make(tmp_path, client, clock, "sched-bad", "cron: '0 * * * *'")
    (tmp_path / "jobs" / "broken.yaml").write_text("name: Broken Name\n")
    events = sched.run_once()
    assert [(e.job, e.action) for e in events] == [
        ("broken.yaml", "error"),
        ("sched-bad", "registered"),
    ]
    assert sched.run_once() == []


def test_the_fingerprint_recorded_is_that_of_the_files_the_run_read(
    tmp_path: Path, client: JobsClient, clock: Clock
) -> None:
    """A file that lands after the submission, before the run lists its data, is trained on:
    the fingerprint recorded for the success must include it, or the next tick retrains
    on the same data. The entrypoint lands the file, then runs the real `setpipe run`."""
    sched, state, data = make(
        tmp_path, client, clock, "sched-read", "cron: '0 * * * *'\non_new_data: true"
    )
    late = data.with_name("part-1.parquet")
    lands = f"import shutil; shutil.copy({str(data)!r}, {str(late)!r})"
    sched.entrypoint = f'python -c "{lands}" && python -m setpipe run resolved_job.yaml --quiet'
    sched.run_once()
    job = next(iter(sched._files.values())).job
    assert job is not None
    at_submit = fingerprint(job.data)
    clock.at(11)
    assert summary(sched.run_once()) == [("submitted", "1100", "")]
    sid = "setpipe-sched-read-20261125T1100Z"
    assert client.wait(sid, timeout=600) == "SUCCEEDED", client.logs(sid)[-3000:]
    read = fingerprint(job.data)  # part-0 and part-1: what the run read
    assert read != at_submit
    assert f"data fingerprint {read}" in client.logs(sid)
    clock.at(11, 30)
    assert summary(sched.run_once()) == [("finished", "1100", "SUCCEEDED")]
    assert state.last_success_fingerprint("sched-read") == read
    assert [(s.fingerprint, s.read_fingerprint) for s in state.submissions()] == [(at_submit, read)]
    clock.at(12)
    assert summary(sched.run_once()) == [
        ("skipped", "1200", "data unchanged since the last success")
    ]


def test_a_run_that_prints_no_fingerprint_keeps_the_submit_time_one(
    tmp_path: Path, client: JobsClient, clock: Clock
) -> None:
    """A stand-in entrypoint (or an older setpipe) prints none: the fallback is the
    fingerprint taken when the run was submitted, as before."""
    sched, state, _ = make(
        tmp_path, client, clock, "sched-nofp", "cron: '0 * * * *'\non_new_data: true"
    )
    sched.run_once()
    clock.at(11)
    sched.run_once()
    client.wait("setpipe-sched-nofp-20261125T1100Z", timeout=120)
    clock.at(11, 30)
    assert summary(sched.run_once()) == [("finished", "1100", "SUCCEEDED")]
    job = next(iter(sched._files.values())).job
    assert job is not None
    assert state.last_success_fingerprint("sched-nofp") == fingerprint(job.data)
    assert [s.read_fingerprint for s in state.submissions()] == [None]


def test_read_fingerprint_takes_the_runs_last_line() -> None:
    a, b = "a" * 64, "b" * 64
    noise = f"noise data fingerprint {'c' * 64}"
    logs = f"starting\ndata fingerprint {a}\n{noise}\n  data fingerprint {b}\n"
    assert read_fingerprint(logs) == b
    assert read_fingerprint("data fingerprint 123\n") is None
    assert fingerprint_line(a) == f"  data fingerprint {a}"


def test_schedule_once_says_when_nothing_is_due(
    tmp_path: Path, ray_head: Head, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`setpipe schedule --once` from cron printed nothing at all when nothing was due."""
    write_data(tmp_path / "data" / "part-0.parquet")
    write_job(
        tmp_path / "jobs" / "yearly.yaml", "sched-once", tmp_path / "data", "cron: '0 0 1 1 *'"
    )
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    args = ["schedule", str(tmp_path / "jobs"), "--once", "--address", ray_head.address]
    args += ["--workdir", str(tmp_path / "work")]
    new_year = f"{datetime.now(UTC).year + 1}-01-01T00:00Z"
    assert main(args) == 0
    assert capsys.readouterr().out == f"sched-once registered: first run at {new_year}\n"
    assert main(args) == 0
    assert capsys.readouterr().out == f"nothing due; next: sched-once at {new_year}\n"
    (tmp_path / "jobs" / "yearly.yaml").unlink()
    assert main(args) == 0
    assert capsys.readouterr().out == (
        f"nothing due: no job in {tmp_path / 'jobs'} has a schedule: block\n"
    )
