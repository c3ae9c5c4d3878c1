"""The budget search's kept answers (``Judge._budget_tokens``) give the records of computing every one.

Oracle: the same scans with ``VLMCHECK_BUDGET_CACHE=0``, where every budget the search tries is applied to the
settings and every image counted again (the search as it was before the cache). Rows over the max length with
one to four images of sizes that repeat across rows (so the kept answers are used), under each resize route:
the processor's own, LLaMA-Factory's prescale and qwen-vl-utils (whose floor makes some budgets give a side
of 0 px, the answers kept as "does not fit"). Every record, every finding with its message and
fix (which names the budget), and the summary (its histogram of budgets) must be identical both ways.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from builders import png_header_only, write_jsonl
from vlmcheck import scan
from vlmcheck.demo.checkpoints import qwen_checkpoint

SIZES = [(1400, 1120), (4000, 3000), (640, 480), (33, 2000), (2000, 40), (1024, 1024), (29, 29), (3000, 500),
         (812, 1210), (5000, 5000), (640, 4000), (1400, 300), (3000, 29)]


def _rows(folder: Path) -> list[dict[str, Any]]:
    names = [png_header_only(folder / f"{w}x{h}.png", w, h).name for w, h in SIZES]
    rng = random.Random(17)
    rows = []
    for i in range(120):
        images = [rng.choice(names) for _ in range(rng.randint(1, 4))]
        words = " ".join(rng.choice(["pixel", "budget", "cut", "image", "text"]) for _ in range(rng.randint(1, 400)))
        rows.append({"id": f"r{i}", "images": images, "messages": [
            {"role": "user", "content": "<image>" * len(images) + words},
            {"role": "assistant", "content": "An answer. " * rng.randint(1, 30)}]})
    return rows


def _scan(data: Path, out: Path, **options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    report = scan(data, model=qwen_checkpoint("qwen2_vl"), output=out, **options)
    summary = report.to_dict()
    for key in ("seconds", "samples_per_second"):
        summary["summary"].pop(key)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], summary


@pytest.mark.parametrize("options", [
    {"max_length": 2048},
    {"max_length": 1024, "max_pixels": 2_000_000},
    {"max_length": 1500, "resize": "prescale", "max_pixels": 1_000_000},
    {"max_length": 900, "resize": "qwen-vl-utils"},
], ids=["processor", "processor-capped", "prescale", "qwen-vl-utils"])
def test_records_identical_with_and_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            options: dict[str, Any]) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", _rows(tmp_path))
    out = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("VLMCHECK_BUDGET_CACHE", setting)
        out[setting] = _scan(data, tmp_path / f"records{setting}.jsonl", **options)
    records, summary = out["1"]
    budgets = summary["summary"]["histograms"]["fits_max_pixels"]  # each sample's answer, counted
    assert sum(budgets.values()) >= 20 and len(budgets) >= 10  # the search ran, to many different answers
    assert sum("VC201" in r["findings"] for r in records) >= 20
    assert out["1"] == out["0"]
