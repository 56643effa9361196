"""The import graph of pneumoscan runs one way: every module imports only its own package and the layers
below it (DEVELOPERS.md declares them), it has no circle, and every module imports on its own.

Imports inside functions count (they run as soon as the function does); imports under
``if TYPE_CHECKING:`` count for the layers and for the second circle test only. ``from package import
name`` counts as an import of the module that defines ``name``, so a package's lazy ``__getattr__`` table
is followed to the real module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import pneumoscan

PACKAGE = Path(pneumoscan.__file__).parent
DEVELOPERS = Path(__file__).resolve().parents[1] / "DEVELOPERS.md"
ROOT = "pneumoscan"
# Importing it runs the command line.
ENTRY_POINTS = {"pneumoscan.__main__"}
# `python -m pneumoscan` is the command line's.
PART_OF = {"__main__": "cli"}
# What any module may take from the package itself; anything else there (`load`) is inference's.
FROM_ROOT = {"__version__", "DISCLAIMER"}


def _declared_layers() -> list[list[str]]:
    """The layers, bottom to top, as DEVELOPERS.md declares them (the one place they are written)."""
    found = re.search(r"^Layers, bottom to top: `([^`]+)`", DEVELOPERS.read_text(encoding="utf-8"), re.MULTILINE)
    assert found, f"{DEVELOPERS}: no line 'Layers, bottom to top: `a < b, c < ...`'"
    return [[name.strip() for name in layer.split(",")] for layer in found.group(1).split("<")]


LAYERS = _declared_layers()
LAYER_OF = {name: level for level, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {"pneumoscan": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="pneumoscan."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = Path(spec.origin)
    return found


MODULES = _modules()


def _runtime_imports(tree: ast.AST, module: str, is_package: bool,
                     type_checking: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import that runs, at any depth (and, with
    ``type_checking``, those under ``if TYPE_CHECKING:`` too)."""
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((base, [alias.name for alias in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imports(module: str, path: Path, type_checking: bool = False) -> list[tuple[str, int, str | None]]:
    """(pneumoscan module imported, line, name taken from it or None) for every import of ``module`` that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, str | None]] = []
    for imported, names, line in _runtime_imports(tree, module, path.name == "__init__.py", type_checking):
        if imported != ROOT and not imported.startswith(f"{ROOT}."):
            continue
        if not names:
            found.append((imported, line, None))
            continue
        for name in names:
            if f"{imported}.{name}" in MODULES:
                found.append((f"{imported}.{name}", line, None))
                continue
            # A name re-exported by a package: follow it to the module that defines it.
            value = getattr(importlib.import_module(imported), name, None)
            defined_in = getattr(value, "__module__", None)
            found.append((defined_in if defined_in in MODULES else imported, line, name))
    return found


def _edges(module: str, path: Path, type_checking: bool = False) -> set[str]:
    return {target for target, _, _ in _imports(module, path, type_checking)} - {module}


def _layer(module: str) -> str:
    top = module.split(".")[1]
    return PART_OF.get(top, top)


def _upward(module: str, path: Path) -> list[str]:
    """Each import of ``module`` that does not run downward: into a higher layer, or a neighbour's package."""
    if module == ROOT:  # the one exception: `pneumoscan.load` hands over to inference
        return []
    own = _layer(module)
    found = []
    for target, line, name in _imports(module, path, type_checking=True):
        if target == ROOT:
            if name in FROM_ROOT:
                continue
            target = f"{ROOT}.inference"  # `import pneumoscan` to call `pneumoscan.load`
        layer = _layer(target)
        if not {layer, own} <= set(LAYER_OF):
            found.append(f"{module} (line {line}) imports {target}: {({layer, own} - set(LAYER_OF)).pop()} is in "
                         "no layer")
            continue
        if layer == own or LAYER_OF[layer] < LAYER_OF[own]:
            continue
        where = "above" if LAYER_OF[layer] > LAYER_OF[own] else "beside"
        found.append(f"{module} (line {line}) imports {target}: {layer} is {where} {own}")
    return found


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


def test_every_package_and_module_has_its_layer():
    tops = {_layer(module) for module in MODULES if module != ROOT}
    assert tops - set(LAYER_OF) == set(), "not in DEVELOPERS.md's layers: place them there"
    assert set(LAYER_OF) - tops == set(), "DEVELOPERS.md's layers name what the package does not hold"


def test_every_import_runs_downward():
    """Layers, bottom to top, in DEVELOPERS.md; a module imports its own package and the layers below it."""
    upward = [problem for module, path in MODULES.items() for problem in _upward(module, path)]
    assert upward == [], ("imports that do not run downward (layers, bottom to top: "
                          + " < ".join(", ".join(layer) for layer in LAYERS) + "):\n" + "\n".join(upward))


def test_the_layer_check_sees_an_import_upward_or_beside(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from pneumoscan import __version__\nfrom pneumoscan.errors import ConfigError\n\n"
                     "def f():\n    import pneumoscan\n    from pneumoscan.serving import export\n"
                     "    from pneumoscan.explain import Heatmaps\n")
    assert _upward("pneumoscan.data.probe", probe) == [
        "pneumoscan.data.probe (line 5) imports pneumoscan.inference: inference is above data",
        "pneumoscan.data.probe (line 6) imports pneumoscan.serving.export: serving is above data",
        "pneumoscan.data.probe (line 7) imports pneumoscan.explain.gradcam: explain is above data"]
    assert _upward("pneumoscan.dicom.probe", probe) == [
        "pneumoscan.dicom.probe (line 6) imports pneumoscan.serving.export: serving is beside dicom"]


def test_no_circle_hides_behind_type_checking_either():
    """A circle that only type hints close is still two modules that each need the other to be understood."""
    graph = {module: _edges(module, path, type_checking=True) for module, path in MODULES.items()}
    circles = _cycles(graph)
    assert circles == [], "import circles through TYPE_CHECKING imports: " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_the_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
