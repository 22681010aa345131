"""The package's import graph: no cycles, and every arrow points to the same or an earlier layer.

Every ``import`` in every module counts, at module level and inside functions (a lazy
import still ties the two modules together); only ``if TYPE_CHECKING:`` blocks are left
out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import setpipe

PACKAGE = Path(setpipe.__file__).parent

LAYERS = [
    ("setpipe._compat", "setpipe._net", "setpipe._version", "setpipe.errors"),
    ("setpipe.spec",),
    ("setpipe.data",),
    ("setpipe.models",),
    ("setpipe.train",),
    ("setpipe.tracking",),
    ("setpipe.export",),
    ("setpipe.pipeline", "setpipe.attempts", "setpipe.search"),
    ("setpipe.serve",),
    ("setpipe.jobs",),
    ("setpipe.commands", "setpipe.cli", "setpipe.__main__", "setpipe"),
]
"""The order of DESIGN.md: errors → spec → data → models → train → tracking → serve → jobs →
commands, with ``pipeline`` (the whole run) after the layers it calls. ``setpipe`` itself (the
package's ``__init__``) is the public facade over them all: nothing inside imports it (the
version is ``setpipe._version``)."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(name: str) -> str | None:
    """The setpipe module an imported dotted name lives in (its longest module prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            names = []
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer): the most specific prefix decides
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), index))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_walk_sees_lazy_imports() -> None:
    # A negative control for the walker itself: pipeline imports the layers it runs
    # inside run() only, and the package's lazy SetBatch is an in-function import too.
    assert {"setpipe.train", "setpipe.data"} <= GRAPH["setpipe.pipeline"]
    assert "setpipe.data.batch" in GRAPH["setpipe"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_arrows_point_forward_only() -> None:
    backwards = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert backwards == []
