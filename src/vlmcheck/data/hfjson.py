"""How the ``datasets`` library loads a JSON / JSON Lines dataset: the column types it infers, the 10 MiB chunks a
JSON Lines file is read in, the casts between chunks and between the files of one dataset, and which of them make
``load_dataset`` fail before training starts.

Every framework that reads a local .json / .jsonl dataset through ``datasets.load_dataset("json", ...)`` shares
these rules (LLaMA-Factory's engines, ms-swift, TRL's scripts, Unsloth's, EasyR1's and verl's RLHFDataset); each
framework module says which datasets its run has and what its loader does when they fail. Measured on datasets
4.0.0 (LLaMA-Factory 0.9.5 pins <= 4.0.0), 4.8.4 (ms-swift 4.6 takes 4.0 to 4.8.4) and 5.1: from 4.7.0 the loader
keeps a field of mixed types as JSON text (``on_mixed_types="use_json"``, a ``Json`` feature decoded back to the
row's own values) instead of failing, see ``json_schema(mixed_as_json=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmcheck.data.compressed import compression
from vlmcheck.data.readers import dataset_kind
from vlmcheck.data.readers import iter_rows as read_rows


class TypeClash(Exception):
    """Two rows of a JSON dataset give one column types ``datasets`` cannot put in one Arrow table."""


# the JSON kinds as datasets (pyarrow) infers a column's type from them: null goes with anything, int with float;
# a list's items and an object's fields must agree in turn (an object's fields are the union of its rows');
# anything else (a string and a list, a number and a string, a bool and a number, an object and a list) makes
# load_dataset raise (DatasetGenerationError), for .json and .jsonl alike (measured on datasets 4.0.0)
def json_type(value: Any, where: str = "", mixed_as_json: bool = False) -> Any:
    """A JSON value's inferred type: None (null), "bool", "int", "float", "str", ("list", item type), a dict of
    field types (an object), or JSON (mixed items, with ``mixed_as_json``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):  # both typed double; only a whole one casts to an earlier table's integers
        return "float" if value.is_integer() else "decimal"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        item: Any = None
        for v in value:
            item = unify_types(item, json_type(v, where + "[]", mixed_as_json), where + "[]", mixed_as_json)
        return ("list", item)
    if isinstance(value, Mapping):
        return {str(k): json_type(v, f"{where}.{k}" if where else str(k), mixed_as_json) for k, v in value.items()}
    return type(value).__name__


def _kind(t: Any) -> str:
    if t is None:
        return "null"
    if isinstance(t, dict):
        return "an object"
    if isinstance(t, tuple):
        return "a list"
    return {"str": "a string", "int": "a whole number", "float": "a whole number", "decimal": "a decimal number",
            "bool": "true/false"}.get(t, t)


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
    if isinstance(a, tuple) and isinstance(b, tuple):
        return ("list", unify_types(a[1], b[1], where + "[]", mixed_as_json))
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: unify_types(a.get(k), b.get(k), f"{where}.{k}" if where else k, mixed_as_json)
                for k in {**a, **b}}
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
    if first == "str" and later in (*NUMBERS, "bool"):
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


