"""Stream rows out of dataset files without loading the whole file: JSON arrays, JSON Lines,
Parquet, and folders written by ``datasets.Dataset.save_to_disk`` (Arrow stream files). For a framework that picks
``datasets``' packaged builder by file extension (``builder_rows``), also single ``.arrow`` files, CSV files read as
its "csv" builder reads them (pandas) and text files read as its "text" builder does.

Each reader yields ``(index, row)``; a row that cannot be parsed is yielded as a :class:`BadRow` so
the scan can record it and go on.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vlmcheck.data.compressed import data_suffix, open_binary
from vlmcheck.errors import DatasetError, MissingDependencyError

_CHUNK = 1 << 20
_BATCH = 512
# A dataset row is kilobytes, a few MB with its images inline as base64. A JSON Lines line or a JSON array element
# longer than this is a finding for that row, never held whole: a file of NUL bytes, or a sparse 100 GiB one, costs at
# most this much memory and is passed over in chunks (docs/data.md).
MAX_ROW_BYTES = 64 << 20
# a JSON error this close to the end of what was read may be a value cut at the read's edge: read more first
_TAIL = 32
_BLANKS = re.compile(r"[ \t\r\n,]*")


@dataclass
class BadRow:
    """A row that could not be parsed: why, and where (line number for JSON Lines)."""

    reason: str
    line: int | None = None
    # the reader cannot go on past it (a JSON array broken midway, a damaged Parquet/Arrow file): every row
    # after it is unreadable, so repair must not write the rows before it as if they were the dataset
    terminal: bool = False


def _parse_int(text: str) -> Any:
    # Python refuses int() of over 4,300 digits (ValueError); `datasets` (pyarrow) reads such a number as
    # a float, so the row is readable and the value is kept the way it would be trained on.
    return int(text) if len(text) < 4000 else float(text)


_DECODER = json.JSONDecoder(parse_int=_parse_int)
# json.load's own: int() of a whole number over sys.get_int_max_str_digits() (4,300) digits raises ValueError
_PYTHON_DECODER = json.JSONDecoder()


def _loads(text: str) -> Any:
    """``json.loads`` that answers with a value or a ``json.JSONDecodeError``, whatever the text: nesting
    deeper than the interpreter's recursion limit is an error of the row, not of the scan."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read (RecursionError)", text, 0) from None


_STRING_STOP = re.compile(r'["\\]')
_BLOCK = 4096


def _skip_value(buf: str, pos: int, resume: tuple[int, int] = (0, 0)) -> tuple[int, tuple[int, int]]:
    """The end of the JSON value starting at ``buf[pos]``, found without recursion (for values nested too
    deeply to decode); -1 when the buffer ends first, with where to go on from once more is read (``resume``:
    the offset from ``pos``, outside any string, and the depth there), so that a value read in many pieces is
    scanned once. Runs of brackets go a block at a time."""
    off, depth = resume
    i, n = pos + off, len(buf)
    whole = i  # where a block may next be taken whole (one that cannot be is read a character at a time)
    while i < n:
        if depth > 0 and i >= whole:  # a block without strings that cannot close the value: only its depth changes
            block = buf[i:i + _BLOCK]
            closes = block.count("]") + block.count("}")
            if len(block) == _BLOCK and depth > closes and '"' not in block:
                depth += block.count("[") + block.count("{") - closes
                i += _BLOCK
                continue
            whole = i + _BLOCK
        c = buf[i]
        if c == '"':
            start, i = i, i + 1
            while True:
                stop = _STRING_STOP.search(buf, i)
                if stop is None or stop.end() >= n:
                    return -1, (start - pos, depth)
                i = stop.end() + (1 if stop.group() == "\\" else 0)
                if stop.group() == '"':
                    break
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth <= 0:
                return i + 1, (0, 0)
        elif c == "," and depth == 0:
            return i, (0, 0)
        i += 1
    return -1, (n - pos, depth)


