"""LLaVA-OneVision image counts proved against transformers' own ``LlavaOnevisionProcessor``.

The processor is built from llava-hf/llava-onevision-qwen2-7b-ov-hf's processor files
(``onevision_checkpoint``) with the PIL image processor and the real Qwen2 vocabulary holding
``<image>``/``<video>`` at 151646/151647; only the video processor is left out (it needs
torchvision), as FIXTURES.md describes for Qwen. For every sample the processor's ``input_ids``
length must equal vlmcheck's ``tokens`` and each run of ``<image>`` ids the per-image
``image_tokens``:

- single-image samples take the anyres_max_9 path (sizes up to 4000 px, so the grid downscale
  for more than 9 tiles is exercised, 1-pixel strips, EXIF orientations);
- multi-image samples with the images nested per sample, as ``apply_chat_template`` and TRL pass
  them (``num_image_tokens + 1`` each), and with a flat image list (every image tiled), which
  ``Overrides(extra={"images_nested": False})`` models.

Video is not proved against the processor here (its video processor needs torchvision): the
video test checks ``video_tokens`` against ``replace_video_token``'s published formula with
values worked out by hand.
"""

from __future__ import annotations

import random
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from onevision_checkpoint import onevision_checkpoint, onevision_processor
from vlmcheck.families import Overrides
from vlmcheck.families.llava_onevision import video_tokens
from vlmcheck.model import load_model

IMAGE_TOKEN_ID = 151646


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [
        (384, 384), (768, 384), (384, 768), (1152, 1152), (2304, 2304), (2304, 384), (384, 2304), (385, 383),
        (1, 1), (2, 3), (3, 1), (1, 3), (14, 14), (1, 2000), (2000, 1), (640, 480), (480, 640), (1920, 1080),
        (1080, 1920), (1280, 720), (4000, 3000), (3000, 4000), (2500, 60), (60, 2500), (1000, 30), (30, 1000),
        (1024, 1024), (1536, 1152), (1537, 1151), (767, 769), (7, 5), (3840, 2160),
    ]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            out.append((rng.randint(1, 1800), rng.randint(1, 1800)))
        elif kind < 0.75:  # long thin images
            short = rng.randint(1, 90)
            w, h = short, min(short * rng.randint(2, 60), 2600)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
        elif kind < 0.82:  # large photos: grids above 9 tiles, downscaled
            out.append((rng.randint(1500, 2600), rng.randint(1200, 2600)))
        else:  # near multiples of the 384 tile
            out.append((384 * rng.randint(1, 5) + rng.randint(-2, 2), 384 * rng.randint(1, 5) + rng.randint(-2, 2)))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(23)
    folder = tmp_path_factory.mktemp("onevision-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 125)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 60, 200))
        if i % 9 == 4 and w != h:  # stored one way, shown another: orientations 5-8 swap W and H
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 3])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, quality=40, exif=exif)
        else:
            png = i % 3 == 0 and w * h < 1_000_000  # big PNGs are slow to write and read
            path = folder / f"im{i:03d}_{w}x{h}.{'png' if png else 'jpg'}"
            im.save(path)
        paths.append(path)
    return paths


def _pixels(path: Path) -> int:
    w, h = map(int, path.stem.split("_")[1].split("x"))
    return w * h


@pytest.fixture(scope="module")
def processor():
    return onevision_processor(onevision_checkpoint())


def _single(paths: list[Path], rng: random.Random) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "Compare."]
    return [{
        "id": f"single-{i}",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]},
        ],
        "images": [p.name],
    } for i, p in enumerate(paths)]


def _multi(paths: list[Path], rng: random.Random, n: int) -> list[dict]:
    rows = []
    for j in range(n):
        picks = rng.sample(paths, rng.randint(2, 4))
        rows.append({
            "id": f"multi-{j}",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "You are a careful annotator."}]},
                {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": "Compare."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
            ],
            "images": [p.name for p in picks],
        })
    return rows


