"""Submission through the Ray Jobs API against a real head with token auth (tests/jobs/conftest)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jobs_helpers import Head, write_data, write_job

from setpipe._net import free_port
from setpipe.errors import JobError
from setpipe.jobs.submit import (
    DuplicateSubmission,
    JobsClient,
    Token,
    default_address,
    find_token,
    normalize_address,
    runtime_env_for,
    submission_id_for,
)
from setpipe.spec import dump_job, load_job

SETPIPE_DIR = str(Path(__file__).resolve().parents[2] / "setpipe")
COPY = (
    "export RAY_AUTH_TOKEN=<token> (print it on the head with `ray get-auth-token`) or copy "
    "~/.ray/auth_token from the head"
)


@pytest.fixture()
def job_file(tmp_path: Path) -> Path:
    return write_job(tmp_path / "jobs" / "hello.yaml", "hello", write_data(tmp_path / "d.parquet"))


# ---------------------------------------------------------------- no cluster needed


def test_find_token_follows_rays_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text(" from-path \n")
    assert find_token({}, home) == Token("from-home", str(home / ".ray" / "auth_token"))
    path_env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}
    assert find_token(path_env, home) == Token(
        "from-path", f"$RAY_AUTH_TOKEN_PATH ({tmp_path / 'tok'})"
    )
    both = {**path_env, "RAY_AUTH_TOKEN": "from-env"}
    assert find_token(both, home) == Token("from-env", "$RAY_AUTH_TOKEN")
    assert find_token({}, tmp_path / "nobody") is None
    with pytest.raises(JobError) as err:
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)
    assert str(err.value) == (
        f"RAY_AUTH_TOKEN_PATH={tmp_path / 'missing'}: cannot read the token file (No such file "
        f"or directory); point it at a file holding the cluster's token, or {COPY}"
    )


def test_addresses() -> None:
    assert default_address({}) == "http://127.0.0.1:8265"
    assert default_address({"RAY_ADDRESS": "http://head:8265"}) == "http://head:8265"
    assert default_address({"RAY_ADDRESS": "auto"}) == "http://127.0.0.1:8265"
    assert normalize_address("head:8265/", {}) == "http://head:8265"
    with pytest.raises(JobError, match=r"^--address ray://head:10001: the Jobs API speaks HTTP"):
        normalize_address("ray://head:10001", {})


def test_submission_ids(job_file: Path) -> None:
    job = load_job(job_file)
    scheduled = datetime(2026, 3, 1, 4, 0, 59, tzinfo=UTC)
    assert submission_id_for(job, scheduled) == "setpipe-hello-20260301T0400Z"
    before = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    manual = submission_id_for(job)
    after = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    digest = hashlib.sha256(dump_job(job).encode()).hexdigest()[:8]
    assert manual in (f"setpipe-hello-{before}-{digest}", f"setpipe-hello-{after}-{digest}")
    changed = load_job(job_file, ["train.epochs=2"])
    assert submission_id_for(changed).rsplit("-", 1)[1] != digest


def test_runtime_env_merges_the_jobs_own(job_file: Path, tmp_path: Path) -> None:
    job = load_job(
        job_file,
        ["cluster.runtime_env={env_vars: {A: '1'}, py_modules: [/opt/mine]}"],
    )
    env = runtime_env_for(job, tmp_path)
    assert env == {
        "env_vars": {"A": "1"},
        "py_modules": [SETPIPE_DIR, "/opt/mine"],
        "working_dir": str(tmp_path),
    }
    taken = load_job(job_file, ["cluster.runtime_env={working_dir: /src}"])
    with pytest.raises(JobError) as err:
        runtime_env_for(taken, tmp_path)
    assert str(err.value).startswith("hello: cluster.runtime_env.working_dir is taken")


def test_unreachable_address_names_the_fix() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(JobError) as err:
        JobsClient(address, token=None)
    assert str(err.value) == (
        f"cannot reach a Ray dashboard at {address}: nothing answers there. Check the address "
        "and port (the head's --dashboard-port, default 8265), or start a head with "
        "`ray start --head --dashboard-host 127.0.0.1` (dashboard on :8265)"
    )


def test_a_relative_workdir_or_data_path_is_refused_before_submitting(
    job_file: Path, tmp_path: Path
) -> None:
    """On the cluster a relative path lands in Ray's temporary working_dir, deleted with the
    job: the MLflow store, the registry and the checkpoints would be lost."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "setpipe",
            "submit",
            str(job_file),
            "workdir=.setpipe",
            "data.train=d.parquet",
            "--address",
            f"http://127.0.0.1:{free_port()}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: hello: cannot submit: workdir is '.setpipe': on the cluster it would be inside "
        "Ray's temporary working directory and lost with the job (the MLflow store, the "
        "registry and the checkpoints with it); give an absolute path on storage the cluster "
        "keeps, e.g. workdir=/mnt/shared/setpipe; data source 'd.parquet' is relative: the "
        "cluster resolves it inside Ray's temporary working directory; give an absolute path "
        "or an s3:// / gs:// URI\n"
    )


