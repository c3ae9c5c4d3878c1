"""How the ``datasets`` library loads a JSON / JSON Lines dataset: the column types it infers, the 10 MiB chunks a
JSON Lines file is read in, the casts between chunks and between the files of one dataset, and which of them make
``load_dataset`` fail before training starts.

Every framework that reads a local .json / .jsonl dataset through ``datasets.load_dataset("json", ...)`` shares
these rules (LLaMA-Factory's engines, ms-swift, TRL's scripts, Unsloth's, EasyR1's and verl's RLHFDataset); each
framework module says which datasets its run has and what its loader does when they fail. Measured on datasets
4.0.0 (LLaMA-Factory 0.9.5 pins <= 4.0.0), 4.8.4 (ms-swift 4.6 takes 4.0 to 4.8.4) and 5.1: from 4.7.0 the loader
keeps a field of mixed types as JSON text (``on_mixed_types="use_json"``) instead of failing, see
``json_schema(mixed_as_json=True)``, and what that does to the rows' values: ``as_loaded`` (a ``Json`` feature
reads a string that is valid JSON as that value; a text field that mixes only after the first table is written as
JSON text from there on).

Also here, as ``datasets`` does them for every framework that loads through it: what a lone UTF-16 surrogate escape
in JSON text does to the load (``surrogate_field``, ``ujson_surrogates``), and how the tables of the other builders
(Parquet, Arrow, CSV) are cast to the first one's types (``tables_problem``).
"""

from __future__ import annotations

import bisect
import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vlmcheck.data.compressed import compression, open_binary
from vlmcheck.data.readers import CSV_CHUNK_ROWS, dataset_kind, pyarrow, schema_features
from vlmcheck.data.readers import iter_rows as read_rows
from vlmcheck.errors import UsageError


class TypeClash(Exception):
    """Two rows of a JSON dataset give one column types ``datasets`` cannot put in one Arrow table (or anything
    else that makes ``load_dataset`` fail on the files: a lone surrogate, a table that cannot be cast)."""


class Unmodelled(UsageError):
    """A load whose outcome vlmcheck does not follow (the message names the file and why): refused, never
    guessed."""


# -- ISO dates: pyarrow's JSON reader (JSON Lines; a JSON array only from datasets 4.7, which hands it to pyarrow as
# lines: pandas read it before, see json_schema) reads a string field as timestamp[s] when every
# value of it in the table is one of these (measured on pyarrow 26 under datasets 4.0.0, 4.8.4 and 5.1): a date
# YYYY-MM-DD, optionally "T" or " " and hh, hh:mm or hh:mm:ss, then optionally "Z" or an offset +hh, +hhmm, +hh:mm
# (only after a time); every field in range (a real calendar day, year 0 included; no second 60, no fraction)
_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d)(?::(\d\d)(?::(\d\d))?)?(Z|([+-])(\d\d)(?::?(\d\d))?)?)?",
                  re.ASCII)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _iso_fields(text: str) -> tuple[int, ...] | None:
    """(year, month, day, hour, minute, second, offset in minutes) of a string pyarrow reads as a timestamp."""
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour, minute, second = (int(g) if g else 0 for g in (m[4], m[5], m[6]))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1] + (month == 2 and leap):
        return None
    offset = 0
    if m[8]:
        oh, om = int(m[9]), int(m[10] or 0)
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * (1 if m[8] == "+" else -1)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return year, month, day, hour, minute, second, offset


def arrow_timestamp(text: str) -> bool:
    """Whether pyarrow's JSON reader takes ``text`` for a timestamp (see _ISO)."""
    return _iso_fields(text) is not None


def as_timestamp(text: str) -> datetime | None:
    """The value datasets returns for ``text`` in a timestamp[s] field: a naive datetime in UTC (the offset
    applied); None where Python's datetime cannot hold it (year 0, or past 9999 once the offset is applied:
    reading the row raises there)."""
    fields = _iso_fields(text)
    if fields is None:
        raise ValueError(f"{text!r} is not a timestamp to pyarrow")
    year, month, day, hour, minute, second, offset = fields
    try:
        return datetime(year, month, day, hour, minute, second) - timedelta(minutes=offset)
    except (ValueError, OverflowError):
        return None


# the JSON kinds as datasets (pyarrow) infers a column's type from them: null goes with anything, int with float,
# an ISO date (JSON Lines only) with text; a list's items and an object's fields must agree in turn (an object's
# fields are the union of its rows'); anything else (a string and a list, a number and a string, a bool and a
# number, an object and a list) makes load_dataset raise (DatasetGenerationError), for .json and .jsonl alike
# (measured on datasets 4.0.0)
DATE = "date"


