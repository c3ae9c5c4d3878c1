"""Supervision and length are judged on the rendered tokens (issue 15): LLaVA-format string values are
routed to typed text parts when the checkpoint's template renders only those (as TRL's
``prepare_multimodal_messages`` does), and text a template still drops is VC004, never a clean sample."""

from __future__ import annotations

import json
from pathlib import Path

import vlmcheck
from builders import png_header_only, write_jsonl


def llava_rows(system: str | None = None) -> list[dict[str, object]]:
    row: dict[str, object] = {"id": "s", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown in this picture, in detail?"},
        {"from": "gpt", "value": "A red square on a plain background, nothing else."}]}
    if system is not None:
        row["system"] = system
    return [row]


def records(data: Path, **options: object) -> list[dict[str, object]]:
    out = data.with_suffix(".out.jsonl")
    vlmcheck.scan(data, output=out, **options)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_llava_strings_are_counted_as_typed_parts(tmp_path: Path) -> None:
    from llava_checkpoint import llava_checkpoint

    png_header_only(tmp_path / "a.png", 336, 336)
    model = llava_checkpoint()
    (strings,) = records(write_jsonl(tmp_path / "s.jsonl", llava_rows()), model=model)
    typed_row = {"id": "s", "images": ["a.png"], "messages": [
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "\nWhat is shown in this picture, in detail?"}]},
        {"role": "assistant", "content": [{"type": "text",
                                           "text": "A red square on a plain background, nothing else."}]}]}
    (typed,) = records(write_jsonl(tmp_path / "t.jsonl", [typed_row]), model=model)
    assert strings["findings"] == typed["findings"] == []
    assert strings["supervised_tokens"] == typed["supervised_tokens"] > 0
    assert strings["tokens"] == typed["tokens"]


def test_a_huge_system_prompt_is_counted(tmp_path: Path) -> None:
    from llava_checkpoint import llava_checkpoint

    png_header_only(tmp_path / "a.png", 336, 336)
    model = llava_checkpoint()
    (short,) = records(write_jsonl(tmp_path / "a.jsonl", llava_rows("Be brief.")), model=model)
    (huge,) = records(write_jsonl(tmp_path / "b.jsonl", llava_rows("word " * 300_000)), model=model,
                      max_length=4096)
    assert int(huge["tokens"]) > int(short["tokens"]) + 250_000  # type: ignore[call-overload]
    assert "VC202" in huge["findings"]  # type: ignore[operator]


def test_text_a_template_drops_is_a_finding(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    # renders only user turns: the assistant's reply vanishes, so does all supervision
    template = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}\n{% endif %}{% endfor %}"
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "messages": [
        {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "General Kenobi"}]}])
    (got,) = records(data, model=qwen2_vl_checkpoint, chat_template=template)
    assert got["findings"] == ["VC004", "VC003"]
    assert got["supervised_tokens"] == 0


def test_typed_parts_with_odd_types(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    rows = [{"id": kind, "messages": [{"role": "user", "content": [{"type": t, "text": "hi"}]},
                                      {"role": "assistant", "content": "ok"}]}
            for kind, t in (("null", None), ("number", 3), ("audio", "audio"), ("list", ["text"]))]
    rows.append({"id": "empty-bytes", "messages": [{"role": "user", "content": "<image>hi"},
                                                   {"role": "assistant", "content": "ok"}]})
    data = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in rows[:-1]]
    png_header_only(tmp_path / "a.png", 64, 64)
    lines.append(json.dumps(rows[-1])[:-1] + ', "images": [{"bytes": "", "path": "a.png"}]}')
    data.write_text("\n".join(lines) + "\n")
    got = {r["id"]: r["findings"] for r in records(data, model=qwen2_vl_checkpoint)}
    assert got["null"] == got["number"] == got["audio"] == got["list"] == ["VC001"]
    assert got["empty-bytes"] == ["VC001"]  # JSON cannot hold bytes: an image struct with a string is malformed