def json_schema(files: Sequence[Path], mixed_as_json: bool = False) -> Any:
    """The column types (json_type's) of the table ``datasets.load_dataset("json")`` makes of ``files``: the
    first table's (a JSON Lines file's first chunk, a JSON array whole), every later table checked against it (see
    DATASETS_JSON_CHUNK). TypeClash naming the file and row where the load fails; rows that are not objects are
    left to the row judge.

    ``mixed_as_json`` (datasets >= 4.7): a field whose values clash within a table becomes JSON text instead of
    failing, and so does, in the first table, an object field whose objects have other field sets (or none) and a
    field mixing objects or lists with other values (read only when every line of that chunk parses: a blank line
    turns the search off, as there); a field once JSON stays JSON in every later table. The casts between tables
    are the same."""
    first: tuple[Any, str] | None = None  # the first table's type, and where it comes from
    mib = DATASETS_JSON_CHUNK >> 20
    marked: list[tuple[str, ...]] = []  # the fields written as JSON text so far
    for file in files:
        spans: list[tuple[int, int]] = []
        lines = dataset_kind(file) == "jsonl"
        table: Any = None
        rows = opened = 0  # rows of the current table, and its first row's number in the file
        limit = DATASETS_JSON_CHUNK
        search = _StructSearch() if mixed_as_json and first is None else None
        for number, row in enumerate(read_rows(file, spans=spans if lines else None)):
            if lines and rows and spans[-1][0] > limit:  # this row opens the next chunk
                first = _close(first, table, search, marked, f"{file.name}, rows {opened}-{number - 1}",
                               f"the first {mib} MiB of {file.name}")
                limit = _chunk_end(file, limit, spans[-2][1], spans[-1][0]) + DATASETS_JSON_CHUNK
                table, rows, opened, search = None, 0, number, None
            if search is not None and lines and spans[-1][0] > (spans[-2][1] if len(spans) > 1 else 0):
                search.blank = True  # a blank line before this row (the first line too)
            del spans[:-2]  # only the last two rows' places are needed
            rows += 1
            if isinstance(row, Mapping):
                if search is not None:
                    search.add(row)
                try:
                    table = unify_types(table, json_type(row, "", mixed_as_json), "", mixed_as_json)
                except TypeClash as e:
                    raise TypeClash(f"{file.name}, row {number}: {e}") from None
        if rows:
            first = _close(first, table, search, marked, f"{file.name}, rows {opened}-{opened + rows - 1}",
                           file.name)
    return first[0] if first else None


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


def _close(first: tuple[Any, str] | None, table: Any, search: _StructSearch | None, marked: list[tuple[str, ...]],
           here: str, place: str) -> tuple[Any, str]:
    """A finished table: its JSON fields (the mixed objects of the first one's search, the fields marked before)
    set, the fields newly JSON remembered, then _next_table."""
    if search is not None and not search.blank:
        for path in search.mixed():
            table = _set_json(table, path)
    for path in marked:
        table = _set_json(table, path)
    marked.extend(p for p in _json_paths(table, ()) if p not in marked)
    return _next_table(first, table, here, place)


class _StructSearch:
    """The first table's fields datasets >= 4.7 writes as JSON text before parsing (its search for mixed objects):
    per field (a path of keys, "[]" for a list's items) the kinds of its values, the first object's keys, and
    whether another object has other keys."""

    def __init__(self) -> None:
        self.kinds: dict[tuple[str, ...], set[str]] = {}
        self.keys: dict[tuple[str, ...], frozenset[str]] = {}
        self.other: set[tuple[str, ...]] = set()
        self.blank = False

    def add(self, value: Any, path: tuple[str, ...] = (), depth: int = 0) -> None:
        if value is None or depth > 64:
            return
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

    def mixed(self) -> list[tuple[str, ...]]:
        found: list[tuple[str, ...]] = []
        for path in sorted(self.kinds, key=len):
            if any(path[:n] in found for n in range(len(path))):
                continue  # inside a field already written as JSON
            kinds = self.kinds[path]
            if kinds == {"dict"}:
                if path and (path in self.other or not self.keys[path]):
                    found.append(path)
            elif len(kinds) > 1 and kinds & {"dict", "list"}:
                found.append(path)
        return found


def _set_json(t: Any, path: tuple[str, ...]) -> Any:
    """``t`` with the field at ``path`` JSON (unchanged where ``t`` has no such field)."""
    if not path:
        return JSON
    head, rest = path[0], path[1:]
    if head == "[]" and isinstance(t, tuple):
        return ("list", _set_json(t[1], rest))
    if isinstance(t, dict) and head in t:
        return {**t, head: _set_json(t[head], rest)}
    return t


def _json_paths(t: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    if t == JSON:
        return [path]
    if isinstance(t, tuple):
        return _json_paths(t[1], (*path, "[]"))
    if isinstance(t, dict):
        return [p for k, v in t.items() for p in _json_paths(v, (*path, k))]
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
