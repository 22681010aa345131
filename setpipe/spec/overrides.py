"""``a.b.c=value`` overrides, applied to the raw job before it is validated.

The value is read as a YAML scalar or flow collection (``train.epochs=3`` is the
integer 3, ``data.context=[jet_pt]`` a list), so pydantic types it like a value
written in the file. Keys are checked against the models level by level, so a typo
is reported with the nearest valid key. Setting a union's tag (``model.encoder.kind=umbc``)
drops the sibling keys the new variant does not have: switching encoders from the
command line must not fail on the old encoder's widths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from setpipe.errors import SpecError
from setpipe.spec import _yaml
from setpipe.spec._fields import Level, Segment, field_level, format_path, level_of, narrow
from setpipe.spec._render import did_you_mean, one_of, show

_SEGMENT = re.compile(r"[^.\[\]]+|\[(\d+)\]")


class _Problem(Exception):
    """One override that cannot be applied; the message goes after 'override "...": '."""


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], root: type[BaseModel]
) -> dict[tuple[Segment, ...], str]:
    """Apply each override to ``data`` in place; returns {path set: override text}.

    Every bad override is reported, one line each, in a single SpecError.
    """
    applied: dict[tuple[Segment, ...], str] = {}
    problems: list[str] = []
    for text in overrides:
        try:
            applied[_apply(data, text, root)] = text
        except _Problem as problem:
            problems.append(f'override "{text}": {problem}')
    if problems:
        raise SpecError("\n".join(problems))
    return applied


def parse_key(key: str) -> tuple[Segment, ...]:
    """'data.features.0.name' or 'data.features[0].name' -> ('data', 'features', 0, 'name')."""
    if not key or key.startswith(".") or key.endswith(".") or ".." in key:
        raise _Problem(f"{key!r} is not a dotted key; write it like train.epochs=3")
    segments: list[Segment] = []
    for match in _SEGMENT.finditer(key):
        text = match.group(1) or match.group(0)
        segments.append(int(text) if text.isdigit() else text)
    return tuple(segments)


def parse_value(raw: str, key: str) -> Any:
    """The override's value as YAML reads it; text YAML cannot read ("*/5 * * * *") stays text."""
    try:
        return _yaml.load_value(raw, key)
    except SpecError as err:  # over a bound: too deep, a recursive alias, a huge number
        reason = re.sub(rf"^{re.escape(key)}(:\d+)?: ", "", str(err))
        raise _Problem(f"{key}: {reason}") from None
    except yaml.YAMLError as err:
        if not raw.lstrip().startswith(("[", "{")):
            # A cron line or "@daily" is not valid YAML, but the user plainly means the text.
            return raw
        problem = getattr(err, "problem", None) or str(err)
        raise _Problem(
            f"{key}: cannot read {raw!r} as a YAML value ({problem}); quote it, e.g. "
            f"{key}='\"{raw}\"'"
        ) from None


def _apply(data: dict[str, Any], text: str, root: type[BaseModel]) -> tuple[Segment, ...]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _Problem("expected KEY=VALUE, e.g. train.epochs=3")
    path = parse_key(key)
    value = parse_value(raw, format_path(path))
    node: Any = data
    level = Level("model", models=(root,))
    for depth, segment in enumerate(path):
        here, last = path[: depth + 1], depth == len(path) - 1
        parent_name = format_path(path[:depth]) or "the job"
        if level.kind == "value":
            raise _Problem(
                f"{format_path(here)}: unknown key; {parent_name} takes a value, not keys"
            )
        if level.kind == "list":
            if not isinstance(segment, int):
                raise _Problem(
                    f"{format_path(here)}: {parent_name} is a list; address an item by its "
                    f"index, e.g. {format_path((*path[:depth], 0))}"
                )
            items = node if isinstance(node, list) else []
            if segment >= len(items):
                raise _Problem(
                    f"{format_path(here)}: no such item; {parent_name} has {len(items)} "
                    f"item(s); set the whole list instead, e.g. {format_path(path[:depth])}=[...]"
                )
            child_level = level_of(level.item)
        elif level.kind == "mapping":
            child_level = level_of(level.item)
        else:
            union, level = level, narrow(level, node)
            names = level.field_names()
            if segment not in names:
                hint = did_you_mean(segment, names) or f"; expected one of {one_of(names)}"
                raise _Problem(f"{format_path(here)}: unknown key{hint}")
            model = next(m for m in level.models if segment in m.model_fields)
            child_level = field_level(model, str(segment))
            if last and segment == union.discriminator:
                _drop_foreign_keys(node, union, value)
        if last:
            node[segment] = value
            break
        child = node[segment] if isinstance(node, list) else node.get(segment)
        if child is None and child_level.kind in ("model", "mapping"):
            child = node[segment] = {}
        elif child_level.kind in ("model", "mapping") and not isinstance(child, dict):
            raise _Problem(
                f"{format_path(here)} is {show(child)} in the job, not a mapping; set it whole "
                f"instead, e.g. {format_path(here)}={{...}}"
            )
        node, level = child, child_level
    return path


def _drop_foreign_keys(node: dict[str, Any], union: Level, tag: Any) -> None:
    variant = union.variant(tag)
    if variant is None:  # an unknown tag: validation reports it with a suggestion
        return
    for key in [k for k in node if k not in variant.model_fields]:
        del node[key]
