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
