"""`vlmcheck repair` split and truncate-turns: cut only at turn boundaries, every image with the turn
that references it, every piece fitting whole, in every conversation format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vlmcheck
from builders import image, spec, write_json, write_jsonl
from vlmcheck.cli import main
from vlmcheck.data.formats import detect_format, to_conversation
from vlmcheck.errors import UsageError
from vlmcheck.findings import CATALOGUE, Severity
from vlmcheck.repairing import manifest_path, parse_on_overlong

MAX_LENGTH = 512
ERROR_CODES = {c for c, r in CATALOGUE.items() if r.severity >= Severity.ERROR}
TEXT = "lorem ipsum " * 100  # about 200 tokens: two such rounds with an image do not fit in 512


@pytest.fixture(scope="module")
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    image(tmp_path / "small.png", 280, 224)  # 80 tokens
    image(tmp_path / "big.png", 1400, 1120)  # 2,000 tokens
    return tmp_path


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest_path(out).read_text(encoding="utf-8").splitlines()]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_paired(row: dict[str, Any]) -> None:
    """Placeholders in the text and images given are the same number (nothing orphaned)."""
    conv = to_conversation(row, detect_format(row) or "sharegpt")
    assert conv.mismatch is None, conv.mismatch


def repair(data: Path, model: Any, **options: Any) -> tuple[Any, Path]:
    out = data.with_name("fixed" + data.suffix)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, **options)
    if report.rows_written:  # an output with no rows is not a dataset a scan passes
        assert not set(vlmcheck.scan(out, model=model, max_length=MAX_LENGTH).counts) & ERROR_CODES
    return report, out


def test_sharegpt_split_keeps_system_fields_and_pairs_images(folder: Path, model: Any) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "<image>" + TEXT}, {"from": "gpt", "value": "A square."},
            {"from": "human", "value": "Now these: <image><image>" + TEXT[:300]}, {"from": "gpt", "value": "Two."},
            {"from": "human", "value": "And this one? " + TEXT + "<image>"}, {"from": "gpt", "value": "One."},
        ],
        "system": "You look at pictures.",
        "images": ["small.png", "small.png", "small.png", "small.png"],
        "id": "conv-7",
        "meta": {"source": "web", "tags": ["a"]},
    }
    report, out = repair(write_json(folder / "data.json", [row]), model, on_overlong="split")
    assert report.counts["split"] == 1 and report.split_rows == 3
    (record,) = manifest(out)
    pieces = json.loads(out.read_text())
    assert [p["id"] for p in record["split_into"]] == ["conv-7#1", "conv-7#2", "conv-7#3"]
    assert [p["turns"] for p in record["split_into"]] == [[0, 1], [2, 3], [4, 5]]
    assert [p["images"] for p in record["split_into"]] == [[0], [1, 2], [3]]
    assert [p["output_index"] for p in record["split_into"]] == [0, 1, 2]
    for piece, meta in zip(pieces, record["split_into"]):
        assert list(piece) == list(row)  # same keys, same order
        assert piece["id"] == meta["id"] and piece["system"] == row["system"] and piece["meta"] == row["meta"]
        assert piece["conversations"] == [row["conversations"][i] for i in meta["turns"]]
        assert piece["images"] == [row["images"][k] for k in meta["images"]]
        assert_paired(piece)


def test_messages_with_inline_images_and_system_message(folder: Path, model: Any) -> None:
    def user(text: str, n: int) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": text},
                                            *({"type": "image", "image": "small.png"} for _ in range(n))]}

    def reply(text: str) -> dict[str, Any]:
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    system = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    row = {"messages": [system, user(TEXT, 1), reply("One."), user(TEXT, 2), reply("Two.")], "sample_id": 41}
    _, out = repair(write_jsonl(folder / "data.jsonl", [row]), model, on_overlong="split")
    (record,) = manifest(out)
    assert record["outcome"] == "split" and record["id"] == "41"
    # an integer id keeps its type (a column of mixed types breaks loaders); the manifest names the pieces
    assert [p["id"] for p in record["split_into"]] == ["41#1", "41#2"]
    pieces = rows_of(out)
    assert [p["sample_id"] for p in pieces] == [41, 41]
    assert [p["messages"] for p in pieces] == [[system, *row["messages"][1:3]], [system, *row["messages"][3:]]]
    assert [p["turns"] for p in record["split_into"]] == [[0, 1, 2], [0, 3, 4]]


def test_llava_row_without_its_image_loses_the_image_key(folder: Path, model: Any) -> None:
    row = {"id": "llava-1", "image": "small.png",
           "conversations": [{"from": "human", "value": TEXT + TEXT}, {"from": "gpt", "value": "Hello."},
                             {"from": "human", "value": TEXT + "<image>"}, {"from": "gpt", "value": "Red."}]}
    _, out = repair(write_jsonl(folder / "data.jsonl", [row]), model, on_overlong="split")
    first, second = rows_of(out)
    # LLaVA's loader reads a row without 'image' as text-only; an 'image' it does not reference would be loaded
    assert first == {"id": "llava-1#1", "conversations": row["conversations"][:2]}
    assert second == {**row, "id": "llava-1#2", "conversations": row["conversations"][2:]}


def test_rounds_are_packed_greedily_and_a_user_turn_without_reply_stays_with_its_round(
        folder: Path, model: Any) -> None:
    short = "lorem ipsum " * 40  # about 80 tokens: two rounds with their images fit together
    messages = []
    for k in range(5):
        messages += [{"role": "user", "content": short + "<image>"}, {"role": "assistant", "content": f"Answer {k}."}]
    messages += [{"role": "user", "content": "Anything else?"}]  # nothing to learn: it stays with round 5
    row = {"id": "five", "messages": messages, "images": ["small.png"] * 5}
    _, out = repair(write_jsonl(folder / "data.jsonl", [row]), model, on_overlong="split")
    (record,) = manifest(out)
    turns = [p["turns"] for p in record["split_into"]]
    assert [t for piece in turns for t in piece] == list(range(11))  # every turn once, in order
    assert turns[-1][-1] == 10 and all(len(piece) % 2 == 0 for piece in turns[:-1])
    assert len(turns) < 5  # rounds share pieces
    for piece in rows_of(out):
        assert_paired(piece)
        assert piece["messages"][0]["role"] == "user"


def test_truncate_turns_keeps_whole_images_and_a_supervised_turn(folder: Path, model: Any) -> None:
    row = {"id": "tail", "messages": [
        {"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "<image>And this?"}, {"role": "assistant", "content": "Also a square."},
        {"role": "user", "content": TEXT * 3 + "<image>"}, {"role": "assistant", "content": "ok"},
    ], "images": ["small.png", "small.png", "small.png"]}
    report, out = repair(write_jsonl(folder / "data.jsonl", [row]), model)
    assert report.changed_by == {"truncate-turns": 1}
    (record,) = manifest(out)
    assert record["outcome"] == "changed"
    assert "not cap-pixels: no pixel budget" in record["reason"] and "not split: round 3 of 3" in record["reason"]
    change = record["change"]
    assert (change["strategy"], change["kept_turns"], change["removed_turns"], change["removed_images"]) == (
        "truncate-turns", 4, [4, 5], [2])
    (new,) = rows_of(out)
    assert new == {**row, "messages": row["messages"][:4], "images": ["small.png", "small.png"]}
    assert change["tokens"] <= MAX_LENGTH


def test_on_overlong_order_decides(folder: Path, model: Any) -> None:
    # fixable by every strategy: two rounds, the second with a big image that fits once capped
    row = {"id": "both", "messages": [
        {"role": "user", "content": "<image>Small?"}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "<image>Big?"}, {"role": "assistant", "content": "Yes."},
    ], "images": ["small.png", "big.png"]}
    data = write_jsonl(folder / "data.jsonl", [row])
    outcomes = {}
    for order in ("cap-pixels,split", "split,cap-pixels", "split", "truncate-turns", "drop"):
        report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, dry_run=True, on_overlong=order)
        outcomes[order] = (report.counts, report.changed_by, report.split_capped)
    assert outcomes["cap-pixels,split"][1] == {"cap-pixels": 1}
    # split first: the small round keeps its image as it was, the big one alone is capped
    assert outcomes["split,cap-pixels"][0]["split"] == 1 and outcomes["split,cap-pixels"][1:] == ({}, 1)
    # without cap-pixels in the list, split never resizes: the big round does not fit alone
    assert outcomes["split"][0]["dropped"] == 1
    assert outcomes["truncate-turns"][1] == {"truncate-turns": 1}
    assert outcomes["drop"][0]["dropped"] == 1


def test_unfixable_is_dropped_with_every_reason(folder: Path, model: Any) -> None:
    row = {"id": "one", "messages": [{"role": "user", "content": TEXT * 3 + "<image>"},
                                     {"role": "assistant", "content": "ok"}], "images": ["small.png"]}
    report, out = repair(write_jsonl(folder / "data.jsonl", [row]), model)
    (record,) = manifest(out)
    assert report.counts["dropped"] == 1 and record["outcome"] == "dropped"
    for part in ("cap-pixels: no pixel budget", "split: one user/assistant round", "truncate-turns: one"):
        assert part in record["reason"]


def test_parse_on_overlong() -> None:
    assert parse_on_overlong("split") == ("split", "drop")
    assert parse_on_overlong(["truncate-turns", "cap-pixels"]) == ("truncate-turns", "cap-pixels", "drop")
    assert parse_on_overlong(" cap-pixels , drop ") == ("cap-pixels", "drop")
    for bad in ("resize", "", "drop,split", "split,split"):
        with pytest.raises(UsageError):
            parse_on_overlong(bad)


def test_cli_on_overlong(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    row = {"id": "both", "messages": [
        {"role": "user", "content": "<image>" + TEXT}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": TEXT + "<image>"}, {"role": "assistant", "content": "Yes."},
    ], "images": ["small.png", "big.png"]}
    data = write_jsonl(folder / "data.jsonl", [row])
    base = ["repair", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length", "2400", "--dry-run"]
    runner = CliRunner()
    split = runner.invoke(main, [*base, "--on-overlong", "split"], catch_exceptions=False)
    assert split.exit_code == 0 and "  split           1  (into 2 samples)\n" in split.output
    bad = runner.invoke(main, [*base, "--on-overlong", "resize"])
    assert bad.exit_code == 2 and "on_overlong takes a comma-separated list" in bad.output


def test_split_caps_a_round_too_long_alone(folder: Path, model: Any) -> None:
    # the text alone is over max_length (no pixel budget fits the whole sample), and round 2 with its
    # big image is over it alone: split cuts the rounds apart and caps round 2's image only
    row = {"id": "mixed", "messages": [
        {"role": "user", "content": "<image>" + TEXT}, {"role": "assistant", "content": "Small."},
        {"role": "user", "content": TEXT + "<image>"}, {"role": "assistant", "content": "Big."},
        {"role": "user", "content": "<image>" + TEXT}, {"role": "assistant", "content": "Small again."},
    ], "images": ["small.png", "big.png", "small.png"]}
    data = write_jsonl(folder / "data.jsonl", [row])
    report, out = repair(data, model)  # the default order; the output scans clean (in repair())
    assert report.counts["split"] == 1 and (report.split_rows, report.split_capped) == (3, 1)
    assert "(into 3 samples, 1 with capped images)" in report.render()
    (record,) = manifest(out)
    assert record["reason"].startswith("split (not cap-pixels: no pixel budget")
    assert record["change"] == {"strategy": "split", "rounds": 3, "then": "cap-pixels"}
    first, second, third = record["split_into"]
    assert "cap" not in first and "cap" not in third
    cap = second["cap"]
    (entry,) = cap["images"]
    assert entry["image"] == 1 and entry["from"] == "big.png"  # the input row's image index
    w, h = entry["resized"]
    assert w * h <= cap["max_pixels"] and w % 28 == 0 and h % 28 == 0
    pieces = rows_of(out)
    assert [p["images"] for p in pieces] == [["small.png"], [entry["to"]], ["small.png"]]
    assert (folder / entry["to"]).is_file() and entry["to"].startswith("fixed.images/")
    assert pieces[1]["messages"] == row["messages"][2:4]
    for piece in pieces:
        assert_paired(piece)
    again = folder / "again.jsonl"
    assert vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again).counts["kept"] == 3
    assert again.read_bytes() == out.read_bytes()


def test_split_records_a_pixel_cap_on_the_round_too_long_alone(folder: Path, model: Any) -> None:
    def user(text: str, name: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "image", "image": name}, {"type": "text", "text": text}]}

    row = {"id": "keyed", "messages": [user(TEXT, "small.png"), {"role": "assistant", "content": "Small."},
                                       user(TEXT, "big.png"), {"role": "assistant", "content": "Big."}]}
    data = write_jsonl(folder / "data.jsonl", [row])
    out = folder / "fixed.jsonl"
    # split first: the small image stays as it was (cap-pixels first would cap both images)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, pixel_cap_key="max_pixels",
                             on_overlong="split,cap-pixels")
    assert (report.counts["split"], report.split_capped) == (1, 1)
    (record,) = manifest(out)
    cap = record["split_into"][1]["cap"]
    assert cap["key"] == "max_pixels" and cap["placement"] == "image parts"
    first, second = rows_of(out)
    assert first["messages"] == row["messages"][:2]
    assert second["messages"][0]["content"][0] == {"type": "image", "image": "big.png", "max_pixels": cap["max_pixels"]}
    # counted at the recorded cap, every piece fits: repairing again keeps both, byte for byte
    again = folder / "again.jsonl"
    second_run = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again, pixel_cap_key="max_pixels")
    assert second_run.counts["kept"] == 2 and again.read_bytes() == out.read_bytes()
