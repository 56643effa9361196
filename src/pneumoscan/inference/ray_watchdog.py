"""Ends the processes of a local Ray whose driver was killed (``kill -9`` of ``predict --engine ray``).

Ray stops its own processes when the driver calls ``ray.shutdown()``, and most of them follow a killed
driver by themselves; its dashboard and runtime-env agents notice the death but then hang (about 190 MB,
re-parented to init). :func:`watch` starts this module as a small process of its own session beside the
driver: it notes every process below the driver (pid and start time, so a reused pid is never touched)
and, when the driver ends without saying it finished, waits a few seconds for Ray's own clean-up and
kills what is left of those processes only.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

DONE = b"done\n"
GRACE_S = 5.0  # Ray's own fate sharing first
POLL_S = 1.0


def watch() -> subprocess.Popen | None:
    """Start the watchdog for this process (the driver); None where psutil is missing. Call
    :func:`release` when the driver has stopped its Ray."""
    try:
        import psutil  # noqa: F401 - a dependency of Ray
    except ImportError:
        return None
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)


def release(process: subprocess.Popen | None) -> None:
    """Tell the watchdog the driver stopped its Ray itself: it exits without killing anything."""
    if process is None:
        return
    try:
        process.stdin.write(DONE)  # type: ignore[union-attr]
        process.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


def _main(driver_pid: int) -> None:
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the driver's to handle
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, float] = {}
    message = b""
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child.create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready:
            chunk = os.read(sys.stdin.fileno(), 64)
            message += chunk
            if message.startswith(DONE):
                return  # the driver stopped its Ray itself
            if not chunk:
                break  # the pipe closed without a word: the driver died
        if not driver.is_running():
            break
    time.sleep(GRACE_S)
    for pid, started in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


if __name__ == "__main__":
    _main(int(sys.argv[1]))
