"""Idefics3 and SmolVLM2 counts proved against transformers' own processors.

``Idefics3Processor`` (``model_type`` idefics3) and ``SmolVLMProcessor`` (``model_type`` smolvlm,
images only: see ``idefics3_checkpoint.processor``) run with the PIL image processors and the hub
checkpoints' processor files (``idefics3_checkpoint``): Idefics3-8B-Llama3, SmolVLM-Instruct,
SmolVLM-256M-Instruct and SmolVLM2-2.2B-Instruct, plus variants without splitting or resizing.

Tokenizers (``idefics3_vocab``): Idefics3-8B-Llama3 gets the real Llama-3 vocabulary with its three
added tokens at their hub ids. No package ships SmolLM2's vocabulary, so the SmolVLM checkpoints get
StarCoder2's 49,152-piece BPE (same size, same pre-tokenization) with SmolVLM's special tokens added
at their real ids (``<global-img>`` 49152, ``<row_1_col_1>`` 49153.., ``<fake_token_around_image>``
49189, ``<image>`` 49190, ``<end_of_utterance>`` 49279; SmolVLM-Instruct's ``<image>`` 49153): image
spans and markers are exact, text between them splits as StarCoder2 splits it.

For every sample the processor's ``input_ids`` length must equal vlmcheck's ``tokens``, and the
``<image>`` count of each image's replacement text (``return_text_replacement_offsets``) its
``image_tokens``. A cut between two tiles of one image must be VC201, where the real processor with
``truncation=True`` raises its image-token mismatch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from idefics3_checkpoint import checkpoint, processor
from vlmcheck import scan

# sizes where the arithmetic has edges: tiny, thin, exactly one tile, one pixel over, 4k cap
EDGE_SIZES = [
    (1, 1), (2, 3), (3, 2), (1, 3), (3, 1), (5, 5), (1, 1500), (1500, 1), (3, 2500), (2500, 3), (7, 2048),
    (2048, 7), (364, 364), (365, 364), (384, 384), (385, 384), (384, 385), (512, 512), (513, 512), (511, 512),
    (300, 200), (200, 300), (1456, 1456), (1536, 1082), (1082, 1536), (1920, 1080), (1080, 1920), (640, 480),
    (4100, 9), (9, 4100),
]
EXIF_SIZES = [(640, 200), (200, 640), (1000, 333)]  # saved with orientation 6 or 8: the processor sees h x w


def _random_sizes(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = []
    while len(out) < n:
        if rng.random() < 0.7:
            out.append((rng.randint(1, 2400), rng.randint(1, 2400)))
        else:  # long thin images
            short = rng.randint(1, 80)
            w, h = short, short * rng.randint(2, 60)
            out.append((w, h) if rng.random() < 0.5 else (h, w))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """``edge``: every edge size and EXIF image; ``random``: 120 random sizes."""
    rng = random.Random(1729)
    folder = tmp_path_factory.mktemp("idefics3-images")
    edge, rand = [], []
    for i, (w, h) in enumerate(EDGE_SIZES + _random_sizes(rng, 120)):
        path = folder / f"im{i:03d}_{w}x{h}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.new("RGB", (w, h), (rng.randrange(256), 90, 170)).save(path)
        (edge if i < len(EDGE_SIZES) else rand).append(path)
    for i, (w, h) in enumerate(EXIF_SIZES):
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 2 == 0 else 8  # rotated 90 degrees: PIL's size is the stored one
        path = folder / f"exif{i}_{w}x{h}.jpg"
        Image.new("RGB", (w, h), (40, 200, 90)).save(path, exif=exif)
        edge.append(path)
    return {"edge": edge, "random": rand}


def _rows(paths: list[Path], rng: random.Random, *, multi: int) -> list[dict]:
    texts = ["What is in the image?", "Describe it.\n\nBe brief.", " leading space", "数一数", "\n"]
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
                {"role": "user", "content": [{"type": "text", "text": "Compare"}]
                 + [{"type": "image"} for _ in picks] + [{"type": "text", "text": "\nwhich one?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "First."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Second.\n"}]},
            ],
            "images": [p.name for p in picks] + [picks[0].name],
        })
    return rows


def _expected(proc, row: dict, folder: Path) -> tuple[int, list[int]]:
    """(len(input_ids), <image> tokens per image) from the real processor."""
    from transformers.image_utils import load_image

    text = proc.apply_chat_template(row["messages"], tokenize=False)
    images = [load_image(str(folder / n)) for n in row["images"]]  # applies the EXIF orientation
    # a template that writes BOS itself is tokenized without special tokens, as
    # processor.apply_chat_template(tokenize=True) and TRL's collator do (Idefics3's <|begin_of_text|>)
    special = not text.startswith(proc.tokenizer.bos_token)
    out = proc(text=[text], images=[images], add_special_tokens=special, return_text_replacement_offsets=True)
    ids = list(out["input_ids"][0])
    per_image = [r["replacement"].count(proc.image_token) for r in out["text_replacement_offsets"][0]]
    assert sum(per_image) == ids.count(proc.image_token_id) and len(per_image) == len(images)
    return len(ids), per_image


def _check(rows: list[dict], folder: Path, ckpt: Path, tmp_path: Path) -> tuple[int, set[int]]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    scan(data, model=ckpt, image_root=folder, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows)
    proc = processor(ckpt)
    mismatches, images, counts = [], 0, set()
    for row, rec in zip(rows, records):
        total, per_image = _expected(proc, row, folder)
        images += len(per_image)
        counts.update(per_image)
        if (total, per_image) != (rec["tokens"], rec["image_tokens"]) or rec["findings"]:
            mismatches.append((row["id"], row["images"], (total, per_image), rec))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} samples differ, e.g. {mismatches[:3]}"
    return images, counts


def _pick(pool: dict[str, list[Path]], seed: int, edge: int | None, n: int) -> list[Path]:
    """``edge`` of the edge-size images (all when None) and ``n`` random ones."""
    rng = random.Random(seed)
    return (pool["edge"] if edge is None else rng.sample(pool["edge"], edge)) + rng.sample(pool["random"], n)


# (checkpoint, variant preprocessor values, edge-size images (None: all), random images, multi-image samples).
# Every image is resized to 1456-2048 px and tiled with LANCZOS: about 0.25-0.45 s of CPU each.
IDEFICS3_CASES = [
    ("idefics3-8b-llama3", None, None, 12, 4),
    ("smolvlm-instruct", None, 12, 4, 1),
    ("smolvlm-256m-instruct", None, 10, 2, 1),
    ("idefics3-8b-llama3", {"do_resize": False}, 12, 8, 1),
]
SMOLVLM_CASES = [
    ("smolvlm2-2.2b-instruct", None, None, 20, 5),
    ("smolvlm2-2.2b-instruct", {"do_image_splitting": False}, 10, 8, 1),
    ("smolvlm2-2.2b-instruct", {"do_resize": False}, 12, 8, 1),
]


def _area(path: Path) -> int:
    w, h = map(int, path.stem.split("_")[1].split("x"))
    return w * h


def _variant(values: dict | None) -> str:
    return "-".join(f"{k}-{v}" for k, v in (values or {}).items())


def _run(cases: list, pool: dict[str, list[Path]], tmp_path: Path) -> tuple[int, set[int]]:
    total, counts = 0, set()
    for k, (name, values, edge, n, multi) in enumerate(cases):
        ckpt = checkpoint(name, preprocessor=values, variant=_variant(values))
        paths = _pick(pool, k, edge, n)
        if values and values.get("do_resize") is False:  # split at its own size: keep the pixel work small
            paths = [p for p in paths if _area(p) <= 2400 * 2400]
        sub = tmp_path / f"case{k}"
        sub.mkdir()
        images, seen = _check(_rows(paths, random.Random(k), multi=multi), paths[0].parent, ckpt, sub)
        total += images
        counts |= seen
    return total, counts


def test_idefics3_counts_match_the_real_processor(pool, tmp_path):
    images, counts = _run(IDEFICS3_CASES, pool, tmp_path)
    assert images >= 100
    # 169 per tile (Idefics3), 81 (SmolVLM-Instruct), 64 (SmolVLM-256M): singles and up to 26 tiles
    assert {169, 169 * 17, 81 * 17, 64 * 17} <= counts and len(counts) > 15


def test_smolvlm2_counts_match_the_real_processor(pool, tmp_path):
    images, counts = _run(SMOLVLM_CASES, pool, tmp_path)
    assert images >= 100
    assert {81, 81 * 17, 81 * 5} <= counts and len(counts) > 10


@pytest.mark.parametrize(("name", "crash"), [
    # Idefics3Processor maps each image span to tokens with char_to_token, None past the cut
    ("idefics3-8b-llama3", (TypeError, "unsupported operand")),
    ("smolvlm2-2.2b-instruct", (ValueError, "Mismatch in `image` token count")),
])
def test_a_cut_between_two_tiles_of_one_image_is_vc201(name, crash, tmp_path):
    """Right truncation that keeps the first tile's run and stops in the markers before the second:
    the real processor, asked to truncate there, crashes; vlmcheck reports VC201."""
    image = tmp_path / "wide.png"
    Image.new("RGB", (900, 400), (0, 0, 0)).save(image)
    row = {"id": "cut", "images": [image.name], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A wide black rectangle."}]},
    ]}
    ckpt = checkpoint(name)
    proc = processor(ckpt)
    from transformers.image_utils import load_image

    text = proc.apply_chat_template(row["messages"], tokenize=False)
    special = not text.startswith(proc.tokenizer.bos_token)
    ids = list(proc(text=[text], images=[[load_image(str(image))]], add_special_tokens=special)["input_ids"][0])
    first = ids.index(proc.image_token_id)
    end = first + proc.image_seq_len  # the first tile's run ends here
    assert ids[end] != proc.image_token_id and ids[end:].index(proc.image_token_id) > 1  # markers between
    max_length = end + 1
    with pytest.raises(crash[0], match=crash[1]):
        proc(text=[text], images=[[load_image(str(image))]], add_special_tokens=special, truncation=True,
             max_length=max_length)

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    report = scan(data, model=ckpt, image_root=tmp_path, max_length=max_length)
    cut = [f for f in report.findings if f.code == "VC201"]
    assert len(cut) == 1
    assert {k: cut[0].data[k] for k in ("image", "image_tokens", "kept", "tokens", "max_length")} == {
        "image": 1, "image_tokens": ids.count(proc.image_token_id), "kept": proc.image_seq_len,
        "tokens": len(ids), "max_length": max_length}
