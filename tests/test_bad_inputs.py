"""Every kind of bad input becomes its finding, and the scan goes on: the other samples are still
counted. A scan never writes to its inputs, and ``--output`` appears whole or not at all."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import vlmcheck
from builders import image, png_header_only, records, spec, write_json

GOOD = (280, 224)  # 80 image tokens


def turns(prompt: str = "<image>What is this?", answer: str = "A thing.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def row(id_: str, images: Any, **changes: Any) -> dict[str, Any]:
    return {"id": id_, "messages": turns(), "images": images, **changes}


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    from PIL import Image

    Image.effect_noise((320, 240), 64).convert("RGB").save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])  # a download cut half-way
    return path


@pytest.fixture
def bad_dataset(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """One JSONL file holding every bad case between good rows; returns it and the codes expected
    per row (keyed by id, or by line index for rows that have no readable id)."""
    root = tmp_path / "ds"
    img = root / "img"
    image(img / "good.png", *GOOD)
    truncated_jpeg(img / "cut.jpg")
    (img / "empty.jpg").write_bytes(b"")
    (img / "page.jpg").write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    png_header_only(img / "huge.png", 100_000, 100_000)
    image(img / "banner.png", 6000, 29)  # 206.9 : 1, both sides >= 28
    image(img / "icon.png", 20, 20)
    outside = image(tmp_path / "elsewhere" / "secret.png", *GOOD)
    (img / "link-out.png").symlink_to(outside)
    (img / "link-in.png").symlink_to(img / "good.png")

    cases: list[tuple[str | bytes, list[str]]] = [
        (json.dumps(row("good-1", ["img/good.png"])), []),
        (json.dumps(row("cut-jpeg", ["img/cut.jpg"])), ["VC103"]),
        (json.dumps(row("zero-byte", ["img/empty.jpg"])), ["VC102"]),
        (json.dumps(row("html-as-jpg", ["img/page.jpg"])), ["VC102"]),
        (json.dumps(row("missing", ["img/nope.jpg"])), ["VC101"]),
        (json.dumps({"id": "messages-str", "messages": "hello", "images": []}), ["VC001"]),
        (json.dumps(row("images-number", 5)), ["VC001"]),
        (json.dumps({"id": "content-number", "messages": [{"role": "user", "content": 5}]}), ["VC001"]),
        ('{"id": "bad-json", "messages": [', ["VC001"]),
        (b'{"id": "latin-1", "messages": [{"role": "user", "content": "caf\xe9"}]}', ["VC001"]),
        (json.dumps(["a", "list"]), ["VC001"]),
        (json.dumps(row("huge", ["img/huge.png"])), ["VC105"]),
        (json.dumps(row("dotdot", ["../elsewhere/secret.png"])), ["VC104"]),
        (json.dumps(row("absolute", [str(outside)])), ["VC104"]),
        (json.dumps(row("symlink-out", ["img/link-out.png"])), ["VC104"]),
        (json.dumps(row("symlink-in", ["img/link-in.png"])), []),
        (json.dumps(row("banner", ["img/banner.png"])), ["VC107"]),
        (json.dumps(row("icon", ["img/icon.png"])), ["VC106"]),
        (json.dumps(row("two-tags-one-image", ["img/good.png"],
                        messages=turns("<image><image>Compare."))), ["VC002"]),
        (json.dumps(row("no-tag-one-image", ["img/good.png"], messages=turns("Describe."))), ["VC002"]),
        (json.dumps(row("no-assistant", ["img/good.png"], messages=turns()[:1])), ["VC003"]),
        (json.dumps(row("empty-assistant", ["img/good.png"], messages=turns(answer=" "))), ["VC003"]),
        (json.dumps(row("good-2", ["img/good.png", "img/good.png"],
                        messages=turns("<image>and<image>?"))), []),
    ]
    lines = [c if isinstance(c, bytes) else c.encode() for c, _ in cases]
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected = {}
    for index, (content, codes) in enumerate(cases):
        try:
            key = str(json.loads(content)["id"])
        except (ValueError, TypeError, KeyError):
            key = str(index)
        expected[key] = codes
    return root / "train.jsonl", expected


def test_each_bad_input_yields_its_finding(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, expected = bad_dataset
    rows = records(dataset, model=qwen2_vl_checkpoint, max_length=4096, confine=True)
    assert {r["id"]: r["findings"] for r in rows} == expected
    # the scan went through every line, and the good samples are counted
    assert [r["index"] for r in rows] == list(range(len(expected)))
    good = {r["id"]: (r["tokens"], r["image_tokens"]) for r in rows if r["id"].startswith(("good", "symlink-in"))}
    assert good["good-1"][1] == [80] and good["good-2"][1] == [80, 80]
    assert good["symlink-in"] == good["good-1"]
    assert all(tokens and tokens > 80 for tokens, _ in good.values())


def test_bad_input_messages_name_the_problem(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    report = vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), max_length=4096, confine=True)
    by_id: dict[str, list[str]] = {}
    for f in report.findings:
        by_id.setdefault(str(f.id), []).append(f.message)
    assert by_id["messages-str"] == ["'messages' must be a list"]
    assert by_id["images-number"] == ["'images' must be a list, got int"]
    assert by_id["content-number"] == ["messages[0].content must be a string, got int"]
    assert by_id["8"] == ["line 9 is not valid JSON: Expecting value at column 33"]
    assert by_id["9"] == ["line 10 is not UTF-8 (byte 63)"]
    assert by_id["10"] == ["no conversation found (fields: list)"]
    assert "100000x100000" in by_id["huge"][0] or "10000000000 pixels" in by_id["huge"][0]
    assert by_id["banner"] == ["image 1 of 1 (img/banner.png): aspect ratio 206.9 is over the processor's "
                               "limit of 200 (6000x29)"]
    assert by_id["two-tags-one-image"] == ["2 image placeholder(s) in the text but 1 image(s)"]
    assert by_id["no-tag-one-image"] == ["0 image placeholder(s) in the text but 1 image(s)"]
    for key in ("dotdot", "absolute", "symlink-out"):
        assert "outside the image root" in by_id[key][0]
    assert report.summary["samples"] == 23


def test_huge_declared_dimensions_are_read_from_the_header_only(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from vlmcheck.data.images import ImageProblem, probe_path

    huge = png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    assert huge.stat().st_size < 100
    tracemalloc.start()
    with pytest.raises(ImageProblem) as raised:
        probe_path(huge)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert raised.value.code == "VC105"
    assert peak < 1 << 20  # 3e10 bytes of pixels were never allocated


def test_paths_outside_the_root_are_read_unless_confined(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    # absolute paths, `..` and symlinked folders are how users keep their own data (ms-swift's layout,
    # HF image structs): read by default; --confine is for data you do not trust
    dataset, _ = bad_dataset
    rows = records(dataset, model=qwen2_vl_checkpoint)
    got = {r["id"]: (r["findings"], r["image_tokens"]) for r in rows}
    for key in ("dotdot", "absolute", "symlink-out"):
        assert got[key] == ([], [80])


def test_a_json_array_cut_short(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    full = write_json(tmp_path / "full.json", [row(f"r{i}", ["good.png"]) for i in range(3)])
    cut = tmp_path / "cut.json"
    text = full.read_text()
    cut.write_text(text[: text.index('"r2"') + 20])  # the third object is cut off
    rows = records(cut, model=qwen2_vl_checkpoint)
    assert [(r["id"], r["findings"]) for r in rows] == [("r0", []), ("r1", []), ("2", ["VC001"])]
    report = vlmcheck.scan(cut, model=spec(qwen2_vl_checkpoint))
    assert report.findings[0].message.startswith("invalid JSON at byte")


def test_a_json_array_missing_its_bracket(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    path = tmp_path / "open.json"
    path.write_text(json.dumps([row("r0", ["good.png"])])[:-1] + ",\n")
    rows = records(path, model=qwen2_vl_checkpoint)
    assert [(r["id"], r["findings"]) for r in rows] == [("r0", []), ("1", ["VC001"])]


def test_a_chat_template_that_raises(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    rows = [row("ok", ["good.png"]), row("starts-with-assistant", [], messages=[
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."}])]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = copy.copy(spec(qwen2_vl_checkpoint))  # keeps the loaded tokenizer
    assert model.chat_template is not None
    model.chat_template = ("{% if messages[0]['role'] == 'assistant' %}"
                           "{{ raise_exception('Conversations must start with a user turn') }}{% endif %}"
                           + model.chat_template)
    report = vlmcheck.scan(dataset, model=model)
    assert report.counts == {"VC001": 1}
    (finding,) = report.findings
    assert (finding.id, finding.message) == (
        "starts-with-assistant",
        "the chat template rejects this conversation: Conversations must start with a user turn")
    assert report.summary["samples"] == 2 and report.summary["samples_without_length"] == 1


# -- the scan leaves its inputs alone and writes outputs atomically ---------------------------------
def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_inputs_are_unchanged(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    folder = dataset.parent.parent
    before = _hashes(folder)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), max_length=64, output=folder / "out" / "r.jsonl")
    after = _hashes(folder)
    assert after.pop("out/r.jsonl")
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_output_is_complete_and_leaves_no_temp_files(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, expected = bad_dataset
    out = dataset.parent / "out"
    out.mkdir()
    vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl")
    assert os.listdir(out) == ["r.jsonl"]
    assert len((out / "r.jsonl").read_text().splitlines()) == len(expected)


class Interrupted(Exception):
    pass


def test_a_scan_that_raises_leaves_no_partial_output(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    out = dataset.parent / "out"
    out.mkdir()

    def progress(done: int, total: int | None) -> None:
        if done == 5:  # records of the first samples are already written to the temp file
            raise Interrupted

    with pytest.raises(Interrupted):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl", progress=progress)
    assert os.listdir(out) == []

    # an earlier complete output survives a failed re-run untouched
    (out / "r.jsonl").write_text("previous\n")
    with pytest.raises(Interrupted):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl", progress=progress)
    assert os.listdir(out) == ["r.jsonl"]
    assert (out / "r.jsonl").read_text() == "previous\n"


def test_scan_output_never_replaces_the_dataset(tmp_path, qwen2_vl_checkpoint):
    from vlmcheck.errors import UsageError

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    before = data.read_bytes()
    with pytest.raises(UsageError, match="never writes over its input"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, output=tmp_path / "." / "d.jsonl")
    assert data.read_bytes() == before
