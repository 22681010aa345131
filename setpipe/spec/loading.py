"""Loading a job: safe YAML -> ${VAR} interpolation -> overrides -> pydantic, errors worded once.

``load_job`` is the only way a job enters setpipe from a file; ``job_from_dict`` takes a
mapping that is already resolved (a job.yaml stored beside a checkpoint or a model);
``dump_job`` writes the resolved job back as YAML that loads to an equal JobSpec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from setpipe.errors import SpecError
from setpipe.spec import _yaml
from setpipe.spec._render import Renderer, show
from setpipe.spec.interpolation import interpolate, interpolate_override
from setpipe.spec.models import JobSpec
from setpipe.spec.overrides import apply_overrides

_NEEDS = "expected a mapping of job keys with at least name, data and model"


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, interpolate, override and validate the job at ``path``; SpecError says what is wrong.

    ``overrides`` are ``a.b.c=value`` strings applied after interpolation.
    """
    source = str(path)
    text = _yaml.read_text(path, source)
    data, lines = _yaml.parse(text, source)
    if data is None:
        raise SpecError(f"{source}: the file is empty; {_NEEDS}")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level is {_kind(data)}; {_NEEDS}")
    data = interpolate(data, source, lines)
    return _validate(data, source, lines, [interpolate_override(o) for o in overrides])


def job_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> JobSpec:
    """Validate an already-resolved mapping (no interpolation); errors name ``source``."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: the job is {_kind(data)}; {_NEEDS}")
    return _validate(dict(data), source, {}, ())


def dump_job(job: JobSpec) -> str:
    """The resolved job as YAML, every default written out, that ``load_job`` reads back equal.

    A literal ``${`` in a value is written as ``$${`` so that interpolation on load keeps
    it literal; read the text back with ``load_job``, not a bare ``yaml.safe_load``.
    """
    return _yaml.dump(job.model_dump(mode="json"))


def _validate(
    data: dict[str, Any],
    source: str,
    lines: Mapping[tuple[str | int, ...], int],
    overrides: Sequence[str],
) -> JobSpec:
    applied = apply_overrides(data, overrides, JobSpec) if overrides else {}
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        renderer = Renderer(JobSpec, source, data, lines, applied)
        raise SpecError("\n".join(renderer.lines_for(err))) from None


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return f"the value {show(value)}"
