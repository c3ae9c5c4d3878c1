"""The segment cache (``vlmcheck.tokencount``) against the tokenizers library tokenizing whole texts.

Oracle: ``tokenizers.Tokenizer.encode_batch`` of the whole text, on the real vocabularies of several
tokenizer kinds (Qwen2 byte-level BPE with NFC, Gemma 3's SentencePiece-style BPE, Llama-2's
Prepend/Replace normalizer, Pixtral's Tekken with and without BOS, SmolVLM's Digits + ByteLevel, GLM-4.1V).
Every id and every offset must be the same, on adversarial text, on the first sighting of a stretch, on
the sighting that keeps it and on the hits after, and with a cache small enough to evict. Then whole
scans run with the cache and with ``VLMCHECK_SEGMENT_CACHE=0``, and every record must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from builders import image, write_jsonl
from gemma3_checkpoint import gemma3_checkpoint
from glm4v_checkpoint import glm4v_checkpoint
from idefics3_checkpoint import checkpoint as idefics3_checkpoint
from llava_checkpoint import llava_checkpoint
from pixtral_checkpoint import pixtral_checkpoint
from vlmcheck import scan
from vlmcheck.demo.checkpoints import qwen_checkpoint
from vlmcheck.model import load_model
from vlmcheck.options import ScanOptions
from vlmcheck.scan import build_scanner
from vlmcheck.tokencount import SegmentEncoder, text_encoder, why_not_segments

CHECKPOINTS = {
    "qwen2_vl": lambda: qwen_checkpoint("qwen2_vl"),
    "gemma3": gemma3_checkpoint,
    "llava": llava_checkpoint,
    "pixtral": lambda: pixtral_checkpoint("pixtral-12b"),
    "mistral3": lambda: pixtral_checkpoint("mistral-small-3.1"),
    "smolvlm": lambda: idefics3_checkpoint("smolvlm2-2.2b-instruct"),
    "glm4v": glm4v_checkpoint,
}

LONG = "The quick brown fox jumps over the lazy dog, again and again. " * 800


def _texts(specials: list[str]) -> list[str]:
    """Text around the tokenizer's own added tokens: whitespace and newlines on either side, unicode that
    normalizers change (a decomposed é, full-width letters), contractions and digits cut by a token, tokens
    back to back, a token's prefix that is not a token, and one very long stretch."""
    a, b, c = specials[0], specials[len(specials) // 2], specials[-1]
    plain = ["", " ", "  ", "\n", "\n\n", " \n ", "\t", "\r\n", "hello", " hello", "hello ", "\nhello\n",
             "e\u0301t\u00e9 caf\u00e9", "\uff21\uff22\uff23 \u2460", "\u4f60\u597d\uff0c\u4e16\u754c\u3002",
             "emoji \U0001f600\U0001f3fd zwj \U0001f468\u200d\U0001f469", "\u00a0nbsp\u00a0", "\u0645\u0631\u062d\u0628\u0627",
             "12345 678", "it's", "'s", "    indented code\n\tx = 1", "▁already▁spaced", "a" * 300]
    texts = list(plain)
    for p in plain[:14]:
        texts += [a + p, p + a, a + p + b, p + a + p, c + p + c + p + c, b + b + p + b + b]
    texts += [
        "it" + a + "'s", "12" + b + "34", " " + a + " " + b + " " + c + " ",
        a[:-1] + " " + a, a[:-1] + a + a[1:], "x" + a + a + a + "y",
        "\n\n" + a + "\n\n" + b + "\n\n", LONG, a + LONG + b + LONG[:1000] + c,
        "".join(specials[:50]), " ".join(specials[:50]), "\n".join(specials[:20]) + "\n",
    ]
    return texts


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    folder = CHECKPOINTS[request.param]()
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _specials(tokenizer: Tokenizer) -> list[str]:
    added = tokenizer.get_added_tokens_decoder()
    return [added[i].content for i in sorted(added)][:400]


def _same(expected: list[Any], got: list[Any]) -> None:
    for k, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert (g.ids, g.offsets) == (e.ids, e.offsets), f"text {k}"


def test_every_family_tokenizer_is_segment_safe(tokenizer: Tokenizer) -> None:
    assert why_not_segments(tokenizer) is None
    assert isinstance(text_encoder(tokenizer), SegmentEncoder)


@pytest.mark.parametrize("special", [True, False])
def test_ids_and_offsets_equal_whole_text(tokenizer: Tokenizer, special: bool) -> None:
    texts = _texts(_specials(tokenizer))
    expected = tokenizer.encode_batch(texts, add_special_tokens=special)
    encoder = SegmentEncoder(tokenizer)
    for _ in range(3):  # first sighting, kept on the second, taken from the cache on the third
        _same(expected, encoder.encode_batch(texts, add_special_tokens=special))
    assert encoder._cache  # the cache was used
    small = SegmentEncoder(tokenizer, max_bytes=4096)  # evicts all the time
    for _ in range(3):
        _same(expected, small.encode_batch(texts[::-1], add_special_tokens=special)[::-1])
    assert small._bytes <= 4096


def test_known_text_with_new_stretches(tokenizer: Tokenizer) -> None:
    """Texts put together from kept stretches and new ones (tokenized in the same call)."""
    specials = _specials(tokenizer)
    texts = _texts(specials)
    encoder = SegmentEncoder(tokenizer)
    for _ in range(2):
        encoder.encode_batch(texts)
    a = specials[0]
    grown = [t + a + f" new {k}\n" + a + t[:7] for k, t in enumerate(texts)] + [a + " brand new " + t for t in texts]
    _same(tokenizer.encode_batch(grown), encoder.encode_batch(grown))


def test_one_text_at_a_time_equals_batches(tokenizer: Tokenizer) -> None:
    texts = _texts(_specials(tokenizer))
    encoder = SegmentEncoder(tokenizer)
    for text in texts * 2:
        _same(tokenizer.encode_batch([text]), encoder.encode_batch([text]))


def test_unrepeated_data_leaves_the_cache_alone_then_tries_it_again(tokenizer: Tokenizer) -> None:
    """Data that repeats nothing skips the cache after a while (it costs more than it saves there); data that
    repeats later is put together from it again; every text's ids and offsets are the whole text's throughout."""
    from vlmcheck import tokencount

    a = _specials(tokenizer)[0]
    unique = [f"{a}user\nquestion {k} about picture {k * 7}{a}answer {k}\n" for k in range(tokencount._JUDGED)]
    system = "You are a careful assistant. " * 20
    repeated = [f"{a}{system}{a}user\nq {k % 3}{a}" for k in range(512)]
    encoder = SegmentEncoder(tokenizer)
    for start in range(0, len(unique), 512):
        _same(tokenizer.encode_batch(unique[start:start + 512]), encoder.encode_batch(unique[start:start + 512]))
    assert encoder._skip == tokencount._SKIPPED  # nothing was put together: the next calls skip the cache
    for _ in range(tokencount._SKIPPED):
        _same(tokenizer.encode_batch(repeated), encoder.encode_batch(repeated))
    assert encoder._skip == 0
    for _ in range(3):
        _same(tokenizer.encode_batch(repeated), encoder.encode_batch(repeated))
    assert encoder._cache and encoder._pieced  # tried again, and used


def test_lone_surrogate_raises_as_the_tokenizer_does(tokenizer: Tokenizer) -> None:
    bad = "a\ud800b"
    with pytest.raises(Exception) as whole:  # noqa: B017 (the library raises a bare Exception here)
        tokenizer.encode_batch([bad])
    with pytest.raises(type(whole.value)):
        SegmentEncoder(tokenizer).encode_batch(["fine", bad])


def test_unsafe_tokenizers_are_tokenized_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import AddedToken, pre_tokenizers

    base = Tokenizer.from_file(str(qwen_checkpoint("qwen2_vl") / "tokenizer.json"))
    stripping = Tokenizer.from_str(base.to_str())
    stripping.add_special_tokens([AddedToken("<strip>", lstrip=True, rstrip=True, special=True)])
    assert "strips whitespace" in str(why_not_segments(stripping))
    assert text_encoder(stripping) is stripping
    metaspace = Tokenizer.from_str(base.to_str())
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    assert "start of the whole text" in str(why_not_segments(metaspace))
    truncating = Tokenizer.from_str(base.to_str())
    truncating.enable_truncation(16)
    assert text_encoder(truncating) is truncating
    monkeypatch.setenv("VLMCHECK_SEGMENT_CACHE", "0")
    assert text_encoder(base) is base


# -- whole scans: every record identical with and without the cache -----------------------------

QUESTION = "  What is shown in this image?\n"


def _rows(image_name: str) -> list[dict[str, Any]]:
    """Rows whose stretches repeat (so the cache is hit), around images, with adversarial text."""
    answers = ["A red square.", " A red square. ", "\nA red square.\n", "e\u0301t\u00e9 \u4f60\u597d \U0001f600",
               "it's 12345", LONG, "   ", "x" * 2000, "Line one.\n\nLine two.\n"]
    rows: list[dict[str, Any]] = []
    for i in range(60):
        answer = answers[i % len(answers)]
        messages = [{"role": "user", "content": ("<image>" if i % 3 else "") + (QUESTION if i % 2 else " Describe.")},
                    {"role": "assistant", "content": answer}]
        if i % 4 == 0:
            messages += [{"role": "user", "content": "And again?  "}, {"role": "assistant", "content": answer}]
        row: dict[str, Any] = {"id": f"r{i}", "messages": messages, "images": [image_name] if i % 3 else []}
        if i % 5 == 0:
            row["system"] = "You are a careful assistant.\n"
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", ["qwen2_vl", "gemma3", "llava", "pixtral", "mistral3", "smolvlm"])
def test_scan_records_identical_with_and_without_cache(name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = CHECKPOINTS[name]()
    image(tmp_path / "img.png", 64, 48)
    data = write_jsonl(tmp_path / "data.jsonl", _rows("img.png"))
    out: dict[str, Any] = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("VLMCHECK_SEGMENT_CACHE", setting)
        spec = load_model(folder)
        scanner = build_scanner(data, model=spec, options=ScanOptions(max_length=300))
        assert isinstance(scanner.encoder, SegmentEncoder) == (setting == "1")
        records = tmp_path / f"records{setting}.jsonl"
        report = scan(data, model=spec, max_length=300, output=records)
        summary = report.to_dict()
        for key in ("seconds", "samples_per_second"):
            summary["summary"].pop(key)
        out[setting] = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()], summary
    assert len(out["1"][0]) == 60
    assert sum(r["tokens"] is not None for r in out["1"][0]) > 40
    assert out["1"][0] == out["0"][0]
    assert out["1"][1] == out["0"][1]  # the findings' messages and the summary too
