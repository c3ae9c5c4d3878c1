"""The HTML report (`--html`, `Report.to_html()`): what it holds, that it loads nothing from outside, that it stays
small on a large dataset; the text histogram; `vlmcheck explain`. tests/test_report_browser.py opens it in Chromium."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmcheck.cli import main
from vlmcheck.findings import CATALOGUE
from vlmcheck.preview import PREVIEWS_PER_CODE
from vlmcheck.report import Report, ReportBuilder, text_histogram
from vlmcheck.results import SampleResult
from vlmcheck.scan import ScanOptions

DEMO = Path(__file__).resolve().parent.parent / "src" / "vlmcheck" / "demo" / "data" / "train.jsonl"


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, str]:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    out = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(main, ["scan", str(DEMO), "--model", str(qwen_checkpoint("qwen2_vl")),
                                       "--max-length", "4096", "--html", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    from vlmcheck.scan import scan

    return scan(DEMO, model=qwen_checkpoint("qwen2_vl"), max_length=4096), out.read_text(encoding="utf-8")


def offline_problems(page: str) -> list[str]:
    """Anything that would make a browser fetch from outside the file."""
    problems = re.findall(r"<(?:script|link|iframe|object|embed)\b[^>]*>", page, flags=re.I)
    problems += [m for m in re.findall(r"\bsrc\s*=\s*['\"]([^'\"]*)", page, flags=re.I) if not m.startswith("data:")]
    problems += re.findall(r"url\(\s*['\"]?(?!data:|#)[^)]*\)", page, flags=re.I)
    problems += re.findall(r"@import[^;]*;", page, flags=re.I)
    problems += re.findall(r"\b(?:xlink:)?href\s*=\s*['\"](?!#|https?://)[^'\"]*['\"]", page, flags=re.I)
    return problems


def test_the_page_is_self_contained(demo_report: tuple[Report, str]) -> None:
    _, page = demo_report
    assert page.startswith("<!doctype html>")
    assert offline_problems(page) == []
    # the only links out are the docs anchors of the codes, which a reader follows on purpose
    outside = set(re.findall(r"href\s*=\s*['\"](https?://[^'\"#]*)", page))
    assert outside == {"https://github.com/vlmcheck/vlmcheck/blob/main/docs/findings.md"}


def test_the_page_shows_findings_charts_previews_and_settings(demo_report: tuple[Report, str]) -> None:
    report, page = demo_report
    for code, count in report.counts.items():
        rule = CATALOGUE[code]
        assert f"findings.md#{rule.anchor}'>{code}</a>" in page
        assert re.search(rf">{code}</a></td><td><span class='sev-{rule.severity}'>[^<]*</span></td>"
                         rf"<td class=num>{count:,}</td>", page), code
        section = page.split(f"id='samples-{rule.anchor}'>")[1].split("</section>")[0]
        assert 1 <= section.count("class='card'") <= PREVIEWS_PER_CODE
    for chart in ("length-histogram", "coverage-length", "coverage-pixels", "image-tokens", "images-per-sample",
                  "layout-vc201"):
        assert f"<figure id='{chart}'" in page, chart
    assert "max_length 4,096" in page and "5 of 14 samples (35.7%) cut" in page
    # thumbnails are embedded, downscaled JPEGs; an unreadable image is a note, not a broken <img>
    thumbs = re.findall(r"<img src='data:image/jpeg;base64,([^']+)'", page)
    assert thumbs and all(len(t) < 20_000 for t in thumbs)
    assert "file not found" in page and "cannot be decoded" in page
    for setting in ("max_length", "truncation", "processor: max_pixels", "vlmcheck ", "tokenizers ", "pillow "):
        assert setting in page, setting


def test_every_chart_has_a_text_alternative_and_its_data(demo_report: tuple[Report, str]) -> None:
    _, page = demo_report
    ids = re.findall(r"\sid=[\"']([^\"']+)", page)
    assert len(ids) == len(set(ids))  # unique in the page, though matplotlib numbers each figure's from 1
    refs = re.findall(r"url\(#([^)]+)\)|href=\"#([^\"]+)\"", page)
    assert refs and {a or b for a, b in refs} <= set(ids)
    figures = re.findall(r"<figure id='([^']+)' aria-labelledby='[^']+'>(.*?)</figure>", page, flags=re.S)
    assert len(figures) >= 6
    for chart_id, body in figures:
        assert f'aria-labelledby="{chart_id}-title {chart_id}-desc"' in body and 'role="img"' in body
        title = re.search(rf'<title id="{chart_id}-title">([^<]+)</title>', body)
        desc = re.search(rf'<desc id="{chart_id}-desc">([^<]+)</desc>', body)
        assert title and desc and len(desc.group(1)) > 40
        assert f"<figcaption id='{chart_id}-caption'>" in body
        assert "<table>" in body and "<td" in body  # the numbers the chart draws


def test_scan_previews_only_a_few_samples_per_code(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from PIL import Image

    from vlmcheck.scan import scan

    Image.new("RGB", (2000, 2000), "white").save(tmp_path / "big.png")
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": "big.png"},
                                                     {"type": "text", "text": "Describe."}]},
                        {"role": "assistant", "content": "A white square."}]}
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(row) for _ in range(40)) + "\n")
    for workers in (1, 2):
        report = scan(tmp_path / "d.jsonl", model=qwen2_vl_checkpoint, max_length=1000, workers=workers)
        assert report.counts["VC201"] == 40
        previews = report.distributions.previews  # type: ignore[union-attr]
        assert [p["index"] for p in previews["VC201"]] == list(range(PREVIEWS_PER_CODE))
        layout = previews["VC201"][0]["layout"]
        assert layout["kept"] == [[0, 1000]] and layout["media"][0][2:] == ["image", 1]
        assert previews["VC201"][0]["images"][0]["thumbnail"].startswith("data:image/jpeg;base64,")


def _synthetic(n: int) -> Report:
    """A report of ``n`` synthetic samples: thousands of distinct lengths, a VC203 in every tenth."""
    from vlmcheck.findings import make

    options = ScanOptions(max_length=4096)
    builder = ReportBuilder(dataset="synthetic.jsonl", model="m", model_type="qwen2_vl", options=options,
                            settings={"max_pixels": 1_003_520})
    for i in range(n):
        tokens = 200 + (i * 7919) % 9000
        result = SampleResult(index=i, id=str(i), tokens=tokens, image_tokens=[tokens // 3] * (1 + i % 3),
                              supervised_tokens=20, fits_max_pixels=(1 + i % 997) * 784)
        if tokens > 4096 and i % 10 == 0:
            result.findings.append(make("VC203", f"{tokens:,} tokens > max_length=4,096"))
        builder.add(result)
    return builder.build(seconds=1.0)


def test_a_large_report_stays_small_and_fast() -> None:
    report = _synthetic(50_000)
    started = time.perf_counter()
    page = report.to_html()
    seconds = time.perf_counter() - started
    assert len(page) < 600_000, len(page)  # aggregates, not rows: 1M rows make the same page (docs/report.md)
    assert seconds < 15, seconds
    assert "50,000 samples" in page and len(report.findings) <= 10_000


def test_text_histogram_marks_the_max_length() -> None:
    lines = text_histogram(Counter({100: 6, 180: 3, 400: 1}), max_length=300, bins=3, width=6)
    assert lines == ["  100 - 200   ######  9",
                     "  201 - 301           0  <- max_length 300",
                     "  302 - 400   #       1  over"]
    assert text_histogram(Counter({100: 9}), max_length=300) == []  # under 10 samples: the quantiles say it all


def test_html_needs_a_path_that_is_not_an_input(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    result = CliRunner().invoke(main, ["scan", str(DEMO), "--model", str(qwen2_vl_checkpoint), "--html", str(DEMO)])
    assert result.exit_code == 2 and "--html would replace the dataset" in result.output


def test_check_writes_the_same_report(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    Image.new("RGB", (640, 480), "teal").save(data / "imgs" / "a.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What is it?"},
                          {"role": "assistant", "content": "A cat."}], "images": ["imgs/a.png"]}] * 12
    (data / "train.json").write_text(json.dumps(rows))
    info = {"mm": {"file_name": "train.json", "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {qwen2_vl_checkpoint}\nstage: sft\ntemplate: qwen2_vl\n"
                      f"dataset: mm\ndataset_dir: {data}\ncutoff_len: 300\n")
    out = tmp_path / "check.html"
    result = CliRunner().invoke(main, ["check", str(config), "--html", str(out)])
    assert result.exit_code == 1, result.output
    page = out.read_text(encoding="utf-8")
    assert "vlmcheck check report" in page and "cutoff_len" in page and "llamafactory" in page
    assert "the framework&#x27;s verdict: crash, keeps 300 tokens" in page
    # the same previews as a scan's: the image, and the layout LLaMA-Factory builds with what its per-turn cut keeps
    assert "<figure id='layout-vc201'" in page and "<img src='data:image/jpeg;base64," in page
    layout = re.search(r"<figure id='layout-vc201'.*?</figure>", page, flags=re.S).group(0)  # type: ignore[union-attr]
    assert re.search(r"<td>sample 0 \(mm:0\)</td><td>\d+</td><td>image 1 [\d,]+-[\d,]+</td><td>[\d,]+-[\d,]+</td>"
                     r"<td>cut: [\d,]+-[\d,]+", layout), layout[-800:]
    assert "<figure id='length-histogram'" in page and offline_problems(page) == []
    assert "  <- cutoff_len 300" not in result.output  # all 12 samples have one length: one bin, nothing over


def test_explain_prints_the_catalogue_entry() -> None:
    result = CliRunner().invoke(main, ["explain", "vc202"])
    assert result.exit_code == 0
    assert result.output == (
        "VC202 supervision-truncated (error)\n"
        "Truncation removes every supervised token\n"
        "\n"
        "All labels of the sample are masked after truncation: its loss is 0, or NaN if the whole batch is\n"
        "like it.\n"
        "\n"
        "Fix: Raise the max length, shorten the prompt, or drop the sample.\n"
        "\n"
        "Docs: docs/findings.md#vc202\n"
    )
    assert CliRunner().invoke(main, ["explain", "VL401"]).output.startswith("VL401 ddp-reentrant-find-unused (error)")
    assert "Versions: " in CliRunner().invoke(main, ["explain", "VL401"]).output
    assert CliRunner().invoke(main, ["explain", "response-marker-not-found"]).output.startswith("VT006 ")
    result = CliRunner().invoke(main, ["explain", "VC999"])
    assert result.exit_code == 2 and "VC codes are VC001, VC002" in result.output
