"""The import graph of pneumoscan has no circle, and every module imports on its own.

Imports inside functions count (they run as soon as the function does); imports under
``if TYPE_CHECKING:`` do not. ``from package import name`` counts as an import of the module that
defines ``name``, so a package's lazy ``__getattr__`` table is followed to the real module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import pneumoscan

PACKAGE = Path(pneumoscan.__file__).parent
# Importing it runs the command line.
ENTRY_POINTS = {"pneumoscan.__main__"}


def _modules() -> dict[str, Path]:
    found = {"pneumoscan": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="pneumoscan."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = Path(spec.origin)
    return found


MODULES = _modules()


def _runtime_imports(tree: ast.AST, module: str, is_package: bool,
                     type_checking: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import that runs, at any depth (and, with
    ``type_checking``, those under ``if TYPE_CHECKING:`` too)."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _edges(module: str, path: Path, type_checking: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets: set[str] = set()
    for imported, names in _runtime_imports(tree, module, path.name == "__init__.py", type_checking):
        if not imported.startswith("pneumoscan"):
            continue
        if not names:
            targets.add(imported)
            continue
        for name in names:
            if f"{imported}.{name}" in MODULES:
                targets.add(f"{imported}.{name}")
                continue
            # A name re-exported by a package: follow it to the module that defines it.
            value = getattr(importlib.import_module(imported), name, None)
            defined_in = getattr(value, "__module__", None)
            targets.add(defined_in if defined_in in MODULES else imported)
    targets.discard(module)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


@pytest.mark.parametrize("module", sorted(set(MODULES) - ENTRY_POINTS))
def test_every_module_imports_on_its_own(module):
    importlib.import_module(module)


def test_the_import_graph_has_no_circle():
    graph = {module: _edges(module, path) for module, path in MODULES.items()}
    assert len(graph) > 40 and graph["pneumoscan.inference"], "the walk found too little to judge"
    circles = _cycles(graph)
    assert circles == [], "import circles (each list imports itself through the others): " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_no_circle_hides_behind_type_checking_either():
    """A circle that only type hints close is still two modules that each need the other to be understood."""
    graph = {module: _edges(module, path, type_checking=True) for module, path in MODULES.items()}
    circles = _cycles(graph)
    assert circles == [], "import circles through TYPE_CHECKING imports: " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_the_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
