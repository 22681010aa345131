"""Ray Jobs: submit a resolved job to a cluster's dashboard and follow, list, stop it.

The only module that imports the Ray Jobs SDK (``ray.job_submission``). A submitted job
ships two things in its runtime env: a temp ``working_dir`` holding the resolved job as
``resolved_job.yaml`` (every ${VAR} and KEY=VALUE already applied on the submitting
machine), and the ``setpipe`` package itself as a ``py_modules`` entry, so the cluster
runs the submitter's code. ``job.cluster.runtime_env`` (pip, env_vars, ...) is merged in.

Token auth: setpipe finds the token itself (``$RAY_AUTH_TOKEN``, the file named by
``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``: the order Ray uses) and sends it as
``Authorization: Bearer <token>`` through the client's ``headers=``. Ray 2.60's client
adds that header by itself only when the submitting process has ``RAY_AUTH_MODE=token``,
which a laptop talking to a remote head rarely sets; passing it explicitly makes the
token work either way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from setpipe.errors import JobError
from setpipe.spec.loading import dump_job
from setpipe.spec.models import JobSpec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
JOB_FILE = "resolved_job.yaml"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
START_HEAD = "start a head with `ray start --head --dashboard-host 127.0.0.1` (dashboard on :8265)"
COPY_TOKEN = (
    "export RAY_AUTH_TOKEN=<token> (print it on the head with `ray get-auth-token`) "
    "or copy ~/.ray/auth_token from the head"
)


@dataclass(frozen=True)
class Token:
    """A Ray auth token and where it was found (named in error messages, never printed)."""

    value: str
    source: str


class DuplicateSubmission(JobError):
    """The cluster already has a job with this submission id (it was submitted before)."""


def default_address(env: Mapping[str, str] | None = None) -> str:
    """``$RAY_ADDRESS`` when it is an http(s) dashboard address, else the local default."""
    env = os.environ if env is None else env
    address = env.get("RAY_ADDRESS", "")
    return address if address.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def normalize_address(address: str | None, env: Mapping[str, str] | None = None) -> str:
    """The dashboard URL to talk to: ``head:8265`` becomes ``http://head:8265``."""
    address = (address or default_address(env)).rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise JobError(
            f"--address {address}: the Jobs API speaks HTTP to the head's dashboard; give "
            "http://HEAD:8265"
        )
    return address if "://" in address else f"http://{address}"


def find_token(env: Mapping[str, str] | None = None, home: Path | None = None) -> Token | None:
    """The token Ray itself would use: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return Token(env["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN")
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise JobError(
                f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({err.strerror}); "
                f"point it at a file holding the cluster's token, or {COPY_TOKEN}"
            ) from None
        if not value:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty; {COPY_TOKEN}")
        return Token(value, f"$RAY_AUTH_TOKEN_PATH ({path})")
    path = (home if home is not None else Path.home()) / ".ray" / "auth_token"
    if path.is_file() and (value := path.read_text(encoding="utf-8").strip()):
        return Token(value, str(path))
    return None


def submission_id_for(job: JobSpec, scheduled: datetime | None = None) -> str:
    """Deterministic id: ``setpipe-<name>-<YYYYmmddTHHMMZ>`` of the scheduled time (UTC).

    A scheduled run is named by its cron time alone, so re-submitting it after a crash
    hits the same id and Ray refuses the duplicate. A manual submit (``scheduled`` None)
    uses now, rounded down to the minute, plus 8 hex digits of the resolved job's
    SHA-256: the same job submitted twice within a minute is one run, a changed one is
    another.
    """
    if scheduled is not None:
        return f"setpipe-{job.name}-{_stamp(scheduled)}"
    digest = hashlib.sha256(dump_job(job).encode()).hexdigest()[:8]
    return f"setpipe-{job.name}-{_stamp(datetime.now(UTC))}-{digest}"


def _stamp(when: datetime) -> str:
    if when.tzinfo is None:
        raise JobError(f"scheduled time {when.isoformat()} has no timezone")
    return when.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def runtime_env_for(job: JobSpec, working_dir: Path) -> dict[str, Any]:
    """The job's runtime env: its own ``cluster.runtime_env`` plus the job file and setpipe."""
    env = dict(job.cluster.runtime_env)
    if "working_dir" in env:
        raise JobError(
            f"{job.name}: cluster.runtime_env.working_dir is taken: setpipe ships the resolved "
            "job in the working_dir; put your code in cluster.runtime_env.py_modules or read "
            "files by absolute or s3:// paths"
        )
    env["working_dir"] = str(working_dir)
    package = str(Path(__file__).resolve().parents[1])  # the setpipe package directory
    env["py_modules"] = [package, *env.get("py_modules", [])]
    return env


