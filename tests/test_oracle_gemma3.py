"""Gemma 3 counts proved against transformers' own ``Gemma3Processor``.

The processor is ``AutoProcessor.from_pretrained`` on the google/gemma-3-4b-it processor files
(``gemma3_checkpoint``): ``Gemma3ImageProcessorPil`` (no torchvision) and the real Gemma 3
vocabulary (from the gemma3-270m GGUF packages, ``<image_soft_token>`` at 262144). Each sample is
rendered with the checkpoint's template and processed as ``processor.apply_chat_template(...,
tokenize=True)`` and TRL's collator do: the template writes ``<bos>``, so the text is tokenized with
``add_special_tokens=False`` (one BOS; vlmcheck's scan does the same for text starting with BOS).
For every sample the processor's ``input_ids`` length must equal vlmcheck's ``tokens``, and the
``<image_soft_token>`` ids (262144) inside the text the processor wrote for each image (its
``text_replacement_offsets`` with the tokens' offsets) vlmcheck's per-image ``image_tokens``: 256 per
image, and 256 x (1 + crops) with pan-and-scan, whose crop count depends on the image size (as
the processor sees it: EXIF orientation applied, as ``load_image`` does for a path).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from gemma3_checkpoint import gemma3_checkpoint, gemma3_processor
from vlmcheck import scan
from vlmcheck.families import Overrides
from vlmcheck.model import load_model

IMAGE_TOKEN_ID = 262144  # <image_soft_token>
PAS = {"do_pan_and_scan": True}


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    # pan-and-scan's edges: ratio 1.2 (activation), ratio k + 0.5 (rounding), sides around 256 * k
    # (minimum crop size), long thin images (at most 4 crops), tiny images
    out = [(896, 896), (1, 1), (2, 3), (1075, 896), (1076, 896), (896, 1076), (1200, 1000), (1199, 1000),
           (750, 300), (749, 300), (1250, 500), (512, 256), (511, 256), (767, 256), (768, 256), (1024, 256),
           (1800, 300), (300, 1800), (1023, 255), (1000, 30), (30, 1000), (513, 257), (1280, 720), (720, 1280),
           (1600, 1000), (257, 640), (640, 480), (480, 640)]
    while len(out) < n:
        r = rng.random()
        if r < 0.4:
            out.append((rng.randint(1, 1400), rng.randint(1, 1400)))
        elif r < 0.8:  # moderately wide or tall: pan-and-scan territory
            short = rng.randint(200, 700)
            long = int(short * rng.uniform(1.1, 5.0))
            out.append((long, short) if rng.random() < 0.5 else (short, long))
        else:  # thin strips
            short = rng.randint(1, 300)
            long = rng.randint(300, 2000)
            out.append((long, short) if rng.random() < 0.5 else (short, long))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(2025)
    folder = tmp_path_factory.mktemp("gemma3-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 110)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 120, 40))
        if i % 8 == 5 and w != h:  # stored one way, shown another: orientations 5-8 swap W and H
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
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", "  leading and trailing  ", "数一数", "\nCompare."]
    rows = []
    for i, p in enumerate(paths):
        user: list[dict] = [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]
        if i % 4 == 1:
            user.reverse()  # text first: the image's "\n\n" follows the text
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]}]
        if i % 5 == 2:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": "You are terse."}]})
        rows.append({"id": f"single-{i}", "messages": messages, "images": [p.name]})
    for j in range(multi):
        picks = rng.sample(paths, rng.randint(2, 3))
        content: list[dict] = [{"type": "image"} for _ in picks]
        if j % 2:  # images separated by text
            content = [{"type": "image"}, {"type": "text", "text": "and"}] + content[1:]
        rows.append({
            "id": f"multi-{j}",
            "messages": [
                {"role": "user", "content": content + [{"type": "text", "text": "Compare."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second."}]},
            ],
            "images": [p.name for p in picks],
        })
    return rows


def _check(rows: list[dict], folder: Path, checkpoint: Path, tmp_path: Path, *,
           overrides: Overrides | None = None, call: dict | None = None) -> tuple[int, list[int]]:
    from transformers.image_utils import load_image

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    model = load_model(checkpoint, overrides=overrides) if overrides else checkpoint
    scan(data, model=model, image_root=folder, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows)
    processor = gemma3_processor(checkpoint)
    mismatches, images, per_image = [], 0, []
    for row, rec in zip(rows, records):
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        assert text.startswith("<bos>")
        pictures = [load_image(str(folder / n)) for n in row["images"]]
        batch = processor(text=[text], images=pictures, add_special_tokens=False, return_offsets_mapping=True,
                          return_text_replacement_offsets=True, **(call or {}))
        ids = list(batch["input_ids"][0])
        assert ids[:2] == [2, 105]  # one <bos>, then <start_of_turn>
        # each image's soft tokens: those inside the text the processor wrote for that image
        offsets = batch["offset_mapping"][0]
        spans = [r["new_span"] for r in batch["text_replacement_offsets"][0] if r["type"] == "image"]
        counts = [sum(1 for t, (a, _) in zip(ids, offsets) if t == IMAGE_TOKEN_ID and s <= a < e) for s, e in spans]
        assert sum(counts) == ids.count(IMAGE_TOKEN_ID)
        images += len(counts)
        per_image.extend(counts)
        if (len(ids), counts) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), counts), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, per_image


def test_counts_match_the_real_processor(pool, tmp_path):
    rows = _rows(pool, random.Random(5), multi=12)
    images, per_image = _check(rows, pool[0].parent, gemma3_checkpoint(), tmp_path)
    assert images >= 130
    assert set(per_image) == {256}


def test_pan_and_scan_counts_match_the_real_processor(pool, tmp_path):
    # Overrides.extra carries the call-time kwargs, as processor(..., do_pan_and_scan=True)
    rows = _rows(pool, random.Random(6), multi=12)
    images, per_image = _check(rows, pool[0].parent, gemma3_checkpoint(), tmp_path,
                               overrides=Overrides(extra=PAS), call=PAS)
    assert images >= 130
    assert set(per_image) == {256, 256 * 3, 256 * 4, 256 * 5}  # 0, 2, 3 and 4 crops all occur


def test_pan_and_scan_with_other_crop_settings(pool, tmp_path):
    extra = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 100, "pan_and_scan_max_num_crops": 7,
             "pan_and_scan_min_ratio_to_activate": 1.05}
    rows = _rows(pool[:40], random.Random(7), multi=0)
    images, per_image = _check(rows, pool[0].parent, gemma3_checkpoint(), tmp_path,
                               overrides=Overrides(extra=extra), call=extra)
    assert images == 40 and 256 * 8 in per_image


def test_preprocessor_config_pan_and_scan_is_overridden_by_the_processor(pool, tmp_path):
    # Gemma3Processor.images_kwargs (do_pan_and_scan=False) is passed on every call and wins over
    # preprocessor_config.json: the real processor makes no crops, and neither does vlmcheck.
    checkpoint = gemma3_checkpoint(preprocessor={"do_pan_and_scan": True}, name="gemma-3-4b-it-pas-config")
    rows = _rows(pool[:30], random.Random(8), multi=0)
    images, per_image = _check(rows, pool[0].parent, checkpoint, tmp_path)
    assert images == 30 and set(per_image) == {256}


def test_image_seq_length_comes_from_processor_config(pool, tmp_path):
    checkpoint = gemma3_checkpoint(processor={"image_seq_length": 64}, name="gemma-3-seq64")
    rows = _rows(pool[:15], random.Random(9), multi=3)
    images, per_image = _check(rows, pool[0].parent, checkpoint, tmp_path)
    assert images >= 20 and set(per_image) == {64}


def test_cut_image_span_is_vc201(pool, tmp_path):
    """max_length inside an image span: VC201, and the processor's own truncation check agrees."""
    checkpoint = gemma3_checkpoint()
    processor = gemma3_processor(checkpoint)
    rows = _rows(pool[:3], random.Random(10), multi=0)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    text = processor.apply_chat_template(rows[0]["messages"], tokenize=False)
    from transformers.image_utils import load_image

    picture = load_image(str(pool[0]))
    ids = list(processor(text=[text], images=[picture], add_special_tokens=False)["input_ids"][0])
    first = ids.index(IMAGE_TOKEN_ID)
    spec = load_model(checkpoint)
    for max_length, expect_cut in ((first + 100, True), (first + 256, False), (first, True), (len(ids), False)):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=spec, image_root=pool[0].parent, max_length=max_length, output=out)
        rec = json.loads(out.read_text().splitlines()[0])
        assert ("VC201" in rec["findings"]) is expect_cut, (max_length, rec)
        if expect_cut:
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                processor(text=[text], images=[picture], add_special_tokens=False, truncation=True,
                          max_length=max_length)


