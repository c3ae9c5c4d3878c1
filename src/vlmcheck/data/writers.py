"""Write rows back in the format they were read from, under temporary names until published:
JSON arrays, JSON Lines, Parquet, and ``save_to_disk`` folders (an Arrow stream file plus
``dataset_info.json`` and ``state.json``, the layout ``datasets.load_from_disk`` reads), with
pyarrow only.

Parquet and Arrow rows go back through the input's own schema (column order, types, nested
structs such as ``{"bytes", "path"}`` images, and the ``huggingface`` features metadata), so a row
read and written unchanged holds the same values.

>>> sink = open_sink(Path("fixed.parquet"), source=Path("train.parquet"), kind="parquet")  # doctest: +SKIP
>>> sink.add(row, None); sink.close(); sink.publish()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from vlmcheck.data.readers import arrow_files, pyarrow
from vlmcheck.errors import DatasetError
from vlmcheck.util import hidden_prefix, honour_umask

_BATCH = 256  # rows per Parquet row group / Arrow record batch (rows may hold image bytes)
ARROW_FILE = "data-00000-of-00001.arrow"  # the name save_to_disk gives a one-shard dataset


class Sink(Protocol):
    """Where output rows go: ``add`` them, ``close`` (everything on disk under a temporary name),
    then ``publish`` (one rename) or ``discard``."""

    path: Path
    rows: int

    def add(self, row: Any, raw: bytes | None) -> None: ...

    def close(self) -> None: ...

    def publish(self) -> None: ...

    def discard(self) -> None: ...


def _temp_file(path: Path) -> tuple[Any, Path]:
    fd, tmp = tempfile.mkstemp(prefix=hidden_prefix(path), suffix=".tmp", dir=path.parent)
    honour_umask(fd)
    return os.fdopen(fd, "wb"), Path(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonSink:
    """A JSON array (``lines=False``, indented one space per level) or JSON Lines; a row given with
    its ``raw`` line is copied byte for byte."""

    def __init__(self, path: Path, *, lines: bool) -> None:
        self.path = path
        self.lines = lines
        self.rows = 0
        self.fp, self.tmp = _temp_file(path)
        self.published = False
        if not lines:
            self.fp.write(b"[")

    def add(self, row: Any, raw: bytes | None) -> None:
        if self.lines:
            self.fp.write(raw if raw is not None else json.dumps(row, ensure_ascii=False).encode() + b"\n")
        else:
            try:
                data = json.dumps(row, ensure_ascii=False, indent=1).replace("\n", "\n ").encode()
            except (RecursionError, TypeError, ValueError):
                if raw is None:
                    raise
                data = raw.strip()  # an element no serializer can write back (nested too deep): its own bytes
            self.fp.write((",\n " if self.rows else "\n ").encode() + data)
        self.rows += 1

    def close(self) -> None:
        if not self.lines:
            self.fp.write(b"\n]\n" if self.rows else b"]\n")
        self.fp.flush()
        os.fsync(self.fp.fileno())
        self.fp.close()

    def publish(self) -> None:
        os.replace(self.tmp, self.path)
        self.published = True

    def discard(self) -> None:
        if not self.fp.closed:
            self.fp.close()
        if not self.published:
            self.tmp.unlink(missing_ok=True)


def input_schema(source: Path, kind: str) -> Any:
    """The Arrow schema of a Parquet file or a ``save_to_disk`` folder (its first shard); a
    :class:`DatasetError` when it cannot be read."""
    try:
        return _input_schema(source, kind)
    except DatasetError:
        raise
    except Exception as e:  # ArrowInvalid, OSError: a damaged file
        raise DatasetError(f"the schema of {source} cannot be read ({type(e).__name__}: {str(e)[:200]})") from None


def _input_schema(source: Path, kind: str) -> Any:
    pa = pyarrow()
    if kind == "parquet":
        return pa.parquet.ParquetFile(source).schema_arrow
    first = arrow_files(source, None)[0]
    with pa.memory_map(str(first)) as stream:
        try:
            return pa.ipc.open_stream(stream).schema
        except pa.ArrowInvalid:
            return pa.ipc.open_file(stream).schema


def with_int_column(schema: Any, name: str) -> Any:
    """``schema`` plus a nullable int64 column ``name`` at the end (and in the ``huggingface``
    features metadata, as ``Value("int64")``), unless it has one."""
    pa = pyarrow()
    if name in schema.names:
        return schema
    metadata = dict(schema.metadata or {})
    if b"huggingface" in metadata:
        info = json.loads(metadata[b"huggingface"])
        features = info.setdefault("info", {}).setdefault("features", {})
        features[name] = {"dtype": "int64", "_type": "Value"}
        metadata[b"huggingface"] = json.dumps(info).encode()
    return pa.schema([*schema, pa.field(name, pa.int64())], metadata=metadata)


class _ArrowRows:
    """Rows buffered and converted to record batches of the output schema."""

    def __init__(self, schema: Any) -> None:
        self.pa = pyarrow()
        self.schema = schema
        self.buffer: list[Any] = []
        self.rows = 0

    def add(self, row: Any, raw: bytes | None) -> None:
        self.buffer.append(row)
        self.rows += 1
        if len(self.buffer) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.write(self.pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def write(self, table: Any) -> None:
        raise NotImplementedError


class ParquetSink(_ArrowRows):
    """A Parquet file with the input's schema and compression codec."""

    def __init__(self, path: Path, *, source: Path, schema: Any) -> None:
        super().__init__(schema)
        self.path = path
        fp, self.tmp = _temp_file(path)
        fp.close()
        meta = self.pa.parquet.ParquetFile(source).metadata
        codec = meta.row_group(0).column(0).compression if meta.num_row_groups and meta.num_columns else "snappy"
        self.writer = self.pa.parquet.ParquetWriter(
            str(self.tmp), schema, compression="snappy" if codec in ("UNCOMPRESSED", None) else codec.lower())
        self.published = False
        self.closed = False

    def write(self, table: Any) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.closed = True
        _fsync(self.tmp)

    def publish(self) -> None:
        os.replace(self.tmp, self.path)
        self.published = True

    def discard(self) -> None:
        if not self.closed:
            self.writer.close()
        if not self.published:
            self.tmp.unlink(missing_ok=True)