def check_durable_paths(job: JobSpec) -> None:
    """A submitted job runs in Ray's temporary working_dir on the cluster, deleted when the
    job ends: a relative workdir (MLflow store, registry, checkpoints) or data path would
    resolve inside it. JobError naming each such path and the fix."""
    from setpipe.data.fingerprint import data_sources

    def relative(path: str) -> bool:
        return "://" not in path and not path.startswith(("/", "~"))

    problems = []
    if relative(job.workdir):
        problems.append(
            f"workdir is {job.workdir!r}: on the cluster it would be inside Ray's temporary "
            "working directory and lost with the job (the MLflow store, the registry and the "
            "checkpoints with it); give an absolute path on storage the cluster keeps, e.g. "
            "workdir=/mnt/shared/setpipe"
        )
    problems += [
        f"data source {source!r} is relative: the cluster resolves it inside Ray's temporary "
        "working directory; give an absolute path or an s3:// / gs:// URI"
        for source in data_sources(job.data)
        if relative(source)
    ]
    if problems:
        raise JobError(f"{job.name}: cannot submit: " + "; ".join(problems))


def run_entrypoint() -> str:
    return f"python -m setpipe run {JOB_FILE}"


@dataclass(frozen=True)
class JobRow:
    """One job as ``setpipe jobs list`` shows it."""

    submission_id: str
    status: str
    entrypoint: str
    start_time: datetime | None
    end_time: datetime | None
    message: str


