"""Every file pneumoscan writes goes through ``pneumoscan._io`` (temporary file, then rename).

A static check over the source: each call that writes a file (``open(..., "w")``, ``write_text``,
``write_bytes``, ``np.save``, ``torch.save``, ``savefig``, safetensors' ``save_file``) must sit inside a
callback given to ``atomic_write*`` or write to an in-memory buffer. The few deliberate exceptions are
listed with their reason. test_robust_faults.py proves that ``atomic_write`` itself survives kills.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pneumoscan

SRC = Path(pneumoscan.__file__).resolve().parent

# (file relative to src/pneumoscan, function) -> why it may write directly
ALLOWED = {
    ("data/download.py", "_fetch_once"): "the .part file is appended to across attempts (resumable download); "
                                         "the archive gets its final name only after its checksum is verified",
    ("data/medmnist.py", "_materialise"): "the PNGs are committed by materialised.json, written last and "
                                          "atomically: a killed run leaves no marker and they are written again",
    ("inference/results.py", "_open_lines"): "streamed predictions are appended batch by batch, each batch one "
                                             "fsynced write, so a killed run keeps every earlier batch",
    ("inference/results.py", "_cut_torn_tail"): "a resumed run cuts the torn last line a killed append left",
    ("serving/quantize.py", "export_int8"): "a scratch copy in a temporary folder, deleted after use; the int8 "
                                            "model itself is written atomically",
    ("serving/quantize.py", "quantize_graph"): "ONNX Runtime's quantiser reads and writes files: scratch copies "
                                               "in a temporary folder, deleted after use",
}
WRITERS = {"write_text", "write_bytes", "save", "savefig", "save_file", "to_csv", "dump"}


def _is_write_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name) and func.id == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        text = mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else ""
        if isinstance(mode, ast.IfExp):  # open(part, "ab" if have else "wb")
            text = "w"
        return any(c in text for c in "wax+")
    return isinstance(func, ast.Attribute) and func.attr in WRITERS and func.attr != "dump" or (
        isinstance(func, ast.Attribute) and func.attr == "dump" and len(node.args) >= 2)


def _to_memory(node: ast.Call) -> bool:
    target = node.args[0] if node.args else None
    name = ast.unparse(target) if target is not None else ""
    return any(word in name.lower() for word in ("buffer", "buf", "bytesio", "stream", "fh"))


def _atomic_callbacks(tree: ast.AST) -> set[str]:
    """Names of local functions passed to atomic_write(...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1].startswith("atomic_write"):
            names.update(arg.id for arg in node.args if isinstance(arg, ast.Name))
    return names


def _violations(path: Path, root: Path = SRC) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    callbacks = _atomic_callbacks(tree)
    parents: dict[ast.AST, ast.AST] = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_write_call(node)) or _to_memory(node):
            continue
        chain, up = [], node
        while up in parents:
            up = parents[up]
            chain.append(up)
        inside_atomic = any(isinstance(p, ast.Call) and ast.unparse(p.func).split(".")[-1].startswith("atomic_write")
                            for p in chain)
        functions = [p.name for p in chain if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef)]
        if inside_atomic or (functions and functions[0] in callbacks):
            continue
        relative = path.relative_to(root).as_posix()
        if any((relative, f) in ALLOWED for f in functions):
            continue
        found.append(f"{relative}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_every_file_write_in_pneumoscan_goes_through_the_atomic_writers() -> None:
    sources = [p for p in SRC.rglob("*.py") if p.name != "_io.py"]
    assert len(sources) > 20
    violations = [v for p in sources for v in _violations(p)]
    assert violations == [], "writes outside pneumoscan._io (use atomic_write*):\n" + "\n".join(violations)


def test_the_static_check_catches_a_direct_write(tmp_path) -> None:
    """The checker itself: a plain write is flagged, the same write inside atomic_write is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("def report(path, text):\n    path.write_text(text)\n\n"
                     "def ok(path, text):\n    atomic_write(path, lambda tmp: tmp.write_text(text))\n\n"
                     "def save(tmp):\n    open(tmp, 'wb').write(b'x')\n\n"
                     "def also_ok(path):\n    atomic_write(path, save)\n\n"
                     "def png(fig, buffer):\n    fig.savefig(buffer, format='png')\n\n"
                     "def log(path):\n    open(path, 'a').write('x')\n")
    assert [int(v.split(":")[1]) for v in _violations(probe, tmp_path)] == [2, 17]
