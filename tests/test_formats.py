"""The same conversation, written in every layout and file type users train from, must scan to the
same token counts: the format changes how a row is read, never what the processor sees.

The reference count is worked out here from the rendered Qwen2-VL text (written by hand) and the
real tokenizer, not taken from vlmcheck."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
from datasets import Dataset, DatasetDict, Image, List

import vlmcheck
from builders import by_id, image, records, spec, tokenizer, write_json, write_jsonl
from vlmcheck.data.formats import detect_format

datasets.disable_progress_bars()

# A 280 x 224 image is 10 x 8 merged 28-px patches under Qwen2-VL's defaults (no resize needed).
WIDTH, HEIGHT = 280, 224
IMAGE_TOKENS = (WIDTH // 28) * (HEIGHT // 28)
PROMPT, ANSWER, FOLLOW_UP, ANSWER_2 = "Describe this picture.", "A red square.", "And its colour?", "Red."
REL = "img/red.png"


def expected_tokens(checkpoint: Path) -> int:
    """The Qwen2-VL chat template's output for this conversation, expanded as the processor does."""
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * IMAGE_TOKENS}<|vision_end|>{PROMPT}<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
        f"<|im_start|>user\n{FOLLOW_UP}<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER_2}<|im_end|>\n"
    )
    return len(tokenizer(checkpoint).encode(text).ids)


def png_bytes(folder: Path) -> bytes:
    return image(folder / "bytes-src" / "red.png", WIDTH, HEIGHT).read_bytes()


def tagged(role_key: str = "role", text_key: str = "content", user: str = "user",
           assistant: str = "assistant") -> list[dict[str, str]]:
    return [
        {role_key: user, text_key: "<image>" + PROMPT},
        {role_key: assistant, text_key: ANSWER},
        {role_key: user, text_key: FOLLOW_UP},
        {role_key: assistant, text_key: ANSWER_2},
    ]


def typed(image_part: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [image_part, {"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
        {"role": "user", "content": FOLLOW_UP},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER_2}]},
    ]


