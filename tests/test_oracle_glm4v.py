"""GLM-4.1V counts proved against transformers' own ``Glm4vProcessor``.

The processor is built from THUDM/GLM-4.1V-9B-Thinking's processor files (``glm4v_checkpoint``) with
``Glm4vImageProcessorPil`` and no video processor (it needs torchvision). The tokenizer is a real
byte-level BPE holding GLM-4.1V's special tokens at their real ids (no package ships GLM-4's own BPE;
see ``glm4v_checkpoint``). For every sample the processor's ``input_ids`` length must equal vlmcheck's
``tokens``, and each run of ``<|image|>`` ids (151343) the per-image ``image_tokens``; images the
processor rejects (aspect ratio over 200 after its small-side upscale) must carry VC107.
"""

from __future__ import annotations

import random
from functools import cache
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from glm4v_checkpoint import glm4v_checkpoint, glm4v_processor
from vlmcheck.model import load_model

IMAGE_ID = 151343


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [(1, 1), (2, 3), (27, 27), (28, 28), (29, 29), (14, 15), (56, 56), (112, 112), (79, 80), (640, 480),
           (1920, 1080), (1080, 1920), (4000, 3000), (2195, 2195), (200, 1), (1, 200), (201, 1), (1, 300),
           (3, 601), (5600, 28), (28, 5601), (10, 1990), (3000, 20), (1000, 7), (13, 2500), (2560, 1440)]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            out.append((rng.randint(1, 1800), rng.randint(1, 1800)))
        elif kind < 0.75:  # long thin images, some past the 200:1 limit
            short = rng.randint(1, 40)
            w, h = short, min(short * rng.randint(5, 230), 6000)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
        else:  # near multiples of 28, where round-half-even decides
            out.append((28 * rng.randint(1, 60) + rng.choice([-1, 0, 1, 13, 14, 15]),
                        28 * rng.randint(1, 60) + rng.choice([-1, 0, 1, 14])))
    return [(max(1, w), max(1, h)) for w, h in out]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(41)
    folder = tmp_path_factory.mktemp("glm4v-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 125)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 60, 200))
        if i % 8 == 5:  # EXIF orientations 5-8 swap W and H when transformers loads the path
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 2])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, quality=40, exif=exif)
        else:
            path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 3 == 0 else 'jpg'}"
            im.save(path)
        paths.append(path)
    return paths


def _pixels(path: Path) -> int:
    w, h = map(int, path.stem.split("_")[1].split("x"))
    return w * h


def _rows(paths: list[Path], rng: random.Random, *, multi: int) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "Compare."]
    rows = [{
        "id": f"single-{i}",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]},
            {"role": "assistant", "content": f"Answer {i}: a picture."},
        ],
        "images": [p.name],
    } for i, p in enumerate(paths)]
    small = [p for p in paths if _pixels(p) <= 1_500_000]  # the processor's time goes on big images
    for j in range(multi):
        picks = rng.sample(small, rng.randint(2, 3))
        content: list[dict] = []
        for _ in picks:
            content += [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]
        rows.append({
            "id": f"multi-{j}",
            "messages": [
                {"role": "system", "content": "You count things."},
                {"role": "user", "content": content},
                {"role": "assistant", "content": "First."},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": "Second.\n"},
            ],
            "images": [p.name for p in picks],
        })
    return rows


@cache
def _load(path: Path):
    """The image as transformers loads a path (EXIF orientation applied), decoded once per file."""
    from transformers.image_utils import load_image

    return load_image(str(path))



def _check(rows: list[dict], records: list[dict], processor, folder: Path) -> tuple[int, int, set[int]]:
    mismatches, images, rejected, counts = [], 0, 0, set()
    for row, rec in zip(rows, records, strict=True):
        assert rec["id"] == row["id"]
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        try:
            ids = list(processor(text=[text], images=[_load(folder / n) for n in row["images"]])["input_ids"][0])
        except ValueError as e:
            assert "aspect ratio" in str(e) and "VC107" in rec["findings"], (row["id"], e, rec)
            rejected += 1
            continue
        assert "VC107" not in rec["findings"], row["id"]
        runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_ID]
        images += len(runs)
        counts.update(runs)
        if (len(ids), runs) != (rec["tokens"], rec["image_tokens"]):
            mismatches.append((row["id"], row["images"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, rejected, counts


def test_counts_match_the_real_processor(pool, tmp_path):
    checkpoint = glm4v_checkpoint()
    assert load_model(checkpoint).family.name == "glm4v"
    folder = pool[0].parent
    rows = _rows(pool, random.Random(8), multi=20)
    records = scan_rows(rows, model=checkpoint, image_root=folder, tmp_path=tmp_path)
    images, rejected, counts = _check(rows, records, glm4v_processor(checkpoint), folder)
    assert images >= 150 and len(counts) > 60
    assert rejected >= 3  # (201, 1), (1, 300), (3, 601), ... are past 200:1 once upscaled


def test_max_pixels_is_the_size_longest_edge(pool, tmp_path):
    """``max_pixels``/``min_pixels`` set the image processor's ``size`` (what a checkpoint with those
    values, or ``processor(size=...)``, does); the processor counts two frames against them."""
    size = {"shortest_edge": 3136, "longest_edge": 1003520}
    variant = glm4v_checkpoint(preprocessor={"size": size}, name="glm-4.1v-1m")
    folder = pool[0].parent
    rows = _rows(pool[:70], random.Random(9), multi=5)
    records = scan_rows(rows, model=glm4v_checkpoint(), image_root=folder, tmp_path=tmp_path, max_pixels=size["longest_edge"],
                    min_pixels=size["shortest_edge"])
    images, _, counts = _check(rows, records, glm4v_processor(variant), folder)
    assert images >= 70 and max(counts) <= 1003520 // 2 // 28**2


def test_cut_image_span_is_vc201(pool, tmp_path):
    checkpoint = glm4v_checkpoint()
    processor = glm4v_processor(checkpoint)
    picture = next(p for p in pool if p.stem.split("_")[1] == "640x480")
    rows = _rows([picture], random.Random(3), multi=0)
    text = processor.apply_chat_template(rows[0]["messages"], tokenize=False)
    image = _load(picture)
    ids = list(processor(text=[text], images=[image])["input_ids"][0])
    first, n = ids.index(IMAGE_ID), ids.count(IMAGE_ID)
    for max_length, expect_cut in ((first + n // 2, True), (first + n, False), (first, True), (len(ids), False)):
        rec = scan_rows(rows, model=checkpoint, image_root=picture.parent, tmp_path=tmp_path, max_length=max_length)[0]
        assert rec["tokens"] == len(ids)
        assert ("VC201" in rec["findings"]) is expect_cut, (max_length, rec)
        if expect_cut:
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                processor(text=[text], images=[image], truncation=True, max_length=max_length)
