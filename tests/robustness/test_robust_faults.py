"""Faults: a kill at any moment of a write, a torn cache, a full disk and a read-only output folder.

The kills are real (SIGKILL of a child process, at a chosen point or at a random moment); the full disk
and the read-only folder are real tmpfs mounts where the machine allows mounting (root in a container),
else the lowest-level write is replaced by one that fails with ENOSPC / EROFS (a mock, said in the test).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.corpus import run_cli, write_good_images
from pneumoscan._io import atomic_write, atomic_write_bytes, atomic_write_json, ensure_writable_dir
from pneumoscan.data import build_cache, load_dataset
from pneumoscan.errors import OutputError

OLD, NEW = b"o" * 3_000_000, b"n" * 3_000_000


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=timeout)


# A child that writes NEW over OLD through atomic_write and SIGKILLs itself at one point of the write.
_KILL_AT = {
    "mid-write": """
        def write(tmp):
            with open(tmp, "wb") as fh:
                fh.write(NEW[: len(NEW) // 2]); fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(target, write)
    """,
    "before-rename": """
        real_replace = os.replace
        def replace(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        atomic_write(target, lambda tmp: tmp.write_bytes(NEW))
    """,
    "after-rename": """
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        atomic_write(target, lambda tmp: tmp.write_bytes(NEW))
    """,
}


@pytest.mark.e2e  # kills a child process mid-write
@pytest.mark.parametrize("moment", list(_KILL_AT))
def test_kill_at_any_point_of_an_atomic_write_leaves_the_old_or_the_new_file(moment: str, tmp_path) -> None:
    target = tmp_path / "checkpoint.bin"
    target.write_bytes(OLD)
    child = _run_child(textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pneumoscan._io import atomic_write
        target = Path({str(target)!r})
        NEW = b"n" * {len(NEW)}
    """) + textwrap.dedent(_KILL_AT[moment]))
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    content = target.read_bytes()
    assert content == (NEW if moment == "after-rename" else OLD)


@pytest.mark.e2e  # starts writer processes and kills them
def test_kills_at_random_moments_never_leave_a_torn_file(tmp_path) -> None:
    """A writer rewrites a 3 MB file in a loop; SIGKILL at random moments; the file is always whole."""
    target = tmp_path / "report.json"
    target.write_bytes(OLD)
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import itertools, sys
        from pneumoscan._io import atomic_write_bytes
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        for i in itertools.count():
            atomic_write_bytes({str(target)!r}, (b"n" if i % 2 else b"o") * {len(OLD)})
    """))
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        content = target.read_bytes()
        assert content in (OLD, NEW), f"torn file: {len(content)} bytes, {set(content)!r}"


# ----------------------------------------------------------------------------------------------- caches


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_good_images(root / "NORMAL", 0, 4)
    write_good_images(root / "PNEUMONIA", 1, 4)
    return root


def _fresh_cache(root: Path, folder: Path):
    return build_cache(load_dataset(root).samples, size=32, folder=folder, workers=1, progress=False)


@pytest.mark.parametrize("damage", ["truncate-array", "corrupt-index", "delete-array"])
def test_a_torn_cache_is_detected_and_rebuilt(damage: str, small_dataset, tmp_path) -> None:
    first = _fresh_cache(small_dataset, tmp_path / "cache")
    expected = np.array(first.images)
    array, index = first.folder / "images.npy", first.folder / "index.json"
    del first  # release the memory map before damaging the file
    if damage == "truncate-array":
        with open(array, "r+b") as fh:
            fh.truncate(array.stat().st_size // 2)
    elif damage == "corrupt-index":
        index.write_text(index.read_text()[:40])
    else:
        array.unlink()
    again = _fresh_cache(small_dataset, tmp_path / "cache")
    assert again.reused is False
    np.testing.assert_array_equal(np.array(again.images), expected)
    assert _fresh_cache(small_dataset, tmp_path / "cache").reused is True


@pytest.mark.e2e  # kills a child process building a cache
def test_a_cache_build_killed_while_writing_leaves_no_cache_that_is_reused(small_dataset, tmp_path) -> None:
    folder = tmp_path / "cache"
    child = _run_child(f"""
        import os, signal
        import numpy as np
        from pneumoscan.data import build_cache, load_dataset
        real_save = np.save
        def save(file, arr, *a, **k):  # half a header, then the kill
            fh = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
            fh.write(b"\\x93NUMPY" + bytes(100)); fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        np.save = save
        build_cache(load_dataset({str(small_dataset)!r}).samples, size=32, folder={str(folder)!r},
                    workers=1, progress=False)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert list(folder.rglob(".images.npy.*.tmp")), "the kill left no torn temporary: the test proves nothing"
    cache = _fresh_cache(small_dataset, folder)
    assert cache.reused is False, "a half-written cache was taken for a good one"
    assert list(folder.rglob("*.tmp")) == [], "the killed build's temporary is still on the disk"
    assert cache.images.shape == (8, 32, 32)
    reference = _fresh_cache(small_dataset, tmp_path / "reference")
    np.testing.assert_array_equal(np.array(cache.images), np.array(reference.images))


def _children(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its new parent to reap it


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    write_good_images(root / "NORMAL", 0, 160, size=256)  # enough work to catch the workers alive
    write_good_images(root / "PNEUMONIA", 1, 160, size=256)
    return root


@pytest.mark.e2e  # runs `pneumoscan data` in its own process and kills it
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to find the workers")
@pytest.mark.parametrize("command", ["validate", "cache"])
def test_kill_9_of_a_command_takes_its_decoding_workers_with_it(command: str, many_images, tmp_path) -> None:
    root = many_images
    argv = [sys.executable, "-m", "pneumoscan", "data", command, str(root), "--workers", "2", "--no-progress"]
    if command == "cache":
        argv += ["--size", "64", "--folder", str(tmp_path / "cache")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.01)
        assert len(workers) == 2, f"never saw the 2 workers (exit code {proc.poll()})"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [w for w in workers if _alive(w)]
    finally:
        proc.kill()
        for w in _children(proc.pid) | workers:
            with contextlib.suppress(OSError):
                os.kill(w, signal.SIGKILL)  # the processes this test started, by id
    assert orphans == [], f"workers outlived the killed command: {orphans}"


# ------------------------------------------------------------------------- full disk, read-only folder


def _try_mount(where: Path, options: str) -> bool:
    # PNEUMOSCAN_TEST_NO_MOUNT=1 exercises the mock path on a machine that could mount.
    if not sys.platform.startswith("linux") or os.environ.get("PNEUMOSCAN_TEST_NO_MOUNT"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return result.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """A folder on a 1 MiB file system: real (tmpfs) where mounting works, else writes fail with ENOSPC (mock)."""
    yield from _constrained_folder(tmp_path / "full", "size=1m", errno.ENOSPC, monkeypatch)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    """A read-only folder: a read-only tmpfs where mounting works, else writes fail with EROFS (mock)."""
    yield from _constrained_folder(tmp_path / "ro", "ro,size=1m", errno.EROFS, monkeypatch)


def _constrained_folder(where: Path, mount_options: str, code: int, monkeypatch) -> Iterator[Path]:
    if _try_mount(where, mount_options):
        try:
            yield where
        finally:
            _umount(where)
        return
    where.mkdir(exist_ok=True)
    yield _mock_failing_writes(where, monkeypatch, code)


def _mock_failing_writes(where: Path, monkeypatch, code: int) -> Path:
    # Mock, used only where the machine cannot mount a small file system: under `where`, opening a file
    # for writing fails (EROFS), or writes fail once 1 MiB has been written (ENOSPC), as the kernel would.
    import builtins
    import io

    real_open, real_os_open, real_os_write = builtins.open, os.open, os.write
    inside: set[int] = set()
    budget = [1 << 20]

    def spend(n: int) -> None:
        if n > budget[0]:
            refuse()
        budget[0] -= n

    def under(path) -> bool:
        return isinstance(path, str | bytes | os.PathLike) and os.path.abspath(os.fsdecode(path)).startswith(
            str(where))

    def refuse():
        raise OSError(code, os.strerror(code))

    class FullFile:
        def __init__(self, fh) -> None:
            self._fh = fh

        def write(self, data):
            spend(len(data))
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def fake_open(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        if writing and under(file):
            if code == errno.EROFS:
                refuse()
            return FullFile(real_open(file, mode, *args, **kwargs))
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            if code == errno.EROFS:
                refuse()
            fd = real_os_open(path, flags, *args, **kwargs)
            inside.add(fd)
            return fd
        return real_os_open(path, flags, *args, **kwargs)

    def fake_os_write(fd, data):
        if fd in inside:
            spend(len(data))
        return real_os_write(fd, data)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "write", fake_os_write)
    return where


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_gives_a_clear_error_and_keeps_the_old_file(full_disk) -> None:
    target = full_disk / "report.json"
    atomic_write_bytes(target, b'{"old": true}\n')
    with pytest.raises(OutputError) as info:
        atomic_write_json(target, {"values": list(range(400_000))})  # ~3 MB of JSON on a 1 MiB disk
    message = str(info.value)
    assert str(target) in message and "no space left" in message
    assert target.read_bytes() == b'{"old": true}\n'
    assert _leftovers(full_disk) == ["report.json"], "a temporary file was left behind"


def test_a_cache_on_a_full_disk_fails_with_a_clear_error_and_leaves_nothing(full_disk, small_dataset) -> None:
    samples = load_dataset(small_dataset).samples
    with pytest.raises(OutputError) as info:
        build_cache(samples, size=512, folder=full_disk, workers=1, progress=False)  # 8 x 256 KiB > 1 MiB
    assert str(full_disk) in str(info.value) and "no space left" in str(info.value)
    assert _leftovers(full_disk) == []


def test_a_read_only_output_folder_is_refused_before_any_work(read_only_dir) -> None:
    with pytest.raises(OutputError) as info:
        ensure_writable_dir(read_only_dir / "run")
    assert str(read_only_dir / "run") in str(info.value) and "read-only" in str(info.value)
    with pytest.raises(OutputError, match="read-only"):
        atomic_write(read_only_dir / "model.safetensors", lambda tmp: tmp.write_bytes(b"x"))
    assert _leftovers(read_only_dir) == []


# ------------------------------------------------------- the same faults through the commands (in-process)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    return run_cli(argv, capsys)


def _one_error_line(text: str) -> str:
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-2000:]
    return errors[0]


def test_train_into_a_read_only_folder_fails_at_once_with_one_line_and_writes_nothing(
    read_only_dir, small_dataset, capsys
) -> None:
    code, text = _cli(["train", "--data", str(small_dataset), "--model", "seed-cnn", "--image-size", "32",
                       "--epochs", "1", "--out", str(read_only_dir), "--no-progress"], capsys)
    assert code == 2
    assert "read-only" in _one_error_line(text) and str(read_only_dir) in _one_error_line(text)
    assert _leftovers(read_only_dir) == []


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_reports_into_a_read_only_folder_fail_with_one_line(command, read_only_dir, small_dataset, tmp_path,
                                                            capsys) -> None:
    from helpers.corpus import tiny_model

    model = tiny_model(tmp_path / "model")
    argv = (["evaluate", str(model), "--data", str(small_dataset), "--split", "all", "--bootstrap", "10",
             "--out", str(read_only_dir / "report")] if command == "evaluate" else
            ["predict", str(model), str(small_dataset), "--out", str(read_only_dir / "predictions.csv")])
    code, text = _cli(argv, capsys)
    assert code == 2 and "read-only" in _one_error_line(text)
    assert _leftovers(read_only_dir) == []


def test_data_cache_on_a_full_disk_fails_with_one_line_and_leaves_nothing(full_disk, small_dataset, capsys) -> None:
    code, text = _cli(["data", "cache", str(small_dataset), "--size", "512", "--folder", str(full_disk),
                       "--workers", "1", "--no-progress"], capsys)
    assert code == 2 and "no space left" in _one_error_line(text)
    assert _leftovers(full_disk) == []
