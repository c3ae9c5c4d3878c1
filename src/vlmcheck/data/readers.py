"""Stream rows out of dataset files without loading the whole file: JSON arrays, JSON Lines,
Parquet, and folders written by ``datasets.Dataset.save_to_disk`` (Arrow stream files).

Each reader yields ``(index, row)``; a row that cannot be parsed is yielded as a :class:`BadRow` so
the scan can record it and go on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmcheck.data.compressed import data_suffix, open_binary
from vlmcheck.errors import DatasetError, MissingDependencyError

_CHUNK = 1 << 20
_BATCH = 512


@dataclass
class BadRow:
    """A row that could not be parsed: why, and where (line number for JSON Lines)."""

    reason: str
    line: int | None = None


def _json_array(path: Path) -> Iterator[Any]:
    """Elements of a top-level JSON array, decoded one at a time from a sliding buffer."""
    decoder = json.JSONDecoder()
    with open_binary(path) as fp:
        buf, pos, pending, eof = "", 0, b"", False

        def refill() -> bool:
            nonlocal buf, pos, pending, eof
            if eof:
                return False
            chunk = fp.read(_CHUNK)
            if not chunk:
                eof = True
                return False
            data = pending + chunk
            try:
                text, pending = data.decode("utf-8"), b""
            except UnicodeDecodeError as e:
                if e.start < len(data) - 3:
                    raise
                # a character split across two chunks
                text, pending = data[: e.start].decode("utf-8"), data[e.start:]
            buf = buf[pos:] + text
            pos = 0
            return True

        try:
            refill()
        except UnicodeDecodeError:
            yield BadRow("the file is not UTF-8 text")
            return
        if buf.startswith("\ufeff"):
            pos = 1
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
        if buf[pos:pos + 1] != "[":
            raise DatasetError(f"{path}: expected a JSON array (or use .jsonl for JSON Lines)")
        pos += 1

        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(buf):
                if not refill():
                    yield BadRow("the JSON array is not closed (file cut short?)")
                    return
                continue
            if buf[pos] == "]":
                return
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                try:
                    more = refill()
                except UnicodeDecodeError:
                    yield BadRow("the file is not UTF-8 text past this point")
                    return
                if more:
                    continue
                yield BadRow(f"invalid JSON at character {e.pos}: {e.msg}; the rest of the file is unreadable")
                return
            # A value that ends exactly at the buffer end may be a cut-off number: read more first.
            if end == len(buf) and not eof and refill():
                continue
            yield value
            pos = end
            if pos > _CHUNK:
                buf, pos = buf[pos:], 0


def _json_lines(path: Path) -> Iterator[Any]:
    with open_binary(path) as fp:
        for lineno, raw in enumerate(fp, 1):
            if not raw.strip():
                continue
            try:
                # without the newline, so that an error at the end of the line names its column
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield BadRow(f"line {lineno} is not UTF-8 (byte {e.start})", lineno)
                continue
            try:
                yield json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRow(f"line {lineno} is not valid JSON: {e.msg} at column {e.colno}", lineno)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError("pyarrow", "parquet", "reading Parquet / Arrow datasets") from None
    return pyarrow


def _parquet(path: Path) -> Iterator[Any]:
    pa = _pyarrow()
    pf = pa.parquet.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=_BATCH):
        yield from batch.to_pylist()


def _arrow_files(folder: Path, split: str | None) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        chosen = split or ("train" if "train" in splits else (splits[0] if splits else None))
        if chosen is None or chosen not in splits:
            raise DatasetError(f"{folder} has splits {splits}; pick one with --split")
        folder = folder / chosen
    state = folder / "state.json"
    if state.is_file():
        files = [folder / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        if files:
            return files
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DatasetError(f"{folder} is a folder without state.json or .arrow files")
    return files


def _arrow(folder: Path, split: str | None) -> Iterator[Any]:
    pa = _pyarrow()
    for file in _arrow_files(folder, split):
        with pa.memory_map(str(file)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield from reader.get_batch(i).to_pylist()
                continue
            for batch in reader:
                yield from batch.to_pylist()


def dataset_kind(path: Path) -> str:
    if path.is_dir():
        return "arrow"
    suffix = data_suffix(path)
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        with open_binary(path) as fp:
            head = fp.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        # JSON Lines saved as .json is common (HF `to_json` writes lines by default).
        return "json" if head.startswith(b"[") else "jsonl"
    if suffix in (".parquet", ".pq") and path.suffix.lower() == suffix:
        return "parquet"
    raise DatasetError(f"{path}: unknown dataset file type {path.name!r} (use .json, .jsonl (plain or .gz, .bz2, "
                       ".xz, .zst), .parquet or a save_to_disk folder)")


def iter_rows(path: str | os.PathLike[str], *, split: str | None = None) -> Iterator[Any]:
    """Rows of the dataset at ``path``, streamed. Unparseable rows come as :class:`BadRow`."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    kind = dataset_kind(path)
    if kind == "json":
        return _json_array(path)
    if kind == "jsonl":
        return _json_lines(path)
    if kind == "parquet":
        return _parquet(path)
    return _arrow(path, split)


def count_rows(path: str | os.PathLike[str], *, split: str | None = None) -> int | None:
    """Row count when it is cheap to know (Parquet, Arrow), for the progress bar."""
    path = Path(path)
    try:
        kind = dataset_kind(path)
        if kind == "parquet":
            return int(_pyarrow().parquet.ParquetFile(path).metadata.num_rows)
        if kind == "jsonl":
            with open_binary(path) as fp:
                return sum(1 for line in fp if line.strip())
    except Exception:
        return None
    return None
