"""What is stored with every checkpoint and report so that a result can be traced and reproduced."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path

DISCLAIMER = (
    "pneumoscan is a research and engineering tool. It is NOT a medical device and NOT for diagnosis: "
    "its outputs must not be used to make clinical decisions."
)

_LIBRARIES = (
    "pneumoscan", "torch", "lightning", "torchmetrics", "monai", "kornia", "numpy", "pillow",
    "pydicom", "onnx", "onnxruntime", "scikit-learn", "fastapi",
)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide a result (missing ones are omitted)."""
    import importlib.metadata  # here, not at the top: every command imports this module for DISCLAIMER

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the pneumoscan checkout (with ``+dirty`` when it has local changes), or None."""
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    return " ".join(sys.argv)
