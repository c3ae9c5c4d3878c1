"""The demo's HTML report opened in a real browser: Debian's Chromium, driven by Playwright (its Python package only;
no browser download). No console error, no request leaves the file, every chart and thumbnail is drawn, and the
screenshot has content. Skipped where Chromium is not installed, except in CI (CI=1, set by .ci/run), where a
missing browser fails the test."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmcheck.cli import main

DEMO = Path(__file__).resolve().parent.parent / "src" / "vlmcheck" / "demo" / "data" / "train.jsonl"
CHROMIUM = os.environ.get("VLMCHECK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip() -> str:
    if CHROMIUM and Path(CHROMIUM).exists():
        return CHROMIUM
    message = "Chromium is not installed (apt-get install chromium fonts-liberation)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the browser test")
    pytest.skip(message)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    out = tmp_path_factory.mktemp("browser") / "report.html"
    result = CliRunner().invoke(main, ["scan", str(DEMO), "--model", str(qwen_checkpoint("qwen2_vl")),
                                       "--max-length", "4096", "--html", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    return out


def _variance(png: bytes) -> float:
    from PIL import Image, ImageStat

    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).var[0])


def test_chromium_draws_the_report(page_file: Path) -> None:
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    url = page_file.as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")

            charts = page.evaluate("""() => [...document.querySelectorAll('svg.chart')].map(svg => {
                const box = svg.getBoundingClientRect();
                const label = (svg.getAttribute('aria-labelledby') || '').split(' ')
                    .map(id => (document.getElementById(id) || {}).textContent || '');
                return {id: svg.id, width: box.width, height: box.height,
                        marks: svg.querySelectorAll('path, use, rect').length, label};
            })""")
            images = page.evaluate("""() => [...document.images].map(img => ({
                src: img.src.slice(0, 30), ok: img.complete && img.naturalWidth > 0, alt: img.alt}))""")
            assert len(charts) >= 6
            for chart in charts:
                assert chart["width"] > 250 and chart["height"] > 100, chart
                assert chart["marks"] > 10, chart
                assert all(len(text) > 5 for text in chart["label"]), chart  # <title> and <desc> read out
                shot = page.locator(f"#{chart['id']}").screenshot()
                assert _variance(shot) > 100, chart["id"]  # drawn, not a blank box
            assert images and all(i["ok"] and i["alt"] for i in images), images

            full = page.screenshot(full_page=True)
            assert _variance(full) > 100
            # readable without colour: the chart keys are hatches and line styles, the severities are words
            assert page.locator("text=✖ error").count() > 0
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]  # nothing loaded from outside the file
