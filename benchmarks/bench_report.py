"""HTML report cost on a large dataset (issue 16): aggregate 1M synthetic sample results, then write the page.

    python benchmarks/bench_report.py                 # 1,000,000 samples
    python benchmarks/bench_report.py --samples 200000

The results are what a scan hands :class:`vlmcheck.report.ReportBuilder` (lengths spread over ~9,000 distinct
values, one to three images each, a finding in 5% of samples, previews as the scan caps them). Measures the
builder's time per sample, ``Report.to_html()`` (matplotlib drawing every chart), the page's size, and the time
Chromium takes to load and lay it out where Chromium is installed. Prints a Markdown table; no network.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def build(samples: int):  # noqa: ANN201
    from vlmcheck.findings import make
    from vlmcheck.report import ReportBuilder
    from vlmcheck.results import SampleResult
    from vlmcheck.scan import ScanOptions

    builder = ReportBuilder(dataset="synthetic.jsonl", model="Qwen/Qwen2-VL-7B-Instruct", model_type="qwen2_vl",
                            options=ScanOptions(max_length=4096), settings={"max_pixels": 1_003_520})
    started = time.perf_counter()
    for i in range(samples):
        tokens = 200 + (i * 7919) % 9000
        images = 1 + i % 3
        result = SampleResult(index=i, id=f"row-{i}", tokens=tokens, image_tokens=[tokens // (images + 1)] * images,
                              supervised_tokens=40, fits_max_pixels=(1 + i % 997) * 784)
        if tokens > 4096 and i % 10 == 0:
            result.findings.append(make("VC201", f"image 1 of {images} is cut at max_length=4,096", image=1))
            result.preview = {"layout": {"total": tokens, "media": [[10, 10 + tokens // 2, "image", 1]],
                                         "supervised": [[tokens - 40, tokens]], "kept": [[0, 4096]],
                                         "max_length": 4096}}
        builder.add(result)
    seconds = time.perf_counter() - started
    return builder.build(seconds=seconds), seconds


def open_in_chromium(path: Path) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(path.as_uri(), wait_until="load")
        page.evaluate("() => document.body.getBoundingClientRect().height")  # force layout
        seconds = time.perf_counter() - started
        browser.close()
    return seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    report, aggregate = build(args.samples)
    started = time.perf_counter()
    page = report.to_html()
    render = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        path.write_text(page, encoding="utf-8")
        load = open_in_chromium(path)
    print(f"{args.samples:,} samples, Python {platform.python_version()}, {platform.machine()}\n")
    print("| step | result |\n|---|---|")
    print(f"| ReportBuilder.add, all samples | {aggregate:.1f} s ({aggregate / args.samples * 1e6:.1f} µs/sample) |")
    print(f"| Report.to_html() | {render:.2f} s |")
    print(f"| page size | {len(page.encode()) / 1024:,.0f} KiB |")
    print(f"| Chromium: load and lay out | {'not installed' if load is None else f'{load:.2f} s'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
