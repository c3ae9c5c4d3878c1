"""Llama 3.2 Vision (Mllama) counts proved against transformers' own ``MllamaProcessor``.

Built from meta-llama/Llama-3.2-11B-Vision-Instruct's processor files (``mllama_checkpoint``): the
PIL image processor (560 px tiles, at most 4), the hub chat template and the real Llama 3 BPE with
Llama 3.2 Vision's special tokens at their real ids (``<|image|>`` 128256). Expected values come from
``processor.apply_chat_template(..., tokenize=True)`` with the images as file paths, which is what
TRL's vision collator and transformers' examples run: each image must be exactly one ``<|image|>``
whatever its size (1 x 1, 2 x 9000, EXIF-rotated), and the sample's ``input_ids`` length must equal
vlmcheck's ``tokens`` (one ``<|begin_of_text|>``: the template writes it, and apply_chat_template then
adds no special tokens).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from mllama_checkpoint import IMAGE_TOKEN_ID, mllama_checkpoint, mllama_processor
from vlmcheck.model import load_model

BOS_ID = 128000


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [(1, 1), (1, 3), (3, 1), (2, 9000), (9000, 2), (560, 560), (561, 559), (1120, 1120), (2240, 560),
           (560, 2240), (4000, 3000), (1920, 1080)]
    while len(out) < n:
        if rng.random() < 0.7:
            out.append((rng.randint(1, 2000), rng.randint(1, 2000)))
        else:
            short = rng.randint(1, 40)
            w, h = short, short * rng.randint(5, 150)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(77)
    folder = tmp_path_factory.mktemp("mllama-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 110)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 140, 20))
        if i % 7 == 5:
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8, 3])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, exif=exif)
        else:
            path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 3 == 0 else 'jpg'}"
            im.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def processor():
    return mllama_processor(mllama_checkpoint())


def _rows(paths: list[Path], rng: random.Random, *, multi: int) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "If I had to write a "
             "haiku for this one, it would be: "]
    rows = []
    for i, p in enumerate(paths):
        prompt = {"type": "text", "text": rng.choice(texts)}
        content = [{"type": "image"}, prompt] if i % 3 else [prompt, {"type": "image"}]
        rows.append({"id": f"single-{i}", "images": [p.name], "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}: a picture."}]}]})
    for j in range(multi):
        picks = rng.sample(paths, rng.randint(2, 3))
        first = [{"type": "image"} for _ in picks[:-1]] + [{"type": "text", "text": "Compare these."}]
        rows.append({"id": f"multi-{j}", "images": [p.name for p in picks], "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Same.\n"}]}]})
    return rows


def _oracle(processor, row: dict, folder: Path, **kwargs) -> list[int]:
    """apply_chat_template(tokenize=True) with each image part pointing at its file."""
    names = iter(row["images"])
    messages = [{**m, "content": [{**part, "path": str(folder / next(names))} if part["type"] == "image" else part
                                  for part in m["content"]]} for m in row["messages"]]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    assert len(out["pixel_values"][0]) == len(row["images"])  # (batch, images, tiles, ...): all loaded
    return list(out["input_ids"][0])


def _scan(rows: list[dict], folder: Path, tmp_path: Path, **options) -> list[dict]:
    return scan_rows(rows, model=load_model(mllama_checkpoint()), image_root=folder, tmp_path=tmp_path, **options)

def test_mllama_counts_match_the_real_processor(pool, processor, tmp_path):
    folder = pool[0].parent
    rows = _rows(pool, random.Random(12), multi=20)
    records = _scan(rows, folder, tmp_path)
    assert len(records) == len(rows)
    mismatches, images = [], 0
    for row, rec in zip(rows, records):
        ids = _oracle(processor, row, folder)
        assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
        per_image = [1] * ids.count(IMAGE_TOKEN_ID)
        images += len(per_image)
        if (len(ids), per_image) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], len(ids), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    assert images >= 150


def test_images_with_a_system_message_are_rejected_by_both(pool, processor, tmp_path):
    import jinja2

    folder = pool[0].parent
    row = {"id": "system", "images": [pool[0].name], "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]}
    assert _scan([row], folder, tmp_path)[0]["findings"] == ["VC001"]
    with pytest.raises(jinja2.TemplateError, match="incompatible with system messages"):
        _oracle(processor, row, folder)


def test_vc201_where_truncation_cuts_the_image_token(pool, processor, tmp_path):
    folder = pool[0].parent
    row = _rows(pool[:3], random.Random(13), multi=1)[-1]
    ids = _oracle(processor, row, folder)
    last = len(ids) - 1 - ids[::-1].index(IMAGE_TOKEN_ID)  # the second user turn's image
    for cut, image_cut in ((last, True), (last + 1, False)):
        record = _scan([row], folder, tmp_path, max_length=cut)[0]
        assert record["tokens"] == len(ids)
        assert ("VC201" in record["findings"]) == image_cut, (cut, record)
        if image_cut:
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                _oracle(processor, row, folder, truncation=True, max_length=cut)
        else:
            assert len(_oracle(processor, row, folder, truncation=True, max_length=cut)) == cut