def _oracle(processor, row: dict, folder: Path, *, nested: bool = True, **kwargs) -> list[int]:
    from transformers.image_utils import load_image

    text = processor.apply_chat_template(row["messages"], tokenize=False)
    images = [load_image(str(folder / n)) for n in row["images"]]
    return list(processor(text=[text], images=[images] if nested else images, **kwargs)["input_ids"][0])



def _compare(processor, rows, records, folder, *, nested: bool = True) -> tuple[int, set[int]]:
    mismatches, images, counts = [], 0, set()
    for row, rec in zip(rows, records):
        ids = _oracle(processor, row, folder, nested=nested)
        runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_TOKEN_ID]
        images += len(runs)
        counts.update(runs)
        if (len(ids), runs) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, counts


def test_onevision_counts_match_the_real_processor(pool, processor, tmp_path):
    rng = random.Random(3)
    rows = _single(pool, rng) + _multi(pool, rng, 30)
    folder = pool[0].parent
    records = scan_rows(rows, model=onevision_checkpoint(), image_root=folder, tmp_path=tmp_path)
    images, counts = _compare(processor, rows, records, folder)
    assert images >= 190
    # FORMULAS.md §5.3 examples: 384², 640x480, 1920x1080; 730 = 729 + image_newline in multi-image samples
    assert {1485, 2929, 7269, 730} <= counts
    assert len(counts) > 60


def test_flat_image_list_tiles_every_image(pool, processor, tmp_path):
    """``processor(text=[t], images=[a, b])`` marks each image as its own sample: all are tiled."""
    small = [p for p in pool if _pixels(p) <= 1_000_000]  # every image is tiled: keep them quick
    rows = _multi(small, random.Random(11), 10)
    folder = pool[0].parent
    flat = load_model(onevision_checkpoint(), overrides=Overrides(extra={"images_nested": False}))
    records = scan_rows(rows, model=flat, image_root=folder, tmp_path=tmp_path)
    images, counts = _compare(processor, rows, records, folder, nested=False)
    assert images >= 20 and 730 not in counts


def test_image_span_cut_at_max_length_is_vc201(pool, processor, tmp_path):
    """Where scan puts the cut inside an image span, the processor truncated there refuses the
    sample (its own placeholder count check); where it does not, the processor accepts it."""
    folder = pool[0].parent
    rng = random.Random(8)
    small = [p for p in pool if _pixels(p) <= 1_000_000]
    rows = _single(small[:5], rng) + _multi(small[5:20], rng, 3)
    full = [_oracle(processor, row, folder) for row in rows]
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (20, 900, 2000, 3200, 9000):
        records = scan_rows(rows, model=onevision_checkpoint(), image_root=folder, tmp_path=tmp_path, max_length=max_length)
        for row, ids, rec in zip(rows, full, records):
            last_image = max(i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID)
            cut = max_length <= last_image  # some image feature falls past the cut
            assert ("VC201" in rec["findings"]) == cut, (row["id"], max_length, rec)
            if cut:
                with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                    _oracle(processor, row, folder, truncation=True, max_length=max_length)
                outcomes["cut"] += 1
            else:
                _oracle(processor, row, folder, truncation=True, max_length=max_length)
                outcomes["whole"] += 1
    assert outcomes["cut"] >= 8 and outcomes["whole"] >= 8, outcomes


def test_video_tokens_follow_the_published_formula():
    """``replace_video_token``: frames * ceil(int(sqrt(num_image_tokens)) / 2) ** 2 + 1. Worked out
    by hand for the hub's num_image_tokens = 729: sqrt -> 27, 2x2 pooling rounds up to 14, so
    196 tokens per frame and one newline per clip."""
    settings = load_model(onevision_checkpoint()).settings
    assert settings.num_image_tokens == 729
    assert video_tokens(1, settings) == 197  # 1 * 196 + 1
    assert video_tokens(8, settings) == 1569  # 8 * 196 + 1
    assert video_tokens(32, settings) == 6273  # 32 * 196 + 1
    # a tower with 26 x 26 = 676 features pools to 13 x 13 = 169 per frame
    from dataclasses import replace

    assert video_tokens(16, replace(settings, num_image_tokens=676)) == 2705  # 16 * 169 + 1
