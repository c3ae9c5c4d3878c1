"""Data as users keep it on disk: several files, globs, folders of shards, compressed JSON (gzip, bzip2, xz,
Zstandard), Parquet shards and WebDataset tar shards. Every record equals the scan of the one plain JSON Lines
file the pieces were cut from (the demo dataset: good rows, a broken JSON line, truncated and empty images, a
missing file, rows too long at max_length=1024)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import vlmcheck
from builders import spec
from vlmcheck.demo.run import DATA

MAX_LENGTH = 1024
LINES = DATA.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


def scan_records(dataset: Any, model: Any, **options: Any) -> list[dict[str, Any]]:
    return list(vlmcheck.scan(dataset, model=model, max_length=MAX_LENGTH, image_root=DATA.parent,
                              **options).records())


@pytest.fixture
def whole(model: Any) -> list[dict[str, Any]]:
    records = scan_records(DATA, model)
    codes = {r["id"]: r["findings"] for r in records}
    # the demo rows are what their names say, so equality below covers each kind of row
    assert codes["ok-street"] == [] and codes["missing-file"] == ["VC101"] and codes["wrong-types"] == ["VC001"]
    assert codes["zero-byte"] == ["VC102"] and codes["truncated-jpeg"] == ["VC103"] and "VC201" in codes["screenshot-cut"]
    assert records[LINES.index(next(x for x in LINES if not _parses(x)))]["findings"] == ["VC001"]  # broken JSON
    return records


def _write(path: Path, lines: list[str], compress: Any = None) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(compress(data) if compress else data)
    return path


def test_several_files_globs_and_folders_give_the_records_of_one_file(tmp_path: Path, model: Any, whole: Any):
    parts = tmp_path / "parts"
    parts.mkdir()
    a = _write(parts / "part-0.jsonl", LINES[:7])
    b = _write(parts / "part-1.jsonl.gz", LINES[7:15], gzip.compress)
    c = _write(parts / "part-2.jsonl.zst", LINES[15:], zstandard.ZstdCompressor().compress)
    assert scan_records([a, b, c], model) == whole
    assert scan_records(str(parts / "part-*.jsonl*"), model) == whole
    assert scan_records(parts, model) == whole  # a folder: its data files, in name order
    # indices run on across the files: a record names the row of the whole dataset
    assert [r["index"] for r in scan_records([b, c], model)] == list(range(len(LINES) - 7))


@pytest.mark.parametrize("suffix,compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
    (".zst", zstandard.ZstdCompressor().compress)])
def test_a_compressed_file_gives_the_records_of_the_plain_one(tmp_path: Path, model: Any, whole: Any, suffix: str,
                                                             compress: Any):
    assert scan_records(_write(tmp_path / f"train.jsonl{suffix}", LINES, compress), model) == whole
    # a JSON array too (its broken row is left out: an array with a syntax error is unreadable from there on)
    rows = [json.loads(line) for line in LINES if _parses(line)]
    array = tmp_path / f"train.json{suffix}"
    array.write_bytes(compress(json.dumps(rows).encode("utf-8")))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(rows), encoding="utf-8")
    assert scan_records(array, model) == scan_records(plain, model)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_a_damaged_gzip_is_a_finding_not_a_crash(tmp_path: Path, model: Any, whole: Any):
    packed = gzip.compress("".join(line + "\n" for line in LINES).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    records = scan_records(cut, model)
    assert records[-1]["findings"] == ["VC001"]  # "damaged past this point"
    assert 5 < len(records) < len(whole) and records[:-1] == whole[: len(records) - 1]


def test_parquet_shards_in_a_folder(tmp_path: Path, model: Any, whole: Any):
    rows = [json.loads(line) for line in LINES if _parses(line) and isinstance(json.loads(line).get("images"), list)]
    plain = _write(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])
    folder = tmp_path / "data"
    folder.mkdir()
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half]), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), folder / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "test-00000-of-00001.parquet")
    expected = scan_records(plain, model)
    assert scan_records(folder, model, split="train") == expected
    assert len(scan_records(folder, model, split="test")) == 1
    with pytest.raises(vlmcheck.DatasetError, match="no dataset file"):
        scan_records(folder, model, split="validation")


def _webdataset(path: Path, lines: list[str], start: int) -> Path:
    """A WebDataset shard: per sample, KEY.json and each image file as KEY.K.EXT, which the JSON names."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, line in enumerate(lines, start):
            key = f"{i:06d}"
            row = json.loads(line) if _parses(line) else None
            if isinstance(row, dict) and isinstance(row.get("images"), list):
                for k, name in enumerate(row["images"]):
                    file = DATA.parent / name
                    if file.is_file():  # a missing or outside file stays a path, as in the JSON Lines file
                        member = f"{key}.{k}{file.suffix}"
                        add(member, file.read_bytes())
                        row["images"][k] = member
            add(f"{key}.json", json.dumps(row).encode() if row is not None else line.encode())
    return path


def test_webdataset_tar_shards(tmp_path: Path, model: Any, whole: Any):
    shards = [_webdataset(tmp_path / "shard-000000.tar", LINES[:10], 0),
              _webdataset(tmp_path / "shard-000001.tar", LINES[10:], 10)]
    with tarfile.open(shards[0]) as tar:
        assert "000000.0.jpg" in tar.getnames()  # images travel inside the shard
    assert scan_records(str(tmp_path / "shard-*.tar"), model) == whole


def test_inputs_are_never_written_over_and_bad_arguments_say_why(tmp_path: Path, model: Any):
    a = _write(tmp_path / "a.jsonl.gz", LINES[:3], gzip.compress)
    with pytest.raises(vlmcheck.UsageError, match="never writes over its input"):
        vlmcheck.scan([a], model=model, output=a)
    with pytest.raises(vlmcheck.DatasetError, match="no file matches"):
        vlmcheck.scan(str(tmp_path / "nothing-*.jsonl"), model=model)
    other = tmp_path / "other"
    other.mkdir()
    b = _write(other / "b.jsonl", LINES[:3])
    with pytest.raises(vlmcheck.UsageError, match="different folders"):
        vlmcheck.scan([a, b], model=model)
    assert len(list(vlmcheck.scan([a, b], model=model, image_root=DATA.parent).records())) == 6