# ---------------------------------------------------------------- against the head


def test_submit_ships_resolved_job_and_setpipe(client: JobsClient, job_file: Path) -> None:
    job = load_job(job_file, ["train.epochs=3"])
    sid = f"{submission_id_for(job)}-hello"
    # The same code path as `setpipe submit`; only the command differs (no training here).
    entrypoint = (
        "python -c \"import setpipe, setpipe.spec as s; j = s.load_job('resolved_job.yaml'); "
        "print('hello setpipe', j.name, j.train.epochs, 'py_modules' in setpipe.__file__)\""
    )
    assert client.submit(job, sid, entrypoint=entrypoint) == sid
    assert client.wait(sid, timeout=120) == "SUCCEEDED"
    assert "hello setpipe hello 3 True\n" in client.logs(sid)
    assert [r.status for r in client.list() if r.submission_id == sid] == ["SUCCEEDED"]
    with pytest.raises(DuplicateSubmission) as err:
        client.submit(job, sid, entrypoint=entrypoint)
    assert str(err.value) == f"job {sid} already exists on {client.address}"


def test_stop_a_running_job(client: JobsClient, job_file: Path) -> None:
    job = load_job(job_file)
    sid = f"{submission_id_for(job)}-sleep"
    client.submit(
        job,
        sid,
        entrypoint="python -c \"import time; print('sleeping', flush=True); time.sleep(300)\"",
    )
    assert client.wait(sid, timeout=120, until=lambda s: s != "PENDING") == "RUNNING"
    assert client.stop(sid) is True
    assert client.wait(sid, timeout=60) == "STOPPED"
    assert client.stop(sid) is False


def test_unknown_job_and_wrong_token(client: JobsClient, ray_head: Head) -> None:
    with pytest.raises(JobError) as err:
        client.status("setpipe-nope")
    assert str(err.value) == (
        f"no job setpipe-nope on {ray_head.address}; `setpipe jobs list --address "
        f"{ray_head.address}` shows the jobs there"
    )
    with pytest.raises(JobError) as err:
        JobsClient(ray_head.address, token=Token("not-the-token", "$RAY_AUTH_TOKEN")).list()
    assert str(err.value) == (
        f"the Ray cluster at {ray_head.address} rejected the auth token from $RAY_AUTH_TOKEN: "
        f"it is not this cluster's token; {COPY}"
    )


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setpipe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_token_from_env_and_missing(ray_head: Head, tmp_path: Path) -> None:
    # A clean user: no RAY_AUTH_MODE, no ~/.ray/auth_token, the token only in $RAY_AUTH_TOKEN.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    missing = _cli(["jobs", "list", "--address", ray_head.address], env)
    assert missing.returncode == 1
    assert missing.stderr == (
        f"error: the Ray cluster at {ray_head.address} requires an auth token and none was "
        f"found here: {COPY}\n"
    )
    env["RAY_AUTH_TOKEN"] = ray_head.token
    env["RAY_ADDRESS"] = ray_head.address  # the default address when --address is left out
    listed = _cli(["jobs", "list"], env)
    assert listed.returncode == 0, listed.stderr
    assert "setpipe-hello-" in listed.stdout