# W x H -> soft tokens with pan-and-scan at the processor's defaults, read off Gemma3Processor's
# input_ids (256 per image and per crop): the activation ratio 1.2 (1075 vs 1076 wide), crops of at
# least 256 px (2000 x 100 gets none), at most 4.
GOLDEN_PAS = {(896, 896): 256, (1000, 300): 1024, (1075, 896): 256, (1076, 896): 768, (750, 300): 768,
              (300, 1800): 1280, (2000, 100): 256, (1920, 1080): 768, (1080, 1920): 768, (4000, 1000): 1280}


def test_golden_pan_and_scan_counts():
    from vlmcheck.families import get_family

    family = get_family("gemma3")
    on = family.settings(preprocessor={}, config={}, overrides=Overrides(extra=PAS))
    off = family.settings(preprocessor={}, config={}, overrides=Overrides())
    assert {size: family.image_tokens(*size, on) for size in GOLDEN_PAS} == GOLDEN_PAS
    assert {family.image_tokens(*size, off) for size in GOLDEN_PAS} == {256}


def test_bad_pan_and_scan_options_are_usage_errors():
    from vlmcheck.errors import UsageError
    from vlmcheck.families import get_family

    family = get_family("gemma3")
    with pytest.raises(UsageError, match="unknown Gemma-3 pan-and-scan option"):
        family.settings(preprocessor={}, config={}, overrides=Overrides(extra={"pan_and_scan_max_crops": 2}))
    with pytest.raises(UsageError, match="must be at least 1"):
        family.settings(preprocessor={}, config={},
                        overrides=Overrides(extra={**PAS, "pan_and_scan_max_num_crops": 0}))
