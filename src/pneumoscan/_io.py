"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import csv
import errno
import glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumoscan.errors import OutputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a report or model should get the usual mode.
_FILE_MODE = 0o666 & ~_current_umask()
_DIR_MODE = 0o777 & ~_current_umask()


def _owner_tag() -> str:
    # Host and process in a temporary's name: a later run can tell a dead writer's leftover from a live one.
    return f"{socket.gethostname().replace('.', '-')}-{os.getpid()}"


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` left by writers on this host that were killed (``kill -9``,
    a power cut) before they could clean up; a live writer's temporary is kept. Returns what was removed."""
    path = Path(path)
    host = socket.gethostname().replace(".", "-")
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)  # a staging folder (Ray's Parquet output) of a killed run
            else:
                tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def make_staging_folder(path: str | os.PathLike) -> Path:
    """A new empty folder next to ``path``, named as :func:`remove_stale_temporaries` recognises it: a
    folder to be renamed onto ``path`` once complete. Staging folders of killed runs are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent))
        os.chmod(staging, _DIR_MODE)  # mkdtemp's is the owner's only; a results folder is not
        return staging
    except OSError as exc:
        raise _output_error(path, exc) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same folder, so rename is atomic).

    Temporaries of ``path`` left by killed writers are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _output_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames and removals in ``folder`` durable (they live in the folder, not in the files)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _output_error(folder, exc) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    # surrogateescape: a file name that is not UTF-8 (b"caf\xe9.png") is written back as its own bytes.
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# CSV formula injection (OWASP): a spreadsheet evaluates a cell that starts with one of these. Text from
# outside (a file name, a PatientID) is written with a leading single quote instead; numbers, and text
# that is a plain number such as "-0.5", are written as they are.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _formula_like(text: str) -> bool:
    core = text.lstrip("'")  # "'=x" is quoted too, so that reading strips exactly one quote back
    return core.startswith(_FORMULA_START) and _PLAIN_NUMBER.fullmatch(core) is None


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet will not evaluate: text that a spreadsheet would take for a
    formula gets a leading ``'``; anything else is returned unchanged. :func:`csv_text` undoes it."""
    if isinstance(value, str) and _formula_like(value):
        return "'" + value
    return value


def csv_text(cell: str) -> str:
    """A cell written by :func:`csv_cell` back to the text it was made from (``'=x`` -> ``=x``); any other
    cell, a hand-written one included, is returned unchanged."""
    if cell.startswith("'") and _formula_like(cell[1:]):
        return cell[1:]
    return cell


def csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    """``rows`` as CSV text (``\n`` line ends), each text cell neutralised by :func:`csv_cell`.

    A row with a carriage return in a cell is written with every cell quoted: the csv module quotes only
    the line terminator's characters, and a bare CR would end the row for the readers (a forged row)."""
    buffer = io.StringIO()
    plain = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        cells = [csv_cell(value) for value in row]
        (quoted if any(isinstance(c, str) and "\r" in c for c in cells) else plain).writerow(cells)
    return buffer.getvalue()


def atomic_write_csv(path: str | os.PathLike, columns: Sequence[str],
                     rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Path:
    """Write a CSV with a header row; each row is a sequence in column order or a mapping by column name
    (missing and None values are written empty). Text cells are neutralised by :func:`csv_cell`."""
    lines = csv_lines([columns, *([row.get(c) for c in columns] if isinstance(row, Mapping) else row
                                  for row in rows)])
    return atomic_write_text(path, lines)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and prove it is writable before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True):
            pass
    except OSError as exc:
        raise _output_error(path, exc) from None
    return path


def _output_error(path: Path, exc: OSError) -> OutputError:
    if isinstance(exc, OutputError):  # already names its file: wrapping it again would name it twice
        return exc
    if exc.errno is None and " requested and " in str(exc):
        # numpy's save/tofile reports a short write without an errno: the device filled up.
        return OutputError(f"{path}: cannot write: no space left on the device ({exc})")
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"{path}: cannot write: {reason}")
