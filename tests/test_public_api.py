"""The public surface of `import setpipe` is pinned; importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import setpipe


def test_all_is_pinned() -> None:
    assert setpipe.__all__ == [
        "JobSpec",
        "SetBatch",
        "SetpipeError",
        "__version__",
        "dump_job",
        "load_job",
    ]


def test_every_name_resolves() -> None:
    from setpipe.data.batch import SetBatch
    from setpipe.errors import SetpipeError
    from setpipe.spec import JobSpec, dump_job, load_job

    assert setpipe.JobSpec is JobSpec
    assert setpipe.SetBatch is SetBatch
    assert setpipe.SetpipeError is SetpipeError
    assert (setpipe.dump_job, setpipe.load_job) == (dump_job, load_job)
    assert isinstance(setpipe.__version__, str)


def test_import_does_not_load_torch_ray_or_mlflow() -> None:
    code = (
        "import sys, setpipe, setpipe.cli\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
        "setpipe.SetBatch\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\nTrue\n"
