"""``--resize qwen-vl-utils`` proved against qwen-vl-utils' own ``fetch_image`` followed by the real
processor: the path ms-swift and ``process_vision_info`` scripts take."""

from __future__ import annotations

import json
import random
import sys
import types
from itertools import groupby

import pytest
from PIL import Image

from realparts import qwen_processor
from vlmcheck import scan


@pytest.fixture(scope="module")
def fetch_image():
    # vision_process.py imports torchvision at module level for its video path only; there is no
    # CPU torchvision here. fetch_image (PIL resize) never touches it, so an empty stand-in lets
    # the real module import.
    # The stand-in is removed right after the import, so transformers' own torchvision checks
    # never see it.
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
        from qwen_vl_utils.vision_process import fetch_image
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    return fetch_image


@pytest.mark.parametrize(("model_type", "patch", "budget"), [
    ("qwen2_vl", 14, None), ("qwen2_vl", 14, (3136, 401408)), ("qwen3_vl", 16, (4096, 262144)),
])
def test_qwen_vl_utils_counts(fetch_image, model_type, patch, budget, checkpoint_for, tmp_path):
    rng = random.Random(11)
    rows, names = [], []
    for i in range(60):
        w, h = rng.randint(20, 2600), rng.randint(20, 2600)
        if i % 10 == 0:
            w, h = rng.randint(8, 30), rng.randint(200, 1200)
        name = f"im{i}.jpg"
        im = Image.new("RGB", (w, h), (i, 100, 200))
        if i % 6 == 0:  # EXIF orientation: qwen-vl-utils opens with Image.open and does not rotate
            exif = Image.Exif()
            exif[0x0112] = 6
            im.save(tmp_path / name, quality=30, exif=exif)
        else:
            im.save(tmp_path / name, quality=30)
        names.append(name)
        rows.append({"id": str(i), "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "That."}]}], "images": [name]})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    kwargs = {"min_pixels": budget[0], "max_pixels": budget[1]} if budget else {}
    scan(data, model=checkpoint_for(model_type), resize="qwen-vl-utils", output=out, **kwargs)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    processor = qwen_processor(model_type)
    for row, rec, name in zip(rows, records, names):
        ele = {"image": str(tmp_path / name), **kwargs}
        image = fetch_image(ele, image_patch_size=patch)
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        ids = list(processor(text=[text], images=[image])["input_ids"][0])
        runs = [len(list(g)) for k, g in groupby(ids) if k == 151655]
        assert (len(ids), runs) == (rec["tokens"], rec["image_tokens"]), (name, image.size)


@pytest.mark.parametrize(("size", "budget"), [
    ((3000, 20), (3136, 50176)),  # the shrinking branch floors the 20 px side to 0
    ((1270, 166), (3136, 3136)),
    ((640, 480), (200704, 50176)),  # min_pixels over max_pixels
    ((640, 480), (3136, 3000)),  # under 4 tokens: ms-swift's compat hands qwen-vl-utils max < min
    ((3000, 20), (3136, 200704)),  # a budget that keeps the side: no problem
])
def test_an_image_qwen_vl_utils_raises_on_is_vc107(fetch_image, size, budget, checkpoint_for, tmp_path):
    """Where qwen-vl-utils' own fetch_image raises (a side floored to 0 px, or min_pixels over max_pixels), vlmcheck
    reports VC107 for the image and counts nothing; where it does not, no VC107."""
    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "im.png")
    try:
        fetch_image({"image": str(tmp_path / "im.png"), "min_pixels": budget[0], "max_pixels": budget[1]},
                    image_patch_size=14)
        raises = False
    except (ValueError, AssertionError, ZeroDivisionError):
        raises = True
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "That."}]}], "images": ["im.png"]}) + "\n")
    out = tmp_path / "out.jsonl"
    scan(data, model=checkpoint_for("qwen2_vl"), resize="qwen-vl-utils", output=out, min_pixels=budget[0],
         max_pixels=budget[1])
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert ("VC107" in record["findings"]) == raises, (size, budget, record)
    assert raises == ((size, budget) != ((3000, 20), (3136, 200704)))  # the cases are what they say
