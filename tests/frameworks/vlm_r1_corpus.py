"""The data VLM-R1's golden cases were made from (tests/assets/vlm_r1_golden/), written the same way by the golden
maker (run beside VLM-R1's own code) and by the tests (run beside vlmcheck).

``write_corpus(root)`` writes, under ``root``:

- ``images/``: every size class VLM-R1's loader and the processor care about: plain photos, a 6-megapixel photo,
  sides under 28 px (VLM-R1 scales them up to 28, keeping the ratio), a strip that ends over ratio 200 after that,
  an EXIF-rotated JPEG, grey and RGBA PNGs;
- ``train.jsonl``: VLM-R1's layout (``image`` a path or a list of paths under the image folder,
  ``conversations`` with a ``human`` turn holding ``<image>`` tags and a ``gpt`` answer), with rows without an
  image, with braces in the question, and with tags in the middle of the text;
- ``more.jsonl``: a second file for a second image folder;
- ``missing.jsonl``: a row whose image file does not exist.

Every row has an ``id``. Nothing here knows what VLM-R1 or vlmcheck will make of a row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

SIZES: dict[str, tuple[int, int]] = {
    "photo": (640, 480), "wide": (1280, 720), "big": (3000, 2000), "small": (56, 56), "thin": (300, 12),
    "narrow": (20, 600), "strip": (3000, 10), "tiny": (5, 5), "odd": (333, 517),
}


def _rows() -> list[dict[str, Any]]:
    def row(i: int, image: Any, question: str, answer: str = "[10, 20, 30, 40]") -> dict[str, Any]:
        out: dict[str, Any] = {"id": i}
        if image is not None:
            out["image"] = image
        out["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return out

    return [
        row(0, "photo.png", "<image>Please provide the bounding box of the dog."),
        row(1, "wide.png", "<image>\nWhat is in the picture?"),
        row(2, "big.png", "<image>Describe it."),
        row(3, ["small.png", "thin.png"], "<image><image>Which image is larger?"),
        row(4, "narrow.png", "What is <image> this narrow one?"),
        row(5, "strip.png", "<image>Read the strip."),
        row(6, None, "A text-only question with {braces} and 漢字 テスト 🙂?", answer="42"),
        row(7, "exif.jpg", "<image>Is it upright?"),
        row(8, ["grey.png", "rgba.png", "odd.png"], "Three: <image> <image> <image>" + " and more words" * 40),
        row(9, "tiny.png", "<image>A tiny one.", answer="<answer> 3 </answer>"),
    ]


def write_corpus(root: Path) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        Image.new("RGB", size, (30, 120, 200)).save(images / f"{name}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (900, 300), (200, 30, 30)).save(images / "exif.jpg", exif=exif.tobytes(), quality=60)
    Image.new("L", (700, 500), 128).save(images / "grey.png")
    Image.new("RGBA", (500, 700), (1, 2, 3, 100)).save(images / "rgba.png")
    more = root / "more_images"
    more.mkdir(exist_ok=True)
    Image.new("RGB", (800, 600), (9, 9, 9)).save(more / "m.png")
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()))
    second = root / "more.jsonl"
    second.write_text(json.dumps({"id": 100, "image": "m.png", "conversations": [
        {"from": "human", "value": "<image>Where is it?"}, {"from": "gpt", "value": "left"}]}) + "\n")
    missing = root / "missing.jsonl"
    missing.write_text(json.dumps({"id": 200, "image": "nowhere.png", "conversations": [
        {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]}) + "\n")
    return {"train": train, "more": second, "missing": missing, "images": images, "more_images": more}


def _rec_rows() -> list[dict[str, Any]]:
    def row(image: Any, problem: str, solution: str = "[10, 20, 30, 40]") -> dict[str, Any]:
        out: dict[str, Any] = {} if image is None else {"image": image}
        return {**out, "problem": problem, "solution": solution}

    return [
        row("photo.png", "the dog on the left"),
        row("big.png", "the {red} car"),
        row("thin.png", "the thin line"),
        row("narrow.png", "the pole"),
        row("strip.png", "the strip"),
        row("tiny.png", "the dot"),
        row(None, "a text-only question 漢字 🙂"),
        row("exif.jpg", "the upright one"),
        row("odd.png", "the odd box " + "with many words " * 30),
    ]


def write_rec_corpus(root: Path) -> dict[str, Path]:
    """``grpo_rec.py``'s layout beside ``write_corpus``'s images: ``rec.yaml`` (its ``--dataset_name``) naming
    ``rec.json`` (a JSON list, ``sampling_strategy: first:8``) and ``rec_more.jsonl`` (one line); rows hold
    ``image`` (a name under ``--image_root``, or absent), ``problem`` and ``solution``."""
    paths = write_corpus(root)
    rows = _rec_rows()
    data = root / "rec.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    more = root / "rec_more.jsonl"
    more.write_text(json.dumps({"image": "wide.png", "problem": "the sky", "solution": "[0, 0, 5, 5]"}) + "\n")
    config = root / "rec.yaml"
    config.write_text(f"datasets:\n  - json_path: {data}\n    sampling_strategy: first:8\n  - json_path: {more}\n")
    return {**paths, "rec_yaml": config, "rec_json": data, "rec_more": more}
