"""Safe YAML in and out, remembering the line of every key so errors can cite ``file:line``."""

from __future__ import annotations

from typing import Any

import yaml

from setpipe.errors import SpecError
from setpipe.spec._fields import Segment, format_path

Path = tuple[Segment, ...]
MAX_VALUES = 100_000


class LineLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python tags, ever) that also records where each key and item is."""

    def load_with_lines(self) -> tuple[Any, dict[Path, int]]:
        node = self.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path, int] = {}
        self._budget = MAX_VALUES
        self._record(node, (), lines)
        return self.construct_document(node), lines

    def _record(self, node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
        # Aliases can make a few lines expand exponentially ("billion laughs"); every
        # later step walks the expanded tree, so the expansion is bounded here.
        self._budget -= 1
        if self._budget < 0:
            raise SpecError(
                f"{self.name}: the document expands to more than {MAX_VALUES} values through "
                "YAML aliases (*name); a job is small, so write it out without them"
            )
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
