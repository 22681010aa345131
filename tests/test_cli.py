"""The command line, run for real (`python -m setpipe`) as a user would."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from setpipe.cli import COMMANDS
from setpipe.spec import load_job

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def setpipe(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "setpipe", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_commands_are_pinned() -> None:
    assert COMMANDS == (
        "validate",
        "schema",
        "datagen",
        "convert",
        "inspect",
        "run",
        "tune",
        "serve",
        "predict",
        "export",
        "submit",
        "jobs",
        "schedule",
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_module(name: str) -> None:
    module = importlib.import_module(f"setpipe.commands.{name}")
    assert isinstance(module.HELP, str) and module.HELP
    assert callable(module.add_arguments) and callable(module.run)


def test_help_lists_exactly_the_commands() -> None:
    result = setpipe("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\w+)\s", result.stdout, flags=re.MULTILINE)
    assert tuple(listed) == COMMANDS


def test_version() -> None:
    result = setpipe("--version")
    assert (result.returncode, result.stdout) == (0, f"setpipe {version('setpipe')}\n")


def test_example_jobs_are_all_there() -> None:
    assert [p.stem for p in JOBS] == [
        "digits",
        "multihead",
        "passages",
        "qg_finetune",
        "qg_jets",
        "qg_lcm",
        "qg_part",
        "qg_pretrain",
        "qg_probe",
        "quickstart",
    ]


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_validate_example_job(path: Path) -> None:
    relative = path.relative_to(REPO).as_posix()
    job = load_job(path)
    result = setpipe("validate", relative)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f'{relative}: valid (job "{job.name}", task {job.model.task_names}, '
        f"encoder {job.model.encoder.kind})\n"
    )
    assert result.stderr == ""


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_job_starts_with_schema_comment(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/job.schema.json"


def test_validate_with_overrides_and_print(tmp_path: Path) -> None:
    result = setpipe(
        "validate",
        "jobs/quickstart.yaml",
        "train.epochs=1",
        "model.encoder.kind=umbc",
        "--print",
        env={"SETPIPE_DATA": "/data/sets"},
    )
    assert result.returncode == 0, result.stderr
    assert "  train: /data/sets/quickstart/train\n" in result.stdout
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(result.stdout, encoding="utf-8")
    job = load_job(resolved)
    assert (job.train.epochs, job.model.encoder.kind) == (1, "umbc")
    assert job.data.train == "/data/sets/quickstart/train"


def test_validate_invalid_job_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (REPO / "jobs" / "quickstart.yaml").read_text(encoding="utf-8")
    bad.write_text(text.replace("kind: deepsets", "kind: deepset"), encoding="utf-8")
    line = 1 + text.splitlines().index("    kind: deepsets")
    result = setpipe("validate", "bad.yaml", "train.epochz=2", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        'override "train.epochz=2": train.epochz: unknown key; did you mean "epochs"?\n'
    )
    result = setpipe("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f'bad.yaml:{line}: model.encoder.kind: "deepset" is not one of deepsets, umbc, '
        'set_transformer; did you mean "deepsets"?\n'
    )


def test_validate_missing_file_exits_1(tmp_path: Path) -> None:
    result = setpipe("validate", "nope.yaml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        "nope.yaml: no such file; give the path of a job YAML\n",
    )


def test_overrides_may_follow_flags() -> None:
    quickstart = "jobs/quickstart.yaml"
    result = setpipe("validate", quickstart, "--print", "train.epochs=7", "train.seed=3")
    assert result.returncode == 0, result.stderr
    assert "  epochs: 7\n" in result.stdout and "  seed: 3\n" in result.stdout


def test_an_unknown_flag_shows_the_subcommand_usage() -> None:
    result = setpipe("run", "jobs/quickstart.yaml", "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: setpipe run ")
    assert result.stderr.endswith("setpipe run: error: unrecognized arguments: --bogus\n")


def test_run_takes_fresh_or_resume_not_both() -> None:
    result = setpipe("run", "jobs/quickstart.yaml", "--fresh", "--resume")
    assert result.returncode == 2
    assert "argument --resume: not allowed with argument --fresh" in result.stderr


def run_quickstart(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`setpipe run jobs/quickstart.yaml` on tiny jets, 2 epochs, as a user runs it."""
    from setpipe.data.datagen.jets import generate_jets

    data = tmp_path / "data"
    if not data.exists():
        generate_jets(data, {"train": 200, "validation": 60, "test": 60}, seed=0)
    args = [
        f"workdir={tmp_path / 'work'}", f"data.train={data / 'train'}",
        f"data.validation={data / 'validation'}", f"data.test={data / 'test'}", "train.epochs=2",
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "setpipe", "run", str(REPO / "jobs" / "quickstart.yaml"), *args,
         *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


# A line logged by Ray's or MLflow's Python loggers ("2026-11-29 16:58:44,419	INFO worker.py:..."
# and "2026/11/29 16:58:57 INFO mlflow.store...").
LIBRARY_INFO = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d\S*\s+INFO ", re.MULTILINE)


@pytest.mark.slow
def test_each_epoch_is_printed_once_with_ray_train_workers(tmp_path: Path) -> None:
    """Ray Train turns a worker's print() into a log record and also copies it to stdout:
    every epoch line reached the terminal twice. Ray's and MLflow's INFO chatter is not
    setpipe's output."""
    out = run_quickstart(tmp_path, "train.workers=2")
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    for epoch in (1, 2):
        lines = [line for line in both.splitlines() if f"epoch {epoch}/2  " in line]
        assert len([line for line in lines if "train_loss=" in line]) == 1, lines
    assert LIBRARY_INFO.findall(out.stderr) == []
    assert "Any type hint" not in out.stderr  # MLflow's warning about setpipe's own hint


@pytest.mark.slow
def test_quiet_prints_the_summary_and_nothing_else(tmp_path: Path) -> None:
    """--quiet printed ~30 lines of Ray and MLflow INFO (and the workers' own lines)."""
    out = run_quickstart(tmp_path, "train.workers=2", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[:2] == ["", "run finished"]
    assert all(line.startswith("  ") for line in lines[2:]), lines
    assert [line.split()[0] for line in lines[2:]] == [
        "MLflow", "model", "alias", "metrics", "tracking_uri", "ray_run", "state",
        "logged_model", "data", "champion",
    ]  # fmt: skip
