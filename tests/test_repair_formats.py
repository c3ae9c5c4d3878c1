"""`vlmcheck repair` writes the format it reads: LLaVA JSON, ShareGPT / LLaMA-Factory, TRL messages,
OpenAI-style, Parquet with image structs and `save_to_disk` folders. Per format: kept rows come out
as they went in, changed and split rows scan clean, the input is untouched, and repairing the
output changes nothing; held rows go to a review file in the same format, which repairs once a
person has fixed it. Parquet and Arrow outputs are loaded back with the real `datasets`."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

import vlmcheck
from builders import image, spec, write_json, write_jsonl
from vlmcheck.cli import main
from vlmcheck.data.readers import iter_rows
from vlmcheck.errors import UsageError
from vlmcheck.findings import CATALOGUE, Severity
from vlmcheck.repairing import manifest_path, review_path

MAX_LENGTH = 512
ERROR_CODES = {c for c, r in CATALOGUE.items() if r.severity >= Severity.ERROR}
TEXT = "lorem ipsum " * 100  # about 200 tokens
FORMATS = ["llava", "sharegpt", "messages", "openai", "parquet", "arrow"]
# (user text, reply, images at the end of the user turn) per turn; image names; expected outcome
SAMPLES: dict[str, tuple[list[tuple[str, str, int]], list[str], str]] = {
    "good": ([("What is it?", "A square.", 1)], ["small.png"], "kept"),
    "big": ([("What is it?", "A big square.", 1)], ["big.png"], "changed"),
    "chat": ([(TEXT, "One.", 1), (TEXT, "Two.", 1), (TEXT, "Three.", 1)], ["small.png"] * 3, "split"),
    "bad": ([("Compare.", "Same.", 2)], ["small.png"], "dropped"),  # two placeholders, one image (VC002)
    "text": ([("Hi", "Hello", 0)], [], "kept"),
}


@pytest.fixture(scope="module")
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


def png(name: str) -> bytes:
    size = {"small.png": (280, 224), "big.png": (1400, 1120)}[name]
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def row(fmt: str, sid: str) -> dict[str, Any]:
    turns, images, _ = SAMPLES[sid]
    if fmt in ("llava", "sharegpt"):
        conv = []
        for text, reply, n in turns:
            conv += [{"from": "human", "value": text + "<image>" * n}, {"from": "gpt", "value": reply}]
        if fmt == "llava":  # LLaVA: 'image' (a path, or a list for several), 'id' first
            out: dict[str, Any] = {"id": sid}
            if images:
                out["image"] = images[0] if len(images) == 1 else images
            return {**out, "conversations": conv}
        return {"conversations": conv, "images": images, "system": "Look closely.", "id": sid}
    messages: list[dict[str, Any]] = []
    inline = iter(images)
    for text, reply, n in turns:
        if fmt == "openai":
            parts = [{"type": "image_url", "image_url": {"url": next(inline, "small.png")}} for _ in range(n)]
        else:
            parts = [{"type": "image", "text": None} for _ in range(n)]
        messages += [{"role": "user", "content": [{"type": "text", "text": text}, *parts]},
                     {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
    if fmt == "openai":
        if sid == "bad":  # inline parts always pair with their images: a missing file instead
            messages[0]["content"][2]["image_url"]["url"] = "missing.png"
        return {"id": sid, "messages": messages}
    if fmt == "messages":
        return {"id": sid, "messages": messages, "images": images}
    structs = [{"bytes": png(name), "path": name} for name in images]
    return {"id": sid, "messages": messages, "images": structs, "score": 0.5}


def write(folder: Path, fmt: str) -> Path:
    rows = [row(fmt, sid) for sid in SAMPLES]
    if fmt in ("llava", "sharegpt"):
        return write_json(folder / "data.json", rows)
    if fmt in ("messages", "openai"):
        return write_jsonl(folder / "data.jsonl", rows)
    from datasets import Dataset, Image, List

    ds = Dataset.from_list(rows).cast_column("images", List(Image()))
    if fmt == "parquet":
        ds.to_parquet(str(folder / "data.parquet"))
        return folder / "data.parquet"
    ds.save_to_disk(str(folder / "data"))
    return folder / "data"


def output_name(data: Path, name: str = "fixed") -> Path:
    return data.with_name(name + data.suffix)


def fingerprint(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def read(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The rows as a user's loader gives them: json for JSON, `datasets` for Parquet and Arrow."""
    if fmt in ("parquet", "arrow"):
        import datasets

        # in memory: no cache files written next to the data
        ds = (datasets.Dataset.from_parquet(str(path), keep_in_memory=True) if fmt == "parquet"
              else datasets.load_from_disk(str(path), keep_in_memory=True))
        ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
        return ds.to_list()
    return list(iter_rows(path))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    image(tmp_path / "small.png", 280, 224)  # 80 tokens
    image(tmp_path / "big.png", 1400, 1120)  # 2,000 tokens: cap-pixels
    return tmp_path


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt: str, folder: Path, model: Any) -> None:
    data = write(folder, fmt)
    before = fingerprint(data)
    out = output_name(data)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    assert report.counts == {"kept": 2, "changed": 1, "split": 1, "held": 0, "dropped": 1}, report.render()
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    assert [r["outcome"] for r in records] == [SAMPLES[sid][2] for sid in SAMPLES]
    inputs, outputs = read(data, fmt), read(out, fmt)
    assert len(outputs) == report.rows_written == 6  # good, big, chat x3, text
    for record, original in zip(records, inputs):
        if record["outcome"] == "kept":
            assert outputs[record["output_index"]] == original
        elif record["outcome"] == "changed":
            changed = outputs[record["output_index"]]
            assert list(changed) == list(original) and changed["id"] == original["id"]
            (entry,) = record["change"]["images"]
            if fmt in ("parquet", "arrow"):  # resized bytes in the struct, named after the new PNG
                (struct,) = changed["images"]
                assert entry["embedded"] and struct["path"] == entry["to"] and struct["path"].startswith("big-")
                assert Image.open(io.BytesIO(struct["bytes"])).size == tuple(entry["resized"])
        elif record["outcome"] == "split":
            pieces = [outputs[p["output_index"]] for p in record["split_into"]]
            assert [p["id"] for p in pieces] == ["chat#1", "chat#2", "chat#3"]
            assert all(list(p) == list(original) for p in pieces)
    # the output scans clean, and repairing it changes nothing
    assert not set(vlmcheck.scan(out, model=model, max_length=MAX_LENGTH).counts) & ERROR_CODES
    again = output_name(data, "again")
    second = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again)
    assert second.counts == {"kept": 6, "changed": 0, "split": 0, "held": 0, "dropped": 0}
    assert read(again, fmt) == outputs
    if fmt in ("llava", "sharegpt", "messages", "openai"):
        assert again.read_bytes() == out.read_bytes()
    assert fingerprint(data) == before


