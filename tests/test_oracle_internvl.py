"""InternVL3 (-hf) counts proved against transformers' own ``InternVLProcessor``.

The processor is built from OpenGVLab/InternVL3-1B-hf's processor files as transformers'
``convert_internvl_weights_to_hf.py`` writes them (``internvl_checkpoint``): the PIL GotOcr2 image
processor (448 x 448 tiles, 1..12 tiles plus a thumbnail), ``image_seq_length`` 256, and a tokenizer
built from the real Qwen2 BPE ranks with Qwen2.5's added tokens and InternVL's special tokens at
their real ids (``<img>`` 151665, ``</img>`` 151666, ``<IMG_CONTEXT>`` 151667). For every sample the
processor's ``input_ids`` length must equal vlmcheck's ``tokens`` and each run of ``<IMG_CONTEXT>``
ids the per-image ``image_tokens``. Images are real files read the way transformers reads a path
(``load_image``, EXIF orientation applied): squares and 2:1 / 3:1 images around the tie rule's area
threshold, tiny and extreme-ratio images, EXIF-rotated JPEGs.
"""

from __future__ import annotations

import json
import random
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from internvl_checkpoint import internvl_checkpoint, internvl_processor
from vlmcheck import scan
from vlmcheck.families import Overrides
from vlmcheck.model import load_model

CONTEXT_ID = 151667
START_ID, END_ID = 151665, 151666


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [
        (1, 1), (2, 3), (3, 1), (1, 3), (3, 3), (14, 14), (448, 448), (447, 449),
        # squares: 1x1, 2x2, 3x3 grids tie at ratio 0; the larger wins while area > 0.5 * 448^2 * tiles
        (633, 633), (634, 634), (950, 950), (951, 951), (1200, 1200),
        # 2:1 and 1:2 tie (2,1)/(4,2); 3:1 ties (3,1)/(6,2)
        (1267, 633), (1268, 634), (634, 1268), (1344, 448), (1552, 517), (1553, 518), (2000, 1000),
        (900, 300), (300, 900), (1000, 30), (30, 1000), (3000, 9), (9, 3000), (1, 700), (700, 1),
        (1920, 1080), (1080, 1920), (640, 480), (2048, 1536), (896, 448),
    ]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            w, h = rng.randint(8, 2200), rng.randint(8, 2200)
        elif kind < 0.8:  # long thin images
            short = rng.randint(1, 80)
            w, h = short, min(short * rng.randint(3, 60), 3000)
            if rng.random() < 0.5:
                w, h = h, w
        else:  # exact grid ratios, where the tie rule decides
            c, r = rng.choice([(1, 1), (2, 1), (1, 2), (3, 1), (2, 3), (3, 2), (4, 3), (1, 4)])
            k = rng.randint(40, 700)
            w, h = c * k, r * k
        out.append((max(1, w), max(1, h)))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(2025)
    folder = tmp_path_factory.mktemp("internvl-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 130)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 90, 200))
        if i % 7 == 3:  # stored one way, shown another: orientations 5-8 swap W and H
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 2, 3])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, quality=30, exif=exif)
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
        content: list[dict] = []
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


def _oracle(processor, row: dict, folder: Path, **kwargs) -> tuple[list[int], str]:
    from transformers.image_utils import load_image

    text = processor.apply_chat_template(row["messages"], tokenize=False)
    images = [load_image(str(folder / n)) for n in row["images"]]
    return list(processor(text=[text], images=images, **kwargs)["input_ids"][0]), text


def _check(rows: list[dict], folder: Path, model, processor, tmp_path: Path, **call_kwargs) -> tuple[int, set[int]]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    scan(data, model=model, image_root=folder, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows)
    mismatches, images, counts = [], 0, set()
    for row, rec in zip(rows, records):
        ids, _ = _oracle(processor, row, folder, **call_kwargs)
        runs = [len(list(g)) for key, g in groupby(ids) if key == CONTEXT_ID]
        assert ids.count(START_ID) == ids.count(END_ID) == len(runs) == len(row["images"])
        images += len(runs)
        counts.update(runs)
        if (len(ids), runs) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, counts


def test_internvl3_counts_match_the_real_processor(pool, tmp_path):
    checkpoint = internvl_checkpoint()
    rows = _rows(pool, random.Random(3), multi=25)
    images, counts = _check(rows, pool[0].parent, checkpoint, internvl_processor(checkpoint), tmp_path)
    assert images >= 180
    # every tile count from 1 (no thumbnail) to 12 tiles + thumbnail shows up except impossible 2 (1 tile + thumb)
    assert {256 * p for p in (1, 3, 4, 5, 7, 9, 13)} <= counts


def test_user_kwargs_and_checkpoint_variants(pool, tmp_path):
    folder = pool[0].parent
    checkpoint = internvl_checkpoint()
    # processor(..., crop_to_patches=False): one 448 x 448 tile per image, as a user turns tiling off
    spec = load_model(checkpoint, overrides=Overrides(extra={"crop_to_patches": False}))
    rows = _rows(pool[:40], random.Random(4), multi=5)
    images, counts = _check(rows, folder, spec, internvl_processor(checkpoint), tmp_path, crop_to_patches=False)
    assert images >= 50 and counts == {256}
    # a checkpoint with other tile limits and image_seq_length
    variant = internvl_checkpoint(preprocessor={"min_patches": 2, "max_patches": 6}, processor={"image_seq_length": 64},
                                  name="internvl-variant")
    rows = _rows(pool[40:100], random.Random(5), multi=5)
    images, counts = _check(rows, folder, variant, internvl_processor(variant), tmp_path)
    assert images >= 70 and min(counts) == 64 * 3 and max(counts) == 64 * 7


def test_vc201_where_truncation_cuts_the_image_span(pool, tmp_path):
    """A cut inside the ``<IMG_CONTEXT>`` run is VC201, and the real processor refuses that same
    max_length with truncation; one token more than the sample holds is clean for both."""
    folder = pool[0].parent
    checkpoint = internvl_checkpoint()
    processor = internvl_processor(checkpoint)
    row = _rows([p for p in pool if "1920x1080" in p.name], random.Random(6), multi=0)[0]
    ids, text = _oracle(processor, row, folder)
    first = ids.index(CONTEXT_ID)
    last = len(ids) - 1 - ids[::-1].index(CONTEXT_ID)
    total = len(ids)
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(row) + "\n")

    def findings(max_length: int) -> list[str]:
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=checkpoint, image_root=folder, max_length=max_length, output=out)
        record = json.loads(out.read_text())
        assert record["tokens"] == total
        return record["findings"]

    from transformers.image_utils import load_image

    images = [load_image(str(folder / row["images"][0]))]
    for cut in (first + 1, first + 500, last):
        assert "VC201" in findings(cut), cut
        with pytest.raises(ValueError, match="Mismatch in `image` token count"):
            processor(text=[text], images=images, truncation=True, max_length=cut)
    # every <IMG_CONTEXT> kept: text is cut (not the image), and the processor accepts it
    assert "VC201" not in findings(last + 1)
    assert len(processor(text=[text], images=images, truncation=True, max_length=last + 1)["input_ids"][0]) == last + 1
    assert findings(total) == []
    assert len(processor(text=[text], images=images, truncation=True, max_length=total)["input_ids"][0]) == total