def _cut_at_edge(e: json.JSONDecodeError, read: int) -> bool:
    """Whether the error may be a value cut where reading stopped (more text could complete it): a string still
    open, or an error within _TAIL characters of the end (a literal, a number, an escape, blanks up to it).
    Anywhere else the error is there whatever follows (a NUL byte, a stray character)."""
    return e.msg.startswith("Unterminated string") or e.pos >= read - _TAIL


def _json_array(path: Path, spans: list[tuple[int, int]] | None = None, python_ints: bool = False) -> Iterator[Any]:
    """Elements of a top-level JSON array, decoded one at a time from a sliding buffer. With ``spans``, the
    byte range of each element yielded is appended to it (for a terminal :class:`BadRow`: from where
    reading stopped to the end of the file). Memory is bounded by MAX_ROW_BYTES: an element not complete
    within it ends the file with a terminal :class:`BadRow`, as an error that more text cannot mend does
    at once. ``python_ints``: whole numbers as Python's json reads them (one too long to convert ends the file,
    as ``json.load`` raises), not as ``datasets`` does."""
    decoder = _PYTHON_DECODER if python_ints else _DECODER
    size = os.path.getsize(path)
    with open_binary(path) as fp:
        buf, pos, pending, eof = "", 0, b"", False
        at = 0  # the byte offset of buf[pos] in the file

        def refill(want: int = _CHUNK) -> bool:
            nonlocal buf, pos, pending, eof
            if eof:
                return False
            chunk = fp.read(max(want, _CHUNK))
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

        def move(to: int) -> None:
            nonlocal pos, at
            at += len(buf[pos:to].encode("utf-8", "surrogatepass"))
            pos = to

        def stop(reason: str) -> BadRow:
            if spans is not None:
                spans.append((at, size))
            return BadRow(reason, terminal=True)

        def longer() -> bool:
            """Read as much again as the element so far (each retry's decode is then linear overall); False at
            the end of the file. Raises UnicodeDecodeError."""
            return refill(len(buf) - pos)

        def too_long() -> BadRow:
            return stop(f"the element at byte {at:,} is not complete within {MAX_ROW_BYTES >> 20} MiB, the most "
                        f"vlmcheck reads of one row (a string or bracket never closed?); the rest of {path.name} "
                        "is unreadable")

        try:
            refill()
        except UnicodeDecodeError:
            yield stop("the file is not UTF-8 text")
            return
        if buf.startswith("\ufeff"):
            move(1)
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
            at += 1
        if buf[pos:pos + 1] != "[":
            raise DatasetError(f"{path}: expected a JSON array (or use .jsonl for JSON Lines)")
        move(pos + 1)

        resume = (0, 0)  # how far _skip_value got into an element too deep to decode, read in pieces
        while True:
            blanks = _BLANKS.match(buf, pos)
            skip = blanks.end() if blanks else pos
            at += skip - pos
            pos = skip
            if pos >= len(buf):
                try:
                    more = refill()
                except UnicodeDecodeError:
                    yield stop("the file is not UTF-8 text past this point")
                    return
                if not more:
                    yield stop("the JSON array is not closed (file cut short?)")
                    return
                continue
            if buf[pos] == "]":
                return
            try:
                value, end = decoder.raw_decode(buf, pos)
            except RecursionError:
                end, resume = _skip_value(buf, pos, resume)
                if end < 0:
                    if len(buf) - pos > MAX_ROW_BYTES:
                        yield too_long()
                        return
                    try:
                        if longer():
                            continue
                    except UnicodeDecodeError:
                        yield stop("the file is not UTF-8 text past this point")
                        return
                    yield stop("the JSON array is not closed (file cut short?)")
                    return
                start = at
                move(end)
                resume = (0, 0)
                if spans is not None:
                    spans.append((start, at))
                yield BadRow("this element is nested too deeply to read (RecursionError in any JSON parser "
                             "built on recursion)")
                continue
            except json.JSONDecodeError as e:
                more = False
                if _cut_at_edge(e, len(buf)):
                    if len(buf) - pos > MAX_ROW_BYTES:
                        yield too_long()
                        return
                    try:
                        more = longer()
                    except UnicodeDecodeError:
                        yield stop("the file is not UTF-8 text past this point")
                        return
                if more:
                    continue
                # a NUL byte: a file preallocated, or cut short while being written (often sparse, any size)
                nul = f" (a NUL byte: {path.name} is not JSON text from here)" if buf[e.pos:e.pos + 1] == "\0" else ""
                yield stop(f"invalid JSON at byte {at + len(buf[pos:e.pos].encode('utf-8', 'surrogatepass'))}: "
                           f"{e.msg}{nul}; the rest of the file is unreadable")
                return
            except ValueError as e:  # python_ints: int() refuses a whole number of too many digits
                yield stop(f"the element at byte {at:,}: {str(e)[:120]} (Python's json raises); the rest of "
                           f"{path.name} is not read")
                return
            # A value that ends at the buffer's edge may be a number cut there (``1.`` of ``1.5``): read more first.
            if len(buf) - end < _TAIL and not eof and refill():
                continue
            start = at
            move(end)
            if spans is not None:
                spans.append((start, at))
            yield value
            if pos > _CHUNK:
                buf, pos = buf[pos:], 0


