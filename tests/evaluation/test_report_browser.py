"""The HTML report opened in a real headless browser (Debian's Chromium): plots load, disclaimer visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumoscan.evaluation import EvaluateConfig, evaluate
from pneumoscan.provenance import DISCLAIMER

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium floods this closed network (see DEVELOPERS.md).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.e2e]  # starts a browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is absent: apt-get install chromium")
def test_html_report_shows_every_plot_and_the_disclaimer_offline(tiny_run, tiny_data, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    result = evaluate(EvaluateConfig(models=[str(tiny_run)], data=str(tiny_data), out=str(tmp_path / "r"),
                                     bootstrap=100, calibrate=True, gallery=1))
    page_file = tmp_path / "alone" / "report.html"  # moved away from plots/: it must not need them
    page_file.parent.mkdir()
    page_file.write_bytes(result.html.read_bytes())
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri(), wait_until="load")
            sizes = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            disclaimer = page.locator("#disclaimer")
            assert disclaimer.is_visible()
            assert disclaimer.inner_text().strip() == DISCLAIMER
            title = page.title()
        finally:
            browser.close()
    assert title == "pneumoscan evaluation report"
    assert len(sizes) == len(result.report["plots"]) + len(result.report["gallery"] or []) >= 6
    for alt, complete, width, height in sizes:
        assert complete and width > 0 and height > 0, alt
    assert {alt for alt, *_ in sizes} >= {"ROC curve", "Reliability diagram", "Confusion matrix"}
    assert all(url.startswith(("file://", "data:")) for url in requests), requests  # nothing from outside
