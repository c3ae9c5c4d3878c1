"""Pixtral-12B and Mistral-Small-3.1 counts proved against transformers' own ``PixtralProcessor``.

The processor is built from each checkpoint's processor files (``pixtral_checkpoint``) with
``PixtralImageProcessorPil`` and the real Tekken vocabulary that mistral-common ships (the hub
tokenizers are not reachable offline; ``tekken_vocab`` checks the ids against transformers' tests).
For every sample the processor's ``input_ids`` length must equal vlmcheck's ``tokens``, and each
image's ``[IMG]`` ids (10; its rows are split by ``[IMG_BREAK]`` 12 and it ends with ``[IMG_END]`` 13)
the per-image ``image_tokens``. Images the processor rejects must carry VC107. pixtral-12b is a
``llava`` checkpoint: vlmcheck must count it as Pixtral, not LLaVA-1.5.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from pixtral_checkpoint import pixtral_checkpoint, pixtral_processor
from vlmcheck.model import load_model

IMG, IMG_BREAK, IMG_END = 10, 12, 13


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [(1, 1), (2, 3), (15, 15), (16, 16), (17, 17), (27, 29), (28, 28), (29, 57), (316, 500), (640, 480),
           (1024, 1024), (1025, 1024), (1540, 1540), (1541, 770), (1920, 1080), (1080, 1920), (4000, 3000),
           (1000, 7), (7, 1000), (2047, 1), (1, 1500), (1600, 1), (3100, 2), (2, 5000), (4096, 16), (33, 3000)]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            out.append((rng.randint(1, 1700), rng.randint(1, 1700)))
        elif kind < 0.75:  # long thin images
            short = rng.randint(1, 40)
            w, h = short, min(short * rng.randint(5, 300), 6000)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
        else:  # near multiples of 14 / 16 / 28 px, and of the longest edges
            f = rng.choice([14, 16, 28, 32])
            out.append((f * rng.randint(1, 60) + rng.choice([-1, 0, 1]), f * rng.randint(1, 60) + rng.choice([-1, 0, 1])))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(2024)
    folder = tmp_path_factory.mktemp("pixtral-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 125)):
        im = Image.new("RGB", (max(1, w), max(1, h)), (rng.randrange(256), 90, 150))
        if i % 9 == 4:  # EXIF orientations 5-8 swap W and H when transformers loads the path
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 3])
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


def _rows(paths: list[Path], rng: random.Random, *, multi: int, system: bool) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "Compare."]
    rows = [{
        "id": f"single-{i}",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]},
        ],
        "images": [p.name],
    } for i, p in enumerate(paths)]
    small = [p for p in paths if _pixels(p) <= 1_000_000]  # the processor's time goes on big images
    for j in range(multi):
        picks = rng.sample(small, rng.randint(2, 3))
        content: list[dict] = []
        for _ in picks:
            content += [{"type": "text", "text": rng.choice(texts)}, {"type": "image"}]
        messages = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
            {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
        ]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": "You count things."}]})
        rows.append({"id": f"multi-{j}", "messages": messages, "images": [p.name for p in picks]})
    return rows


def _per_image(ids: list[int]) -> list[int]:
    """``[IMG]`` ids of each image: an image's rows end at its ``[IMG_END]``."""
    counts, current = [], 0
    for t in ids:
        if t == IMG:
            current += 1
        elif t == IMG_END:
            counts.append(current)
            current = 0
    assert current == 0
    return counts


@cache
def _load(path: Path):
    """The image as transformers loads a path (EXIF orientation applied), decoded once per file."""
    from transformers.image_utils import load_image

    return load_image(str(path))


def _specials(processor, text: str) -> bool:
    """What ``processor.apply_chat_template(tokenize=True)`` and TRL's collator do: no BOS from the
    tokenizer when the template already wrote one (Mistral-Small-3.1's does, and its tokenizer adds BOS)."""
    return not text.startswith(processor.tokenizer.bos_token)