def _past_hole(fp: BinaryIO) -> int:
    """Move a plain file past the hole of a sparse file it stands in (NUL bytes the file system keeps unwritten):
    the bytes passed over. 0 for a compressed stream or where the file system cannot say."""
    raw = getattr(fp, "raw", None)
    if not isinstance(raw, io.FileIO) or not hasattr(os, "SEEK_DATA"):
        return 0
    fd, here = raw.fileno(), fp.tell()
    kept = os.lseek(fd, 0, os.SEEK_CUR)  # the buffered reader's own position in the file, put back below
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError as e:
        data = os.fstat(fd).st_size if e.errno == errno.ENXIO else here  # ENXIO: a hole up to the end
    finally:
        os.lseek(fd, kept, os.SEEK_SET)
    if data <= here:
        return 0
    fp.seek(data)
    return data - here


def bounded_lines(fp: BinaryIO) -> Iterator[tuple[bytes | None, int]]:
    """Each line of ``fp`` and its length in bytes, its newline included. A line over MAX_ROW_BYTES comes as
    None, passed over in chunks up to its newline, never held whole (the holes of a sparse file skipped unread:
    they hold NUL bytes, never a newline)."""
    while True:
        raw = fp.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_ROW_BYTES or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        size, raw = len(raw), b""
        while True:
            size += _past_hole(fp)
            piece = fp.readline(_CHUNK)
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        yield None, size


def _json_lines(path: Path, spans: list[tuple[int, int]] | None = None) -> Iterator[Any]:
    at = 0
    with open_binary(path) as fp:
        for lineno, (raw, length) in enumerate(bounded_lines(fp), 1):
            start, at = at, at + length
            if raw is None:
                if spans is not None:
                    spans.append((start, at))
                yield BadRow(f"line {lineno} of {path.name} is {length:,} bytes, over the {MAX_ROW_BYTES >> 20} MiB "
                             "vlmcheck reads of one row: passed over unread (a row is kilobytes; is this a JSON "
                             "Lines file?)", lineno)
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark (Windows editors write one): not part of row 0
            if not raw.strip():
                continue
            if spans is not None:
                spans.append((start, at))
            try:
                # without the newline, so that an error at the end of the line names its column
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield BadRow(f"line {lineno} is not UTF-8 (byte {e.start})", lineno)
                continue
            try:
                value = _loads(text)
            except json.JSONDecodeError as e:
                nul = " (a NUL byte: not JSON text)" if text[e.pos:e.pos + 1] == "\0" else ""
                yield BadRow(f"line {lineno} is not valid JSON: {e.msg} at column {e.colno}{nul}", lineno)
                continue
            yield value


def pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError("pyarrow", "parquet", "reading Parquet / Arrow datasets") from None
    return pyarrow