def json_type(value: Any, where: str = "", mixed_as_json: bool = False, dates: bool = False,
              lone: list[str] | None = None) -> Any:
    """A JSON value's inferred type: None (null), "bool", "int", "float", "str", DATE (with ``dates``: a string
    pyarrow's JSON Lines reader takes for a timestamp), ("list", item type), a dict of field types (an object), or
    JSON (mixed items, with ``mixed_as_json``). ``lone`` (a list) gets the fields whose string or key holds a lone
    surrogate (see ujson_surrogates)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):  # both typed double; only a whole one casts to an earlier table's integers
        return "float" if value.is_integer() else "decimal"
    if isinstance(value, str):
        if lone is not None and not value.isascii() and _LONE.search(value):
            lone.append(where or "a value")
        return DATE if dates and arrow_timestamp(value) else "str"
    if isinstance(value, list):
        item: Any = None
        for v in value:
            item = unify_types(item, json_type(v, where + "[]", mixed_as_json, dates, lone), where + "[]",
                               mixed_as_json)
        return ("list", item)
    if isinstance(value, Mapping):
        if lone is not None:
            lone.extend(_key_name(f"{where}.{k}" if where else str(k)) for k in value
                        if not str(k).isascii() and _LONE.search(str(k)))
        return {str(k): json_type(v, f"{where}.{k}" if where else str(k), mixed_as_json, dates, lone)
                for k, v in value.items()}
    return type(value).__name__


def _kind(t: Any) -> str:
    if t is None:
        return "null"
    if isinstance(t, dict):
        return "an object"
    if isinstance(t, tuple):
        return f"an {t[1]} feature" if t[0] == FEATURE else "a list"
    return {"str": "a string", "int": "a whole number", "float": "a whole number", "decimal": "a decimal number",
            "bool": "true/false", DATE: "ISO dates (a timestamp to pyarrow)"}.get(t, t)


# json_type's numbers, narrowest first: pyarrow merges them into the widest
NUMBERS = ("int", "float", "decimal")


# datasets >= 4.7 (MIXED_AS_JSON): a field whose values clash is written as JSON text; any later value fits it
JSON = "json"
MIXED_AS_JSON = (4, 7)


def unify_types(a: Any, b: Any, where: str, mixed_as_json: bool = False) -> Any:
    """The type both fit, as pyarrow's inference merges them; where there is none, TypeClash, or with
    ``mixed_as_json`` JSON at the deepest field that clashes (the one pyarrow's parse error names)."""
    if JSON in (a, b):
        return JSON
    if a is None:
        return b
    if a == b:  # equal structs may list their fields in another order: pyarrow keeps the first row's
        return a
    if b is None:
        return a
    if a in NUMBERS and b in NUMBERS:
        return max(a, b, key=NUMBERS.index)
    if a in ("str", DATE) and b in ("str", DATE):  # a string that is not a date makes the field text
        return "str"
    if isinstance(a, tuple) and isinstance(b, tuple):
        return ("list", unify_types(a[1], b[1], where + "[]", mixed_as_json))
    if isinstance(a, dict) and isinstance(b, dict):  # merged into ``a`` (a fresh type of json_type's): the new keys
        for k, v in b.items():
            a[k] = unify_types(a.get(k), v, f"{where}.{k}" if where else k, mixed_as_json)
        return a
    if mixed_as_json and where:
        return JSON
    raise TypeClash(f"{where or 'a column'} is {_kind(b)} here and {_kind(a)} in an earlier row")


# datasets' Json builder (packaged_modules/json/json.py): a JSON Lines file is read in chunks of 10 MiB, each
# finished at the end of its line, and each chunk becomes a pyarrow table cast to the first table's schema
# (ArrowWriter.write_table); a JSON array is read whole (pandas). Measured on datasets 4.0.0 with files past 10 MiB:
# a later chunk may lack fields (nulls), give numbers or true/false where the first has strings (cast to strings),
# whole numbers or true/false where it has numbers, but a field the first chunk lacks (top level or nested), values
# where it has only nulls, decimals where it has whole numbers, strings where it has numbers (unless they read as
# numbers: judged a stop here) or another kind (a list after strings) stop the load.
DATASETS_JSON_CHUNK = 10 << 20


def cast_problem(first: Any, later: Any, where: str = "") -> str | None:
    """Why a later chunk's type cannot be cast to the first chunk's (None: it can), as datasets' table_cast casts
    it (allow_primitive_to_str)."""
    if later == JSON:  # a later chunk's clashing field, written as JSON text
        later = "str"
    if later is None or first == later or first == JSON:
        return None
    if isinstance(later, tuple) and later[0] == FEATURE:  # as a later table, a media feature is its storage
        later = {"bytes": "binary", "path": "str"}
    if isinstance(first, tuple) and first[0] == FEATURE:  # a media feature takes paths, and structs of them
        if later == "str" or isinstance(later, dict) and set(later) <= {"bytes", "path"} and \
                later.get("bytes") in (None, "binary") and later.get("path") in (None, "str"):
            return None
        return f"{where or 'a column'} is {_kind(later)} here and an {first[1]} feature in the first table"
    if first == "str" and later in (*NUMBERS, "bool", DATE):  # a later chunk's dates cast to text (see RECASTS)
        return None
    if isinstance(first, str) and isinstance(later, str) and (first, later) in RECASTS:
        return None
    if first in (*NUMBERS, "bool") and later in (*NUMBERS, "bool") and not (
            later == "decimal" and first in ("int", "bool")):
        return None
    name = where or "a column"
    if isinstance(first, dict) and isinstance(later, dict):
        for key, kind in later.items():
            inner = f"{where}.{key}" if where else key
            if key not in first:
                return f"{inner} is here and not in the first table"
            problem = cast_problem(first[key], kind, inner)
            if problem:
                return problem
        return None
    if isinstance(first, tuple) and isinstance(later, tuple):
        return cast_problem(first[1], later[1], where + "[]")
    if first is None:
        return f"{name} is {_kind(later)} here and only null in the first table"
    return f"{name} is {_kind(later)} here and {_kind(first)} in the first table"


Path_ = tuple[str, ...]  # a field: its keys, "[]" for a list's items

# the casts between a later table's timestamps and the first table's field that load and change the values: to
# text "YYYY-MM-DD hh:mm:ss" (UTC), to whole seconds since 1970, and whole numbers to timestamps (measured on
# datasets 4.0.0, 4.8.4 and 5.1; decimals, true/false and text after timestamps, timestamps after anything else,
# fail)
RECASTS = {("str", DATE): "text", ("int", DATE): "seconds", (DATE, "int"): "timestamp"}


def _recasts(first: Any, later: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """The fields of a later table that cast to the first's with RECASTS, and how."""
    if isinstance(first, str) and isinstance(later, str) and (first, later) in RECASTS:
        yield path, RECASTS[first, later]
    elif isinstance(first, dict) and isinstance(later, dict):
        for key, kind in later.items():
            if key in first:
                yield from _recasts(first[key], kind, (*path, key))
    elif isinstance(first, tuple) and isinstance(later, tuple):
        yield from _recasts(first[1], later[1], (*path, "[]"))




# -- lone UTF-16 surrogates: JSON text can escape one half of a surrogate pair alone ("\ud800"). Python's json reads
# it as a lone surrogate; datasets never hands one over (measured on datasets 4.0.0, 4.8.4 and 5.1 with pandas 3.1
# and pyarrow 26, in keys and values alike): pyarrow's JSON reader (a JSON Lines file) refuses the file ("The
# surrogate pair in string is invalid"), and its fallback, pandas reading the whole file as one JSON value, fails
# too unless the file is one line (then pandas makes a table of its columns: not followed here); ujson (datasets'
# reader of a JSON array: pandas.read_json, and from 4.7 the array's conversion to lines; from 4.7 also every
# line of a JSON Lines chunk once a field is kept as JSON text) drops a high surrogate that no "\u" escape
# follows, fails on one that another "\u" escape follows that is not its low half ("Unpaired high surrogate"), and
# keeps a lone low one, which pandas or pyarrow then cannot encode (the load fails).
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.S)
_LONE = re.compile("[\ud800-\udfff]")


def _key_name(name: str) -> str:
    return f"the key '{name.encode('utf-8', 'backslashreplace').decode()}'"


def surrogate_field(value: Any) -> str | None:
    """The field (``conversations[].value``, or a key) of the first string or object key of ``value`` that holds a
    lone surrogate (one Python's json read from a lone escape), or None."""
    lone: list[str] = []
    try:
        json_type(value, lone=lone)
    except (TypeClash, RecursionError):
        return None
    return lone[0] if lone else None


def _as_ujson_reads(file: Path, span: tuple[int, int], where: str, lines: bool) -> Any:
    """A row holding a lone surrogate (in ``where``) as ujson reads it from the file's bytes ``span``; TypeClash
    where even ujson (or pandas after it) fails on it, as then every reader of datasets does."""
    try:
        return json.loads(ujson_surrogates(_raw_text(file, span)))
    except ValueError as e:
        why = (f", which pyarrow's JSON reader refuses ('The surrogate pair in string is invalid'), and so does "
               f"every fallback ({e})") if lines else f": {e}"
        raise TypeClash(f"{where} holds a lone UTF-16 surrogate escape{why}") from None


def ujson_surrogates(text: str) -> str:
    """``text`` (JSON) with its surrogate escapes as ujson reads them: a high one that no "\\u" escape follows is
    dropped, a pair is kept; ValueError (the load fails) for a high one followed by another "\\u" escape that is
    not its low half, or a lone low one."""
    escapes = list(_ESCAPE.finditer(text))
    out, last, skip = [], 0, False
    for i, m in enumerate(escapes):
        if skip or m[1] is None:
            skip = False
            continue
        code = int(m[1], 16)
        if 0xD800 <= code <= 0xDBFF:
            after = escapes[i + 1] if i + 1 < len(escapes) else None
            if after is not None and after.start() == m.end() and after[1] is not None:
                if not 0xDC00 <= int(after[1], 16) <= 0xDFFF:
                    raise ValueError(f"{m[0]} before {after[0]} is a high surrogate without its low half, which "
                                     "ujson refuses ('Unpaired high surrogate')")
                skip = True  # a pair
                continue
            out.append(text[last:m.start()])
            last = m.end()
        elif 0xDC00 <= code <= 0xDFFF:
            raise ValueError(f"{m[0]} is a lone low surrogate, which ujson keeps and pandas / pyarrow cannot "
                             "encode (UnicodeEncodeError)")
    out.append(text[last:])
    return "".join(out)


def _raw_text(file: Path, span: tuple[int, int]) -> str:
    """The text of the file between two byte offsets (of its decompressed stream)."""
    with open_binary(file) as f:
        if compression(file) is None:
            f.seek(span[0])
        else:
            left = span[0]
            while left > 0:
                got = f.read(min(left, 1 << 20))
                if not got:
                    break
                left -= len(got)
        return f.read(span[1] - span[0]).decode("utf-8").lstrip("\ufeff")


def _lone_in_lines(pending: list[tuple[int, Any, str]], plan: LoadPlan, k: int, file: Path, *, mixed_as_json: bool,
                   before: bool, grew: bool, only_row: bool) -> None:
    """What becomes of the JSON Lines rows of one chunk that hold a lone surrogate (``pending``: row number, the
    row as ujson reads it, the field): from datasets 4.7 a chunk whose lines are written again with ujson
    (``before``: some field was already kept as JSON text) loads them as ujson reads them; one where a field
    becomes JSON text only in this chunk (``grew``) depends on which error pyarrow meets first (not followed);
    otherwise pyarrow reads the chunk and refuses it."""
    for number, read, where in pending:
        if mixed_as_json and before:
            plan.surrogates[k, number] = read
        elif mixed_as_json and grew:
            plan.surrogates[k, number] = None
        elif only_row:
            raise Unmodelled(f"{file.name}, row {number}: {where} holds a lone UTF-16 surrogate escape, which "
                             "pyarrow's JSON reader refuses; datasets then reads the one-line file with pandas as a "
                             "table of its columns, which vlmcheck does not follow")
        else:
            raise TypeClash(f"{file.name}, row {number}: {where} holds a lone UTF-16 surrogate escape (\\ud800 to "
                            "\\udfff without its other half), which pyarrow's JSON reader refuses ('The surrogate "
                            "pair in string is invalid'; its fallback, pandas reading the whole file as one JSON "
                            "value, fails too)")
    pending.clear()


@dataclass
class LoadPlan:
    """What datasets >= 4.7 does to the values of the rows it loads (see ``as_loaded``): ``decoded``, the fields
    that are JSON in the first table (a ``Json`` feature: every value comes back through ``json.loads``, so a string
    that reads as JSON comes back as that value); ``encoded``, per field that was text in the first table and
    mixed in a later one, the (file index, row) it is written as JSON text from (every string that does not read as
    JSON is quoted); ``unmodelled``, the same for fields written some way vlmcheck does not follow."""

    decoded: list[Path_] = field(default_factory=list)
    encoded: list[tuple[int, int, Path_]] = field(default_factory=list)
    unmodelled: list[tuple[int, int, Path_]] = field(default_factory=list)
    # the fields the first table types timestamp[s] (every value an ISO date: see DATE): every row's value there
    # comes back as a datetime (any datasets version)
    timestamps: list[Path_] = field(default_factory=list)
    # per later table whose field casts by RECASTS: (file index, its first and last row, the field, how)
    recast: list[tuple[int, int, int, Path_, str]] = field(default_factory=list)
    # the table's columns, in datasets' order (None: not known); a row's missing column loads as None
    columns: tuple[str, ...] | None = None
    # each file's first row, numbered over all the files (see place)
    starts: list[int] = field(default_factory=list)
    # per row holding a lone surrogate escape that loads (file index, row number in its file): the row as ujson
    # reads it (see ujson_surrogates), or None where vlmcheck does not follow which reader reads it
    surrogates: dict[tuple[int, int], Any] = field(default_factory=dict)

    def place(self, number: int) -> tuple[int, int]:
        """A row's (file index, row number in its file) from its number over all the files."""
        k = max(bisect.bisect_right(self.starts, number) - 1, 0)
        return k, number - (self.starts[k] if self.starts else 0)

    def __bool__(self) -> bool:
        return bool(self.decoded or self.encoded or self.unmodelled or self.timestamps or self.recast
                    or self.surrogates)


def json_schema(files: Sequence[Path], mixed_as_json: bool = False, plan: LoadPlan | None = None) -> Any:
    """The column types (json_type's) of the table ``datasets.load_dataset("json")`` makes of ``files``: the
    first table's (a JSON Lines file's first chunk, a JSON array whole), every later table checked against it (see
    DATASETS_JSON_CHUNK). TypeClash naming the file and row where the load fails; rows that are not objects are
    left to the row judge.

    ``mixed_as_json`` (datasets >= 4.7): a field whose values clash within a table becomes JSON text instead of
    failing, and so does, in the first table, an object field whose objects have other field sets (or none) and a
    field mixing objects or lists with other values (searched only when every line of that chunk parses: a blank
    line, a byte order mark, an unreadable line or an integer past 64 bits turns the search off, as there); a field
    once JSON stays JSON in every later table. The casts between tables are the same, but for a top-level object
    after text when the first file is JSON Lines (written as text). ``plan`` gets what the load does to values."""
    first: tuple[Any, str] | None = None  # the first table's type, and where it comes from
    mib = DATASETS_JSON_CHUNK >> 20
    marked: list[Path_] = []  # the fields written as JSON text so far
    plan = plan if plan is not None else LoadPlan()
    first_lines = False
    seen = 0  # rows of the files before this one
    for k, file in enumerate(files):
        plan.starts.append(seen)
        spans: list[tuple[int, int]] = []
        lines = dataset_kind(file) == "jsonl"
        # pyarrow reads ISO dates as timestamps: JSON Lines always, a JSON array from datasets 4.7 (it turns the
        # array into lines for pyarrow; before, pandas read it, and kept them text)
        dates = lines or mixed_as_json
        table: Any = None
        rows = opened = 0  # rows of the current table, and its first row's number in the file
        limit = DATASETS_JSON_CHUNK
        search = _StructSearch() if mixed_as_json and first is None else None
        if first is None:
            first_lines = lines
        if search is not None and _has_bom(file):
            search.off = True
        pending: list[tuple[int, Any, str]] = []  # this chunk's rows with a lone surrogate (_lone_in_lines)
        for number, row in enumerate(read_rows(file, spans=spans)):
            if lines and rows and spans[-1][0] > limit:  # this row opens the next chunk
                end = _chunk_end(file, limit, spans[-2][1], spans[-1][0])
                if search is not None and end > spans[-2][1]:
                    search.off = True  # a blank line closes the first chunk
                before, count = _json_before(marked, search), len(marked)
                first = _close(first, table, search, marked, plan, (k, opened, number - 1), first_lines,
                               f"{file.name}, rows {opened}-{number - 1}", f"the first {mib} MiB of {file.name}")
                _lone_in_lines(pending, plan, k, file, mixed_as_json=mixed_as_json, before=before,
                               grew=len(marked) > count, only_row=False)
                limit = end + DATASETS_JSON_CHUNK
                table, rows, opened, search = None, 0, number, None
            if search is not None and lines and spans[-1][0] > (spans[-2][1] if len(spans) > 1 else 0):
                search.off = True  # a blank line before this row (the first line too)
            del spans[:-2]  # only the last two rows' places are needed
            rows += 1
            seen += 1
            if not lines and _past_64_bits(row):  # ujson reads a JSON array (any datasets version) and refuses it
                raise TypeClash(f"{file.name}, row {number}: a whole number past 64 bits, which ujson (datasets' "
                                "reader of a JSON array) refuses ('Value is too big')")
            if isinstance(row, Mapping):
                lone: list[str] = []
                try:
                    kind = json_type(row, "", mixed_as_json, dates, lone)
                    if lone:  # read again as ujson reads it (the escape as written decides)
                        row = _as_ujson_reads(file, spans[-1], lone[0], lines)
                        if lines:
                            pending.append((number, row, lone[0]))
                        else:  # ujson reads every JSON array
                            plan.surrogates[k, number] = row
                        kind = json_type(row, "", mixed_as_json, dates)
                    table = unify_types(table, kind, "", mixed_as_json)
                except TypeClash as e:
                    raise TypeClash(f"{file.name}, row {number}: {e}") from None
                if search is not None:
                    search.add(row)
            elif search is not None:
                search.off = True  # a line ujson cannot read
        if rows:
            if search is not None and lines and spans and _size(file) not in (None, spans[-1][1]):
                search.off = True  # blank lines after the last row
            before, count = _json_before(marked, search), len(marked)
            first = _close(first, table, search, marked, plan, (k, opened, opened + rows - 1), first_lines,
                           f"{file.name}, rows {opened}-{opened + rows - 1}", file.name)
            _lone_in_lines(pending, plan, k, file, mixed_as_json=mixed_as_json, before=before,
                           grew=len(marked) > count, only_row=opened == 0 and rows == 1)
    return first[0] if first else None


def _json_before(marked: list[Path_], search: _StructSearch | None) -> bool:
    """Whether datasets >= 4.7 writes a JSON Lines chunk's lines again with ujson before pyarrow reads them: some
    field is JSON text already (an earlier chunk's), or the first chunk's search finds one."""
    return bool(marked) or (search is not None and not search.off and bool(search.mixed()))


def _past_64_bits(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds a whole number outside [-2**63, 2**64), which ujson cannot read."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(1 << 63) <= value < (1 << 64)
    if depth > 64:
        return False
    if isinstance(value, list):
        return any(_past_64_bits(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return any(_past_64_bits(v, depth + 1) for v in value.values())
    return False


def _has_bom(file: Path) -> bool:
    with open_binary(file) as f:
        return f.read(3) == b"\xef\xbb\xbf"


def _size(file: Path) -> int | None:
    return None if compression(file) is not None else file.stat().st_size


def _chunk_end(file: Path, limit: int, row_end: int, next_start: int) -> int:
    """Where a chunk ends: datasets reads ``limit``'s bytes, then ``readline`` finishes the line, so the chunk ends
    at the first line end past ``limit``: the last row's end when it straddles ``limit``, else the end of the blank
    line that does (read from the file: only blank lines lie between ``row_end`` and ``next_start``; in a
    compressed file, where that means decompressing again, the row's end is taken)."""
    if row_end > limit or compression(file) is not None:
        return row_end
    with open(file, "rb") as f:
        f.seek(row_end)
        gap = f.read(next_start - row_end)
    at = gap.find(b"\n", limit - row_end)
    return row_end + at + 1 if at >= 0 else next_start


def _close(first: tuple[Any, str] | None, table: Any, search: _StructSearch | None, marked: list[Path_],
           plan: LoadPlan, rows: tuple[int, int, int], first_lines: bool, here: str, place: str) -> tuple[Any, str]:
    """A finished table (``rows``: file index, its first and last row): its JSON fields (the mixed objects of the
    first one's search, the fields marked before) set, the fields newly JSON remembered (in ``plan`` too, with
    the casts of its timestamps), then _next_table."""
    at = rows[:2]
    if search is not None and not search.off:
        for path in search.mixed():
            table = _set_json(table, path)
    for path in marked:
        table = _set_json(table, path)
    new = [p for p in _json_paths(table, ()) if p not in marked]
    marked.extend(new)
    if first is None:
        plan.decoded.extend(new)
        plan.timestamps.extend(_kind_paths(table, (), DATE))
    else:
        plan.encoded.extend((*at, p) for p in new if p not in plan.decoded)
        if first_lines and isinstance(first[0], dict) and isinstance(table, dict):
            # ``_cast_table``: a top-level object where the first table has text is written as JSON text (pandas)
            plan.unmodelled.extend((*at, (key,)) for key, kind in table.items()
                                   if first[0].get(key) == "str" and isinstance(kind, dict))
            table = {key: "str" if first[0].get(key) == "str" and isinstance(kind, dict) else kind
                     for key, kind in table.items()}
        plan.recast.extend((*rows, path, how) for path, how in _recasts(first[0], table))
    return _next_table(first, table, here, place)


class _StructSearch:
    """The first table's fields datasets >= 4.7 writes as JSON text before parsing (its search for mixed objects):
    per field (a path of keys, "[]" for a list's items) the kinds of its values, the first object's keys, and
    whether another object has other keys."""

    def __init__(self) -> None:
        self.kinds: dict[Path_, set[str]] = {}
        self.keys: dict[Path_, frozenset[str]] = {}
        self.other: set[Path_] = set()
        self.off = False

    def add(self, value: Any, path: Path_ = (), depth: int = 0) -> None:
        if value is None or depth > 64:
            return
        if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
            self.off = True  # past what ujson reads: the search raises and is skipped
        kind = "dict" if isinstance(value, Mapping) else "list" if isinstance(value, list) else "value"
        self.kinds.setdefault(path, set()).add(kind)
        if kind == "dict":
            keys = frozenset(str(k) for k in value)
            if self.keys.setdefault(path, keys) != keys:
                self.other.add(path)
            for k, v in value.items():
                self.add(v, (*path, str(k)), depth + 1)
        elif kind == "list":
            for v in value:
                self.add(v, (*path, "[]"), depth + 1)

    def mixed(self) -> list[Path_]:
        found: set[Path_] = set()
        for path in sorted(self.kinds, key=len):
            if any(path[:n] in found for n in range(len(path))):
                continue  # inside a field already written as JSON
            kinds = self.kinds[path]
            if kinds == {"dict"}:
                if path and (path in self.other or not self.keys[path]):
                    found.add(path)
            elif len(kinds) > 1 and kinds & {"dict", "list"}:
                found.add(path)
        return sorted(found)


def _set_json(t: Any, path: Path_) -> Any:
    """``t`` with the field at ``path`` JSON (unchanged where ``t`` has no such field)."""
    if not path:
        return JSON
    head, rest = path[0], path[1:]
    if head == "[]" and isinstance(t, tuple):
        return ("list", _set_json(t[1], rest))
    if isinstance(t, dict) and head in t:
        return {**t, head: _set_json(t[head], rest)}
    return t


def _json_paths(t: Any, path: Path_) -> list[Path_]:
    return _kind_paths(t, path, JSON)


def _kind_paths(t: Any, path: Path_, kind: str) -> list[Path_]:
    """The fields of type ``t`` (json_type's) whose type is ``kind``."""
    if t == kind:
        return [path]
    if isinstance(t, tuple):
        return _kind_paths(t[1], (*path, "[]"), kind)
    if isinstance(t, dict):
        return [p for k, v in t.items() for p in _kind_paths(v, (*path, k), kind)]
    return []


def _next_table(first: tuple[Any, str] | None, table: Any, here: str, place: str) -> tuple[Any, str]:
    """The first table (``table`` and its ``place`` when there is none yet); TypeClash where ``table`` cannot be
    cast to it."""
    if first is None:
        return table, place
    problem = cast_problem(first[0], table)
    if problem:
        raise TypeClash(f"{here}: {problem.replace('the first table', first[1])}")
    return first


# -- the values the load returns ----------------------------------------------------------------------------------
class Rewritten(dict[str, Any]):
    """A row as datasets returns it, changed from the file's (``fields``: the fields whose values changed;
    ``why``: how the load changed them)."""

    fields: list[str]
    why: str
    surrogates: list[str] = []  # the fields a lone surrogate escape was dropped from (see ujson_surrogates)


class NotFollowed:
    """A row whose values datasets changes in a way vlmcheck does not follow (``reason``): not counted."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def as_loaded(row: Any, plan: LoadPlan, at: tuple[int, int], *, timestamps: bool = False) -> Any:
    """``row`` (file index and row number ``at``) as datasets returns it under ``plan``: a Rewritten copy when a
    value changes, a NotFollowed when vlmcheck cannot say how, else the row itself. A value of a timestamp field
    (``plan.timestamps``) is a datetime with ``timestamps`` (for a framework module that follows what its code does
    with one), else the row is NotFollowed."""
    if not plan or not isinstance(row, Mapping):
        return row
    lone: list[str] = []
    if at in plan.surrogates:
        read = plan.surrogates[at]
        if read is None:
            return NotFollowed(f"this row holds a lone UTF-16 surrogate escape in {surrogate_field(row)}, and whether "
                               "datasets reads its chunk with pyarrow (which refuses it) or ujson (which drops it) "
                               "depends on which error pyarrow meets first")
        lone = sorted({str(k) for k in (*row, *read) if k not in row or k not in read or row[k] != read[k]})
        row = read
    for file, start, path in plan.unmodelled:
        if (file, start) <= at and _has(row, path):
            return NotFollowed(f"datasets writes {'.'.join(path)} as JSON text with pandas (an object where the "
                               "first table has text)")
    for path in plan.timestamps:
        if not timestamps and _has(row, path):
            return NotFollowed(f"datasets loads {'.'.join(path)} as a timestamp, not text (pyarrow reads a JSON "
                               "field whose every value in the first table is an ISO date so)")
    recast = [(path, how) for file, start, last, path, how in plan.recast if (file, start) <= at <= (file, last)]
    for path, how in recast:
        if how == "timestamp" and not timestamps and _has(row, path):
            return NotFollowed(f"datasets loads {'.'.join(path)} as timestamps, not numbers (pyarrow casts this "
                               "part of the file to the first 10 MiB's timestamps)")
    out = copy.deepcopy(dict(row))
    changed: list[str] = list(lone)
    try:
        for path in plan.timestamps:
            out = _change(out, path, _timestamp, changed, ".".join(path))
        for path, how in recast:
            out = _change(out, path, _RECAST[how], changed, ".".join(path))
        for path in plan.decoded:
            out = _change(out, path, _decode, changed, ".".join(path))
        for file, start, path in plan.encoded:
            if (file, start) <= at:
                out = _change(out, path, _encode, changed, ".".join(path))
    except _Unfollowed as e:
        return NotFollowed(str(e))
    if not changed:
        return row
    result = Rewritten(out)
    result.fields = sorted(set(changed))
    result.surrogates = lone
    fields = set(result.fields)
    whys = [why for why, named in (
        ("a lone UTF-16 surrogate escape, which ujson drops", set(lone)),
        ("an ISO date read as a timestamp", {".".join(p) for p in plan.timestamps}),
        ("timestamps cast to the file's first table", {".".join(p) for p, _ in recast}),
        ("a field of mixed types, kept as JSON text", {".".join(p) for p in plan.decoded}
         | {".".join(p) for *_, p in plan.encoded})) if fields & named]
    result.why = "; ".join(whys)
    return result


class _Unfollowed(Exception):
    pass


def _has(value: Any, path: Path_) -> bool:
    if not path:
        return value is not None
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(value, list) and any(_has(v, rest) for v in value)
    return isinstance(value, Mapping) and _has(value.get(head), rest)


def _change(value: Any, path: Path_, how: Callable[[Any], Any], changed: list[str], name: str) -> Any:
    if not path:
        if value is None:
            return None
        new = how(value)
        if type(new) is not type(value) or new != value:
            changed.append(name)
        return new
    head, rest = path[0], path[1:]
    if head == "[]":
        return [_change(v, rest, how, changed, name) for v in value] if isinstance(value, list) else value
    if isinstance(value, dict) and head in value:
        value[head] = _change(value[head], rest, how, changed, name)
    return value


def _timestamp(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    stamp = as_timestamp(value)
    if stamp is None:
        raise _Unfollowed(f"datasets cannot return the timestamp {value!r} (Python's datetime cannot hold it)")
    return stamp


def _stamp_text(value: Any) -> Any:
    """A timestamp cast to text: "YYYY-MM-DD hh:mm:ss", in UTC."""
    stamp = _timestamp(value)
    return stamp if not isinstance(stamp, datetime) else \
        f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d} {stamp.hour:02d}:{stamp.minute:02d}:{stamp.second:02d}"


def _stamp_seconds(value: Any) -> Any:
    """A timestamp cast to a whole number: seconds since 1970-01-01 00:00 UTC."""
    stamp = _timestamp(value)
    return stamp if not isinstance(stamp, datetime) else int((stamp - datetime(1970, 1, 1)).total_seconds())


def _seconds_stamp(value: Any) -> Any:
    """A whole number cast to a timestamp: that many seconds from 1970-01-01 00:00."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    try:
        return datetime(1970, 1, 1) + timedelta(seconds=value)
    except OverflowError:
        raise _Unfollowed(f"datasets cannot return the timestamp of {value} seconds (Python's datetime cannot "
                          "hold it)") from None


_RECAST = {"text": _stamp_text, "seconds": _stamp_seconds, "timestamp": _seconds_stamp}


def _reads_as_json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def _decode(value: Any) -> Any:
    """A ``Json`` feature's value: written as it is when it is a string that reads as JSON, else as its JSON
    text, then read back with ujson: a string that reads as JSON comes back as that value."""
    if isinstance(value, str):
        ok, parsed = _reads_as_json(value)
        return parsed if ok else value
    if _has_float(value):
        raise _Unfollowed("datasets writes a decimal number of a JSON-text field with 10 digits")
    return value


def _encode(value: Any) -> Any:
    """A text field's value once the field is JSON text: a string that reads as JSON as it is, anything else as
    ujson writes it (ASCII only, "/" escaped, no spaces)."""
    if isinstance(value, str) and _reads_as_json(value)[0]:
        return value
    if _has_float(value):
        raise _Unfollowed("datasets writes a decimal number of a JSON-text field with 10 digits")
    return ujson_text(value)


def ujson_text(value: Any) -> str:
    """``value`` as datasets' ujson_dumps writes it: no spaces, "/" escaped, every character past ASCII escaped
    (astral ones as surrogate pairs), DEL left as it is; decimal numbers are not written here."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_float(v) for v in value.values())
    return False


def json_columns_problem(files: Sequence[Path]) -> None:
    """The columns of a many-file JSON dataset as ``datasets`` 4.0.0 loads it (``files`` in the order it reads
    them): each file is a table of its own, cast to the first one's columns. A later file may lack some (nulls), but
    one with a column the first lacks fails the load ('column names don't match'); so it loads only with a file
    holding every column listed first. TypeClash where no file does (it fails whatever the order), ListingOrder
    where it depends on which file ``os.listdir`` lists first, None where every file has the same columns. Files
    without rows make no table and are passed over. Measured on datasets 4.0.0, JSON arrays and JSON Lines alike
    (from 5.0 a JSON array's files must have the very same columns, in the same order)."""
    columns: list[tuple[Path, set[str]]] = []
    for file in files:
        keys: set[str] = set()
        rows = 0
        for row in read_rows(file):
            rows += 1
            if isinstance(row, Mapping):
                keys.update(row)
        if rows:
            columns.append((file, keys))
    if not columns or all(keys == columns[0][1] for _, keys in columns):
        return
    (listed, first), everything = columns[0], set().union(*(keys for _, keys in columns))
    full = next((file for file, keys in columns if keys == everything), None)
    later = next(((file, sorted(keys - first)) for file, keys in columns[1:] if keys - first), None)
    if full is None:
        assert later is not None
        raise TypeClash(f"{later[0].name} has columns {later[1]} that {listed.name} (read first) has not (datasets: "
                        "'column names don't match'), and no file has every column: the load fails whichever file "
                        "is listed first")
    if later is None:
        lacking = next(file for file, keys in columns if keys != everything)
        raise ListingOrder(f"{listed.name} is listed first here and has every column, which loads; with "
                           f"{lacking.name} listed first it fails (it lacks {sorted(everything - dict(columns)[lacking])}"
                           ": 'column names don't match')")
    raise ListingOrder(f"{listed.name} is listed first here and lacks columns {later[1]} that {later[0].name} has, "
                       f"which fails ('column names don't match'); with {full.name} listed first the files load")


# -- the other builders: Parquet, Arrow and CSV tables -------------------------------------------------------------
# datasets' "parquet" and "arrow" builders take the features of the first file's schema (its `huggingface` metadata
# included: an Image column is decoded) and cast every table of every file to them; the "csv" builder has no
# features, and each table (one per 10,000-row chunk) is cast to the first one's schema. Measured on datasets 4.0.0:
# a later table may lack a column (nulls) but not add one ("column names don't match"); whole numbers and true/false
# cast to text, text does not cast to numbers ("Failed to parse string"), a column the first table holds only
# nulls in takes nothing else (a CSV chunk's empty column is decimals: text after it fails too); an Image (Video,
# Audio) feature takes paths and structs of bytes and path, but as a later table is such a struct, which casts to
# neither paths nor a struct whose path is null. So with a folder, which file os.listdir lists first can decide
# whether the load fails (tables_problem).
FEATURE = "feature"
_MEDIA = ("Image", "Video", "Audio")


def arrow_kind(t: Any, feature: Any = None) -> Any:
    """json_type's kind of an Arrow type, given the ``datasets`` feature the first table's metadata gives it (an
    Image / Video / Audio feature is (FEATURE, its name)); types json_type has no kind for keep their name."""
    pa = pyarrow()
    if isinstance(feature, Mapping) and feature.get("_type") in _MEDIA:
        return (FEATURE, feature["_type"])
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = feature.get("feature") if isinstance(feature, Mapping) else (
            feature[0] if isinstance(feature, list) and feature else None)
        return ("list", arrow_kind(t.value_type, item))
    if pa.types.is_struct(t):
        fields = feature if isinstance(feature, Mapping) and "_type" not in feature else {}
        return {t.field(i).name: arrow_kind(t.field(i).type, fields.get(t.field(i).name)) for i in range(t.num_fields)}
    for kind, test in (("str", (pa.types.is_string, pa.types.is_large_string)), ("int", (pa.types.is_integer,)),
                       ("decimal", (pa.types.is_floating,)), ("bool", (pa.types.is_boolean,)),
                       ("binary", (pa.types.is_binary, pa.types.is_large_binary))):
        if any(f(t) for f in test):
            return kind
    return None if pa.types.is_null(t) else str(t)


def schema_kinds(schema: Any, *, features: bool) -> dict[str, Any]:
    """A table's columns and their kinds (arrow_kind), read with the ``datasets`` features of the schema's
    metadata when ``features`` (the first table's: what every later one is cast to)."""
    given = schema_features(schema) if features else {}
    return {f.name: arrow_kind(f.type, given.get(f.name)) for f in schema}


class ListingOrder(Exception):
    """The load of a folder's files succeeds with one file listed first and fails with another: what
    ``os.listdir`` lists first (which differs between machines and file systems) decides."""


def _whole_then_decimal(first: Any, later: Any) -> bool:
    """Whether a later table has decimals (doubles) where the first has whole numbers or true/false: whether
    datasets casts them depends on the values (a whole-valued double casts), which vlmcheck does not read."""
    if first in ("int", "bool") and later == "decimal":
        return True
    if isinstance(first, dict) and isinstance(later, dict):
        return any(_whole_then_decimal(first[k], v) for k, v in later.items() if k in first)
    if isinstance(first, tuple) and isinstance(later, tuple) and first[0] == later[0] == "list":
        return _whole_then_decimal(first[1], later[1])
    return False


def table_problem(first: dict[str, Any], later: dict[str, Any]) -> str | None:
    """Why a later table (its columns' kinds) cannot be cast to the first table's (None: it can)."""
    new = sorted(set(later) - set(first))
    if new:
        return f"columns {new} are not in the first table (datasets: 'column names don't match')"
    for column, kind in later.items():
        problem = cast_problem(first[column], kind, column)
        if problem and _whole_then_decimal(first[column], kind):
            raise Unmodelled(f"{column} holds decimals in one table and whole numbers in the first: whether datasets "
                             "casts them depends on their values, which vlmcheck does not follow")
        if problem:
            return problem
    return None


def tables_problem(files: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """The load of tables (``files``: each file's name and its tables' Arrow schemas, in the order datasets reads
    the files) by a builder that casts every table to the first one's types (see FEATURE): TypeClash where it fails
    whichever file is listed first, ListingOrder where the outcome depends on that, None where it loads."""
    later: dict[str, tuple[str, dict[str, Any]]] = {}  # each distinct table (by its kinds), where it is first seen
    firsts: dict[str, tuple[str, dict[str, Any]]] = {}  # each file's first table, as the first one of the load
    for name, schemas in files:
        for n, schema in enumerate(schemas):
            kinds = schema_kinds(schema, features=False)
            label = name if len(schemas) == 1 else f"{name}, rows from {n * CSV_CHUNK_ROWS}"
            later.setdefault(repr(kinds), (label, kinds))
            if n == 0:
                firsts.setdefault(name, (name, schema_kinds(schema, features=True)))
    known: dict[str, str | None] = {}  # per distinct first table: the first problem of the load
    outcomes: dict[str, str | None] = {}  # per file listed first: the same
    for name, (_, target) in firsts.items():
        key = repr(target)
        if key not in known:
            known[key] = next((f"{label}: {problem}" for label, kinds in later.values()
                               if (problem := table_problem(target, kinds))), None)
        outcomes[name] = known[key]
    if not files:
        return
    listed = files[0][0]
    here = outcomes[listed]
    other = next((name for name in firsts if (outcomes[name] is None) != (here is None)), None)
    if other is None:
        if here is not None:
            raise TypeClash(f"{here} (every table is cast to the types of {listed}, read first)")
        return
    if here is not None:
        raise ListingOrder(f"{listed} is listed first here and every table is cast to its types, which fails ({here});"
                           f" with {other} listed first the files load")
    raise ListingOrder(f"{listed} is listed first here and every table is cast to its types, which loads; with "
                       f"{other} listed first it fails ({outcomes[other]})")
