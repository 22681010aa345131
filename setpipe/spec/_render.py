"""pydantic ValidationErrors rendered the setpipe way: one line per problem.

``jobs/jets.yaml:12: model.encoder.kind: "settransformer" is not one of deepsets, umbc,
set_transformer; did you mean "set_transformer"?`` -- where (file:line, or the override
that set the value), the dotted field, the value found, what is expected, and the fix.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from setpipe.spec._fields import (
    Level,
    Segment,
    _is_union,
    describe,
    field_level,
    format_path,
    level_of,
    suggest,
)

Path = tuple[Segment, ...]
SCHEMA_HINT = "see schemas/job.schema.json"


def show(value: Any) -> str:
    """A value as the user would write it: "text", 3, true, null, [a, b] (cut when long)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(choices: list[Any]) -> str:
    return ", ".join(str(c) for c in choices)


def did_you_mean(word: Any, choices: list[str]) -> str:
    near = suggest(str(word), choices)
    return f'; did you mean "{near}"?' if near else ""


class Renderer:
    """Turns errors about one job into lines, knowing its source, key lines and overrides."""

    def __init__(
        self,
        root: type[BaseModel],
        source: str,
        data: Any,
        lines: Mapping[Path, int],
        overrides: Mapping[Path, str],
    ) -> None:
        self.root, self.source, self.data = root, source, data
        self.lines, self.overrides = lines, overrides

    def where(self, path: Path, *, line: bool = True) -> str:
        """'override "k=v"' when an override set this value, else file:line (or file)."""
        for set_path, text in self.overrides.items():
            if path[: len(set_path)] == set_path:
                return f'override "{text}"'
        found = self.lines.get(path) if line else None
        return f"{self.source}:{found}" if found else self.source

    def lines_for(self, err: ValidationError) -> list[str]:
        out: list[str] = []
        seen_unions: set[Path] = set()
        for error in err.errors():
            path, level, parent, via_union = self._walk(error["loc"])
            if via_union:
                # str | list[str] reports once per arm; one line says what the field takes.
                if path in seen_unions:
                    continue
                seen_unions.add(path)
                expected = describe(level.annotation) or "another value"
                value = self._value_at(path)
                out.append(
                    f"{self.where(path)}: {format_path(path)}: got {show(value)}; "
                    f"expected {expected}"
                )
                continue
            out.append(self._one(error, path, level, parent))
        return out

    # ------------------------------------------------------------------ one error

    def _one(self, error: Mapping[str, Any], path: Path, level: Level, parent: Level | None) -> str:
        kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
        field = format_path(path)
        if kind == "missing":
            return (
                f"{self.where(path, line=False)}: {field}: required field is missing; add it "
                f"({SCHEMA_HINT})"
            )
        if kind == "extra_forbidden":
            choices = parent.field_names() if parent else []
            hint = did_you_mean(path[-1], choices) or f"; expected one of {one_of(choices)}"
            return f"{self.where(path)}: {field}: unknown key{hint}"
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            key = (*path, level.discriminator or "")
            tags = level.tags()
            if kind == "union_tag_not_found":
                return (
                    f"{self.where(path)}: {format_path(key)}: required field is missing; "
                    f"expected one of {one_of(tags)}"
                )
            return (
                f"{self.where(key)}: {format_path(key)}: {show(ctx['tag'])} is not one of "
                f"{one_of(tags)}{did_you_mean(ctx['tag'], tags)}"
            )
        if kind == "literal_error":
            choices = [str(c) for c in typing.get_args(level.annotation)]
            listed = one_of(choices) if choices else str(ctx.get("expected", "")).replace("'", "")
            return (
                f"{self.where(path)}: {field}: {show(value)} is not one of {listed}"
                f"{did_you_mean(value, choices)}"
            )
        if kind == "value_error":
            reason = str(ctx.get("error", error["msg"]))
            if isinstance(value, dict):  # a cross-field rule of the model at this path
                return f"{self.where(path)}: {field + ': ' if field else ''}{reason}"
            return f"{self.where(path)}: {field}: got {show(value)}; {reason}"
        if kind == "list_type":
            expected = describe(level.annotation) or "a list"
            if isinstance(value, str):  # the usual slip: one name where a list is wanted
                expected += f", e.g. [{value}]"
        elif kind == "string_type" and isinstance(value, int | float):
            # YAML read 2024 or true as a number or a boolean; quoting keeps it text.
            expected = f'a string; quote it: "{show(value)}"'
        elif kind in _EXPECTED:
            expected = _EXPECTED[kind].format(**ctx)
        else:
            expected = error["msg"].removeprefix("Input should be ").rstrip(".")
        return f"{self.where(path)}: {field}: got {show(value)}; expected {expected}"

    # ------------------------------------------------------------------ locations

    def _walk(self, loc: tuple[Any, ...]) -> tuple[Path, Level, Level | None, bool]:
        """A pydantic loc -> (clean path, level there, level of its parent, through a union).

        Discriminated unions put the variant's tag in the loc and plain unions the arm's
        name ("str", "list[str]"); neither is a key the user wrote, so both are dropped.
        """
        level = Level("model", models=(self.root,))
        parent: Level | None = None
        path: list[Segment] = []
        for segment in loc:
            if level.kind == "model" and len(level.models) > 1:
                chosen = level.variant(segment)
                if chosen is not None:
                    level = Level("model", models=(chosen,))
                    continue
            if level.kind == "value" and _is_union(level.annotation):
                return tuple(path), level, parent, True
            parent = level
            path.append(segment)
            if level.kind == "model" and isinstance(segment, str):
                model = level.models[0]
                level = (
                    field_level(model, segment)
                    if segment in model.model_fields
                    else Level("value", annotation=Any)
                )
            elif level.kind in ("list", "mapping"):
                level = level_of(level.item)
            else:
                level = Level("value", annotation=Any)
        return tuple(path), level, parent, False

    def _value_at(self, path: Path) -> Any:
        value = self.data
        for segment in path:
            try:
                value = value[segment]
            except (KeyError, IndexError, TypeError):
                return None
        return value


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
    "greater_than": "a number greater than {gt}",
    "greater_than_equal": "a number of at least {ge}",
    "less_than": "a number less than {lt}",
    "less_than_equal": "a number of at most {le}",
    "too_short": "at least {min_length} item(s)",
    "too_long": "at most {max_length} item(s)",
    "string_pattern_mismatch": "a string matching {pattern}",
}
