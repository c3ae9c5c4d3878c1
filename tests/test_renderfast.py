"""The written-out Qwen2-VL template render (``vlmcheck.renderfast``) against the Jinja render of the template.

Oracle: ``vlmcheck.chat.render_chat`` (the sandboxed Jinja environment, as ``apply_chat_template``) of the same
template text. Every conversation the written-out render takes must come out byte-identical; the ones it does
not take (odd shapes) go to Jinja. Whole scans give identical records with ``VLMCHECK_FAST_RENDER=0``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from builders import image, write_jsonl
from vlmcheck import scan
from vlmcheck.chat import render_chat
from vlmcheck.demo.checkpoints import QWEN2_VL_CHAT_TEMPLATE, qwen_checkpoint
from vlmcheck.options import ScanOptions
from vlmcheck.renderfast import FastRender, written_out
from vlmcheck.scan import build_scanner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scan  # noqa: E402  (the benchmark's conversation generator)

ODD: list[Any] = [
    [],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}, {"type": "video"}]}],
    [{"role": "user", "content": [{"image": "x.png"}, {"image_url": {"url": "u"}}, {"video": "v.mp4"}]}],
    [{"role": "user", "content": [{"text": "no type"}, {"type": "text"}, {"type": None, "text": "t"}]}],
    [{"role": "user", "content": [{"type": "image", "text": "both"}, {"type": "audio", "text": "a"}]}],
    [{"role": "assistant", "content": ""}, {"role": "user", "content": []}],
    [{"role": "tool", "content": "  spaces \n\n"}, {"role": "user", "content": "{{ not a template }} {% x %}"}],
    [{"role": "user", "content": "é\u0301 \U0001f600 \u4f60\u597d <|im_end|> <|image_pad|>"}],
    [{"role": "user", "content": "x" * 100_000}],
    # shapes the written-out render leaves to Jinja
    [{"role": "user", "content": None}],
    [{"role": "user"}],
    [{"content": "no role"}],
    [{"role": 3, "content": "a"}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": ["a string part"]}],
    [{"role": "user", "content": [{"type": 1, "text": "a"}]}],
    [{"role": "user", "content": ("a", "tuple")}],
    ["not a dict"],
]


def _jinja(messages: list[Any]) -> str | None:
    try:
        return render_chat(QWEN2_VL_CHAT_TEMPLATE, messages, special_tokens={})
    except Exception:
        return None


def test_the_template_is_recognised_by_its_exact_text() -> None:
    assert written_out(QWEN2_VL_CHAT_TEMPLATE) is not None
    checkpoint = json.loads((qwen_checkpoint("qwen2_vl") / "chat_template.json").read_text())["chat_template"]
    assert hashlib.sha256(checkpoint.encode()).digest() == hashlib.sha256(QWEN2_VL_CHAT_TEMPLATE.encode()).digest()
    assert written_out(QWEN2_VL_CHAT_TEMPLATE.replace("helpful", "helpfull")) is None
    assert written_out(QWEN2_VL_CHAT_TEMPLATE + " ") is None


@pytest.mark.parametrize("k", range(len(ODD)))
def test_odd_shapes_render_as_jinja_or_go_to_jinja(k: int) -> None:
    messages = ODD[k]
    fast = written_out(QWEN2_VL_CHAT_TEMPLATE)
    assert fast is not None
    got = fast(messages)
    if k < 10:
        assert got is not None  # a shape it was written for
    if got is not None:
        assert got == _jinja(messages)


def test_benchmark_conversations_identical() -> None:
    rng = random.Random(7)
    pool = [f"images/{k}.png" for k in range(20)]
    fast = written_out(QWEN2_VL_CHAT_TEMPLATE)
    assert fast is not None
    for i in range(2000):
        messages = bench_scan._typed_messages(bench_scan._sample(i, rng, pool))
        assert fast(messages) == _jinja(messages)


def test_a_difference_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = FastRender(QWEN2_VL_CHAT_TEMPLATE, special_tokens={})
    monkeypatch.setattr(fast, "written", lambda messages: "something else")
    assert fast.render([{"role": "user", "content": "Hi"}]) is None
    assert fast.written is None
    monkeypatch.setenv("VLMCHECK_FAST_RENDER", "0")
    assert FastRender(QWEN2_VL_CHAT_TEMPLATE, special_tokens={}).written is None


def test_scan_records_identical_with_and_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image(tmp_path / "a.png", 640, 480)
    rows: list[dict[str, Any]] = []
    for i in range(150):  # past the conversations checked both ways
        rows.append({"id": f"r{i}", "images": ["a.png"] * (i % 3), "messages": [
            {"role": "user", "content": "<image>" * (i % 3) + ODD[8][0]["content"] + f" {i}"},
            {"role": "assistant", "content": f" answer {i}\n"}]})
        if i % 7 == 0:
            rows[-1]["system"] = "Be brief."
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out: dict[str, Any] = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("VLMCHECK_FAST_RENDER", setting)
        records = tmp_path / f"records{setting}.jsonl"
        report = scan(data, model=qwen_checkpoint("qwen2_vl"), max_length=400, output=records)
        summary = report.to_dict()
        for key in ("seconds", "samples_per_second"):
            summary["summary"].pop(key)
        out[setting] = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()], summary
    assert sum(r["tokens"] is not None for r in out["1"][0]) == 150
    monkeypatch.setenv("VLMCHECK_FAST_RENDER", "1")
    scanner = build_scanner(data, model=qwen_checkpoint("qwen2_vl"), options=ScanOptions(max_length=400))
    assert scanner.fast_render.written is not None and scanner.fast_render.checked >= 1  # the scan renders through it
    assert out["1"] == out["0"]