# Each writer puts one row with id "s" in `folder` and returns (dataset path, scan options, format).
def llava(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    row = {"id": "s", "image": REL, "conversations": tagged("from", "value", "human", "gpt")}
    return write_json(folder / "llava.json", [row]), {}, "llava"


def sharegpt_messages(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    return write_jsonl(folder / "d.jsonl", [{"id": "s", "messages": tagged(), "images": [REL]}]), {}, "sharegpt"


def sharegpt_conversations(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    row = {"id": "s", "conversations": tagged("from", "value", "human", "gpt"), "images": [REL]}
    return write_jsonl(folder / "d.jsonl", [row]), {}, "sharegpt"


def trl_typed(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    row = {"id": "s", "messages": typed({"type": "image"}), "images": [REL]}
    return write_jsonl(folder / "d.jsonl", [row]), {}, "messages"


def openai_path(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    row = {"id": "s", "messages": typed({"type": "image_url", "image_url": {"url": REL}})}
    return write_jsonl(folder / "d.jsonl", [row]), {}, "openai"


def openai_data_url(folder: Path) -> tuple[Path, dict[str, Any], str]:
    url = "data:image/png;base64," + base64.b64encode(png_bytes(folder)).decode()
    row = {"id": "s", "messages": typed({"type": "image_url", "image_url": {"url": url}})}
    return write_jsonl(folder / "d.jsonl", [row]), {}, "openai"


def json_array(folder: Path) -> tuple[Path, dict[str, Any], str]:
    image(folder / REL, WIDTH, HEIGHT)
    return write_json(folder / "d.json", [{"id": "s", "messages": tagged(), "images": [REL]}]), {}, "sharegpt"


def parquet_images_bytes(folder: Path) -> tuple[Path, dict[str, Any], str]:
    """HF `datasets` image struct with the bytes embedded (what push_to_hub writes)."""
    data = png_bytes(folder)
    ds = Dataset.from_list([{"id": "s", "messages": tagged(), "images": [{"bytes": data, "path": "red.png"}]}])
    ds = ds.cast_column("images", List(Image()))
    ds.to_parquet(str(folder / "d.parquet"))
    return folder / "d.parquet", {}, "sharegpt"


def parquet_image_path(folder: Path) -> tuple[Path, dict[str, Any], str]:
    """A single `image` column cast from paths: the struct keeps only the (relative) path."""
    image(folder / REL, WIDTH, HEIGHT)
    ds = Dataset.from_list([{"id": "s", "image": REL, "conversations": tagged("from", "value", "human", "gpt")}])
    with contextlib.chdir(folder):  # `datasets` sizes relative paths from the current directory
        ds.cast_column("image", Image()).to_parquet("d.parquet")
    return folder / "d.parquet", {}, "llava"


def saved_to_disk(folder: Path) -> tuple[Path, dict[str, Any], str]:
    data = png_bytes(folder)
    ds = Dataset.from_list([{"id": "s", "messages": tagged(), "images": [{"bytes": data, "path": None}]}])
    ds.cast_column("images", List(Image())).save_to_disk(str(folder / "saved"))
    return folder / "saved", {}, "sharegpt"


def dataset_dict_split(folder: Path) -> tuple[Path, dict[str, Any], str]:
    """A DatasetDict folder: the conversation is in `validation`; `train` holds another row."""
    data = png_bytes(folder)
    features_row = {"id": "s", "messages": tagged(), "images": [{"bytes": data, "path": None}]}
    other = {"id": "other", "messages": tagged()[1:2], "images": []}
    dd = DatasetDict({
        "train": Dataset.from_list([other, other]).cast_column("images", List(Image())),
        "validation": Dataset.from_list([features_row]).cast_column("images", List(Image())),
    })
    dd.save_to_disk(str(folder / "dict"))
    return folder / "dict", {"split": "validation"}, "sharegpt"


WRITERS: list[Callable[[Path], tuple[Path, dict[str, Any], str]]] = [
    llava, sharegpt_messages, sharegpt_conversations, trl_typed, openai_path, openai_data_url, json_array,
    parquet_images_bytes, parquet_image_path, saved_to_disk, dataset_dict_split,
]


@pytest.mark.parametrize("writer", WRITERS, ids=[w.__name__ for w in WRITERS])
def test_every_format_gives_the_same_counts(writer, tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset, options, _ = writer(tmp_path)
    (row,) = records(dataset, model=qwen2_vl_checkpoint, out=tmp_path / "out.jsonl", max_length=4096, **options)
    assert row == {
        "index": 0, "id": "s", "tokens": expected_tokens(qwen2_vl_checkpoint), "image_tokens": [IMAGE_TOKENS],
        "supervised_tokens": row["supervised_tokens"], "findings": [],
    }
    # "A red square.<|im_end|>" and "Red.<|im_end|>": the assistant turns and their end-of-turn token
    assert row["supervised_tokens"] > 4


def _first_row(dataset: Path) -> Any:
    from vlmcheck.data.readers import iter_rows

    return next(iter(iter_rows(dataset)))


@pytest.mark.parametrize("writer", [llava, sharegpt_messages, sharegpt_conversations, trl_typed, openai_path,
                                    openai_data_url, parquet_images_bytes, parquet_image_path],
                         ids=lambda w: w.__name__)
def test_format_detection(writer, tmp_path: Path) -> None:
    dataset, _, name = writer(tmp_path)
    assert detect_format(_first_row(dataset)) == name


def test_detection_rejects_rows_without_a_conversation() -> None:
    assert detect_format({"text": "hello"}) is None
    assert detect_format(["not", "a", "row"]) is None
    assert detect_format({"messages": []}) is None


@pytest.mark.parametrize("forced", ["sharegpt", "messages"])
def test_forcing_a_compatible_format_keeps_the_counts(forced: str, tmp_path: Path,
                                                      qwen2_vl_checkpoint: Path) -> None:
    # `messages` reads `<image>` tags in string content too (TRL datasets converted from ShareGPT).
    dataset, _, _ = sharegpt_messages(tmp_path)
    (row,) = records(dataset, model=qwen2_vl_checkpoint, format=forced)
    assert (row["tokens"], row["image_tokens"], row["findings"]) == (
        expected_tokens(qwen2_vl_checkpoint), [IMAGE_TOKENS], [])


def test_forcing_the_wrong_format_is_a_malformed_row(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset, _, _ = trl_typed(tmp_path)  # typed content parts, read as ShareGPT's string content
    report = vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), format="llava")
    assert report.counts == {"VC001": 1}
    assert report.findings[0].message == "messages[0].content must be a string, got list"


def test_unknown_format_is_a_usage_error(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset, _, _ = sharegpt_messages(tmp_path)
    with pytest.raises(vlmcheck.UsageError, match="format must be one of llava, sharegpt, messages, openai"):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), format="alpaca")


def test_mixed_formats_in_one_file_are_detected_per_row(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / REL, WIDTH, HEIGHT)
    rows = [
        {"id": "a", "messages": tagged(), "images": [REL]},
        {"id": "b", "messages": typed({"type": "image"}), "images": [REL]},
        {"id": "c", "messages": typed({"type": "image_url", "image_url": {"url": REL}})},
    ]
    got = by_id(records(write_jsonl(tmp_path / "mixed.jsonl", rows), model=qwen2_vl_checkpoint))
    assert {k: (r["tokens"], r["image_tokens"]) for k, r in got.items()} == {
        k: (expected_tokens(qwen2_vl_checkpoint), [IMAGE_TOKENS]) for k in "abc"}


# -- image root ---------------------------------------------------------------------------------
def _split_layout(tmp_path: Path) -> Path:
    """The dataset in data/, its images in a sibling folder pics/ (paths relative to pics/)."""
    image(tmp_path / "pics" / REL, WIDTH, HEIGHT)
    return write_jsonl(tmp_path / "data" / "d.jsonl", [{"id": "s", "messages": tagged(), "images": [REL]}])


def test_image_paths_resolve_against_the_dataset_folder_by_default(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, _, _ = sharegpt_messages(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)  # not the current directory
    (row,) = records(dataset, model=qwen2_vl_checkpoint)
    assert row["image_tokens"] == [IMAGE_TOKENS]


def test_image_root_option(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset = _split_layout(tmp_path)
    report = vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint))
    assert report.counts == {"VC101": 1}
    assert str(tmp_path / "data" / REL) in report.findings[0].message

    (row,) = records(dataset, model=qwen2_vl_checkpoint, image_root=tmp_path / "pics")
    assert (row["tokens"], row["image_tokens"], row["findings"]) == (
        expected_tokens(qwen2_vl_checkpoint), [IMAGE_TOKENS], [])


def test_image_root_also_bounds_absolute_paths(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    inside = image(tmp_path / "pics" / REL, WIDTH, HEIGHT)
    dataset = write_jsonl(tmp_path / "data" / "d.jsonl",
                          [{"id": "s", "messages": tagged(), "images": [str(inside)]}])
    assert vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), confine=True).counts == {"VC104": 1}
    assert vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), image_root=tmp_path / "pics",
                         confine=True).counts == {}
    assert vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint)).counts == {}  # read by default