def _damaged(where: str, e: BaseException) -> BadRow:
    return BadRow(f"{where} is damaged past this point ({type(e).__name__}: {str(e)[:200]}); the rest of it "
                  "is unreadable", terminal=True)


def _batches(batches: Iterator[Any], where: str) -> Iterator[Any]:
    """Rows of Arrow record batches; a batch that cannot be read or converted ends the file with one
    :class:`BadRow`, as a JSON array cut short does (a damaged file is a finding, not a traceback)."""
    try:
        for batch in batches:
            yield from batch.to_pylist()
    except Exception as e:  # ArrowInvalid, OSError, decompression errors, ...: all say "damaged"
        yield _damaged(where, e)


def _parquet(path: Path) -> Iterator[Any]:
    pa = pyarrow()
    try:
        # pre_buffer (pyarrow's default) keeps every row group's pre-read column data until the file closes:
        # memory grew with the file (561 MiB peak reading 1M rows, 217 MiB without; docs/performance.md)
        pf = pa.parquet.ParquetFile(path, pre_buffer=False)
    except Exception as e:
        raise DatasetError(f"{path} is not a readable Parquet file: {e}") from None
    yield from _batches(pf.iter_batches(batch_size=_BATCH), str(path))


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise DatasetError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return value


def _inside(folder: Path, name: Any, source: Path) -> Path:
    """A data file named by ``state.json`` / ``dataset_dict.json``: a plain name inside ``folder``, never a
    path that leaves it (a crafted folder must not map any file on the machine into the scan)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DatasetError(f"{source} names a data file {str(name)[:80]!r} that is not a file name")
    target = folder / name
    real, base = os.path.realpath(target), os.path.realpath(folder)
    if Path(name).is_absolute() or os.path.commonpath([real, base]) != base:
        raise DatasetError(f"{source} names {name!r}, outside {folder}: refused")
    return target


def arrow_files(folder: Path, split: str | None) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json_object(folder / "dataset_dict.json").get("splits", [])
        if not isinstance(splits, list):
            raise DatasetError(f"{folder / 'dataset_dict.json'}: 'splits' must be a list")
        chosen = split or ("train" if "train" in splits else (splits[0] if splits else None))
        if chosen is None or chosen not in splits:
            raise DatasetError(f"{folder} has splits {splits}; pick one with --split")
        folder = _inside(folder, chosen, folder / "dataset_dict.json")
    state = folder / "state.json"
    if state.is_file():
        entries = _read_json_object(state).get("_data_files", [])
        if not isinstance(entries, list):
            raise DatasetError(f"{state}: '_data_files' must be a list")
        files = [_inside(folder, f.get("filename") if isinstance(f, dict) else None, state) for f in entries]
        if files:
            return files
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DatasetError(f"{folder} is a folder without state.json or .arrow files")
    return files


def _arrow(folder: Path, split: str | None) -> Iterator[Any]:
    for file in arrow_files(folder, split):
        damaged = False
        for row in arrow_file_rows(file):
            damaged = damaged or isinstance(row, BadRow)
            yield row
        if damaged:
            return


def arrow_file_rows(file: Path) -> Iterator[Any]:
    """Rows of one ``.arrow`` file as ``datasets``' "arrow" builder reads it: an Arrow IPC stream (what
    ``save_to_disk`` writes), else an IPC file; a damaged file ends with one terminal :class:`BadRow`."""
    pa = pyarrow()
    try:
        source = pa.memory_map(str(file))
    except Exception as e:
        yield _damaged(str(file), e)
        return
    with source:
        try:
            reader = pa.ipc.open_stream(source)
        except Exception:
            try:
                reader = pa.ipc.open_file(source)
            except Exception as e:
                yield _damaged(str(file), e)
                return

            def batches(r: Any = reader) -> Iterator[Any]:
                for i in range(r.num_record_batches):
                    yield r.get_batch(i)

            yield from _batches(batches(), str(file))
            return
        yield from _batches(iter(reader), str(file))


def dataset_kind(path: Path) -> str:
    if path.is_dir():
        return "arrow"
    if path.exists() and not path.is_file():  # a FIFO or device would block the read forever
        raise DatasetError(f"{path} is not a regular file or a folder (a FIFO, socket or device)")
    suffix = data_suffix(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        head = _head(path)
        # JSON Lines saved as .json is common (HF `to_json` writes lines by default)
        if suffix == ".json":
            return "json" if head.startswith(b"[") else "jsonl"
        # a JSON array saved as .jsonl is read whole by datasets (its pandas fallback) and by json.load: one
        # written over several lines, or on its only line; a whole JSON value on a line with others after it is a
        # row of JSON Lines (a list: not an object)
        if not head.startswith(b"["):
            return "jsonl"
        first, _, rest = head.partition(b"\n")
        value = _whole_json(first.strip())
        if value is None:
            return "json"
        rows = isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        return "json" if rows and len(head) < 4096 and not rest.strip() else "jsonl"
    if suffix in (".parquet", ".pq") and path.suffix.lower() == suffix:
        return "parquet"
    raise DatasetError(f"{path}: unknown dataset file type {path.name!r} (use .json, .jsonl (plain or .gz, .bz2, "
                       ".xz, .zst), .parquet or a save_to_disk folder)")


def _head(path: Path) -> bytes:
    """The first 4 KiB of the file's text, past a byte order mark and blanks: what decides its layout. A file damaged
    within them (a cut or corrupt compressed stream) gives what could be read: the row reader then reports the
    damage where it is."""
    out = b""
    try:
        with open_binary(path) as fp:
            while len(out) < 4096:
                piece = fp.read(4096 - len(out))
                if not piece:
                    break
                out += piece
    except Exception:  # noqa: BLE001 - any decompressor's error: the layout is decided on what was read
        pass
    return out.lstrip(b"\xef\xbb\xbf \t\r\n")


def _whole_json(line: bytes) -> Any:
    """The JSON value ``line`` holds whole; None when it is not one (cut, not JSON, not UTF-8)."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def iter_rows(path: str | os.PathLike[str], *, split: str | None = None,
              spans: list[tuple[int, int]] | None = None, python_ints: bool = False) -> Iterator[Any]:
    """Rows of the dataset at ``path``, streamed. Unparseable rows come as :class:`BadRow`. For JSON and JSON
    Lines, ``spans`` (a list) gets each row's byte range in the file as the row is yielded. A JSON array's whole
    numbers are read as ``datasets`` reads them (one past Python's 4,300 digits as a float), or with
    ``python_ints`` as ``json.load`` does (it raises: a terminal BadRow)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    kind = dataset_kind(path)
    if kind == "json":
        return _json_array(path, spans, python_ints)
    if kind == "jsonl":
        return _json_lines(path, spans)
    if kind == "parquet":
        return _parquet(path)
    return _arrow(path, split)


def count_rows(path: str | os.PathLike[str], *, split: str | None = None) -> int | None:
    """Row count when it is cheap to know (Parquet, Arrow), for the progress bar."""
    path = Path(path)
    try:
        kind = dataset_kind(path)
        if kind == "parquet":
            return int(pyarrow().parquet.ParquetFile(path).metadata.num_rows)
        if kind == "jsonl":
            with open_binary(path) as fp:
                return sum(1 for line, _ in bounded_lines(fp) if line is None or line.strip())
    except Exception:
        return None
    return None


def schema_features(schema: Any) -> dict[str, Any]:
    """The features ``datasets`` wrote into an Arrow / Parquet schema's metadata (its ``huggingface`` key: what
    ``Features.from_arrow_schema`` reads back), by column; empty when there are none."""
    try:
        meta = (schema.metadata or {}).get(b"huggingface")
        features = json.loads(meta).get("info", {}).get("features", {}) if meta else {}
    except Exception:
        return {}
    return features if isinstance(features, dict) else {}


def column_feature(schema: Any, column: str) -> str | None:
    """The media feature (``Image``, ``Video``, ``Audio``) a schema's ``datasets`` metadata gives a column (or its
    list's items), or None."""
    text = json.dumps(schema_features(schema).get(column))
    return next((name for name in ("Image", "Video", "Audio") if f'"_type": "{name}"' in text), None)


