"""A search space's values as jobs: each trial is the job with some dotted paths overridden.

``search.space`` is keyed by the same dotted paths as ``a.b.c=value`` overrides, so a trial
is built exactly like ``setpipe run JOB k=v``: the resolved job (without its search block)
as a mapping, the overrides applied by ``setpipe.spec.overrides``, validated again. At load,
``space_errors`` builds every listed choice and both ends of every range that way, so a path
that does not exist, a distribution on a field that takes no number, or a value that breaks
another rule (``dim`` not a multiple of ``heads``) is reported before any trial runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from setpipe.errors import SpecError
from setpipe.spec._render import Renderer, show
from setpipe.spec.overrides import apply_overrides, parse_key

if TYPE_CHECKING:
    from setpipe.spec.models import JobSpec


class _Bad(Exception):
    """One value of the space that does not make a job; the message says why."""


def override_text(path: str, value: Any) -> str:
    """``path=value`` with the value written as JSON (a YAML flow value overrides read back)."""
    return f"{path}={json.dumps(value)}"


def trial_job(job: JobSpec, assignment: Mapping[str, Any]) -> JobSpec:
    """``job`` with each path of ``assignment`` set to its value and no search block.

    Raises SpecError naming the override that fails.
    """
    try:
        return _build(job, assignment)
    except _Bad as bad:
        raise SpecError(f"{job.name}: search trial {dict(assignment)}: {bad}") from None


def _build(job: JobSpec, assignment: Mapping[str, Any]) -> JobSpec:
    root = type(job)  # not imported: setpipe.spec.models calls this module while validating
    data = job.model_dump(mode="json", exclude={"search"})
    texts = [override_text(path, value) for path, value in assignment.items()]
    try:
        applied = apply_overrides(data, texts, root)
    except SpecError as err:
        raise _Bad(str(err)) from None
    try:
        return root.model_validate(data)
    except ValidationError as err:
        lines = Renderer(root, "", data, {}, applied).lines_for(err)
        raise _Bad("; ".join(line.removeprefix(": ") for line in lines)) from None


def _number_kind(job: JobSpec, path: str) -> type | None:
    """int or float when the field at ``path`` takes a number (not a boolean), else None."""
    node: Any = job
    segments = parse_key(path)
    for segment in segments[:-1]:
        node = node[segment] if isinstance(segment, int) else getattr(node, str(segment))
    last = segments[-1]
    if isinstance(node, BaseModel):
        annotation = type(node).model_fields[str(last)].annotation
        arms = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
        kinds = {get_args(a)[0] if get_origin(a) is Annotated else a for a in arms or (annotation,)}
        if bool in kinds:
            return None
        return float if float in kinds else int if int in kinds else None
    value = node[last] if isinstance(node, list | dict) else None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return type(value) if is_number else None


def _check(job: JobSpec, path: str, choices: Any) -> None:
    if isinstance(choices, list):
        for value in choices:
            try:
                _build(job, {path: value})
            except _Bad as bad:
                raise _Bad(f"the choice {show(value)} does not make a valid job: {bad}") from None
        return
    ((kind, bounds),) = choices.items()
    try:
        number = _number_kind(job, path)
    except (AttributeError, KeyError, IndexError, TypeError):
        number = None  # not in this job (yet): the built bounds below say what is wrong
    else:
        if number is None:
            raise _Bad(
                f"{kind} samples numbers but {path} does not take a number; give a list of "
                "choices instead, e.g. [a, b]"
            )
    for value in bounds:
        value = int(value) if kind.endswith("randint") else float(value)
        try:
            built = _build(job, {path: value})
        except _Bad as bad:
            raise _Bad(f"{kind} bound {show(value)} does not make a valid job: {bad}") from None
        number = number or _number_kind(built, path)
    if number is int and not kind.endswith("randint"):
        raise _Bad(
            f"{path} takes an integer and {kind} samples real numbers; use "
            f"{'lograndint' if kind == 'loguniform' else 'randint'} or a list of choices"
        )


def space_errors(job: JobSpec) -> list[InitErrorDetails]:
    """One error per path of ``job.search.space`` whose values do not all make valid jobs."""
    errors: list[InitErrorDetails] = []
    space = job.search.space if job.search else {}
    for path, choices in space.items():
        try:
            _check(job, path, choices)
        except _Bad as bad:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("value_error", "{error}", {"error": str(bad)}),
                    loc=("search", "space", path),
                    input=choices,
                )
            )
    return errors
