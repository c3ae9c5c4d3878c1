"""A seeded fuzz corpus through scan and repair (issue 15): thousands of rows across every dataset format
(JSON Lines, JSON array, Parquet, save_to_disk), every class of good and bad image (formats, cuts, trailing
bytes, hostile paths, FIFOs), malformed and hostile rows, and hostile templates. Asserted: no crash, no
hang, one record per row, every bad row flagged at error severity, every good row clean, inputs untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vlmcheck
from builders import png_header_only, spec, tokenizer
from vlmcheck.errors import UsageError
from vlmcheck.model import load_model

SEED = 20261205
ROWS = 4000  # JSON Lines rows; the other formats get a share each


def _encoded(fmt: str, size: tuple[int, int] = (280, 224), **options: Any) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 48).convert("RGB").save(out, format=fmt, **options)
    return out.getvalue()


def _images(root: Path) -> tuple[list[str], list[str]]:
    """Image files of every class: (good paths, bad paths), relative to ``root``."""
    img = root / "img"
    img.mkdir()
    good: dict[str, bytes] = {
        "a.png": _encoded("PNG"), "a.jpg": _encoded("JPEG"), "a.gif": _encoded("GIF"), "a.tif": _encoded("TIFF"),
        "a.bmp": _encoded("BMP"), "a.webp": _encoded("WEBP"), "p.jpg": _encoded("JPEG", progressive=True),
    }
    good["trailing.jpg"] = good["a.jpg"] + b"\0\0\0\x18ftypmp42" + random.Random(1).randbytes(20_000)
    good["trailing.png"] = good["a.png"] + b"junk" * 100
    good["trailing.gif"] = good["a.gif"] + b"\0" * 500
    good["no-iend.png"] = good["a.png"][:-12]
    bad: dict[str, bytes] = {name.replace("a.", "cut."): data[: len(data) // 2]
                             for name, data in good.items() if name.startswith("a.")}
    thumb = _encoded("JPEG", (8, 8))
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumb
    small = _encoded("JPEG", (64, 48))
    bad["thumb-cut.jpg"] = (small[:2] + app1 + small[2:])[: len(app1) + 2 + len(small) // 2]
    bad["empty.png"] = b""
    bad["page.jpg"] = b"<html><body>404</body></html>"
    for name, data in {**good, **bad}.items():
        (img / name).write_bytes(data)
    png_header_only(img / "banner.png", 1, 100_000)  # aspect ratio over 200: VC107
    os.mkfifo(img / "pipe.png")
    (img / "loop.png").symlink_to(img / "loop.png")
    (img / "folder.png").mkdir()
    hostile = ["img/pipe.png", "img/loop.png", "img/folder.png", "img/a.png/x.png", "img/nul\x00.png",
               "img/" + "x" * 300 + ".png", "img/\udc80.png", "img/missing.png", "img/banner.png", ""]
    return [f"img/{n}" for n in good], [f"img/{n}" for n in bad] + hostile


def _turns(prompt: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


TEXTS = ["What is this?", "Décris l'image.", "这是什么？", "emoji 🧪🔬", "tab\tand\nnewline", "x" * 300]


def _good_row(rng: random.Random, k: int, good: list[str]) -> dict[str, Any]:
    shape = rng.randrange(5)
    n = rng.choice([0, 1, 1, 2])
    images = [rng.choice(good) for _ in range(n)]
    text, answer = rng.choice(TEXTS), rng.choice(TEXTS)
    if shape == 0:  # LLaVA
        return {"id": f"g{k}", "image": images[0] if n == 1 else None, "conversations": [
            {"from": "human", "value": "<image>\n" * (n == 1) + text}, {"from": "gpt", "value": answer}]} \
            if n == 1 else {"id": f"g{k}", "messages": _turns(text, answer)}
    if shape == 1:  # TRL typed parts, inline images
        return {"id": f"g{k}", "messages": [
            {"role": "user", "content": [{"type": "image", "image": p} for p in images] + [{"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    if shape == 2:  # OpenAI image_url parts
        return {"id": f"g{k}", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": p}} for p in images]
             + [{"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    row = {"id": f"g{k}", "messages": _turns("<image>" * n + text, answer), "images": images}
    if shape == 4:  # extras users keep: a huge integer (datasets reads it), deep metadata
        row["meta"] = {"n": 10**50, "tags": [[["a"]]]}
    return row


def _bad_row(rng: random.Random, k: int, good: list[str], bad: list[str]) -> dict[str, Any] | str:
    kind = rng.randrange(12)
    rid = f"b{k}"
    if kind <= 3:
        return {"id": rid, "messages": _turns("<image>What?", "A."), "images": [rng.choice(bad)]}
    if kind == 4:
        return {"id": rid, "messages": _turns("<image><image>Two?", "A."), "images": [rng.choice(good)]}
    if kind == 5:
        return {"id": rid, "messages": [{"role": "user", "content": "only a question"}]}
    if kind == 6:
        return {"id": rid, "messages": [{"role": "user", "content": [{"type": rng.choice([None, 3, ["text"]]),
                                                                      "text": "x"}]},
                                        {"role": "assistant", "content": "y"}]}
    if kind == 7:
        return {"id": rid, "messages": _turns("lone \ud800 surrogate", "y")}
    if kind == 8:
        return {"id": rid, "messages": "not a list"}
    if kind == 9:
        return '{"id": "' + rid + '", "messages": [' + "[" * 50_000 + "]" * 50_000 + "]}"
    if kind == 10:
        return '{"id": "' + rid + '", "messages": [{"role": "user", "content": "cut'
    return {"id": rid, "messages": [{"role": 5, "content": "x"}, {"role": "assistant", "content": "y"}]}


def _corpus(root: Path) -> tuple[list[str], dict[str, bool]]:
    """JSON Lines text (one entry per line) and whether each row id is bad."""
    good, bad = _images(root)
    rng = random.Random(SEED)
    lines: list[str] = []
    expected: dict[str, bool] = {}
    for k in range(ROWS):
        if rng.random() < 0.45:
            row: Any = _bad_row(rng, k, good, bad)
            expected[f"b{k}"] = True
        else:
            row = _good_row(rng, k, good)
            expected[f"g{k}"] = False
        lines.append(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
    return lines, expected


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def _judge(records: list[dict[str, Any]], expected: dict[str, bool], label: str) -> None:
    assert len(records) == len(expected), label
    assert [r["index"] for r in records] == list(range(len(records))), label
    for rec, (rid, is_bad) in zip(records, expected.items()):
        errors = [f for f in rec["findings"] if f in ERRORS]
        if is_bad:
            assert errors, f"{label}: bad row {rid} passed clean ({rec})"
        else:
            assert rec["id"] == rid and rec["findings"] == [], f"{label}: good row {rid} flagged ({rec})"


ERRORS = {code for code, rule in vlmcheck.findings.CATALOGUE.items() if str(rule.severity) == "error"}


def _timed(fn: Callable[[], Any], limit: float, label: str) -> Any:
    started = time.monotonic()
    out = fn()
    assert time.monotonic() - started < limit, f"{label} took too long"
    return out


def test_fuzz_corpus_through_scan_and_repair(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    lines, expected = _corpus(tmp_path)
    data = tmp_path / "fuzz.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    before = _hashes(tmp_path)
    model = spec(qwen2_vl_checkpoint)

    for workers in (1, 2):
        out = tmp_path / f"records-{workers}.jsonl"
        started = time.monotonic()
        vlmcheck.scan(data, model=model if workers == 1 else qwen2_vl_checkpoint, output=out, workers=workers)
        assert time.monotonic() - started < 120, f"scan --workers {workers} took too long"
        records = [json.loads(line) for line in out.read_text().splitlines()]
        _judge(records, expected, f"jsonl workers={workers}")

    # the same rows as a JSON array (the unparseable lines are JSON Lines only)
    parsed = [(rid, line) for (rid, is_bad), line in zip(expected.items(), lines) if _parses(line)]
    array = tmp_path / "fuzz.json"
    # (ASCII escapes: a lone surrogate is then valid JSON, where raw it makes the rest of the array unreadable)
    array.write_text("[" + ",\n".join(json.dumps(json.loads(line)) for _, line in parsed) + "]")
    out = tmp_path / "array-records.jsonl"
    vlmcheck.scan(array, model=model, output=out)
    _judge([json.loads(x) for x in out.read_text().splitlines()], {rid: expected[rid] for rid, _ in parsed}, "json")

    # Parquet and save_to_disk: one schema, so the rows in the common TRL/ShareGPT shape
    columnar = [(rid, json.loads(line)) for rid, line in parsed[:600]]
    columnar = [(rid, r) for rid, r in columnar if isinstance(r.get("messages"), list) and "images" in r
                and all(isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in r["messages"])
                and _encodable(r)]
    _columnar(tmp_path, model, columnar, expected)

    # repair accounts for every row of the JSON Lines input, and never touches the inputs
    fixed = tmp_path / "out" / "fixed.jsonl"
    report = _timed(lambda: vlmcheck.repair(data, model=model, max_length=4096, output=fixed, hold="broken"),
                    120, "repair")
    manifest = [json.loads(x) for x in (tmp_path / "out" / "fixed.manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len(expected) == sum(report.counts.values())
    assert {m["id"] for m in manifest if m["outcome"] == "kept"} == {rid for rid, b in expected.items() if not b}
    assert manifest[0]["bytes"][0] == 0 and manifest[-1]["bytes"][1] == data.stat().st_size
    after = _hashes(tmp_path)
    assert all(after[p] == h for p, h in before.items())  # inputs byte-identical


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except (ValueError, RecursionError):
        return False


def _encodable(row: Any) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _columnar(tmp_path: Path, model: Any, rows: list[tuple[str, dict[str, Any]]], expected: dict[str, bool]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.Table.from_pylist([{"id": r["id"], "messages": r["messages"], "images": r["images"]}
                                  for _, r in rows])
    pq.write_table(table, tmp_path / "fuzz.parquet", row_group_size=64)
    folder = tmp_path / "fuzz_arrow"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    want = {rid: expected[rid] for rid, _ in rows}
    for dataset in (tmp_path / "fuzz.parquet", folder):
        out = tmp_path / f"{dataset.name}.records.jsonl"
        vlmcheck.scan(dataset, model=model, output=out, image_root=tmp_path)
        _judge([json.loads(x) for x in out.read_text().splitlines()], want, dataset.name)


HOSTILE_TEMPLATES = [
    "{{ 1 / 0 }}", "{{ messages + 1 }}", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ 'x' * 1000000000 }}", "{% for %}", "{{ [1] * 100000000 }}", "{{ messages[0].nope.deeper }}",
    "{{ raise_exception('no') }}",
    # doubling a string: with ~, with +, through a macro; padding it
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('x', 60) }}",
    "{{ 'x'|center(10**10) }}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_templates_never_crash(tmp_path: Path, qwen2_vl_checkpoint: Path, template: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "messages": _turns("hi", "yo")}) + "\n")
    started = time.monotonic()
    try:
        model = load_model(qwen2_vl_checkpoint, chat_template=template)
        model.__dict__["tokenizer"] = tokenizer(qwen2_vl_checkpoint)  # read once per session
        report = vlmcheck.scan(data, model=model)
    except UsageError:
        pass
    else:
        assert report.counts.get("VC001") == 1 or report.counts.get("VC004") == 1
    assert time.monotonic() - started < 30