def write_rows(path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    """What a person fixing the review file by hand does: rows back in the file's format."""
    if fmt in ("llava", "sharegpt"):
        write_json(path, rows)
    elif fmt in ("messages", "openai"):
        write_jsonl(path, rows)
    else:
        from datasets import Dataset, List
        from datasets import Image as ImageFeature

        ds = Dataset.from_list(rows).cast_column("images", List(ImageFeature()))
        if fmt == "parquet":
            ds.to_parquet(str(path))
        else:
            ds.save_to_disk(str(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_held_rows_go_to_a_review_file_that_repairs_once_fixed(fmt: str, folder: Path, model: Any) -> None:
    data = write(folder, fmt)
    before = fingerprint(data)
    out = output_name(data)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, hold="broken")
    assert report.counts == {"kept": 2, "changed": 1, "split": 1, "held": 1, "dropped": 0}, report.render()
    review = review_path(out)
    assert report.review == str(review) and review.name == ("fixed.review" + data.suffix)
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    (held,) = [r for r in records if r["outcome"] == "held"]
    assert (held["id"], held["output_index"], held["review_index"]) == ("bad", None, 0)
    assert held["reason"].startswith("VC101" if fmt == "openai" else "VC002")
    (original,) = [r for r in read(data, fmt) if r["id"] == "bad"]
    (waiting,) = read(review, fmt)
    assert waiting == original  # unchanged, in the input's format (Parquet / Arrow: loaded by `datasets`)
    if fmt in ("parquet", "arrow"):
        assert read(out, fmt)[0].keys() == waiting.keys()
    assert len(read(out, fmt)) == 6 and not set(vlmcheck.scan(out, model=model, max_length=MAX_LENGTH).counts) & ERROR_CODES
    # a person fixes the held row: supplies the missing file, or the image its second placeholder names
    if fmt == "openai":
        image(folder / "missing.png", 280, 224)
    elif fmt == "llava":
        waiting["image"] = [waiting["image"], "small.png"]
    elif fmt in ("parquet", "arrow"):
        waiting["images"].append({"bytes": png("small.png"), "path": "small.png"})
    else:
        waiting["images"].append("small.png")
    fixed_review = folder / ("reviewed" + data.suffix)
    write_rows(fixed_review, fmt, [waiting])
    second = output_name(data, "second")
    again = vlmcheck.repair(fixed_review, model=model, max_length=MAX_LENGTH, output=second, hold="broken")
    assert again.counts == {"kept": 1, "changed": 0, "split": 0, "held": 0, "dropped": 0}, again.render()
    assert read(second, fmt) == read(fixed_review, fmt)
    assert list(iter_rows(review_path(second))) == []  # written, empty: nothing stale is left under the name
    assert not set(vlmcheck.scan(second, model=model, max_length=MAX_LENGTH).counts) & ERROR_CODES
    assert fingerprint(data) == before


def test_parquet_keeps_schema_metadata_and_codec(folder: Path, model: Any) -> None:
    import pyarrow.parquet as pq

    data = write(folder, "parquet")
    out = output_name(data)
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    source, written = pq.ParquetFile(data), pq.ParquetFile(out)
    assert written.schema_arrow.equals(source.schema_arrow, check_metadata=True)
    assert (written.metadata.row_group(0).column(0).compression
            == source.metadata.row_group(0).column(0).compression)


def test_save_to_disk_folder_loads_with_datasets(folder: Path, model: Any) -> None:
    import datasets

    data = write(folder, "arrow")
    out = folder / "fixed"
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    loaded = datasets.load_from_disk(str(out), keep_in_memory=True)
    original = datasets.load_from_disk(str(data), keep_in_memory=True)
    assert loaded.features == original.features and loaded.num_rows == 6
    sizes = [[im.size for im in r["images"]] for r in loaded]  # decoded by the Image feature
    assert sizes[0] == [(280, 224)] and sizes[1][0][0] < 1400
    # overwriting an existing output folder replaces it whole
    (out / "stale.txt").write_text("old")
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    assert not (out / "stale.txt").exists() and datasets.load_from_disk(str(out)).num_rows == 6


def test_pixel_cap_key_adds_a_nullable_column(folder: Path, model: Any) -> None:
    import datasets

    data = write(folder, "parquet")
    out = output_name(data)
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, pixel_cap_key="max_pixels")
    assert report.changed_by == {"cap-pixels": 1}
    ds = datasets.Dataset.from_parquet(str(out), keep_in_memory=True)
    assert ds.features["max_pixels"] == datasets.Value("int64")
    caps = dict(zip(ds["id"], ds["max_pixels"]))
    record = [json.loads(line) for line in manifest_path(out).read_text().splitlines()][1]
    assert caps == {"good": None, "big": record["change"]["max_pixels"], "chat#1": None, "chat#2": None,
                    "chat#3": None, "text": None}
    assert record["change"]["placement"] == "row"
    again = output_name(data, "again")
    second = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again, pixel_cap_key="max_pixels")
    assert second.counts["kept"] == 6 and read(again, "parquet") == read(out, "parquet")


