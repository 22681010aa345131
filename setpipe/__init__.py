"""setpipe: distributed training of mini-batch consistent set encoders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from setpipe._version import __version__
from setpipe.errors import SetpipeError
from setpipe.spec import JobSpec, dump_job, load_job

if TYPE_CHECKING:
    from setpipe.data.batch import SetBatch

__all__ = ["JobSpec", "SetBatch", "SetpipeError", "__version__", "dump_job", "load_job"]


def __getattr__(name: str) -> Any:
    # SetBatch imports torch (~1 s); `import setpipe` and `setpipe validate` must not pay for it.
    if name == "SetBatch":
        from setpipe.data.batch import SetBatch

        return SetBatch
    raise AttributeError(f"module 'setpipe' has no attribute {name!r}")
