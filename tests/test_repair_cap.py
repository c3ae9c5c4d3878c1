"""`vlmcheck repair` cap-pixels beyond image paths: inline image parts, embedded data URLs, and a
per-sample pixel cap recorded in the row (``pixel_cap_key``) instead of resized files, proved with
qwen-vl-utils' own ``process_vision_info`` and the real processor."""

from __future__ import annotations

import base64
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vlmcheck
from builders import image, spec, write_jsonl
from realparts import qwen_processor
from vlmcheck.errors import UsageError
from vlmcheck.findings import CATALOGUE, Severity
from vlmcheck.repairing import images_dir, manifest_path, row_pixel_cap

MAX_LENGTH = 512
ERROR_CODES = {c for c, r in CATALOGUE.items() if r.severity >= Severity.ERROR}


@pytest.fixture(scope="module")
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    image(tmp_path / "small.png", 280, 224)  # 80 tokens
    image(tmp_path / "big.png", 1400, 1120)  # 2,000 tokens
    return tmp_path


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest_path(out).read_text(encoding="utf-8").splitlines()]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def errors(path: Path, model: Any, **options: Any) -> set[str]:
    return set(vlmcheck.scan(path, model=model, max_length=MAX_LENGTH, **options).counts) & ERROR_CODES


def question(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}]


def test_inline_image_part_is_resized_in_place(folder: Path, model: Any) -> None:
    row = {"id": "trl", "messages": question({"type": "image", "image": "big.png"})}
    data = write_jsonl(folder / "data.jsonl", [row])
    out = folder / "fixed.jsonl"
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    (new,) = rows_of(out)
    (record,) = manifest(out)
    (entry,) = record["change"]["images"]
    part = new["messages"][0]["content"][0]
    assert part == {"type": "image", "image": entry["to"]} and entry["to"].startswith("fixed.images/")
    assert Image.open(folder / entry["to"]).size == tuple(entry["resized"])
    assert not errors(out, model)


def test_data_url_is_replaced_by_a_resized_data_url(folder: Path, model: Any) -> None:
    url = "data:image/png;base64," + base64.b64encode((folder / "big.png").read_bytes()).decode()
    row = {"id": "openai", "messages": question({"type": "image_url", "image_url": {"url": url, "detail": "high"}})}
    data = write_jsonl(folder / "data.jsonl", [row])
    out = folder / "fixed.jsonl"
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    assert report.images_written == 0 and not images_dir(out).exists()
    (new,) = rows_of(out)
    (record,) = manifest(out)
    (entry,) = record["change"]["images"]
    assert entry["embedded"] is True and entry["from"] == "<data URL>"
    part = new["messages"][0]["content"][0]
    assert part["image_url"]["detail"] == "high" and part["image_url"]["url"].startswith("data:image/png;base64,")
    png = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == tuple(entry["resized"])
    assert not errors(out, model)


def test_pixel_cap_key_on_the_row_for_listed_images(folder: Path, model: Any) -> None:
    row = {"id": "big", "messages": [{"role": "user", "content": "<image>What is it?"},
                                     {"role": "assistant", "content": "A square."}], "images": ["big.png"]}
    data = write_jsonl(folder / "data.jsonl", [row])
    out = folder / "fixed.jsonl"
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, pixel_cap_key="max_pixels")
    assert report.changed_by == {"cap-pixels": 1} and report.images_written == 0 and not images_dir(out).exists()
    (new,) = rows_of(out)
    (record,) = manifest(out)
    cap = record["change"]["max_pixels"]
    assert record["change"] == {"strategy": "cap-pixels", "max_pixels": cap, "key": "max_pixels", "placement": "row"}
    assert new == {**row, "max_pixels": cap} and row_pixel_cap(new, "max_pixels") == cap
    # scan reads no per-row key: at the global settings the row is still over; at its own cap it fits
    assert errors(out, model) == {"VC201", "VC202"}
    assert not errors(out, spec(model.path, max_pixels=cap))
    # repair reads the key: a second run keeps the row, byte for byte
    again = folder / "again.jsonl"
    second = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again, pixel_cap_key="max_pixels")
    assert second.counts["kept"] == 1 and again.read_bytes() == out.read_bytes()


def test_pixel_cap_key_needs_a_name(folder: Path, model: Any) -> None:
    data = write_jsonl(folder / "data.jsonl", [{"messages": question()}])
    with pytest.raises(UsageError):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, dry_run=True, pixel_cap_key="")


@pytest.fixture(scope="module")
def process_vision_info() -> Any:
    # qwen-vl-utils' vision_process.py imports torchvision at module level for its video path only;
    # there is no CPU torchvision here. An empty stand-in lets the real module import, and is
    # removed right after (as in test_oracle_qwen_vl_utils.py).
    qwen_processor("qwen2_vl")
    stubbed = []
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            tv = types.ModuleType("torchvision")
            tv.io = types.ModuleType("torchvision.io")  # type: ignore[attr-defined]
            tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
            tv.transforms.InterpolationMode = object  # type: ignore[attr-defined]
            tv.__version__ = "0.0"  # type: ignore[attr-defined]
            stubbed = ["torchvision", "torchvision.io", "torchvision.transforms"]
            sys.modules.update(dict(zip(stubbed, (tv, tv.io, tv.transforms))))
    try:
        from qwen_vl_utils.vision_process import process_vision_info
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    return process_vision_info


def test_pixel_cap_key_on_image_parts_is_what_qwen_vl_utils_reads(
        folder: Path, qwen2_vl_checkpoint: Path, process_vision_info: Any) -> None:
    image(folder / "wide.png", 1900, 700)
    rows = [
        {"id": "one", "messages": question({"type": "image", "image": str(folder / "big.png")})},
        {"id": "two", "messages": question({"type": "image", "image": str(folder / "wide.png")},
                                           {"type": "image", "image": str(folder / "small.png")})},
        {"id": "fits", "messages": question({"type": "image", "image": str(folder / "small.png")})},
    ]
    data = write_jsonl(folder / "data.jsonl", rows)
    out = folder / "fixed.jsonl"
    # Counted as the processor's own max_pixels: for on-grid sizes within the checkpoint's budget,
    # qwen-vl-utils' resize and the processor's give the same grid (test_oracle_qwen_vl_utils.py).
    model = spec(qwen2_vl_checkpoint)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, pixel_cap_key="max_pixels")
    assert report.changed_by == {"cap-pixels": 2} and report.counts["kept"] == 1
    records = manifest(out)
    assert [r["change"]["placement"] for r in records[:2]] == ["image parts", "image parts"]
    processor = qwen_processor("qwen2_vl")
    for before, after, record in zip(rows, rows_of(out), records):
        parts = [p for p in after["messages"][0]["content"] if p["type"] == "image"]
        if record["outcome"] == "kept":
            assert after == before
            continue
        assert all(p["max_pixels"] == record["change"]["max_pixels"] for p in parts)
        assert {k: v for k, v in after.items() if k != "messages"} == {"id": before["id"]}  # nothing added
        lengths = []
        for messages in (before["messages"], after["messages"]):
            images, _ = process_vision_info(messages)  # reads max_pixels on each image part
            text = processor.apply_chat_template(messages, tokenize=False)
            lengths.append(processor(text=[text], images=images, return_tensors="np")["input_ids"].shape[1])
        assert lengths[0] > MAX_LENGTH >= lengths[1], lengths
    # repair counts each row at the cap on its parts: a second run keeps everything
    again = folder / "again.jsonl"
    second = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again, pixel_cap_key="max_pixels")
    assert second.counts["kept"] == 3 and again.read_bytes() == out.read_bytes()
