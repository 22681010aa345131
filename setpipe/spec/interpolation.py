"""``${VAR}`` and ``${VAR:-default}`` in the string values of a job; ``$${...}`` is a literal."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from setpipe.errors import SpecError
from setpipe.spec._fields import Segment, format_path

# "$${" first, so an escaped reference is consumed before it can look like one.
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_REFERENCE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def interpolate(
    data: Any,
    source: str,
    lines: Mapping[tuple[Segment, ...], int],
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A copy of ``data`` with every reference in a string value replaced from the environment."""
    env = os.environ if environ is None else environ

    def walk(value: Any, path: tuple[Segment, ...]) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _substitute(value, env, _where(source, lines, path), format_path(path))
        return value

    return walk(data, ())


def interpolate_override(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``KEY=VALUE`` with ``${VAR}`` in the value replaced as in a job file's values."""
    key, sep, value = text.partition("=")
    if not sep or "$" not in value:
        return text
    env = os.environ if environ is None else environ
    where = f'override "{text}"'
    return f"{key}={_substitute(value, env, where, key.strip())}"


def _where(source: str, lines: Mapping[tuple[Segment, ...], int], path: tuple[Segment, ...]) -> str:
    line = lines.get(path)
    return f"{source}:{line}" if line else source


def _substitute(text: str, env: Mapping[str, str], where: str, field: str) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        inner = match.group(1)
        reference = _REFERENCE.match(inner) if inner is not None else None
        if reference is None:
            raise SpecError(
                f"{where}: {field}: {text!r} has a malformed reference {token!r}; write ${{VAR}} "
                "or ${VAR:-default}, or $${ for a literal ${"
            )
        name, default = reference.group(1), reference.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:  # like the shell's ":-", an empty value takes the default too
            return default
        if value is not None:
            return value
        raise SpecError(
            f"{where}: {field}: environment variable {name} is not set; export {name}=... "
            f"or write ${{{name}:-default}}"
        )

    return _TOKEN.sub(replace, text)
