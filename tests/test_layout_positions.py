"""``build_layout`` finds media tokens and supervised spans by search (``list.index``, ``bisect`` by key) instead of
passes over every token: its layouts must be those of the plain definitions.

Oracle: each collapsed text is tokenized by the real Qwen2 tokenizer, the expanded sequence is written out token
by token (each placeholder repeated as many times as its image's run), and every span is read off it with linear
scans: an image is where its copies stand; a supervised span runs from the first token ending after the
assistant text's start to the last token starting before its end; its target takes the whitespace tokens after
it. Texts with images and videos in any order, adjacent, first and last, and none.
"""

from __future__ import annotations

import random
from pathlib import Path

from builders import tokenizer
from vlmcheck.layout import build_layout

IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"


def _oracle(ids: list[int], offsets: list[tuple[int, int]], media: set[int], runs: list[tuple[int, ...]],
            spans: list[tuple[int, int]], text: str) -> dict[str, object]:
    lengths = [n for image in runs for n in image]
    owners = [k for k, image in enumerate(runs) for _ in image]
    expanded: list[int] = []  # the collapsed index of each token of the full sequence
    grouped: dict[int, list[tuple[int, int]]] = {}
    j = 0
    for i, token in enumerate(ids):
        n = 1
        if token in media:
            n = lengths[j] if j < len(lengths) else 1
            owner = owners[j] if j < len(owners) else len(runs) + j
            grouped.setdefault(owner, []).append((len(expanded), len(expanded) + n))
            j += 1
        expanded += [i] * n
    supervised, turns, cursor = [], [], 0
    for a, b in spans:
        inside = [i for i, (s, e) in enumerate(offsets) if e > a and s < b]
        if not inside:
            continue
        first, last = inside[0], inside[-1]
        start, end = expanded.index(first), len(expanded) - expanded[::-1].index(last)
        supervised.append((start, end))
        after = last + 1
        while after < len(ids) and ids[after] not in media and not text[offsets[after][0]:offsets[after][1]].strip():
            after += 1
        target_end = len(expanded) - expanded[::-1].index(after - 1)
        turns.append(((cursor, start), (start, target_end)))
        cursor = target_end
    return {"total": len(expanded), "runs": list(grouped.values()), "supervised": supervised, "turns": turns}


def test_layouts_equal_the_plain_definitions(qwen2_vl_checkpoint: Path) -> None:
    tok = tokenizer(qwen2_vl_checkpoint)
    image_id, video_id = tok.token_to_id(IMAGE), tok.token_to_id(VIDEO)
    rng = random.Random(5)
    words = ["a", "cat", " ", "\n", "图片", "  ", "ok.", "<|im_end|>", "x" * 30]
    checked = 0
    for case in range(400):
        videos = case % 2 == 1
        pieces = [rng.choice([IMAGE, VIDEO] if videos else [IMAGE]) for _ in range(rng.randint(0, 4))]
        prompt = "".join(p + "".join(rng.choice(words) for _ in range(rng.randint(0, 3))) for p in pieces)
        answer = "".join(rng.choice(words[:-2]) for _ in range(rng.randint(1, 12))).strip() or "ok"
        text = (f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
                + rng.choice(["", " \n", "<|im_start|>user\nmore<|im_end|>\n"]))
        at = text.index("assistant\n") + len("assistant\n")
        spans = [(at, at + len(answer) + len("<|im_end|>"))]
        enc = tok.encode(text)
        media = {image_id, video_id} if videos else {image_id}
        placeholders = sum(t in media for t in enc.ids)
        runs = [tuple(rng.randint(1, 50) for _ in range(rng.choice([1, 1, 2]))) for _ in range(placeholders)]
        runs = runs[: rng.randint(max(0, placeholders - 1), placeholders)]  # sometimes one run short
        layout = build_layout(enc.ids, enc.offsets, image_token_id=image_id, image_runs=runs, supervised_chars=spans,
                              text=text, video_token_id=video_id if videos else None)
        want = _oracle(enc.ids, enc.offsets, media, runs, spans, text)
        got = {"total": layout.total, "runs": layout.runs, "supervised": layout.supervised, "turns": layout.turns}
        assert got == want, (text, runs)
        checked += bool(placeholders)
    assert checked > 300
