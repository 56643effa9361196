"""The web page as a person uses it: `pneumoscan serve` in a real process, Debian's headless Chromium driven
by Playwright, the keyboard only, a real radiograph; a screenshot is saved under the test's tmp_path."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pneumoscan.provenance import DISCLAIMER

CHROMIUM = Path("/usr/bin/chromium")
# DEVELOPERS.md "Browser tests": without the background-networking flags Chromium floods this closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Deadlines, not sleeps: on a loaded 2-core machine the server may take half a minute to import and listen,
# and the page a few seconds per step. Every wait below polls a condition up to these limits.
SERVER_START_S = 180
STEP_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,  # starts a browser
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run does it)"),
]


@pytest.fixture
def server(served_run, wait_ready, tmp_path):
    """`pneumoscan serve RUN` on a free loopback port, as a user starts it; stopped after the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumoscan", "serve", str(served_run), "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=STEP_MS / 1000) as client:
            deadline = time.monotonic() + SERVER_START_S
            while True:  # the process needs a few seconds (more on a busy machine) to import and listen
                try:
                    wait_ready(client, timeout=SERVER_START_S)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, (tmp_path / "server.log").read_text()
                    assert time.monotonic() < deadline, f"server not listening after {SERVER_START_S} s: " + (
                        tmp_path / "server.log").read_text()
                    time.sleep(0.2)
            yield url, client
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_a_person_uploads_a_radiograph_with_the_keyboard_and_reads_the_result(server, radiographs, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect, sync_playwright

    url, api = server
    image = radiographs[-1]
    expected = api.post("/v1/predict", files={"file": (image.name, image.read_bytes())}).json()

    expect.set_options(timeout=STEP_MS)  # expect() waits for its condition up to this, not the default 5 s
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(STEP_MS)
            page.set_default_navigation_timeout(STEP_MS)
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
            explains: list[str] = []  # Grad-CAM requests: only when the box is ticked
            page.on("request", lambda request: explains.append(request.url) if "explain=true" in request.url else None)
            page.goto(url + "/")
            expect(page.locator("#disclaimer")).to_contain_text(DISCLAIMER)
            # (Locator waits, not wait_for_function: the page's CSP forbids the eval that one needs.)
            expect(page.locator("#model-info")).to_contain_text("mini-resnet")

            # Keyboard only: Tab to the file input, open the chooser with Space, pick the radiograph.
            for _ in range(10):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "file":
                    break
            assert page.evaluate("document.activeElement.id") == "file"
            # Space or Enter opens a focused file input. On a loaded machine a key press has been seen to
            # reach the page without opening the chooser: the person presses again, as a person would.
            page.bring_to_front()
            chooser = None
            for key in ("Space", "Enter", "Space"):
                try:
                    with page.expect_file_chooser(timeout=STEP_MS // 3) as opened:
                        page.keyboard.press(key)
                    chooser = opened.value
                    break
                except PlaywrightTimeoutError:
                    page.focus("#file")
            assert chooser is not None, "the focused file input never opened a file chooser from the keyboard"
            chooser.set_files(str(image))

            page.wait_for_selector("#result:not([hidden])")
            expect(page.locator("#probability")).to_have_text(f"{100 * expected['probability']:.1f}%")
            expect(page.locator("#label")).to_have_text(expected["label"])
            expect(page.locator("#threshold")).to_have_text(f"{expected['threshold']:.2f}")
            expect(page.locator("#status")).to_contain_text(expected["label"])  # announced (aria-live)
            expect(page.locator("#image")).to_have_attribute("src", re.compile(r"^blob:"))  # the upload itself

            # The heatmap toggle, with the keyboard too; Grad-CAM is computed when it is ticked, not before.
            toggle = page.locator("#heatmap")
            expect(toggle).to_be_enabled()
            assert explains == [], "Grad-CAM was requested with the box unticked"
            toggle.focus()
            page.keyboard.press("Space")
            expect(toggle).to_be_checked()
            expect(page.locator("#image")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
            assert len(explains) == 1, explains
            page.screenshot(path=str(tmp_path / "page-result.png"), full_page=True)
            assert problems == [], problems  # no CSP violation, no missing asset, no script error

            # Drag and drop: a real radiograph dropped on the box (a DataTransfer built in the page).
            dropped = radiographs[0]
            dropped_expected = api.post("/v1/predict", files={"file": (dropped.name, dropped.read_bytes())}).json()
            transfer = page.evaluate_handle(
                """([name, b64]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
                    return transfer;
                }""", [dropped.name, base64.b64encode(dropped.read_bytes()).decode()])
            page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
            expect(page.locator("#result-file")).to_have_text(dropped.name)
            expect(page.locator("#probability")).to_have_text(f"{100 * dropped_expected['probability']:.1f}%")

            # The subtype of a PNEUMONIA answer. The served model has no subtype head, so its real answers are
            # given the two fields here, as a model with one answers; without them the page shows none.
            expect(page.locator("#subtype-block")).to_be_hidden()
            def answering(answer):
                return lambda route: route.fulfill(json=answer)

            for i, (subtype, shown) in enumerate((("bacterial", "bacterial (P viral 0.12)"), ("uncertain", "uncertain"))):
                other = radiographs[1 + i]
                answer = api.post("/v1/predict", files={"file": (other.name, other.read_bytes())}).json()
                page.route("**/v1/predict", answering({**answer, "label": "PNEUMONIA", "subtype": subtype,
                                                       "viral_probability": 0.123}))
                page.set_input_files("#file", str(other))
                expect(page.locator("#subtype")).to_have_text(shown)
                expect(page.locator("#subtype-block")).to_be_visible()
                expect(page.locator("#subtype-block")).to_contain_text("not a microbiological diagnosis")
                expect(page.locator("#status")).to_contain_text(f"subtype {shown}")
                expect(page.locator("#disclaimer")).to_contain_text(DISCLAIMER)
                page.unroute("**/v1/predict")
            page.screenshot(path=str(tmp_path / "page-subtype.png"), full_page=True)

            # A file that is not an image: the server's message, in the alert region.
            bad = tmp_path / "notes.txt"
            bad.write_text("not a radiograph")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#error:not([hidden])")
            expect(page.locator("#error")).to_contain_text("not an image")
            expect(page.locator("#result")).to_be_hidden()
            page.screenshot(path=str(tmp_path / "page-error.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "page-result.png").stat().st_size > 10_000