class ArrowFolderSink(_ArrowRows):
    """A ``save_to_disk`` folder: one Arrow stream shard, ``dataset_info.json`` (the input's, with
    the features of an added column) and ``state.json`` (the input's, pointing at the new shard)."""

    def __init__(self, path: Path, *, source: Path, schema: Any) -> None:
        super().__init__(schema)
        self.path = path
        self.source = source
        self.tmp = Path(tempfile.mkdtemp(prefix=hidden_prefix(path), suffix=".tmp", dir=path.parent))
        honour_umask(self.tmp, folder=True)
        self.stream = self.pa.OSFile(str(self.tmp / ARROW_FILE), "wb")
        self.writer = self.pa.ipc.new_stream(self.stream, schema)
        self.published = False
        self.closed = False

    def write(self, table: Any) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.stream.close()
        self.closed = True
        _fsync(self.tmp / ARROW_FILE)
        added = [name for name in self.schema.names if name not in input_schema(self.source, "arrow").names]
        info = _read_json(self.source / "dataset_info.json")
        features = info.get("features")
        if isinstance(features, dict):
            for name in added:
                features[name] = {"dtype": "int64", "_type": "Value"}
        splits = info.get("splits")
        if isinstance(splits, dict):
            for split in splits.values():
                if isinstance(split, dict) and "num_examples" in split:
                    split["num_examples"] = self.rows
                    split.pop("num_bytes", None)
        state = _read_json(self.source / "state.json")
        columns = state.get("_format_columns")
        if isinstance(columns, list):
            state["_format_columns"] = [*columns, *added]
        previous = str(state.get("_fingerprint", ""))
        state.update({
            "_data_files": [{"filename": ARROW_FILE}],
            "_fingerprint": hashlib.sha256(f"vlmcheck repair {previous} {self.rows}".encode()).hexdigest()[:16],
        })
        state.setdefault("_format_columns", None)
        state.setdefault("_format_kwargs", {})
        state.setdefault("_format_type", None)
        state.setdefault("_output_all_columns", False)
        state.setdefault("_split", None)
        for name, value in (("dataset_info.json", info), ("state.json", state)):
            (self.tmp / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def publish(self) -> None:
        # A folder cannot replace a non-empty folder in one rename: move the old one aside first.
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=hidden_prefix(self.path, "old."), dir=self.path.parent))
            os.replace(self.path, old / self.path.name)
        os.replace(self.tmp, self.path)
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        if not self.closed:
            self.writer.close()
            self.stream.close()
        if not self.published:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def open_sink(path: Path, *, source: Path, kind: str, int_column: str | None = None) -> Sink:
    """A sink writing ``kind`` (``json``, ``jsonl``, ``parquet``, ``arrow``) to ``path``;
    ``int_column``: a nullable integer column the Parquet / Arrow output gets if the input lacks it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("json", "jsonl"):
        return JsonSink(path, lines=kind == "jsonl")
    schema = input_schema(source, kind)
    if int_column is not None:
        schema = with_int_column(schema, int_column)
    if kind == "parquet":
        return ParquetSink(path, source=source, schema=schema)
    return ArrowFolderSink(path, source=source, schema=schema)


__all__ = ["ARROW_FILE", "ArrowFolderSink", "JsonSink", "ParquetSink", "Sink", "input_schema", "open_sink",
           "with_int_column"]
