"""The data EasyR1's golden cases were made from (tests/assets/easyr1_golden/), written the same way by the golden
maker (run beside EasyR1's own code) and by the tests (run beside vlmcheck).

``write_corpus(root)`` writes, under ``root``:

- ``geo.parquet``: EasyR1's geometry3k layout (``problem`` with ``<image>`` tags, ``answer``, ``images`` as byte
  structs), every size class EasyR1's ``process_image`` and the processor care about: plain photos, a 6-megapixel
  and a 25-megapixel photo (over ``max_pixels``), sides under 28 px and images under ``min_pixels`` (scaled up), a
  300:1 strip, an EXIF-rotated JPEG, grey and RGBA PNGs, a row with no tag for its image, one with a tag too many,
  a text-only row (``images`` empty) and a long question;
- ``paths.jsonl`` + ``images/``: images given as paths relative to ``data.image_dir``;
- ``math.jsonl``: math12k's layout (no ``images`` column: the tokenizer's chat template route);
- ``format.jinja``: a format prompt (``{{ content | trim }}`` and an instruction).

Every row has an ``id`` column, so the rows a filter keeps can be named. Nothing here knows what EasyR1 or
vlmcheck will make of a row.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

FORMAT = "{{ content | trim }} Think it through first, then give the final answer in \\boxed{}."


def _image(size: tuple[int, int], mode: str = "RGB", exif_orientation: int | None = None) -> Image.Image:
    colour: Any = {"RGB": (30, 120, 200), "L": 128, "RGBA": (1, 2, 3, 100)}[mode]
    image = Image.new(mode, size, colour)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.info["exif"] = exif.tobytes()
    return image


def _encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    if "exif" in image.info:
        image.save(buf, format="JPEG", exif=image.info["exif"], quality=60)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


# (problem, images) per row of geo.parquet; an image is (size, mode, exif orientation)
GEO: list[tuple[str, list[tuple[tuple[int, int], str, int | None]]]] = [
    ("<image>Find x.", [((640, 480), "RGB", None)]),
    ("<image>Find the area of the shaded region.", [((1280, 960), "RGB", None)]),
    ("<image>What is shown?", [((3000, 2000), "RGB", None)]),  # over max_pixels: scaled down
    ("Compare <image> with <image>.", [((56, 56), "RGB", None), ((300, 12), "RGB", None)]),  # under min_pixels
    ("<image>Read the strip.", [((6000, 20), "RGB", None)]),  # 300:1
    ("No tag for the image.", [((100, 100), "RGB", None)]),
    ("A text-only question. " * 30, []),
    ("<image>" + "A long question about the figure. " * 120, [((224, 224), "RGB", None)]),
    ("<image>Is it upright?", [((900, 300), "RGB", 6)]),  # stored landscape, shown portrait
    ("  \n<image>Grey and <image> RGBA.\n  ", [((700, 500), "L", None), ((500, 700), "RGBA", None)]),
    ("<image><image> One tag too many.", [((320, 240), "RGB", None)]),
    ("<image>A tall thin one.", [((20, 3000), "RGB", None)]),
    ("<image>A huge one, 漢字 テスト 🙂.", [((5000, 5000), "RGB", None)]),
]

PATHS: list[tuple[str, list[tuple[int, int]]]] = [
    ("<image>Where is the dog?", [(800, 600)]),
    ("<image> and <image>: which is larger?", [(64, 64), (2400, 1800)]),
    ("<image>" + "Describe everything. " * 60, [(1024, 1024)]),
]

MATH: list[str] = [
    "What is 2 + 3?",
    "Solve for x: " + "x + 1 = 2, " * 200,
    "ünïcödé 漢字 テスト émoji 🙂 x=3.14 {json: true}\n\nand a second paragraph.",
]


def write_corpus(root: Path) -> dict[str, Path]:
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i, "problem": problem, "answer": str(i),
             "images": [{"bytes": _encoded(_image(*spec)), "path": None} for spec in images]}
            for i, (problem, images) in enumerate(GEO)]
    geo = root / "geo.parquet"
    features = datasets.Features({"id": datasets.Value("int64"), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "images": datasets.List(datasets.Image())})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(geo))
    images = root / "images"
    images.mkdir(exist_ok=True)
    lines = []
    for i, (problem, sizes) in enumerate(PATHS):
        names = []
        for k, size in enumerate(sizes):
            name = f"p{i}_{k}_{size[0]}x{size[1]}.png"
            _image(size).save(images / name)
            names.append(name)
        lines.append(json.dumps({"id": i, "problem": problem, "answer": str(i), "images": names}))
    paths = root / "paths.jsonl"
    paths.write_text("\n".join(lines) + "\n")
    math = root / "math.jsonl"
    math.write_text("".join(json.dumps({"id": i, "problem": p, "answer": str(i)}) + "\n" for i, p in enumerate(MATH)))
    fmt = root / "format.jinja"
    fmt.write_text(FORMAT + "\n")
    return {"geo": geo, "paths": paths, "math": math, "format": fmt, "images": images}
