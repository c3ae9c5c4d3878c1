"""Truncation, worked out by hand.

Each expectation is computed here from first principles: the Qwen2-VL chat template's text written
out by hand, image sizes that are whole multiples of 28 px (a W x H image is (W/28) * (H/28)
tokens), the real tokenizer for the text, and each framework's truncation rule restated from its
source. vlmcheck's layout code is not used to compute any expected number."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import vlmcheck
from builders import image, records, spec, tokenizer

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE_PAD = "<|image_pad|>"
WORD = " hello"  # one token per repetition in the Qwen2 vocabulary (checked below)


@dataclass
class Expected:
    """The full sequence of one sample, as the processor builds it."""

    total: int
    images: list[tuple[int, int]]  # [start, end) of each <|image_pad|> run
    supervised: list[tuple[int, int]]  # assistant content and its <|im_end|>
    lf_pairs: list[tuple[int, int]]  # LLaMA-Factory (source, target) lengths per turn


def expect(checkpoint: Path, messages: list[tuple[str, str]], sizes: list[tuple[int, int]]) -> Expected:
    """``messages``: (role, text with <image> tags); ``sizes``: (W, H) of each image in order."""
    counts = iter([(w // 28) * (h // 28) for w, h in sizes])
    text, answers = SYSTEM, []
    for role, content in messages:
        text += f"<|im_start|>{role}\n"
        for k, piece in enumerate(content.split("<image>")):
            if k:
                text += "<|vision_start|>" + IMAGE_PAD * next(counts) + "<|vision_end|>"
            text += piece
        if role == "assistant":
            answers.append((len(text) - len(content), len(text) + len("<|im_end|>")))
        text += "<|im_end|>\n"
    enc = tokenizer(checkpoint).encode(text)
    pad = tokenizer(checkpoint).token_to_id(IMAGE_PAD)
    images, start = [], None
    for i, token in enumerate([*enc.ids, -1]):
        if token == pad and start is None:
            start = i
        elif token != pad and start is not None:
            images.append((start, i))
            start = None
    supervised = [(enc.char_to_token(a), enc.char_to_token(b - 1) + 1) for a, b in answers]
    # LLaMA-Factory's qwen2_vl template: the response is "{{content}}<|im_end|>\n"; the prompt is
    # everything since the previous response.
    pairs, cursor = [], 0
    for s, e in supervised:
        pairs.append((s - cursor, e + 1 - s))
        cursor = e + 1
    return Expected(total=len(enc.ids), images=images, supervised=supervised, lf_pairs=pairs)


def write(tmp_path: Path, messages: list[tuple[str, str]], sizes: list[tuple[int, int]], id_: str = "s") -> Path:
    names = []
    for k, (w, h) in enumerate(sizes):
        names.append(f"img/{id_}_{k}_{w}x{h}.png")
        if not (tmp_path / names[-1]).exists():
            image(tmp_path / names[-1], w, h)
    row = {"id": id_, "messages": [{"role": r, "content": c} for r, c in messages], "images": names}
    path = tmp_path / f"{id_}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def scan_one(path: Path, checkpoint: Path, **options: Any) -> tuple[dict[str, Any], list[vlmcheck.Finding]]:
    report = vlmcheck.scan(path, model=spec(checkpoint), **options)
    (record,) = records(path, model=checkpoint, **options)
    return record, report.findings


def test_one_token_per_word(qwen2_vl_checkpoint: Path) -> None:
    assert len(tokenizer(qwen2_vl_checkpoint).encode(WORD * 37).ids) == 37


# -- right: transformers processors, TRL -------------------------------------------------------------
TWO_IMAGES = [("user", "<image><image>What changed between these two?"), ("assistant", "The sky got darker.")]
SIZES = [(280, 280), (560, 560)]  # 100 and 400 tokens


def test_right_cut_through_the_second_image(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    exp = expect(qwen2_vl_checkpoint, TWO_IMAGES, SIZES)
    (s1, e1), (s2, e2) = exp.images
    assert (e1 - s1, e2 - s2) == (100, 400)
    assert s2 == e1 + 2  # <|vision_end|><|vision_start|> between the runs
    max_length = s2 + 150  # 150 of image 2's 400 tokens survive
    record, found = scan_one(write(tmp_path, TWO_IMAGES, SIZES), qwen2_vl_checkpoint, max_length=max_length)
    assert (record["tokens"], record["image_tokens"]) == (exp.total, [100, 400])
    assert record["findings"] == ["VC201", "VC202"]  # the cut also falls before the answer
    cut = found[0]
    assert {k: cut.data[k] for k in ("image", "image_tokens", "kept", "tokens", "max_length")} == {
        "image": 2, "image_tokens": 400, "kept": 150, "tokens": exp.total, "max_length": max_length}
    assert cut.message == (f"image 2 of 2 needs 400 tokens, only 150 survive truncation at "
                           f"max_length={max_length:,} (right); the sample is {exp.total:,} tokens")
    assert cut.fix.startswith(f"raise max_length to {exp.total:,}")


def test_right_cut_exactly_at_an_image_boundary_is_no_cut(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    exp = expect(qwen2_vl_checkpoint, TWO_IMAGES, SIZES)
    path = write(tmp_path, TWO_IMAGES, SIZES)
    end2 = exp.images[1][1]
    assert scan_one(path, qwen2_vl_checkpoint, max_length=end2)[0]["findings"] == ["VC202"]
    assert scan_one(path, qwen2_vl_checkpoint, max_length=end2 - 1)[0]["findings"] == ["VC201", "VC202"]
    assert scan_one(path, qwen2_vl_checkpoint, max_length=exp.total)[0]["findings"] == []


def test_every_supervised_token_cut(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    messages = [("user", "<image>Read every word:" + WORD * 300), ("assistant", "Done.")]
    exp = expect(qwen2_vl_checkpoint, messages, [(280, 280)])
    (sup_start, sup_end), = exp.supervised
    max_length = exp.images[0][1] + 100  # in the prompt's words: the image is whole, the answer gone
    record, found = scan_one(write(tmp_path, messages, [(280, 280)]), qwen2_vl_checkpoint, max_length=max_length)
    assert record["findings"] == ["VC202"]
    assert record["supervised_tokens"] == sup_end - sup_start == 3  # "Done", "." and <|im_end|>
    assert found[0].data == {"supervised": 3, "tokens": exp.total, "max_length": max_length}


def test_a_cut_in_text_only(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    messages = [("user", "<image>Describe it at length."), ("assistant", "It is" + WORD * 200)]
    exp = expect(qwen2_vl_checkpoint, messages, [(280, 280)])
    (sup_start, sup_end), = exp.supervised
    max_length = sup_start + 50  # 50 answer tokens kept
    record, found = scan_one(write(tmp_path, messages, [(280, 280)]), qwen2_vl_checkpoint, max_length=max_length)
    assert record["findings"] == ["VC203"]
    lost = sup_end - max_length
    assert found[0].data == {"tokens": exp.total, "max_length": max_length, "supervised_lost": lost}
    assert found[0].message == (f"{exp.total:,} tokens > max_length={max_length:,}: {exp.total - max_length:,} "
                                f"text tokens cut, {lost:,} of {sup_end - sup_start:,} supervised tokens lost")


# -- left and delete: ms-swift's truncation_strategy ------------------------------------------------
def test_left_truncation_cuts_the_first_image(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    exp = expect(qwen2_vl_checkpoint, TWO_IMAGES, SIZES)
    (s1, e1), _ = exp.images
    max_length = exp.total - (s1 + 40)  # the first s1 + 40 tokens go: 60 of image 1's 100 remain
    path = write(tmp_path, TWO_IMAGES, SIZES)
    record, found = scan_one(path, qwen2_vl_checkpoint, max_length=max_length, truncation="left")
    assert record["findings"] == ["VC201"]  # the answer is at the end: kept
    assert (found[0].data["image"], found[0].data["kept"]) == (1, 60)
    # the same limit cut from the right keeps image 1 and cuts through image 2 (and the answer)
    right, found = scan_one(path, qwen2_vl_checkpoint, max_length=max_length)
    assert right["findings"] == ["VC201", "VC202"]
    s2 = exp.images[1][0]
    assert (found[0].data["image"], found[0].data["kept"]) == (2, max_length - s2)


def test_delete_drops_the_sample(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    exp = expect(qwen2_vl_checkpoint, TWO_IMAGES, SIZES)
    path = write(tmp_path, TWO_IMAGES, SIZES)
    record, found = scan_one(path, qwen2_vl_checkpoint, max_length=exp.total - 1, truncation="delete")
    assert record["findings"] == ["VC204"]
    assert found[0].data == {"tokens": exp.total, "max_length": exp.total - 1}
    assert scan_one(path, qwen2_vl_checkpoint, max_length=exp.total, truncation="delete")[0]["findings"] == []


# -- LLaMA-Factory: cutoff_len split between prompt and response, turn by turn ----------------------
def lf_infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory data/processor/processor_utils.py::infer_seqlen, restated."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def test_llamafactory_split_cuts_the_image_where_a_right_cut_would_not(tmp_path: Path,
                                                                      qwen2_vl_checkpoint: Path) -> None:
    messages = [("user", "<image>Transcribe the page."), ("assistant", "Page:" + WORD * 600)]
    sizes = [(560, 560)]
    exp = expect(qwen2_vl_checkpoint, messages, sizes)
    (source, target), = exp.lf_pairs
    (img_start, img_end), = exp.images
    cutoff = source + 200  # a right cut keeps the whole prompt (and image) and 200 answer tokens
    assert source < cutoff < exp.total

    # Worked by hand: both halves are over cutoff/2, so the response gets its proportional share
    # int(cutoff * target / (source + target)) and the prompt keeps what is left of cutoff.
    assert target * 2 >= cutoff and source * 2 >= cutoff
    share = int(cutoff * target / (source + target))
    assert lf_infer_seqlen(source, target, cutoff) == (cutoff - share, share)
    kept_image = min(cutoff - share, img_end) - img_start
    assert 0 < kept_image < 400  # LLaMA-Factory keeps a prompt prefix that ends inside the image

    path = write(tmp_path, messages, sizes)
    right, _ = scan_one(path, qwen2_vl_checkpoint, max_length=cutoff)
    assert right["findings"] == ["VC203"]
    record, found = scan_one(path, qwen2_vl_checkpoint, max_length=cutoff, truncation="llamafactory")
    assert record["findings"] == ["VC201"]
    assert (found[0].data["image"], found[0].data["kept"]) == (1, kept_image)


def test_llamafactory_second_turn(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """The image is in the second prompt: turn 1 is kept whole, turn 2 splits what is left."""
    messages = [("user", "Hello."), ("assistant", "Hi! Send the picture."),
                ("user", "<image>Here it is. What is it?"), ("assistant", "A" + WORD * 400)]
    sizes = [(560, 560)]
    exp = expect(qwen2_vl_checkpoint, messages, sizes)
    (src1, tgt1), (src2, tgt2) = exp.lf_pairs
    (img_start, img_end), = exp.images
    cutoff = src1 + tgt1 + src2 + 100
    left = cutoff - (src1 + tgt1)
    assert lf_infer_seqlen(src1, tgt1, cutoff) == (src1, tgt1)  # tgt1 * 2 < cutoff: all of turn 1
    new_src2, new_tgt2 = lf_infer_seqlen(src2, tgt2, left)
    assert src2 * 2 >= left and tgt2 * 2 >= left
    assert (new_src2, new_tgt2) == (left - int(left * tgt2 / (src2 + tgt2)), int(left * tgt2 / (src2 + tgt2)))
    kept_image = min(src1 + tgt1 + new_src2, img_end) - img_start
    assert 0 < kept_image < 400

    path = write(tmp_path, messages, sizes)
    record, found = scan_one(path, qwen2_vl_checkpoint, max_length=cutoff, truncation="llamafactory")
    assert record["findings"] == ["VC201"]
    assert (found[0].data["image"], found[0].data["kept"]) == (1, kept_image)


# -- the summary's recommendations ---------------------------------------------------------------------
def keep_whole(lengths: list[int], fraction: float) -> int:
    """The smallest max_length under which at least ``fraction`` of the samples are not cut."""
    need = math.ceil(fraction * len(lengths))
    return sorted(lengths)[need - 1]


def test_recommended_max_length(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    # 1,000 text-only samples: 990 short (varied), 9 medium, 1 long.
    words = [i % 50 for i in range(990)] + [300 + i for i in range(9)] + [2000]
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "Say it."},
                                         {"role": "assistant", "content": "Ok" + WORD * n}]}
            for i, n in enumerate(words)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [expect(qwen2_vl_checkpoint, [("user", "Say it."), ("assistant", "Ok" + WORD * n)], []).total
               for n in words]
    report = vlmcheck.scan(path, model=spec(qwen2_vl_checkpoint), max_length=512)
    assert report.summary["recommended_max_length"] == {
        "100%": max(lengths), "99.9%": keep_whole(lengths, 0.999), "99%": keep_whole(lengths, 0.99)}
    assert len(set(report.summary["recommended_max_length"].values())) == 3
    assert report.counts == {"VC203": 1}  # only the long one is over 512


def test_recommended_max_pixels_makes_the_fixable_samples_fit(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """Large images at max_length 1,024: the recommended max_pixels must make every sample whose
    text fits come out whole, and one 28 x 28 step more must not."""
    max_length = 1024
    cases = {"photo": (1400, 1400), "wide": (2800, 1400), "tall": (840, 2240), "small": (280, 280)}
    rows = []
    for id_, (w, h) in cases.items():
        image(tmp_path / f"{id_}.png", w, h)
        rows.append({"id": id_, "messages": [{"role": "user", "content": "<image>What is it?"},
                                             {"role": "assistant", "content": "A picture."}],
                     "images": [f"{id_}.png"]})
    image(tmp_path / "tiny.png", 56, 56)
    rows.append({"id": "long-text", "messages": [{"role": "user", "content": "<image>" + WORD * 1100},
                                                 {"role": "assistant", "content": "Yes."}],
                 "images": ["tiny.png"]})
    path = tmp_path / "pixels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    report = vlmcheck.scan(path, model=spec(qwen2_vl_checkpoint), max_length=max_length)
    assert report.counts["VC201"] == 3  # photo 2,500, wide 5,000, tall 2,400 image tokens
    pixels = report.summary["recommended_max_pixels"]
    assert pixels["unfixable_samples"] == 1  # long-text: its text alone is over the limit
    budget = pixels["100%"]
    assert budget % (28 * 28) == 0 and pixels["99.9%"] == pixels["99%"] == budget

    fixed = {r["id"]: r for r in records(path, model=qwen2_vl_checkpoint, max_length=max_length,
                                          max_pixels=budget, out=tmp_path / "fixed.jsonl")}
    for id_ in cases:
        assert fixed[id_]["findings"] == [] and fixed[id_]["tokens"] <= max_length
    assert fixed["long-text"]["findings"] == ["VC202"]
    # the recommendation is the largest such budget: one step more and some sample is over again
    over = records(path, model=qwen2_vl_checkpoint, max_length=max_length, max_pixels=budget + 28 * 28,
                   out=tmp_path / "over.jsonl")
    assert any(r["tokens"] > max_length for r in over if r["id"] in cases)


@pytest.mark.parametrize("resize", ["prescale", "qwen-vl-utils"])
def test_recommended_max_pixels_under_other_resize_modes(resize: str, tmp_path: Path,
                                                         qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "photo.png", 1400, 1400)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "photo", "messages": [
        {"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A picture."}],
        "images": ["photo.png"]}) + "\n")
    model = spec(qwen2_vl_checkpoint, resize=resize)
    budget = vlmcheck.scan(path, model=model, max_length=1024).summary["recommended_max_pixels"]["100%"]
    (row,) = records(path, model=qwen2_vl_checkpoint, max_length=1024, max_pixels=budget, resize=resize)
    assert row["findings"] == [] and row["tokens"] <= 1024


def test_pixel_options_with_a_loaded_model_are_a_usage_error(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    # a ModelSpec already holds its processor settings: silently ignoring max_pixels would mislead
    path = write(tmp_path, TWO_IMAGES, SIZES)
    with pytest.raises(vlmcheck.UsageError, match="max_pixels cannot change a loaded ModelSpec"):
        vlmcheck.scan(path, model=spec(qwen2_vl_checkpoint), max_pixels=200_704)
    with pytest.raises(vlmcheck.UsageError, match="resize cannot change a loaded ModelSpec"):
        vlmcheck.scan(path, model=spec(qwen2_vl_checkpoint), resize="prescale")