def test_output_is_named_for_the_input_format(folder: Path, model: Any) -> None:
    data = write(folder, "parquet")
    with pytest.raises(UsageError, match="name it"):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=folder / "fixed.jsonl")
    with pytest.raises(UsageError, match="file name"):
        vlmcheck.repair(write(folder, "arrow"), model=model, max_length=MAX_LENGTH, output=folder / "fixed.parquet")


def test_dataset_dict_asks_for_one_split(folder: Path, model: Any) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([row("messages", "text")])}).save_to_disk(str(folder / "dd"))
    with pytest.raises(UsageError, match="repair one split"):
        vlmcheck.repair(folder / "dd", model=model, max_length=MAX_LENGTH, output=folder / "fixed")


def test_cli_writes_and_overwrites_a_save_to_disk_folder(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write(folder, "arrow")
    out = folder / "fixed"
    args = ["repair", str(data), "-m", str(qwen2_vl_checkpoint), "--max-length", str(MAX_LENGTH), "-o", str(out)]
    for _ in range(2):  # the second run replaces the folder the first wrote
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        # a row dropped (VC002): a warning, so exit 0 under the default --fail-on error
        assert result.exit_code == 0 and f"output:   {out} (6 samples)" in result.output, result.output
    assert len(read(out, "arrow")) == 6


def test_a_save_to_disk_output_never_replaces_a_folder_holding_the_input_or_other_files(
    folder: Path, model: Any
) -> None:
    """Replacing an output folder removes the old one: never when it holds the input, nor when it is not a
    save_to_disk dataset (a user's folder of other things)."""
    from datasets import Dataset, Image, List

    rows = [row("arrow", sid) for sid in SAMPLES]
    data = folder / "ds" / "train"
    Dataset.from_list(rows).cast_column("images", List(Image())).save_to_disk(str(data))
    (folder / "ds" / "notes.txt").write_text("mine")
    (folder / "other").mkdir()
    (folder / "other" / "notes.txt").write_text("mine too")
    before = fingerprint(folder)
    for out, says in ((folder / "ds", "holds the input"), (data / "fixed", "inside the input"),
                      (folder / "other", "not a save_to_disk dataset")):
        with pytest.raises(UsageError, match=says):
            vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
        assert fingerprint(folder) == before


def test_a_save_to_disk_review_folder_never_replaces_a_users_folder(folder: Path, model: Any) -> None:
    """``--hold`` publishes ``OUT.review`` by replacing a folder of that name: never one that is not a
    save_to_disk dataset."""
    from datasets import Dataset, Image, List

    rows = [row("arrow", sid) for sid in SAMPLES]
    data = folder / "ds"
    Dataset.from_list(rows).cast_column("images", List(Image())).save_to_disk(str(data))
    (folder / "fixed.review").mkdir()
    (folder / "fixed.review" / "notes.txt").write_text("mine")
    before = fingerprint(folder)
    with pytest.raises(UsageError, match="not a save_to_disk dataset"):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=folder / "fixed", hold="all")
    assert fingerprint(folder) == before


