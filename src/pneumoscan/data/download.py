"""Download and unpack the public ChestXRay2017 archive (Kermany et al., Mendeley Data, CC BY 4.0).

The archive (about 1.2 GB) is fetched into ``<dest>/<name>.zip.part`` and resumed with an HTTP
``Range`` request after a broken connection, in this run or the next; it is renamed to ``.zip`` only
once complete, verified against ``--sha256`` when given, then extracted through a staging folder
(renamed when complete, so a killed extraction never looks finished) and guarded against zip-slip.

After extraction, ``<cache_root>/datasets/ChestXRay2017/`` holds ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/``
(the Mendeley archive has no ``val/``; ``pneumoscan data split`` makes one by patient) plus the archive's
``__MACOSX/`` folder, which every reader ignores.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pneumoscan._io import atomic_write_json
from pneumoscan.data.defaults import cache_root
from pneumoscan.errors import DatasetError
from pneumoscan.provenance import sha256_file

DEFAULT_URL = (
    "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
    "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
)
"""ChestXRay2017.zip of doi:10.17632/rscbjbr9sj.2 (Mendeley Data's public-files URL pattern)."""

DATASET_NAME = "ChestXRay2017"
_CHUNK = 1 << 20
_MARKER = ".pneumoscan-download.json"


@dataclass
class DownloadResult:
    """Where the data now is, and what was done to put it there."""

    folder: Path  # the extracted dataset: pass it to `load_dataset` or `pneumoscan data inspect`
    archive: Path
    sha256: str
    reused: bool  # True when an earlier, verified extraction was found and nothing was fetched


def download_dataset(
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    dest: str | os.PathLike | None = None,
    name: str = DATASET_NAME,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> DownloadResult:
    """Fetch ``url`` (a zip), verify it against ``sha256`` when given and extract it into ``dest/name``.

    ``dest`` defaults to ``<cache_root>/datasets``. A broken connection is resumed where it stopped, up
    to ``retries`` times, and a later call resumes from the ``.part`` file. A checksum mismatch deletes
    the download, extracts nothing and raises :class:`DatasetError`; so does an archive that is not a
    zip or holds a path leaving the target folder.
    """
    base = Path(dest) if dest is not None else cache_root() / "datasets"
    folder, archive = base / name, base / f"{name}.zip"
    expected = sha256.strip().lower() if sha256 else None
    marker = folder / _MARKER
    if (previous := _previous(marker, url, expected)) is not None:
        return DownloadResult(folder, archive, previous, reused=True)
    base.mkdir(parents=True, exist_ok=True)
    if not archive.is_file():
        _fetch(url, archive, retries, timeout, progress)
    digest = sha256_file(archive)
    if expected and digest != expected:
        archive.unlink(missing_ok=True)
        raise DatasetError(
            f"{url}: checksum mismatch: got sha256 {digest}, expected {expected}; the download was deleted, "
            "run the command again (or check --sha256)"
        )
    _extract(archive, folder)
    atomic_write_json(marker, {"url": url, "sha256": digest, "archive": str(archive)})
    return DownloadResult(folder, archive, digest, reused=False)


def _previous(marker: Path, url: str, expected: str | None) -> str | None:
    """The sha256 of an earlier extraction of the same archive, or None when it does not match."""
    import json

    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("url") != url or (expected and info.get("sha256") != expected):
        return None
    return str(info.get("sha256") or "")


def _fetch(url: str, archive: Path, retries: int, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    part = archive.with_name(archive.name + ".part")
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=archive.name, disable=not progress, leave=False)
    try:
        for attempt in range(retries + 1):
            try:
                if _fetch_once(url, part, timeout, bar):
                    os.replace(part, archive)
                    return
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                    raise DatasetError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL") from None
                if attempt == retries:
                    done = part.stat().st_size if part.exists() else 0
                    raise DatasetError(
                        f"{url}: download failed after {retries + 1} attempts at {done:,} bytes ({exc}); "
                        f"run the command again to resume from {part}"
                    ) from None
            time.sleep(min(2.0**attempt, 10.0) * 0.1)
        raise DatasetError(f"{url}: download incomplete; run the command again to resume from {part}")
    finally:
        bar.close()


def _fetch_once(url: str, part: Path, timeout: float, bar) -> bool:
    """Append to ``part`` what the server still has to send; True when the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pneumoscan", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URL from the user
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is complete
            return True
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar.reset(total=total)
        bar.update(have)
        with open(part, "ab" if have else "wb") as fh:
            while block := response.read(_CHUNK):
                fh.write(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise OSError(f"connection closed at {size:,} of {total:,} bytes")
    return True


def _extract(archive: Path, folder: Path) -> None:
    staging = folder.with_name(f".{folder.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            root = staging.resolve()
            for member in zf.infolist():
                target = (staging / member.filename).resolve()
                if target != root and root not in target.parents:
                    raise DatasetError(
                        f"{archive}: refused: member {member.filename!r} would be written outside "
                        f"{folder} (zip-slip); the archive is not the dataset"
                    )
            zf.extractall(staging)  # CRC errors surface here as BadZipFile
    except zipfile.BadZipFile as exc:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise DatasetError(f"{archive}: not a valid zip ({exc}); it was deleted, run the command again") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
