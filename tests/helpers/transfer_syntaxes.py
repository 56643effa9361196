"""One radiograph in every transfer syntax a PACS sends: dcmtk's converters (``dcmconv``, ``dcmcjpeg``,
``dcmcjpls``, ``dcmcrle``) for the uncompressed, JPEG, JPEG-LS and RLE syntaxes, pydicom (with
pylibjpeg-openjpeg) for JPEG 2000.

``matrix(source12, source8, folder)`` -> ``{name: (path, transfer syntax UID, lossless)}``; ``source12``
is a 12-bit radiograph, ``source8`` the same one in 8 bits (JPEG Baseline takes 8 bits only).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from helpers import chest_dicoms

# name -> (transfer syntax UID, lossless, 8-bit source, dcmtk command or None for pydicom)
SYNTAXES: dict[str, tuple[str, bool, bool, list[str] | None]] = {
    "implicit-le": ("1.2.840.10008.1.2", True, False, ["dcmconv", "+ti"]),
    "explicit-le": ("1.2.840.10008.1.2.1", True, False, ["dcmconv", "+te"]),
    "deflated": ("1.2.840.10008.1.2.1.99", True, False, ["dcmconv", "+td"]),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", False, True, ["dcmcjpeg", "+eb"]),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", False, False, ["dcmcjpeg", "+ee"]),
    "jpeg-lossless-p14": ("1.2.840.10008.1.2.4.57", True, False, ["dcmcjpeg", "+el"]),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", True, False, ["dcmcjpeg", "+e1"]),
    "jpeg-ls-lossless": ("1.2.840.10008.1.2.4.80", True, False, ["dcmcjpls", "+el"]),
    "jpeg-ls-near-lossless": ("1.2.840.10008.1.2.4.81", False, False, ["dcmcjpls", "+en"]),
    "jpeg-2000-lossless": ("1.2.840.10008.1.2.4.90", True, False, None),
    "jpeg-2000": ("1.2.840.10008.1.2.4.91", False, False, None),
    "rle": ("1.2.840.10008.1.2.5", True, False, ["dcmcrle"]),
}
TOOLS = ("dcmconv", "dcmcjpeg", "dcmcjpls", "dcmcrle")


def missing() -> str | None:
    """Why the matrix cannot be made here, or None."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"dcmtk's {', '.join(absent)} not installed (apt-get install dcmtk)"
    return None


def matrix(source12: Dataset, source8: Dataset, folder: Path) -> dict[str, tuple[Path, str, bool]]:
    folder.mkdir(parents=True, exist_ok=True)
    plain = {12: folder / "source-12bit.dcm", 8: folder / "source-8bit.dcm"}
    plain[12].write_bytes(chest_dicoms.encode(source12))
    plain[8].write_bytes(chest_dicoms.encode(source8))
    out = {}
    for name, (syntax, lossless, eight_bit, command) in SYNTAXES.items():
        source, target = plain[8 if eight_bit else 12], folder / f"{name}.dcm"
        if command is not None:
            subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=60)
        else:
            ds = dcmread(source)
            options = {} if lossless else {"j2k_cr": [15]}
            ds.compress(syntax, encoding_plugin="pylibjpeg", **options)
            ds.save_as(target, enforce_file_format=True)
        assert dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax, name
        out[name] = (target, syntax, lossless)
    return out
