"""Run in a child process: send each bomb file to `pneumoscan predict`, the server and the DICOM node, and
print one JSON line per (bomb, entry point): seconds, the process's peak resident size, and the reason.

    python -m helpers.bomb_child MODEL FOLDER NAME... (with tests/ on the path)

The address-space limit (``RLIMIT_AS``, bytes, from ``PNEUMOSCAN_BOMB_RLIMIT``) is set first, so a bomb
that gets through fails to allocate instead of taking the machine. Shared by the robustness test and
``bench/bench_bombs.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ENTRIES = ("predict", "server", "node")


def _peak_mb() -> float:
    """This process's peak resident size (VmHWM: ru_maxrss would carry over the parent's from before exec),
    or its children's if larger (processes predict may start)."""
    status = Path("/proc/self/status").read_text()
    own = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def _predict(model: str, path: Path) -> str:
    from pneumoscan.cli import main

    out = Path(tempfile.mkdtemp()) / "rows.jsonl"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["predict", model, str(path), "--out", str(out), "--no-progress"])
    row = json.loads(out.read_text().splitlines()[0])
    return row["error"] or f"scored: {row['probability']}"


def _server(client, path: Path) -> str:
    response = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "application/dicom")})
    return f"HTTP {response.status_code}: {response.json().get('detail', response.json())}"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _node(port: int, path: Path, warnings: _Warnings) -> str:
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from pneumoscan.dicom.instances import CHEST_TRANSFER_SYNTAXES

    _config.STORE_SEND_CHUNKED_DATASET = True  # the sender streams the file: only the node parses it
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    for syntax in CHEST_TRANSFER_SYNTAXES:
        ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port)
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    code = status.get("Status") if status else None
    deadline = time.monotonic() + 30
    while not warnings.messages and time.monotonic() < deadline:  # refused after the answer: by the scorer
        time.sleep(0.05)
    said = warnings.messages[-1] if warnings.messages else "no warning logged"
    warnings.messages.clear()
    return f"status 0x{code:04X}: {said}" if code is not None else f"no status: {said}"


def main(model: str, folder: Path, names: list[str]) -> None:
    limit = int(os.environ.get("PNEUMOSCAN_BOMB_RLIMIT", 3 * 2**30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import socket

    from fastapi.testclient import TestClient

    from pneumoscan.dicom import Processor, StorageNode
    from pneumoscan.serving.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warnings = _Warnings()
    logging.getLogger("pneumoscan.dicom").addHandler(warnings)
    processor = Processor(model, folder / "node-out")
    with TestClient(create_app(model)) as client, StorageNode(processor, port):
        while client.get("/readyz").status_code != 200:
            time.sleep(0.1)
        print(json.dumps({"ready": True, "peak_mb": _peak_mb()}), flush=True)
        for name in names:
            path = folder / name
            for entry in ENTRIES:
                print(json.dumps({"start": name, "entry": entry}), flush=True)
                started = time.monotonic()
                try:
                    said = (_predict(model, path) if entry == "predict" else _server(client, path) if entry == "server"
                            else _node(port, path, warnings))
                except Exception as exc:  # noqa: BLE001 - reported on the line, judged by the caller
                    said = f"{type(exc).__name__}: {exc}"
                print(json.dumps({"bomb": name, "entry": entry, "seconds": time.monotonic() - started,
                                  "peak_mb": _peak_mb(), "said": said[:400]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
