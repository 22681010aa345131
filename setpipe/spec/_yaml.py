"""Safe YAML in and out, remembering the line of every key so errors can cite ``file:line``."""

from __future__ import annotations

from os import PathLike
from typing import Any

import yaml

from setpipe.errors import SpecError
from setpipe.spec._fields import Segment, format_path

Path = tuple[Segment, ...]
MAX_VALUES = 100_000
"""Values after alias expansion: a job has hundreds; a YAML bomb has billions."""
MAX_DEPTH = 64
"""Nesting levels: a job has about six; PyYAML's composer recurses once per level."""
MAX_NUMBER_CHARS = 100
"""Characters in one number: Python refuses ints past 4,300 digits, and no job needs 100."""
MAX_NODES = 20_000
"""Values written in the file: a job has hundreds, and PyYAML takes ~20 µs a node."""
MAX_JOB_BYTES = 256 << 10
"""A job file is a few KB; reading stops here (``setpipe validate /dev/zero`` ends)."""


class LineLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python tags, ever) that also records where each key and item is,
    and bounds what a hostile file can cost: nesting, alias expansion, number length."""

    def load_with_lines(self) -> tuple[Any, dict[Path, int]]:
        self._depth = self._nodes = 0
        node = self.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path, int] = {}
        self._budget = MAX_VALUES
        self._open: set[int] = set()
        self._record(node, (), lines)
        return self.construct_document(node), lines

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        self._nodes += 1
        if self._nodes > MAX_NODES:
            mark = self.peek_event().start_mark
            raise SpecError(
                f"{self.name}:{mark.line + 1}: more than {MAX_NODES} values; a job names its "
                "data and settings, not the data itself, so check what this file is"
            )
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise SpecError(
                f"{self.name}:{mark.line + 1}: the document nests more than {MAX_DEPTH} levels "
                "deep; a job is a few levels deep, so flatten it"
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _record(self, node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
        # Aliases can make a few lines expand exponentially ("billion laughs"); every
        # later step walks the expanded tree, so the expansion is bounded here.
        self._budget -= 1
        if self._budget < 0:
            raise SpecError(
                f"{self.name}: the document expands to more than {MAX_VALUES} values through "
                "YAML aliases (*name); a job is small, so write it out without them"
            )
        if id(node) in self._open:
            raise SpecError(
                f"{self.name}:{node.start_mark.line + 1}: {format_path(path) or 'top level'}: "
                "a YAML alias (*name) refers to a node that contains it, which never ends; "
                "write the value out"
            )
        if len(path) > MAX_DEPTH:
            raise SpecError(
                f"{self.name}:{node.start_mark.line + 1}: the document nests more than "
                f"{MAX_DEPTH} levels deep through YAML aliases; write it out without them"
            )
        self._open.add(id(node))
        try:
            self._record_children(node, path, lines)
        finally:
            self._open.discard(id(node))

    def _record_children(self, node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # resolve "<<" merge keys the way construction will
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise SpecError(
                        f"{self.name}:{line}: {format_path(path) or 'top level'}: a key must be a "
                        "plain word, not a list or mapping"
                    )
                if key in first_line:
                    field = format_path((*path, key))
                    raise SpecError(
                        f"{self.name}:{line}: {field}: duplicate key (first at line "
                        f"{first_line[key]}); keep one of them"
                    )
                first_line[key] = line
                lines[(*path, key)] = line
                self._record(value_node, (*path, key), lines)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                self._record(item, (*path, index), lines)


def _bounded_number(kind: str) -> Any:
    base = getattr(yaml.SafeLoader, f"construct_yaml_{kind}")

    def construct(loader: LineLoader, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise SpecError(
                f"{loader.name}:{node.start_mark.line + 1}: a number of {len(node.value)} "
                f"characters; numbers in a job have at most {MAX_NUMBER_CHARS}, so check this value"
            )
        return base(loader, node)

    return construct


LineLoader.add_constructor("tag:yaml.org,2002:int", _bounded_number("int"))
LineLoader.add_constructor("tag:yaml.org,2002:float", _bounded_number("float"))


def read_text(path: str | PathLike[str], source: str) -> str:
    """The job file's text: at most MAX_JOB_BYTES, UTF-8; SpecError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file; give the path of a job YAML") from None
    except OSError as err:
        raise SpecError(f"{source}: cannot read it as a YAML text file ({err})") from None
    if len(data) > MAX_JOB_BYTES:
        raise SpecError(
            f"{source}: larger than {MAX_JOB_BYTES // 1024} KiB; a job file is a few KB of YAML "
            "(data goes in Parquet files the job names), so check the path"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{source}: cannot read it as a YAML text file ({err})") from None


def load_value(text: str, source: str) -> Any:
    """One YAML value (an override's), with the same bounds as a file; yaml.YAMLError when it
    is not YAML at all (the caller decides whether that is plain text)."""
    loader = LineLoader(text)
    loader.name = source
    try:
        return loader.load_with_lines()[0]
    finally:
        loader.dispose()


def parse(text: str, source: str) -> tuple[Any, dict[Path, int]]:
    """YAML text -> (data, {key path: line}); SpecError with file:line:col when malformed."""
    loader = LineLoader(text)
    loader.name = source
    try:
        return loader.load_with_lines()
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        tag = _tag_of(err.problem or "")
        if tag:
            raise SpecError(
                f"{where}: the tag {tag} is not allowed; job files are plain YAML (mappings, "
                "lists, strings, numbers), so remove the tag"
            ) from None
        raise SpecError(f"{where}: invalid YAML: {err.problem}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        context = ""
        if err.context:
            started = err.context_mark
            moved = started is not None and (mark is None or started.line != mark.line)
            at = f" at line {started.line + 1}" if moved else ""
            context = f" ({err.context}{at})"
        raise SpecError(f"{where}: invalid YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:  # e.g. a reader error on a control character
        raise SpecError(f"{source}: invalid YAML: {err}") from None
    finally:
        loader.dispose()


def _tag_of(problem: str) -> str | None:
    # PyYAML words it "could not determine a constructor for the tag '<tag>'".
    if "constructor for the tag" not in problem:
        return None
    tag = problem.split("'")[1] if problem.count("'") >= 2 else problem
    return tag.replace("tag:yaml.org,2002:", "!!")


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of scalars ([128, 128])."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Items of a block list indented under their key, as people write them.
        super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(x, str | int | float | bool) or x is None for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # A literal "${" in a resolved job must stay literal when the file is read again.
    return dumper.represent_str(data.replace("${", "$${"))


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
