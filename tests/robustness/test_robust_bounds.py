"""Bounds: every bad input is refused within 5 s without the process growing by 300 MB, and the server,
sent the deflated DICOM bomb by 4 clients at once, stays under 1 GB and keeps answering /healthz.

Memory is measured in a fresh child process (its peak resident size, ``ru_maxrss``, before and after each
refusal), so nothing the test runner allocated earlier hides a spike; a hang is caught by the child's
deadline and named by the last case it started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers.corpus import BAD_CASES, deflate_bomb, make_corpus
from pneumoscan.runs import export_file

SECONDS = 5.0
GROWTH_MB = 300
SERVER_PEAK_MB = 1024

# The child: warm up on good files (imports and first-call caches are not growth), then refuse each bad
# file through each entry point, printing one JSON line per refusal.
_CHILD = """
    import json, os, resource, sys, time
    from pathlib import Path
    import pneumoscan
    from pneumoscan.data import probe_image, read_image
    from pneumoscan.errors import ImageReadError

    cases, good, model = json.loads(sys.argv[1]), sys.argv[2:-1], sys.argv[-1]
    classifier = pneumoscan.load(model)
    for path in good:
        read_image(path, 64); probe_image(path); classifier.predict([path])

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def refuse(entry, path):
        if entry == "read_image":
            read_image(path, 224)
        elif entry == "probe_image":
            probe_image(path)
        else:  # a folder is searched for images, a file scored: only a file gets a row
            rows = classifier.predict([path])
            if not rows and os.path.isdir(path):
                raise ImageReadError(f"{path}: a folder without images: no row")
            row = rows[0]
            if row.error is None:
                raise AssertionError(f"scored: {row.probability}")
            raise ImageReadError(row.error)

    for name, path in cases.items():
        for entry in ("read_image", "probe_image", "Classifier.predict"):
            print(json.dumps({"start": name, "entry": entry}), flush=True)
            before, started = peak_mb(), time.monotonic()
            try:
                refuse(entry, path)
                outcome = "accepted"
            except ImageReadError as exc:
                outcome = "refused: " + str(exc)[:200]
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"[:200]
            print(json.dumps({"case": name, "entry": entry, "seconds": time.monotonic() - started,
                              "grew_mb": peak_mb() - before, "outcome": outcome}), flush=True)
"""


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("bounded-corpus"))


@pytest.fixture(scope="module")
def served_model(exported_run) -> Path:
    """The suite's exported model as it is served, in ONNX: the child then starts without torch."""
    return export_file(exported_run)


def test_every_bad_input_is_refused_within_5_s_without_growing_300_mb(corpus_files, served_model) -> None:
    # probe_image answers for a truncated file or a DICOM report whose header is fine: only read_image and
    # predict must refuse every case; probe_image must still be quick and small.
    cases = {c.name: str(corpus_files[c.name]) for c in BAD_CASES}
    good = [str(corpus_files[name]) for name in ("png16", "dicom_monochrome1", "dicom_deflated")]
    argv = [sys.executable, "-c", textwrap.dedent(_CHILD), json.dumps(cases), *good, str(served_model)]
    budget = 60 + SECONDS * 3 * len(cases)  # start-up plus every refusal at its limit
    try:
        child = subprocess.run(argv, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as exc:
        started = [json.loads(line) for line in (exc.stdout or "").splitlines() if '"start"' in line]
        pytest.fail(f"hung on {started[-1] if started else 'start-up'}")
    assert child.returncode == 0, child.stderr[-3000:]
    results = [json.loads(line) for line in child.stdout.splitlines() if '"case"' in line]
    assert len(results) == 3 * len(cases)
    problems = []
    for r in results:
        if r["seconds"] > SECONDS or r["grew_mb"] > GROWTH_MB:
            problems.append(f"{r['case']} via {r['entry']}: {r['seconds']:.1f} s, +{r['grew_mb']:.0f} MB")
        if r["entry"] != "probe_image" and not r["outcome"].startswith("refused"):
            problems.append(f"{r['case']} via {r['entry']}: {r['outcome']}")
    assert not problems, "\n".join(problems)
    slowest, largest = max(results, key=lambda r: r["seconds"]), max(results, key=lambda r: r["grew_mb"])
    print(f"slowest refusal {slowest['seconds']:.2f} s ({slowest['case']} via {slowest['entry']}); largest growth "
          f"+{largest['grew_mb']:.0f} MB ({largest['case']} via {largest['entry']})")  # the figures in the docs


# ------------------------------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_mb(pid: int) -> float:
    """The process's peak resident size (VmHWM), Linux /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.e2e  # starts `pneumoscan serve` in its own process, sends it the bomb, then stops it
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to measure the server")
def test_a_server_sent_the_deflate_bomb_by_4_clients_stays_under_1_gb_and_healthy(served_model, tmp_path) -> None:
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", str(served_model), "--port", str(port),
                               "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(0.1)
            bomb, answers, health, done = deflate_bomb(), [], [], threading.Event()

            def upload(i: int) -> None:
                with httpx.Client(base_url=base, timeout=60) as own:
                    response = own.post("/v1/predict", files={"file": (f"bomb-{i}.dcm", bomb, "application/dicom")})
                    answers.append((response.status_code, response.json().get("detail", "")))

            def watch() -> None:
                with httpx.Client(base_url=base, timeout=5) as own:
                    while not done.is_set():
                        started = time.monotonic()
                        health.append((own.get("/healthz").status_code, time.monotonic() - started))
                        time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()
            clients = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(120)
            done.set()
            watcher.join(10)
            peak = _peak_mb(server.pid)
            after = client.get("/healthz").status_code
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    assert len(answers) == 4 and all(code == 422 and "decompression bomb" in detail for code, detail in answers), answers
    assert health and all(code == 200 for code, _ in health) and after == 200, health
    assert max(seconds for _, seconds in health) < SECONDS, f"/healthz answered in {max(s for _, s in health):.1f} s"
    assert peak < SERVER_PEAK_MB, f"server peak {peak:.0f} MB"
    print(f"server peak {peak:.0f} MB; /healthz slowest {max(s for _, s in health) * 1000:.0f} ms")  # for the docs
