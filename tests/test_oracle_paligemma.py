"""PaliGemma counts proved against transformers' own ``PaliGemmaProcessor``.

PaliGemma checkpoints have no chat template: training code calls ``processor(text=prompt,
images=images, suffix=answer)``. A chat sample maps onto that call with the user turn as the prompt
(``<image>`` tags where it has them) and the assistant turn as the suffix; the expected values come
from that call on the real processor (``SiglipImageProcessorPil`` with google/paligemma-3b-pt-224's
values), while vlmcheck scans the chat rows with the family's own template. The processor's
``input_ids`` length must equal ``tokens`` and each ``<image>`` run (id 257152) ``image_tokens``.

The tokenizer is a stand-in with PaliGemma's layout and special ids (``paligemma_checkpoint``):
Gemma 3's real vocabulary cut to 256,000 pieces, the loc/seg tokens at 256000-257151, ``<image>`` at
257152. Plain text tokenizes as Gemma 3, not exactly as PaliGemma; both sides use the same file.
"""

from __future__ import annotations

import random
from functools import lru_cache
from itertools import groupby
from pathlib import Path

import pytest
from PIL import Image

from builders import scan_rows
from paligemma_checkpoint import IMAGE_TOKEN_ID, paligemma_checkpoint, paligemma_processor
from vlmcheck.model import load_model

_processor = lru_cache(maxsize=2)(paligemma_processor)  # ~15 s to build: once per checkpoint
_spec = lru_cache(maxsize=2)(load_model)  # a loaded model keeps its tokenizer between scans

PROMPTS = ["caption en", "answer en What is on the table?", "detect cat ; dog", " leading space", "描述这张图片",
           "ocr", "segment car", "answer en how many?\n"]
ANSWERS = ["a cat sitting on a bench", "two", "<loc0123><loc0456><loc0789><loc0999> cat", " spaced answer",
           "一只猫", "Yes.\n\nNo.", "<seg012><seg127> car"]


def _sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = [(1, 1), (1, 3), (3, 1), (3, 3), (224, 224), (223, 225), (5000, 2), (2, 5000), (448, 448), (1920, 1080)]
    while len(out) < n:
        if rng.random() < 0.7:
            out.append((rng.randint(1, 1600), rng.randint(1, 1600)))
        else:
            short = rng.randint(1, 30)
            w, h = short, short * rng.randint(5, 100)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = random.Random(31)
    folder = tmp_path_factory.mktemp("paligemma-images")
    paths = []
    for i, (w, h) in enumerate(_sizes(rng, 110)):
        im = Image.new("RGB", (w, h), (rng.randrange(256), 30, 90))
        if i % 9 == 4:
            exif = Image.Exif()
            exif[0x0112] = rng.choice([5, 6, 7, 8])
            path = folder / f"im{i:03d}_{w}x{h}_exif.jpg"
            im.save(path, exif=exif)
        else:
            path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 2 else 'jpg'}"
            im.save(path)
        paths.append(path)
    return paths