# -- datasets' packaged builders, as a framework picks one by a file's extension ------------------------------------
# datasets' "csv" builder (packaged_modules/csv/csv.py): pandas.read_csv with pandas' own defaults, in chunks of
# 10,000 rows, each chunk an Arrow table of its own (pa.Table.from_pandas); measured on datasets 4.0.0 with pandas 3.1
CSV_CHUNK_ROWS = 10_000


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError("pandas", "pandas", "Reading a CSV dataset as datasets reads it "
                                     "(pandas.read_csv)") from None
    return pandas


def csv_tables(path: Path) -> Iterator[Any]:
    """The Arrow tables ``datasets``' "csv" builder makes of a CSV file: ``pandas.read_csv`` (pandas' type
    inference per column and chunk: whole numbers, decimals, true/false, else text; an empty cell and pandas' NA
    strings, "NA", "None", "null", "nan" and the like, read as missing) in chunks of CSV_CHUNK_ROWS rows, each
    ``pa.Table.from_pandas``. A file pandas cannot read ends with one terminal :class:`BadRow` (the load fails)."""
    pd, pa = _pandas(), pyarrow()
    try:
        for frame in pd.read_csv(path, chunksize=CSV_CHUNK_ROWS):
            yield pa.Table.from_pandas(frame)
    except Exception as e:  # ParserError, UnicodeDecodeError, EmptyDataError, ...: datasets raises on the file
        yield BadRow(f"{path} is not a CSV file pandas can read ({type(e).__name__}: {str(e)[:200]}); the rest of "
                     "it is unreadable", terminal=True)


