"""Counts proved against transformers' own Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors (Qwen3-VL's also as
transformers builds it for Qwen3-VL MoE and Qwen3.5 checkpoints).

For every sample the processor is the oracle: its ``input_ids`` length must equal vlmcheck's
``tokens``, and each run of ``<|image_pad|>`` ids must equal the per-image ``image_tokens``.
Images are real files of varied sizes, extreme aspect ratios and EXIF orientations; the processor
gets them the way transformers loads a path (``load_image``, which applies EXIF orientation).
"""

from __future__ import annotations

import json
import random
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from realparts import qwen_processor
from vlmcheck import scan

IMAGE_PAD_ID = 151655


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    fixed = [
        (640, 480), (1920, 1080), (100, 30), (28, 28), (27, 27), (10, 10), (1, 1), (56, 56), (57, 29),
        (4000, 3000), (3000, 4000), (199 * 10, 10), (10, 1990), (5, 900), (1024, 1024), (1023, 769),
        (14, 2000), (3584, 3584), (2, 398), (42, 42), (70, 70), (98, 98), (1000, 7), (3139, 1),
    ]
    out = list(fixed)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            w, h = rng.randint(16, 2200), rng.randint(16, 2200)
        elif kind < 0.8:  # extreme aspect ratios, still under 200
            short = rng.randint(8, 60)
            w, h = short, min(short * rng.randint(20, 199), 4000)
            if rng.random() < 0.5:
                w, h = h, w
        else:  # sizes near factor multiples, where rounding decides
            f = rng.choice([14, 16, 28, 32])
            w, h = f * rng.randint(1, 80) + rng.choice([-1, 0, 1, 13, 14, 15]), f * rng.randint(1, 80) + rng.choice([-1, 0, 1])
        out.append((max(1, w), max(1, h)))
    return out


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(1234)
    folder = tmp_path_factory.mktemp("oracle-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 230)):
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        im = Image.new("RGB", (w, h), color)
        if i % 7 == 3:  # stored one way, shown another: EXIF orientations 5-8 swap W and H
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 2, 3])
            path = folder / f"img{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, quality=30, exif=exif)
        elif i % 3 == 0:
            path = folder / f"img{i:03d}_{w}x{h}.png"
            im.save(path)
        else:
            path = folder / f"img{i:03d}_{w}x{h}.jpg"
            im.save(path, quality=30)
        paths.append(path)
    return paths


def _conversations(paths: list[Path], rng: random.Random) -> list[dict]:
    """Single-image samples for every image, then multi-image and multi-turn ones."""
    rows = []
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", "Compare these. ", " leading space", "数一数"]
    for i, p in enumerate(paths):
        rows.append({
            "id": f"single-{i}",
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]},
            ],
            "images": [p.name],
        })
    for j in range(40):
        k = rng.randint(2, 3)
        picks = rng.sample(paths, k)
        content = []
        for _ in picks:
            content += [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]
        rows.append({
            "id": f"multi-{j}",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "You are a careful annotator."}]},
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
            ],
            "images": [p.name for p in picks],
        })
    return rows


def _oracle(processor, row: dict, folder: Path) -> tuple[int, list[int]]:
    from transformers.image_utils import load_image

    text = processor.apply_chat_template(row["messages"], tokenize=False)
    images = [load_image(str(folder / name)) for name in row["images"]]
    out = processor(text=[text], images=images)
    ids = list(out["input_ids"][0])
    runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_PAD_ID]
    return len(ids), runs


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("qwen2_vl", {}),
        ("qwen2_5_vl", {}),
        ("qwen3_vl", {}),
        # model types transformers gives Qwen3VLProcessor too
        ("qwen3_vl_moe", {}),
        ("qwen3_5", {}),
        # the class-default budget LLaMA-Factory-style users pass as processor kwargs
        ("qwen2_vl", {"max_pixels": 1003520, "min_pixels": 200704}),
    ],
)
def test_counts_match_the_real_processor(model_type, overrides, image_pool, checkpoint_for, tmp_path):
    rng = random.Random(7)
    folder = image_pool[0].parent
    rows = _conversations(image_pool, rng)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    report = scan(data, model=checkpoint_for(model_type), image_root=folder, output=out, **overrides)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows)

    if overrides:
        # as a user passes them: min_pixels/max_pixels kwargs of the image processor
        processor = qwen_processor(model_type, **overrides)
    else:
        processor = qwen_processor(model_type)
    mismatches = []
    images_checked = 0
    rejected = 0
    for row, rec in zip(rows, records):
        assert rec["id"] == row["id"]
        try:
            total, runs = _oracle(processor, row, folder)
        except ValueError as e:
            # the processor refuses the sample; vlmcheck must have said why
            assert "aspect ratio" in str(e) and "VC107" in rec["findings"], (row["id"], e, rec)
            rejected += 1
            continue
        assert "VC107" not in rec["findings"], row["id"]
        images_checked += len(runs)
        if (total, runs) != (rec["tokens"], rec["image_tokens"]):
            mismatches.append((row["id"], row["images"], (total, runs), (rec["tokens"], rec["image_tokens"])))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    assert images_checked >= 300
    assert rejected >= 1  # (3139, 1) is over the 200:1 limit
    # a sample the processor refuses has no length (no count may leak into VC201 or the
    # recommendations); tiny-image warnings must not hide counts
    assert report.summary["samples_without_length"] == rejected
    for rec in records:
        if "VC107" in rec["findings"]:
            assert rec["tokens"] is None and not {"VC201", "VC202", "VC203"} & set(rec["findings"]), rec