class JobsClient:
    """A Ray Jobs API client for one dashboard address, with token auth and worded errors."""

    def __init__(
        self, address: str | None = None, token: Token | Literal["find"] | None = "find"
    ) -> None:
        """``token="find"`` looks it up with ``find_token``; None sends no token."""
        self.address = normalize_address(address)
        self.token = find_token() if token == "find" else token
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else {}
        from ray.job_submission import JobSubmissionClient

        with self._errors(), _without_address_env():
            self._client = JobSubmissionClient(self.address, headers=headers)

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        job: JobSpec,
        submission_id: str,
        *,
        entrypoint: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Submit ``job`` (``setpipe run`` of its resolved YAML, or ``entrypoint``).

        Raises DuplicateSubmission when the cluster already knows ``submission_id``.
        """
        check_durable_paths(job)
        staging = Path(tempfile.mkdtemp(prefix="setpipe-submit-"))
        try:
            (staging / JOB_FILE).write_text(dump_job(job), encoding="utf-8")
            runtime_env = runtime_env_for(job, staging)
            with self._errors(submission_id):
                return self._client.submit_job(
                    entrypoint=entrypoint or run_entrypoint(),
                    submission_id=submission_id,
                    runtime_env=runtime_env,
                    metadata={"setpipe_job": job.name, **(metadata or {})},
                )
        finally:
            # The SDK uploads working_dir and py_modules to the cluster inside submit_job.
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ lookups

    def status(self, submission_id: str) -> str:
        with self._errors(submission_id):
            return str(self._client.get_job_status(submission_id).value)

    def message(self, submission_id: str) -> str:
        with self._errors(submission_id):
            return self._client.get_job_info(submission_id).message or ""

    def logs(self, submission_id: str) -> str:
        with self._errors(submission_id):
            return self._client.get_job_logs(submission_id)

    def list(self) -> list[JobRow]:
        """Submitted jobs, oldest first."""
        with self._errors():
            details = self._client.list_jobs()
        rows = [
            JobRow(
                submission_id=d.submission_id or d.job_id or "?",
                status=str(d.status.value),
                entrypoint=d.entrypoint,
                start_time=_ms(d.start_time),
                end_time=_ms(d.end_time),
                message=d.message or "",
            )
            for d in details
            if d.submission_id  # drivers started by hand (ray.init) have no submission id
        ]
        return sorted(rows, key=lambda r: r.start_time or datetime.min.replace(tzinfo=UTC))

    def stop(self, submission_id: str) -> bool:
        """Ask the job to stop; False when it had already finished."""
        with self._errors(submission_id):
            return bool(self._client.stop_job(submission_id))

    def wait(
        self,
        submission_id: str,
        timeout: float = 600.0,
        poll: float = 0.5,
        until: Callable[[str], bool] = TERMINAL.__contains__,
    ) -> str:
        """Poll until ``until(status)`` (default: a terminal status); JobError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(submission_id)
            if until(status):
                return status
            if time.monotonic() > deadline:
                raise JobError(
                    f"job {submission_id} on {self.address} is still {status} after "
                    f"{timeout:g} s; `setpipe jobs logs {submission_id}` shows what it does"
                )
            time.sleep(poll)

    def follow(self, submission_id: str, out: IO[str]) -> str:
        """Stream the job's logs to ``out`` until it ends; returns its final status."""
        import asyncio

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(submission_id):
                out.write(chunk)
                out.flush()

        with self._errors(submission_id):
            asyncio.run(tail())
        return self.wait(submission_id, timeout=60.0)

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _errors(self, submission_id: str | None = None) -> Iterator[None]:
        """Turn the SDK's ConnectionError / AuthenticationError / RuntimeError into JobError."""
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            if "Missing authentication token" in str(err) or "Authentication required" in str(err):
                raise JobError(
                    f"the Ray cluster at {self.address} requires an auth token and none was "
                    f"found here: {COPY_TOKEN}"
                ) from None
            source = self.token.source if self.token else "the client"
            raise JobError(
                f"the Ray cluster at {self.address} rejected the auth token from {source}: it "
                f"is not this cluster's token; {COPY_TOKEN}"
            ) from None
        except ConnectionError:
            raise JobError(
                f"cannot reach a Ray dashboard at {self.address}: nothing answers there. Check "
                f"the address and port (the head's --dashboard-port, default 8265), or {START_HEAD}"
            ) from None
        except RuntimeError as err:
            text = str(err)
            if submission_id and "already exists" in text:
                raise DuplicateSubmission(
                    f"job {submission_id} already exists on {self.address}"
                ) from None
            if submission_id and "does not exist" in text:
                raise JobError(
                    f"no job {submission_id} on {self.address}; `setpipe jobs list --address "
                    f"{self.address}` shows the jobs there"
                ) from None
            if "404" in text:
                raise JobError(
                    f"{self.address} answers but is not a Ray dashboard (no /api/version); give "
                    "the head's dashboard address, http://HEAD:8265"
                ) from None
            raise JobError(f"Ray Jobs API at {self.address}: {_first_line(text)}") from None


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    # The dashboard returns the server traceback; its last line is the actual error.
    return lines[-1].strip().rstrip(".") if lines else text


def _ms(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


@contextmanager
def _without_address_env() -> Iterator[None]:
    """The SDK lets $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS override an explicit address.

    setpipe already folded $RAY_ADDRESS into the default, so an explicit --address must win;
    the variables are hidden only while the client is built (the CLI is single-threaded).
    """
    saved = {
        k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)
