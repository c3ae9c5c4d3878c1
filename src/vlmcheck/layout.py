"""The token layout of one sample, and what each framework's truncation does to it.

A layout is computed on a *collapsed* text, where each image's placeholder run is written once:
the placeholder is a special token, so the tokenizer splits around it and ``n`` copies make exactly
``n`` tokens in the same place. Positions are then shifted arithmetically into the full sequence,
which is what makes scanning fast while staying exact.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from operator import itemgetter

TRUNCATIONS = ("right", "left", "llamafactory", "delete")
Range = tuple[int, int]  # [start, end) in full-sequence positions
_START, _END = itemgetter(0), itemgetter(1)  # of a token's (start, end) character offsets


@dataclass
class Layout:
    total: int  # full sequence length, as the processor's input_ids
    images: list[Range]  # each image's span: from its first placeholder run to the end of its last
    supervised: list[Range]  # assistant tokens (content and its end-of-turn token)
    turns: list[tuple[Range, Range]] = field(default_factory=list)  # (source, target) pairs
    # each image's placeholder runs (one for most families; tiles/rows/crops give several)
    runs: list[list[Range]] = field(default_factory=list)

    @property
    def supervised_tokens(self) -> int:
        return sum(e - s for s, e in self.supervised)

    @property
    def image_tokens(self) -> list[int]:
        """Placeholder tokens per image (the features the model must find for it)."""
        if self.runs:
            return [sum(e - s for s, e in runs) for runs in self.runs]
        return [e - s for s, e in self.images]


def overlap(a: Range, ranges: list[Range]) -> int:
    return sum(max(0, min(a[1], e) - max(a[0], s)) for s, e in ranges)


def _positions(ids: list[int], media: set[int]) -> list[int]:
    """The positions of ``media`` tokens in ``ids``, in order: ``list.index`` finds each in C, where a loop in
    Python would look at every token (a sample has a few media tokens among hundreds)."""
    out: list[int] = []
    for token in media:
        at = -1
        while True:
            try:
                at = ids.index(token, at + 1)
            except ValueError:
                break
            out.append(at)
    if len(media) > 1:
        out.sort()
    return out


def build_layout(
    ids: list[int],
    offsets: list[tuple[int, int]],
    *,
    image_token_id: int,
    image_runs: list[tuple[int, ...]],
    supervised_chars: list[Range],
    text: str | None = None,
    video_token_id: int | None = None,
) -> Layout:
    """``ids``/``offsets``: the tokenized collapsed text, where each run of placeholders is one
    token; ``image_runs``: each image's run lengths, in order (placeholders beyond them count as
    one-token images); ``supervised_chars``: character spans of assistant turns in the rendered
    text; ``text``: that text, to give each turn's response the whitespace tokens after it
    (LLaMA-Factory's response slot is ``{{content}}<|im_end|>\n``). With ``video_token_id``, video
    runs are placeholders too: ``image_runs`` then holds images and videos in text order."""
    media = {image_token_id} if video_token_id is None else {image_token_id, video_token_id}
    positions = _positions(ids, media)
    owner: list[int] = []  # which image each position belongs to
    lengths: list[int] = []
    for k, image in enumerate(image_runs):
        owner.extend([k] * len(image))
        lengths.extend(image)
    shifts: list[int] = []  # cumulative extra tokens after each placeholder
    extra = 0
    grouped: dict[int, list[Range]] = {}
    for j, pos in enumerate(positions):
        n = lengths[j] if j < len(lengths) else 1
        key = owner[j] if j < len(owner) else len(image_runs) + j
        start = pos + extra
        grouped.setdefault(key, []).append((start, start + n))
        extra += n - 1
        shifts.append(extra)
    runs = list(grouped.values())
    images = [(r[0][0], r[-1][1]) for r in runs]

    def full(i: int) -> int:
        # tokens before collapsed index i, plus the expansions of placeholders before it
        k = bisect_left(positions, i)
        return i + (shifts[k - 1] if k else 0)

    supervised: list[Range] = []
    targets: list[Range] = []
    for a, b in supervised_chars:
        # searched through the offsets by key: a list of every start and end would cost a pass over the tokens
        first = bisect_right(offsets, a, key=_END)  # first token ending after a
        last = bisect_left(offsets, b, key=_START)  # first token starting at/after b
        if first < last:
            supervised.append((full(first), full(last - 1) + 1))
            while (text is not None and last < len(ids) and ids[last] not in media
                   and not text[offsets[last][0]:offsets[last][1]].strip()):
                last += 1
            targets.append((supervised[-1][0], full(last - 1) + 1))
    total = len(ids) + extra
    turns: list[tuple[Range, Range]] = []
    cursor = 0
    for s, e in targets:
        turns.append(((cursor, s), (s, e)))
        cursor = e
    return Layout(total=total, images=images, supervised=supervised, turns=turns, runs=runs)


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory ``data/processor/processor_utils.py::infer_seqlen``: how a turn's budget is
    split between prompt (source) and response (target)."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def kept_ranges(layout: Layout, max_length: int, truncation: str) -> list[Range] | None:
    """Positions that survive truncation; None when the framework drops the sample instead."""
    total = layout.total
    if total <= max_length:
        return [(0, total)]
    if truncation == "right":
        return [(0, max_length)]
    if truncation == "left":
        return [(total - max_length, total)]
    if truncation == "delete":
        return None
    if truncation == "llamafactory":
        # supervised.py::_encode_supervised_example: turn pairs in order, each cut to its share of
        # what is left of cutoff_len; text after the last response is not encoded at all.
        kept: list[Range] = []
        used = 0
        for (s0, s1), (t0, t1) in layout.turns:
            if used >= max_length:
                break
            src, tgt = infer_seqlen(s1 - s0, t1 - t0, max_length - used)
            if src:
                kept.append((s0, s0 + src))
            if tgt:
                kept.append((t0, t0 + tgt))
            used += src + tgt
        return kept
    raise ValueError(f"unknown truncation {truncation!r}; use one of {TRUNCATIONS}")
