"""Regenerate docs/report.png, the README's picture of the HTML report: the demo scan's report, as Chromium draws it.

    python scripts/screenshot_report.py            # needs Chromium (apt-get install chromium fonts-liberation)

Runs `vlmcheck scan` on the bundled demo at max_length 4,096 with --html, opens the page in Debian's Chromium
through Playwright, and saves the top of the page (verdict, findings, the length chart) as a 256-colour PNG.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from vlmcheck.cli import main
from vlmcheck.demo.checkpoints import qwen_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "src" / "vlmcheck" / "demo" / "data" / "train.jsonl"
OUT = ROOT / "docs" / "report.png"
WIDTH, HEIGHT = 1100, 1500


def main_() -> int:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("Chromium is not installed: apt-get install chromium fonts-liberation", file=sys.stderr)
        return 1
    from PIL import Image
    from playwright.sync_api import sync_playwright

    os.chdir(ROOT)  # the page names the dataset as the command line did: relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "report.html"
        result = CliRunner().invoke(main, ["scan", str(DEMO.relative_to(ROOT)), "--model",
                                           str(qwen_checkpoint("qwen2_vl")), "--max-length", "4096",
                                           "--html", str(page_file), "--quiet"])
        if not page_file.exists():
            print(result.output, file=sys.stderr)
            return 1
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(page_file.as_uri(), wait_until="load")
            # the top of the page: the verdict, the findings table and the length chart
            png = page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
            browser.close()
        shot = Path(tmp) / "shot.png"
        shot.write_bytes(png)
        Image.open(shot).convert("RGB").quantize(256).save(OUT, optimize=True)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