@pytest.mark.parametrize("compress", [".gz", ".zst"])
def test_a_compressed_json_lines_dataset_is_copied_as_its_text_not_its_compressed_bytes(
        compress: str, folder: Path, model: Any) -> None:
    """Kept rows are the input's lines, byte for byte, from the decompressed text (it once wrote slices of the
    compressed file at the text's offsets: binary garbage, reported as samples written)."""
    plain = write(folder, "messages")
    data = plain.with_name(plain.name + compress)
    if compress == ".gz":
        import gzip

        data.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        zstandard = pytest.importorskip("zstandard")
        data.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    out = folder / "fixed.jsonl"
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    lines = plain.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    written = out.read_bytes().splitlines(keepends=True)
    kept = [r for r in records if r["outcome"] == "kept"]
    assert len(kept) == report.counts["kept"] == 2
    assert all(written[r["output_index"]] == lines[r["index"]] for r in kept)


@pytest.mark.timeout(30)
def test_a_line_over_the_row_bound_is_dropped_unread_and_the_rest_repaired(folder: Path, model: Any) -> None:
    """A JSON Lines line of 100 GiB (sparse) is passed over unread by the reader and by repair's copy of the
    lines: dropped with its reason, the lines around it kept verbatim, in bounded time."""
    import os

    plain = write(folder, "messages")
    lines = plain.read_bytes().splitlines(keepends=True)
    data = folder / "huge.jsonl"
    with open(data, "wb") as f:
        f.write(lines[0] + b'{"messages": "')
        f.seek(100 << 30, os.SEEK_CUR)  # a sparse hole: NULs the file system does not store
        f.write(b'"}\n' + lines[4])
    out = folder / "fixed.jsonl"
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    assert report.counts["kept"] == 2 and report.counts["dropped"] == 1, report.render()
    assert out.read_bytes() == lines[0] + lines[4]
