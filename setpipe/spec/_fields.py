"""Walking the job models by field path: which keys a level takes, and what a value must be.

Both the override parser (``a.b.c=value`` before validation) and the error renderer
(pydantic ``loc`` tuples after it) need to know, at each level of the job, whether it
is a model (and which variant of a discriminated union), a list, a free mapping or a
plain value. This module answers that from the models themselves, so a new field
needs no change here.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Segment = str | int


@dataclass(frozen=True)
class Level:
    """What one place in the job holds.

    kind is "model" (models lists the candidate classes: one, or every variant of a
    discriminated union whose tag is not known), "list" (item), "mapping" (free keys,
    item is the value type), or "value" (annotation is the leaf type).
    """

    kind: Literal["model", "list", "mapping", "value"]
    models: tuple[type[BaseModel], ...] = ()
    discriminator: str | None = None
    item: Any = None
    annotation: Any = None

    def field_names(self) -> list[str]:
        """Keys accepted here, in declaration order, without repeats (over all variants)."""
        names: list[str] = []
        for model in self.models:
            names += [n for n in model.model_fields if n not in names]
        return names

    def tags(self) -> list[str]:
        """The discriminator values of a union's variants, in declaration order."""
        if self.discriminator is None:
            return []
        return [tag for model in self.models for tag in _literal_values(model, self.discriminator)]

    def variant(self, tag: Any) -> type[BaseModel] | None:
        for model in self.models:
            if self.discriminator and tag in _literal_values(model, self.discriminator):
                return model
        return None


def _literal_values(model: type[BaseModel], field: str) -> list[Any]:
    return list(typing.get_args(model.model_fields[field].annotation))


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def level_of(annotation: Any, discriminator: str | None = None) -> Level:
    """The Level for a field annotation (Annotated and Optional are seen through)."""
    while typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        for extra in extras:
            if isinstance(extra, FieldInfo) and isinstance(extra.discriminator, str):
                discriminator = extra.discriminator
    if _is_union(annotation):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arms) == 1:
            return level_of(arms[0], discriminator)
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in arms):
            return Level("model", models=tuple(arms), discriminator=discriminator)
        return Level("value", annotation=annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Level("model", models=(annotation,))
    origin = typing.get_origin(annotation)
    if origin is list:
        return Level("list", item=typing.get_args(annotation)[0], annotation=annotation)
    if origin is dict:
        return Level("mapping", item=typing.get_args(annotation)[1], annotation=annotation)
    if annotation is Any:
        return Level("mapping", item=Any)
    return Level("value", annotation=annotation)


def field_level(model: type[BaseModel], name: str) -> Level:
    info = model.model_fields[name]
    discriminator = info.discriminator if isinstance(info.discriminator, str) else None
    return level_of(info.annotation, discriminator)


def narrow(level: Level, value: Any) -> Level:
    """A union level narrowed to the variant that ``value``'s tag picks, when it picks one."""
    if level.kind != "model" or len(level.models) < 2 or not isinstance(value, dict):
        return level
    chosen = level.variant(value.get(level.discriminator))
    return Level("model", models=(chosen,)) if chosen else level


def suggest(word: str, choices: list[str]) -> str | None:
    """The nearest choice to a mistyped word, or None when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def describe(annotation: Any) -> str | None:
    """A short English name for a value type ("a string or a list of strings")."""
    level = level_of(annotation)
    if level.kind == "list":
        inner = describe(level.item)
        return f"a list of {_plural(inner)}" if inner else "a list"
    if level.kind == "mapping":
        return "a mapping"
    if level.kind == "model":
        return "a mapping"
    annotation = level.annotation
    if _is_union(annotation):
        parts = [describe(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(p for p in parts if p) or None
    return _SCALARS.get(annotation)


_SCALARS: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _plural(phrase: str | None) -> str:
    words = (phrase or "").split(" ", 1)
    return words[-1] + "s" if words[0] in ("a", "an") else (phrase or "")


def format_path(path: tuple[Segment, ...] | list[Segment]) -> str:
    """("data", "features", 1, "name") -> "data.features[1].name"."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else str(segment)
    return text
