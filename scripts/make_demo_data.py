"""Regenerate the bundled demo dataset (src/vlmcheck/demo/data). Deterministic; run from the repo root.

Real image files of the sizes people train on (phone photos, screenshots, scans, a 12 MP photo),
plus the broken cases a real crawl contains: a truncated JPEG, a zero-byte file, a text file named
.jpg, an image over the aspect-ratio limit, a tiny icon, a missing file and a path outside the
dataset folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path("src/vlmcheck/demo/data")
IMAGES = OUT / "images"


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.rectangle([x0, y0, x0 + w // 4, y0 + h // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for old in IMAGES.iterdir():
        old.unlink()
    specs = {
        "street_640x480.jpg": (640, 480),
        "receipt_480x1200.jpg": (480, 1200),
        "chart_1024x768.png": (1024, 768),
        "frame_1920x1080.jpg": (1920, 1080),
        "screenshot_2560x1440.png": (2560, 1440),
        "camera_4000x3000.jpg": (4000, 3000),
        "scan_1240x1754.jpg": (1240, 1754),
        "icon_20x20.png": (20, 20),
        "banner_6000x20.png": (6000, 20),
    }
    for i, (name, (w, h)) in enumerate(specs.items()):
        im = picture(w, h, i)
        if name.endswith(".jpg"):
            im.save(IMAGES / name, quality=40)
        else:
            im.save(IMAGES / name, optimize=True)
    # A phone photo stored landscape with EXIF orientation 6: the processor sees it portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(1600, 1200, 42).save(IMAGES / "phone_exif_rotated.jpg", quality=40, exif=exif)
    data = (IMAGES / "street_640x480.jpg").read_bytes()
    (IMAGES / "cut_download.jpg").write_bytes(data[: len(data) // 2])
    (IMAGES / "empty.jpg").write_bytes(b"")
    (IMAGES / "not_an_image.jpg").write_text("<html>403 Forbidden</html>\n")

    long_question = " ".join(["Read every line of the attached report and summarise the findings."] * 420)
    long_answer = " ".join(["The receipt lists groceries, household items and a discount."] * 330)

    def sample(sid: str, turns: list[tuple[str, str]], images: list[str]) -> dict:
        msgs = [{"role": role, "content": text} for role, text in turns]
        return {"id": sid, "messages": msgs, "images": [f"images/{p}" for p in images]}

    rows = [
        sample("ok-street", [("user", "<image>What is happening in this street?"),
                             ("assistant", "Cars wait at a red light while people cross.")], ["street_640x480.jpg"]),
        sample("ok-receipt", [("user", "<image>What is the total on this receipt?"),
                              ("assistant", "The total is 23.40.")], ["receipt_480x1200.jpg"]),
        sample("ok-chart", [("user", "<image>Which bar is the tallest?"), ("assistant", "The third one.")],
               ["chart_1024x768.png"]),
        sample("ok-phone", [("user", "<image>Is this photo portrait or landscape?"),
                            ("assistant", "Portrait: the camera was held upright.")], ["phone_exif_rotated.jpg"]),
        sample("ok-two-turns", [("user", "<image>Describe the chart."), ("assistant", "Four bars, one per quarter."),
                                ("user", "Which quarter grew most?"), ("assistant", "The third quarter.")],
               ["chart_1024x768.png"]),
        sample("ok-frame", [("user", "<image>What is shown in this video frame?"),
                            ("assistant", "A living room with a television.")], ["frame_1920x1080.jpg"]),
        sample("multi-image-second-cut", [("user", "<image><image>What changed between these two frames?"),
                                          ("assistant", "The lamp was switched off.")],
               ["frame_1920x1080.jpg", "frame_1920x1080.jpg"]),
        sample("screenshot-cut", [("user", "<image>Transcribe the error dialog in this screenshot."),
                                  ("assistant", "It says: disk full.")], ["screenshot_2560x1440.png"]),
        sample("camera-12mp", [("user", "<image>How many people are in the picture?"), ("assistant", "Three.")],
               ["camera_4000x3000.jpg"]),
        sample("long-prompt", [("user", "<image>" + long_question), ("assistant", "Sales rose 4%.")],
               ["scan_1240x1754.jpg"]),
        sample("long-answer", [("user", "<image>List every item on this receipt."), ("assistant", long_answer)],
               ["receipt_480x1200.jpg"]),
        sample("tag-without-image", [("user", "<image>Compare with <image> please."), ("assistant", "They match.")],
               ["street_640x480.jpg"]),
        sample("truncated-jpeg", [("user", "<image>What is this?"), ("assistant", "A street.")], ["cut_download.jpg"]),
        sample("zero-byte", [("user", "<image>What is this?"), ("assistant", "A street.")], ["empty.jpg"]),
        sample("html-saved-as-jpg", [("user", "<image>What is this?"), ("assistant", "A street.")],
               ["not_an_image.jpg"]),
        sample("missing-file", [("user", "<image>What is this?"), ("assistant", "A bridge.")], ["bridge_0042.jpg"]),
        {"id": "outside-root", "messages": [{"role": "user", "content": "<image>What is this?"},
                                            {"role": "assistant", "content": "A key."}],
         "images": ["/mnt/datasets/coco/train2017/000000000139.jpg"]},
        sample("banner", [("user", "<image>Read the banner."), ("assistant", "Summer sale.")], ["banner_6000x20.png"]),
        sample("icon", [("user", "<image>Which app is this?"), ("assistant", "A calculator.")], ["icon_20x20.png"]),
        sample("no-answer", [("user", "<image>Describe the street.")], ["street_640x480.jpg"]),
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(12, '{"id": "broken-json", "messages": [{"role": "user", "content": "<image>hi"')
    lines.insert(14, json.dumps({"id": "wrong-types", "messages": "user: hello", "images": 7}))
    (OUT / "train.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