def _rows(paths: list[Path], rng: random.Random, *, multi: int) -> list[dict]:
    """Chat rows plus, for each, the processor call a PaliGemma trainer makes: (prompt, suffix)."""
    rows = []
    for i, p in enumerate(paths):
        prompt, answer = rng.choice(PROMPTS), rng.choice(ANSWERS)
        if i % 2:  # content parts, image first
            user: object = [{"type": "image"}, {"type": "text", "text": prompt}]
            call_prompt = prompt  # the processor puts the image in front itself
        else:  # LLaVA-style tag in the text, where the processor sees it too
            user = call_prompt = "<image>\n" + prompt
        rows.append({"id": f"single-{i}", "messages": [{"role": "user", "content": user},
                                                       {"role": "assistant", "content": answer}],
                     "images": [p.name], "_call": (call_prompt, answer)})
    for j in range(multi):
        picks = rng.sample(paths, rng.randint(2, 3))
        prompt, answer = rng.choice(PROMPTS), rng.choice(ANSWERS)
        rows.append({"id": f"multi-{j}", "messages": [
            {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": [p.name for p in picks], "_call": ("<image>" * len(picks) + prompt, answer)})
    return rows


def _processor_ids(processor, row: dict, folder: Path, **kwargs) -> list[int]:
    from transformers.image_utils import load_image

    prompt, answer = row["_call"]
    images = [load_image(str(folder / n)) for n in row["images"]]
    return list(processor(text=[prompt], images=[images], suffix=[answer], **kwargs)["input_ids"][0])


def _scan(rows: list[dict], folder: Path, checkpoint: Path, tmp_path: Path, **options) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "_call"} for r in rows]  # the processor call, not data
    return scan_rows(rows, model=_spec(checkpoint), image_root=folder, tmp_path=tmp_path, **options)

@pytest.mark.parametrize(("variant", "seq"), [(None, 256), ({"size": {"height": 448, "width": 448},
                                                            "image_seq_length": 1024}, 1024)])
def test_paligemma_counts_match_the_real_processor(variant, seq, pool, tmp_path):
    checkpoint = paligemma_checkpoint() if variant is None else paligemma_checkpoint(
        preprocessor=variant, name="paligemma-3b-pt-448")
    processor = _processor(checkpoint)
    rows = _rows(pool if variant is None else pool[:40], random.Random(8), multi=20 if variant is None else 5)
    folder = pool[0].parent
    records = _scan(rows, folder, checkpoint, tmp_path)
    mismatches, images = [], 0
    for row, rec in zip(rows, records):
        ids = _processor_ids(processor, row, folder)
        assert ids[0] == IMAGE_TOKEN_ID and ids[-1] == 1  # images first, <eos> last: no BOS in front
        # a sample's images sit side by side in one run: each is replace_image_token's image_seq_length
        runs = [len(list(g)) for key, g in groupby(ids) if key == IMAGE_TOKEN_ID]
        per_image = [processor.image_seq_length] * len(row["images"])
        images += len(row["images"])
        if ((len(ids), runs, per_image) != (rec["tokens"], [sum(rec["image_tokens"])], rec["image_tokens"])
                or rec["findings"]):
            mismatches.append((row["id"], row["_call"], (len(ids), runs), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    assert images >= (140 if variant is None else 50)
    assert {c for rec in records for c in rec["image_tokens"]} == {seq}


def test_what_the_processor_defines_and_what_it_does_not(pool, tmp_path):
    folder = pool[0].parent
    checkpoint = paligemma_checkpoint()
    processor = _processor(checkpoint)
    image = pool[0].name
    rows = [
        # the known difference: the suffix is tokenized apart, so its leading "\n" does not merge with
        # the prompt's closing "\n" as it does in one string
        {"id": "newline-answer", "messages": [{"role": "user", "content": "<image>caption en"},
                                              {"role": "assistant", "content": "\nA cat."}],
         "images": [image], "_call": ("<image>caption en", "\nA cat.")},
        # multi-turn chats and system prompts have no PaliGemma rendering: rejected, not guessed
        {"id": "multi-turn", "messages": [{"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "b"},
                                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
         "images": [image]},
        {"id": "system", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "b"}],
         "images": [image]},
    ]
    records = _scan(rows, folder, checkpoint, tmp_path)
    assert records[0]["tokens"] == len(_processor_ids(processor, rows[0], folder)) - 1
    assert records[1]["findings"] == ["VC001"] and records[2]["findings"] == ["VC001"]


def test_vc201_where_truncation_cuts_the_image_run(pool, tmp_path):
    folder = pool[0].parent
    checkpoint = paligemma_checkpoint()
    processor = _processor(checkpoint)
    row = _rows(pool[:5], random.Random(9), multi=1)[-1]  # two or three images in front
    ids = _processor_ids(processor, row, folder)
    for cut, image_cut in ((100, True), (256 * len(row["images"]) - 1, True), (256 * len(row["images"]) + 1, False)):
        record = _scan([row], folder, checkpoint, tmp_path, max_length=cut)[0]
        assert record["tokens"] == len(ids)
        assert ("VC201" in record["findings"]) == image_cut, (cut, record)
        if image_cut:
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                _processor_ids(processor, row, folder, truncation=True, max_length=cut)
