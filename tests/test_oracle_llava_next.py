"""LLaVA-NeXT counts proved against transformers' own ``LlavaNextProcessor``.

The processor is built from llava-hf/llava-v1.6-vicuna-7b-hf's processor files
(``llava_next_checkpoint``) with the PIL image processor (``LlavaNextImageProcessorPil``) and the
real Llama-2 / Vicuna tokenizer. For every sample its ``input_ids`` length (BOS included) must
equal vlmcheck's ``tokens``, and each run of ``<image>`` ids (32000) the per-image
``image_tokens``. Images cover every pinpoint, sizes right at and one pixel off the pinpoint
boundaries, 1-pixel strips, tiny images and EXIF orientations (the processor gets them through
``load_image``, which applies the orientation, as for a path). Expected values come from the
processor only.
"""

from __future__ import annotations

import random
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from llava_next_checkpoint import llava_next_checkpoint, llava_next_processor

IMAGE_TOKEN_ID = 32000


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [
        (336, 336), (672, 336), (336, 672), (672, 672), (1008, 336), (336, 1008), (673, 337), (335, 671),
        (1009, 336), (1, 1), (2, 3), (3, 2), (1, 3), (3, 1), (14, 14), (13, 500), (500, 13), (1, 2000),
        (2000, 1), (640, 480), (480, 640), (1280, 720), (720, 1280), (1920, 1080), (1100, 808), (800, 1200),
        (1000, 30), (30, 1000), (999, 333), (333, 999), (1024, 1024), (2048, 512), (512, 2048), (7, 5),
    ]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            out.append((rng.randint(1, 1600), rng.randint(1, 1600)))
        elif kind < 0.8:  # long thin images
            short = rng.randint(1, 80)
            w, h = short, min(short * rng.randint(2, 60), 2400)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
        else:  # near multiples of the 336 tile, where the unpadding rounds
            out.append((336 * rng.randint(1, 3) + rng.randint(-2, 2), 336 * rng.randint(1, 3) + rng.randint(-2, 2)))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(16)
    folder = tmp_path_factory.mktemp("llava-next-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 170)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 120, 40))
        if i % 9 == 4 and w != h:  # stored one way, shown another: orientations 5-8 swap W and H
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 3])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, quality=40, exif=exif)
        else:
            path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 3 == 0 else 'jpg'}"
            im.save(path)
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
                {"role": "system", "content": [{"type": "text", "text": "You are a careful annotator."}]},
                {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": "Compare."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
            ],
            "images": [p.name for p in picks],
        })
    return rows


def _oracle(processor, row: dict, folder: Path, **kwargs) -> list[int]:
    from transformers.image_utils import load_image

    text = processor.apply_chat_template(row["messages"], tokenize=False)
    images = [load_image(str(folder / n)) for n in row["images"]]
    return list(processor(text=[text], images=[images], **kwargs)["input_ids"][0])



def test_llava_next_counts_match_the_real_processor(pool, tmp_path):
    rows = _rows(pool, random.Random(5), multi=30)
    folder = pool[0].parent
    checkpoint = llava_next_checkpoint()
    records = scan_rows(rows, model=checkpoint, image_root=folder, tmp_path=tmp_path)
    processor = llava_next_processor(checkpoint)
    mismatches, images, counts = [], 0, set()
    for row, rec in zip(rows, records):
        ids = _oracle(processor, row, folder)
        assert ids[0] == 1  # the processor's tokenizer call adds BOS <s>
        runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_TOKEN_ID]
        images += len(runs)
        counts.update(runs)
        if (len(ids), runs) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    assert images >= 230
    assert {1176, 2340, 1948, 2160} <= counts  # FORMULAS.md §5.2 examples: 336², 640x480, 1920x1080, 800x1200
    assert len(counts) > 50


def test_image_span_cut_at_max_length_is_vc201(pool, tmp_path):
    """Where scan puts the cut inside an image span, the processor truncated there refuses the
    sample (its own placeholder count check); where it does not, the processor accepts it."""
    folder = pool[0].parent
    checkpoint = llava_next_checkpoint()
    processor = llava_next_processor(checkpoint)
    rows = _rows(pool[:6], random.Random(8), multi=0)
    full = [_oracle(processor, row, folder) for row in rows]
    cuts = {"cut": 0, "whole": 0}
    for max_length in (40, 700, 1200, 3000):
        records = scan_rows(rows, model=checkpoint, image_root=folder, tmp_path=tmp_path, max_length=max_length)
        for row, ids, rec in zip(rows, full, records):
            start = ids.index(IMAGE_TOKEN_ID)
            end = start + rec["image_tokens"][0]
            cut = max_length < end  # some of the image's span falls past the cut
            assert ("VC201" in rec["findings"]) == cut, (row["id"], max_length, rec)
            if cut:
                with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                    _oracle(processor, row, folder, truncation=True, max_length=max_length)
                cuts["cut"] += 1
            else:
                _oracle(processor, row, folder, truncation=True, max_length=max_length)
                cuts["whole"] += 1
    assert cuts["cut"] >= 5 and cuts["whole"] >= 5, cuts