def csv_rows(path: Path) -> Iterator[Any]:
    """Rows of a CSV file as ``datasets`` loads it (csv_tables): a dict per row, missing values None."""
    for table in csv_tables(path):
        if isinstance(table, BadRow):
            yield table
            return
        yield from table.to_pylist()


def text_rows(path: Path) -> Iterator[Any]:
    r"""Rows of a text file as ``datasets``' "text" builder reads it: ``{"text": line}`` per line of the file read
    as UTF-8 with universal newlines ("\r\n" and "\r" become "\n"), split at "\n" only, the line break dropped (a
    blank line is a row with empty text; a byte order mark stays at the start of the first). A file that is not
    UTF-8 ends with one terminal :class:`BadRow`."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield {"text": line[:-1] if line.endswith("\n") else line}
    except UnicodeDecodeError as e:
        yield BadRow(f"{path} is not UTF-8 text past this point ({e.reason}): datasets' text builder raises",
                     terminal=True)


def builder_rows(path: Path, builder: str) -> Iterator[Any]:
    """Rows of one data file as ``datasets``' packaged ``builder`` ("json", "parquet", "arrow", "csv", "text")
    reads it."""
    if builder == "arrow":
        return arrow_file_rows(path)
    if builder == "csv":
        return csv_rows(path)
    if builder == "text":
        return text_rows(path)
    return iter_rows(path)


def table_schemas(path: Path, builder: str) -> Iterator[Any]:
    """The schema of each Arrow table ``datasets``' ``builder`` makes of a "parquet", "arrow" or "csv" file (one
    for a Parquet or Arrow file, its metadata with it; one per CSV chunk), as long as the file can be read (its rows
    say where it cannot)."""
    pa = pyarrow()
    if builder == "csv":
        for table in csv_tables(path):
            if isinstance(table, BadRow):
                return
            yield table.schema
        return
    try:
        if builder == "parquet":
            yield pa.parquet.read_schema(path)
            return
        with pa.memory_map(str(path)) as source:
            try:
                schema = pa.ipc.open_stream(source).schema
            except Exception:
                schema = pa.ipc.open_file(source).schema
    except Exception:  # a damaged file: its rows say so
        return
    yield schema
