"""`scan --framework NAME`: a framework's truncation, resize route and defaults without a config.

The defaults themselves are proved where each framework module is proved against the framework's own code
(test_llamafactory_check.py, test_trl_oracle.py, test_swift_oracle.py); here: that the scan applies them, that
explicit settings win, and that a contradiction is refused rather than silently changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import vlmcheck
from builders import image, write_jsonl
from vlmcheck.cli import main
from vlmcheck.errors import UsageError

QA = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."}]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    image(tmp_path / "big.png", 2000, 1500)  # over LLaMA-Factory's default image_max_pixels (768*768)
    return write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "messages": QA, "images": ["big.png"]}])


def _summary(report: vlmcheck.Report) -> tuple[object, ...]:
    s = report.summary
    return s["max_length"], s["truncation"], s["settings"].get("resize"), list(report.records())[0]["image_tokens"]


def test_llamafactory_defaults_are_its_cutoff_len_cut_and_pixel_budget(data: Path, qwen2_vl_checkpoint: Path):
    framed = vlmcheck.scan(data, model=qwen2_vl_checkpoint, framework="llamafactory")
    spelled = vlmcheck.scan(data, model=qwen2_vl_checkpoint, max_length=2048, truncation="llamafactory",
                            resize="prescale", max_pixels=768 * 768, min_pixels=32 * 32, exif_transpose=False)
    bare = vlmcheck.scan(data, model=qwen2_vl_checkpoint)
    assert _summary(framed) == _summary(spelled)
    assert _summary(framed)[:3] == (2048, "llamafactory", "prescale")
    # the pre-scaled image costs fewer tokens than the processor's own budget gives it
    assert _summary(framed)[3][0] < _summary(bare)[3][0]


def test_explicit_settings_win_and_contradictions_are_refused(data: Path, qwen2_vl_checkpoint: Path):
    report = vlmcheck.scan(data, model=qwen2_vl_checkpoint, framework="trl", max_length=64)
    assert _summary(report)[:3] == (64, "right", "processor")
    with pytest.raises(UsageError, match="contradicts framework 'llamafactory'"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, framework="llamafactory", truncation="left")
    with pytest.raises(UsageError, match="vlmcheck check"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, framework="verl")


def test_cli_twin(data: Path, qwen2_vl_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint), "--framework", "swift",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["truncation"] == "delete" and summary["settings"]["resize"] == "qwen-vl-utils"


def test_repair_applies_the_framework_as_scan_does(data: Path, qwen2_vl_checkpoint: Path, tmp_path: Path):
    """At a max length the image fits once LLaMA-Factory has pre-scaled it to its default 768*768 budget, but not
    at the processor's own budget: `repair --framework llamafactory` keeps the row, a bare repair changes it, and
    the framework's settings are the ones spelled out."""
    framed = vlmcheck.scan(data, model=qwen2_vl_checkpoint, framework="llamafactory")
    bare = vlmcheck.scan(data, model=qwen2_vl_checkpoint)
    fits = list(framed.records())[0]["tokens"] + 8
    assert list(bare.records())[0]["tokens"] > fits

    def outcomes(*flags: str) -> list[str]:
        out = tmp_path / f"r{len(flags)}.json"
        result = CliRunner().invoke(main, ["repair", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length",
                                           str(fits), "--dry-run", "--json", str(out), "--fail-on", "error", *flags])
        assert result.exit_code in (0, 1), result.output
        counts = json.loads(out.read_text())["counts"]
        return [k for k, v in sorted(counts.items()) if v]

    assert outcomes("--framework", "llamafactory") == ["kept"]
    assert outcomes("--truncation", "llamafactory", "--resize", "prescale", "--max-pixels", str(768 * 768),
                    "--min-pixels", str(32 * 32), "--no-exif") == ["kept"]
    assert outcomes() == ["changed"]