def test_the_split_option_picks_the_split(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset, _, _ = dataset_dict_split(tmp_path)
    assert vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint)).summary["samples"] == 2  # train by default
    with pytest.raises(vlmcheck.DatasetError, match=r"splits \['train', 'validation'\]; pick one with --split"):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), split="test")


def test_records_are_json_lines(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    dataset, _, _ = sharegpt_messages(tmp_path)
    out = tmp_path / "records.jsonl"
    vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["s"]


def test_a_json_array_saved_as_jsonl_is_read_as_its_rows(tmp_path: Path) -> None:
    # datasets' JSON loader reads such a file whole (its pandas fallback), as json.load does; a first line that is a
    # whole JSON value is a JSON Lines row (a list: not an object, a finding of its own)
    from vlmcheck.data.readers import iter_rows

    rows = [{"id": "a", "messages": tagged()}, {"id": "b", "messages": tagged()}]
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text(json.dumps(rows, indent=2))
    assert list(iter_rows(pretty)) == rows
    for count in (2, 200):  # json.dump on one line, shorter and longer than the 4 KiB vlmcheck looks at first
        one_line = tmp_path / f"one_line{count}.jsonl"
        one_line.write_text(json.dumps(rows * (count // 2)))
        assert list(iter_rows(one_line)) == rows * (count // 2)
    lines = tmp_path / "lines.jsonl"
    lines.write_text('["a list row"]\n' + json.dumps(rows[0]) + "\n")
    assert list(iter_rows(lines)) == [["a list row"], rows[0]]
