"""The scheduler's memory: one sqlite file, ``<workdir>/scheduler.db``.

Three tables, all keyed so that writing the same fact twice is harmless:
  fires         per job: the last scheduled time that was handled (submitted or skipped);
                times after it are due.
  submissions   every submission id with its job, scheduled time, the data fingerprint
                taken when it was submitted and the one its run printed for the files it
                read, last known Ray status and message.
  fingerprints  per job: the data fingerprint of its last SUCCEEDED run (on_new_data): the
                one the run read, else the one taken at submission.
Times are stored as ISO-8601 UTC strings. Each write is its own transaction, so a crash
loses at most the fact being written, and the scheduler's idempotent submission ids
make redoing that step safe.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from setpipe.jobs.submit import TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fires (
    job TEXT PRIMARY KEY,
    last_fire TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    submission_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    fingerprint TEXT,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    read_fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS submissions_job ON submissions (job, scheduled);
CREATE TABLE IF NOT EXISTS fingerprints (
    job TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    submission_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    job: str
    scheduled: datetime
    submitted_at: datetime
    fingerprint: str | None
    """The data fingerprint when it was submitted."""
    status: str
    message: str
    read_fingerprint: str | None = None
    """The fingerprint the run printed for the files it read (None: it printed none)."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL or self.status == "LOST"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


class State:
    """The scheduler's sqlite state; safe to reopen after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(submissions)")}
        if "read_fingerprint" not in columns:  # a scheduler.db from before the column
            self._db.execute("ALTER TABLE submissions ADD COLUMN read_fingerprint TEXT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ fires

    def last_fire(self, job: str) -> datetime | None:
        row = self._db.execute("SELECT last_fire FROM fires WHERE job = ?", (job,)).fetchone()
        return _dt(row[0]) if row else None

    def set_last_fire(self, job: str, when: datetime) -> None:
        self._db.execute(
            "INSERT INTO fires (job, last_fire) VALUES (?, ?) "
            "ON CONFLICT (job) DO UPDATE SET last_fire = excluded.last_fire "
            "WHERE excluded.last_fire > fires.last_fire",
            (job, _iso(when)),
        )

    # ------------------------------------------------------------------ submissions

    def record_submission(
        self,
        submission_id: str,
        job: str,
        scheduled: datetime,
        submitted_at: datetime,
        fingerprint: str | None,
        status: str = "PENDING",
    ) -> None:
        # INSERT OR IGNORE: a re-submission after a crash keeps the first record.
        self._db.execute(
            "INSERT OR IGNORE INTO submissions "
            "(submission_id, job, scheduled, submitted_at, fingerprint, status) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (submission_id, job, _iso(scheduled), _iso(submitted_at), fingerprint, status),
        )

    def set_status(self, submission_id: str, status: str, message: str = "") -> None:
        self._db.execute(
            "UPDATE submissions SET status = ?, message = ? WHERE submission_id = ?",
            (status, message, submission_id),
        )

    def set_read_fingerprint(self, submission_id: str, fingerprint: str) -> None:
        self._db.execute(
            "UPDATE submissions SET read_fingerprint = ? WHERE submission_id = ?",
            (fingerprint, submission_id),
        )

    def submissions(self, job: str | None = None) -> list[Submission]:
        """Submissions, oldest scheduled time first (of one job, or all)."""
        query = (
            "SELECT submission_id, job, scheduled, submitted_at, fingerprint, status, message, "
            "read_fingerprint FROM submissions"
        )
        args: tuple[str, ...] = ()
        if job is not None:
            query, args = query + " WHERE job = ?", (job,)
        rows = self._db.execute(query + " ORDER BY scheduled, submission_id", args).fetchall()
        return [Submission(r[0], r[1], _dt(r[2]), _dt(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    def unfinished(self, job: str | None = None) -> list[Submission]:
        return [s for s in self.submissions(job) if not s.finished]

    # ------------------------------------------------------------------ fingerprints

    def last_success_fingerprint(self, job: str) -> str | None:
        row = self._db.execute(
            "SELECT fingerprint FROM fingerprints WHERE job = ?", (job,)
        ).fetchone()
        return row[0] if row else None

    def set_success_fingerprint(self, job: str, fingerprint: str, submission_id: str) -> None:
        self._db.execute(
            "INSERT INTO fingerprints (job, fingerprint, submission_id) VALUES (?, ?, ?) "
            "ON CONFLICT (job) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "submission_id = excluded.submission_id",
            (job, fingerprint, submission_id),
        )
