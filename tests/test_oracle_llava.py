"""LLaVA-1.5 counts proved against transformers' own ``LlavaProcessor``.

The processor is built from the llava-hf/llava-1.5-7b-hf processor files (``llava_checkpoint``)
with the PIL CLIP image processor and the real Llama-2 tokenizer. For every sample its
``input_ids`` length (BOS included: the processor tokenizes with special tokens, as the engine
does) must equal vlmcheck's ``tokens``, and each run of ``<image>`` ids (32000) the per-image
``image_tokens``: 576 for every image under the checkpoint's center crop, and a size-dependent
count when a variant turns the crop off.
"""

from __future__ import annotations

import json
import random
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from llava_checkpoint import llava_checkpoint, llava_processor
from vlmcheck import scan

IMAGE_TOKEN_ID = 32000


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [(336, 336), (335, 337), (1, 1), (14, 14), (13, 500), (640, 480), (480, 640), (1000, 30), (30, 1000),
           (1280, 720), (337, 1000), (2, 3)]
    while len(out) < n:
        if rng.random() < 0.7:
            out.append((rng.randint(1, 1200), rng.randint(1, 1200)))
        else:
            # long thin images; the processor resizes the short edge to 336 first, so keep them modest
            short = rng.randint(1, 60)
            w, h = short, short * rng.randint(2, 12)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(99)
    folder = tmp_path_factory.mktemp("llava-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 120)):
        path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.new("RGB", (w, h), (rng.randrange(256), 80, 160)).save(path)
        paths.append(path)
    return paths


def _rows(paths: list[Path], rng: random.Random, *, multi: int) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "Compare."]
    rows = [{
        "id": f"single-{i}",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]},
        ],
        "images": [p.name],
    } for i, p in enumerate(paths)]
    for j in range(multi):
        picks = rng.sample(paths, rng.randint(2, 3))
        rows.append({
            "id": f"multi-{j}",
            "messages": [
                {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": "Compare."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
            ],
            "images": [p.name for p in picks],
        })
    return rows


def _check(rows: list[dict], folder: Path, checkpoint: Path, tmp_path: Path) -> tuple[int, set[int]]:
    from transformers.image_utils import load_image

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    scan(data, model=checkpoint, image_root=folder, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows)
    processor = llava_processor(checkpoint)
    mismatches, images, counts = [], 0, set()
    for row, rec in zip(rows, records):
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        ids = list(processor(text=[text], images=[load_image(str(folder / n)) for n in row["images"]])["input_ids"][0])
        assert ids[0] == 1  # the processor's tokenizer call adds BOS <s>
        runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_TOKEN_ID]
        images += len(runs)
        counts.update(runs)
        if (len(ids), runs) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, counts


def test_llava_1_5_counts_match_the_real_processor(pool, tmp_path):
    rows = _rows(pool, random.Random(5), multi=20)
    images, counts = _check(rows, pool[0].parent, llava_checkpoint(), tmp_path)
    assert images >= 150
    assert counts == {576}  # (336 // 14) ** 2 + 1 - 1, whatever the size


def test_without_center_crop_the_count_follows_the_size(pool, tmp_path):
    # a variant checkpoint: no crop, so pixel_values keep the shortest-edge resize's aspect ratio
    checkpoint = llava_checkpoint(preprocessor={"do_center_crop": False}, name="llava-1.5-nocrop")
    def aspect(p: Path) -> float:
        w, h = map(int, p.stem.split("_")[1].split("x"))
        return max(w, h) / min(w, h)

    # moderate aspect ratios keep the resized images (long edge 336 * ratio) small
    rows = _rows([p for p in pool if aspect(p) <= 6][:60], random.Random(6), multi=0)
    images, counts = _check(rows, pool[0].parent, checkpoint, tmp_path)
    assert images == 60 and len(counts) > 20
