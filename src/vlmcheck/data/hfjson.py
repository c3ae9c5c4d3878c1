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
from vlmcheck.data.readers import dataset_kind
from vlmcheck.data.readers import iter_rows as read_rows


class TypeClash(Exception):
    """Two rows of a JSON dataset give one column types ``datasets`` cannot put in one Arrow table."""


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


def json_type(value: Any, where: str = "", mixed_as_json: bool = False, dates: bool = False) -> Any:
    """A JSON value's inferred type: None (null), "bool", "int", "float", "str", DATE (with ``dates``: a string
    pyarrow's JSON Lines reader takes for a timestamp), ("list", item type), a dict of field types (an object), or
    JSON (mixed items, with ``mixed_as_json``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):  # both typed double; only a whole one casts to an earlier table's integers
        return "float" if value.is_integer() else "decimal"
    if isinstance(value, str):
        return DATE if dates and arrow_timestamp(value) else "str"
    if isinstance(value, list):
        item: Any = None
        for v in value:
            item = unify_types(item, json_type(v, where + "[]", mixed_as_json, dates), where + "[]", mixed_as_json)
        return ("list", item)
    if isinstance(value, Mapping):
        return {str(k): json_type(v, f"{where}.{k}" if where else str(k), mixed_as_json, dates)
                for k, v in value.items()}
    return type(value).__name__


def _kind(t: Any) -> str:
    if t is None:
        return "null"
    if isinstance(t, dict):
        return "an object"
    if isinstance(t, tuple):
        return "a list"
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
    if a is None or a == b:
        return b
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

    def place(self, number: int) -> tuple[int, int]:
        """A row's (file index, row number in its file) from its number over all the files."""
        k = max(bisect.bisect_right(self.starts, number) - 1, 0)
        return k, number - (self.starts[k] if self.starts else 0)

    def __bool__(self) -> bool:
        return bool(self.decoded or self.encoded or self.unmodelled or self.timestamps or self.recast)


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
        for number, row in enumerate(read_rows(file, spans=spans if lines else None)):
            if lines and rows and spans[-1][0] > limit:  # this row opens the next chunk
                end = _chunk_end(file, limit, spans[-2][1], spans[-1][0])
                if search is not None and end > spans[-2][1]:
                    search.off = True  # a blank line closes the first chunk
                first = _close(first, table, search, marked, plan, (k, opened, number - 1), first_lines,
                               f"{file.name}, rows {opened}-{number - 1}", f"the first {mib} MiB of {file.name}")
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
                if search is not None:
                    search.add(row)
                try:
                    table = unify_types(table, json_type(row, "", mixed_as_json, dates), "", mixed_as_json)
                except TypeClash as e:
                    raise TypeClash(f"{file.name}, row {number}: {e}") from None
            elif search is not None:
                search.off = True  # a line ujson cannot read
        if rows:
            if search is not None and lines and spans and _size(file) not in (None, spans[-1][1]):
                search.off = True  # blank lines after the last row
            first = _close(first, table, search, marked, plan, (k, opened, opened + rows - 1), first_lines,
                           f"{file.name}, rows {opened}-{opened + rows - 1}", file.name)
    return first[0] if first else None


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
    changed: list[str] = []
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
    fields = set(result.fields)
    whys = [why for why, named in (
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


def new_columns(files: Sequence[Path]) -> tuple[Path, list[str]] | None:
    """``datasets`` loads each file of a many-file dataset as a table of its own and casts the later ones to the
    first one's columns: a later file may lack some (nulls), but one with a column the first lacks fails the load
    ('column names don't match'). That file and its new columns, or None."""
    columns = []
    for file in files:
        keys: set[str] = set()
        for row in read_rows(file):
            if isinstance(row, Mapping):
                keys.update(row)
        columns.append(keys)
    for file, keys in zip(files[1:], columns[1:]):
        new = sorted(keys - columns[0])
        if new:
            return file, new
    return None