@pytest.mark.parametrize(("name", "family"), [("pixtral-12b", "pixtral"), ("mistral-small-3.1", "mistral3")])
def test_counts_match_the_real_processor(name, family, pool, tmp_path):
    checkpoint = pixtral_checkpoint(name)
    assert load_model(checkpoint).family.name == family
    folder = pool[0].parent
    rows = _rows(pool, random.Random(11), multi=20, system=family == "mistral3")
    records = scan_rows(rows, model=checkpoint, image_root=folder, tmp_path=tmp_path)
    assert len(records) == len(rows)
    processor = pixtral_processor(checkpoint)
    mismatches, images, rejected, counts = [], 0, 0, set()
    for row, rec in zip(rows, records):
        assert rec["id"] == row["id"]
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        pictures = [_load(folder / n) for n in row["images"]]
        try:
            ids = list(processor(text=[text], images=pictures, add_special_tokens=_specials(processor, text))[
                "input_ids"][0])
        except ValueError as e:  # a side floors to 0 px: vlmcheck must have said so
            assert "VC107" in rec["findings"], (row["id"], e, rec)
            rejected += 1
            continue
        assert "VC107" not in rec["findings"], row["id"]
        per_image = _per_image(ids)
        images += len(per_image)
        counts.update(per_image)
        if (len(ids), per_image) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (len(ids), per_image), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    assert images >= 150 and len(counts) > 60
    assert rejected >= 3  # (3100, 2), (2, 5000), (1600, 1) ... floor to a 0 px side


def test_cut_between_two_rows_is_vc201(pool, tmp_path):
    """max_length right after an image's second ``[IMG_BREAK]``: two rows survive, the rest do not."""
    from transformers.image_utils import load_image

    checkpoint = pixtral_checkpoint("pixtral-12b")
    processor = pixtral_processor(checkpoint)
    picture = next(p for p in pool if p.stem.split("_")[1] == "640x480")  # 40 x 30 patches
    rows = _rows([picture], random.Random(3), multi=0, system=False)
    text = processor.apply_chat_template(rows[0]["messages"], tokenize=False)
    image = load_image(str(picture))
    ids = list(processor(text=[text], images=[image], add_special_tokens=_specials(processor, text))["input_ids"][0])
    breaks = [i for i, t in enumerate(ids) if t == IMG_BREAK]
    between_rows = breaks[1] + 1
    before_end = ids.index(IMG_END)
    for max_length, expect_cut in ((between_rows, True), (before_end, False), (len(ids), False)):
        rec = scan_rows(rows, model=checkpoint, image_root=picture.parent, tmp_path=tmp_path, max_length=max_length)[0]
        assert rec["tokens"] == len(ids)
        assert ("VC201" in rec["findings"]) is expect_cut, (max_length, rec)
        if expect_cut:
            assert ids[:max_length].count(IMG) == 2 * 40
            # the processor's own check sees the same cut
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                processor(text=[text], images=[image], truncation=True, max_length=max_length)
        else:  # losing only [IMG_END] keeps every feature: no crash, the text is cut (VC203)
            processor(text=[text], images=[image], truncation=True, max_length=max_length)


def test_a_llava_checkpoint_with_a_pixtral_tower_is_counted_as_pixtral(tmp_path):
    from llava_checkpoint import llava_checkpoint

    assert load_model(llava_checkpoint()).family.name == "llava"
    spec = load_model(pixtral_checkpoint("pixtral-12b"))
    assert spec.model_type == "llava" and spec.family.name == "pixtral"


@pytest.mark.parametrize("name", ["pixtral-12b", "mistral-small-3.1"])
def test_image_processor_called_on_its_own(name, pool):
    """``image_processor_size`` is what the image processor returns when a framework calls it directly, without
    the processor's patch_size (LLaMA-Factory's Pixtral plugin): rounded to its own patch, 14 px for
    Mistral-Small-3.1 against the processor's 28."""
    from vlmcheck.families import pixtral

    spec = load_model(pixtral_checkpoint(name))
    image_processor = pixtral_processor(pixtral_checkpoint(name)).image_processor
    differ, compared = [], 0
    for path in pool:
        w, h = _load(path).size
        if pixtral.grid(w, h, spec.settings)[0] <= 0 or pixtral.grid(w, h, spec.settings)[1] <= 0:
            continue  # the processor refuses it (the counting test proves VC107 there)
        got = tuple(int(v) for v in image_processor(_load(path), return_tensors="pt")["image_sizes"][0].tolist())
        compared += 1
        if got != pixtral.image_processor_size(w, h, spec.settings):
            differ.append((path.name, got, pixtral.image_processor_size(w, h, spec.settings)))
    assert compared >= 100 and not differ, differ[:5]
    if name == "mistral-small-3.1":  # finer than the processor's 28 px grid: not the same sizes
        assert any(pixtral.image_processor_size(w, h, spec.settings) != (r * 28, c * 28)
                   for w, h in ((100, 100), (57, 29)) for r, c in [pixtral.grid(w, h, spec.settings)])
