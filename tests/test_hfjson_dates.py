"""pyarrow's JSON Lines reader types a string field timestamp[s] when every value of it in a table is an ISO date
or time, and ``datasets`` then returns those values as datetimes (a JSON array, read through pandas, keeps them
text). vlmcheck's model of that (``hfjson.arrow_timestamp`` / ``as_timestamp``) is proved here against pyarrow's
own reader on every string of a pool built around the format's edges, and the load it implies (which files load,
what the rows hold) against ``datasets.load_dataset`` of the test environment.
"""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from vlmcheck.data.hfjson import (
    DATE,
    LoadPlan,
    NotFollowed,
    Rewritten,
    TypeClash,
    arrow_timestamp,
    as_loaded,
    as_timestamp,
    json_schema,
)

paj = pytest.importorskip("pyarrow.json")


def _mixed_as_json() -> bool:
    """Whether the installed datasets is 4.7 or later (JSON arrays through pyarrow, mixed fields as JSON)."""
    import datasets

    return tuple(int(p) for p in datasets.__version__.split(".")[:2]) >= (4, 7)


def _pool() -> list[str]:
    """Strings on and around the edges of the format: each field at, inside and past its range, every separator
    and zone form, lengths off by one, leap days, and random near-misses."""
    dates = ["2021-03-04", "2020-02-29", "2021-02-29", "1900-02-29", "2000-02-29", "2100-02-28", "9999-12-31",
             "1970-01-01", "1969-12-31", "2021-04-31", "2021-04-30", "2021-00-10", "2021-13-01", "2021-12-00",
             "2021-12-32", "2021-3-04", "21-03-04", "20210304", "+2021-03-04", "-001-01-01", "2021/03/04",
             "１９９９-01-01", "2021-03-04\n", " 2021-03-04"]
    times = ["", "T10", " 10", "T10:20", " 10:20:30", "T23:59:59", "T24:00", "T10:60", "T10:20:60", "T10:20:61",
             "T1:20", "T10:2", "t10:20", "  10:20", "T10:20:30.5", "T10:20:30.000", "T10:20:30,5", "T", " "]
    zones = ["", "Z", "z", "+02", "+0200", "+02:00", "-02:30", "-0230", "+23:59", "+24:00", "+02:60", "+0260",
             "+2", "+023", "+2:00", "+02:00:00", " +02:00", "ZZ", "+00", "-00:00", "+14:00"]
    pool = [d + t + z for d in dates for t in times for z in zones]
    rng = random.Random(11)
    chars = "0123456789-:TZ+ "
    for _ in range(3000):
        base = list(rng.choice(pool))
        for _ in range(rng.randint(1, 2)):
            k = rng.randrange(len(base) + 1)
            op = rng.random()
            if op < 0.4 and base:
                base[min(k, len(base) - 1)] = rng.choice(chars)
            elif op < 0.7:
                base.insert(k, rng.choice(chars))
            elif base:
                del base[min(k, len(base) - 1)]
        pool.append("".join(base))
    return sorted(set(pool))


def test_the_iso_dates_pyarrow_reads_as_timestamps_are_the_ones_vlmcheck_names() -> None:
    pool = _pool()
    text = "".join(json.dumps({"c": s}) + "\n" for s in pool)
    differ, stamps = [], 0
    for s in pool:  # one table per string: the field is a timestamp only when its one value is
        table = paj.read_json(io.BytesIO((json.dumps({"c": s}) + "\n").encode()))
        typed = str(table.schema.field("c").type) == "timestamp[s]"
        stamps += typed
        if typed != arrow_timestamp(s):
            differ.append((s, typed))
            continue
        if typed:
            value = as_timestamp(s)
            try:
                arrow = table.column("c")[0].as_py()
            except (ValueError, OverflowError):  # year 0, or past 9999 after the offset: datasets cannot return it
                arrow = None
            if value != arrow:
                differ.append((s, f"{value} != {arrow}"))
    assert not differ, f"{len(differ)} of {len(pool)} strings judged otherwise, e.g. {differ[:10]}"
    assert 300 < stamps < len(pool) - 300, stamps  # both kinds well represented
    assert str(paj.read_json(io.BytesIO(text.encode())).schema.field("c").type) == "string"  # mixed: text


def _write(path: Path, rows: list[Any], lines: bool) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows))
    return path


# (rows, JSON Lines?): the field types a JSON Lines file's dates make, and their merges with other kinds
FILES: dict[str, tuple[list[Any], bool]] = {
    "dates": ([{"a": "2021-03-04"}, {"a": "2021-03-04 10:20+02:00"}], True),
    "dates in a JSON array": ([{"a": "2021-03-04"}, {"a": "2022-01-01"}], False),
    "dates and text": ([{"a": "2021-03-04"}, {"a": "March"}], True),
    "dates and nulls": ([{"a": "2021-03-04"}, {"a": None}, {}], True),
    "dates and numbers": ([{"a": "2021-03-04"}, {"a": 5}], True),
    "numbers and dates": ([{"a": 5}, {"a": "2021-03-04"}], True),
    "dates and true": ([{"a": "2021-03-04"}, {"a": True}], True),
    "dates and a list": ([{"a": "2021-03-04"}, {"a": ["x"]}], True),
    "nested dates": ([{"c": [{"v": "2021-03-04"}, {"v": "2021-03-05T10:00:00Z"}]}], True),
    "nested dates and text": ([{"c": [{"v": "2021-03-04"}]}, {"c": [{"v": "text"}]}], True),
    "dates in a list": ([{"c": ["2021-03-04", "2021-03-05"]}], True),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    folder = tmp_path_factory.mktemp("dates")
    out: dict[str, Any] = {}
    for k, (name, (rows, lines)) in enumerate(FILES.items()):
        path = _write(folder / f"f{k}.jsonl", rows, lines)
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(folder / f"c{k}"))
            out[name] = (path, [dict(r) for r in ds])
        except Exception:
            out[name] = (path, None)
    return out


def test_vlmcheck_loads_what_datasets_loads_and_its_values(loaded: dict[str, Any]) -> None:
    mixed_as_json = _mixed_as_json()
    differ, stamped = [], 0
    for name, (path, rows) in loaded.items():
        plan = LoadPlan()
        try:
            json_schema([path], mixed_as_json, plan)
        except TypeClash:
            if rows is not None:
                differ.append(f"{name}: datasets loads it, vlmcheck stops")
            continue
        if rows is None:
            differ.append(f"{name}: datasets fails, vlmcheck loads it")
            continue
        written = [json.loads(line) for line in path.read_text().splitlines()] if path.read_text()[0] != "[" \
            else json.loads(path.read_text())
        mine = [as_loaded(row, plan, (0, n), timestamps=True) for n, row in enumerate(written)]
        if plan.timestamps:
            assert all(isinstance(as_loaded(r, plan, (0, n)), NotFollowed) or not any(r.values())
                       for n, r in enumerate(written)), name
        filled = [{k: row.get(k) for k in rows[0]} for row in mine]  # a row lacking a column reads it as null
        if filled != rows:
            differ.append(f"{name}: datasets returns {rows}, vlmcheck {filled}")
        stamped += bool(plan.timestamps)
    assert not differ, differ
    assert stamped >= 4, stamped  # the timestamp fields were there to compare


# (the first 10 MiB's value, the value of every row after it), each pair a file
CHUNKS = {"dates after text": ("hello", "2021-03-04T10:20:30+02:00"), "a date after text": ("hello", "2021-03-04"),
          "text after dates": ("2021-03-04", "hi"), "numbers after dates": ("2021-03-04", 5),
          "dates after numbers": (5, "2021-03-04 10"), "decimals after dates": ("2021-03-04", 5.5),
          "true after dates": ("2021-03-04", True), "dates after true": (True, "2021-03-04"),
          "dates after decimals": (2.5, "2021-03-04"), "dates after nulls": (None, "2021-03-04"),
          "nulls after dates": ("2021-03-04", None), "a list after dates": ("2021-03-04", ["a"]),
          "dates after dates": ("2021-03-04", "2022-01-01 10:00"),
          "nested dates after text": ([{"v": "x"}], [{"v": "1999-12-31T23:00:00-01:00"}])}


def test_past_the_first_10_mib_timestamps_cast_as_datasets_casts_them(tmp_path: Path) -> None:
    """Past datasets' 10 MiB chunk each table is cast to the first one's schema: a chunk of dates after text
    comes back as "YYYY-MM-DD hh:mm:ss" in UTC (not as written), whole numbers and timestamps cast into each
    other, anything else stops the load. The last row's value, as datasets returns it and as vlmcheck says."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    pad = "x" * 1000
    differ = []
    for k, (name, (first, later)) in enumerate(CHUNKS.items()):
        path = tmp_path / f"chunks{k}.jsonl"
        with path.open("w") as f:
            size = rows = 0
            while size <= 10 << 20:  # the last of these starts within the first 10 MiB, the next row past it
                size += f.write(json.dumps({"c": first, "p": pad}) + "\n")
                rows += 1
            f.writelines(itertools.repeat(json.dumps({"c": later, "p": pad}) + "\n", 20))
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
            theirs: Any = ds[len(ds) - 1]["c"]
        except Exception:
            theirs = "fails"
        plan = LoadPlan()
        try:
            json_schema([path], _mixed_as_json(), plan)
            row = as_loaded({"c": later, "p": pad}, plan, (0, rows + 19), timestamps=True)
            mine: Any = row["c"]
        except TypeClash:
            mine = "fails"
        if mine != theirs:
            differ.append(f"{name}: datasets {theirs!r}, vlmcheck {mine!r}")
    assert not differ, differ


def test_a_timestamp_python_cannot_hold_is_not_followed(tmp_path: Path) -> None:
    path = _write(tmp_path / "y0.jsonl", [{"a": "0000-01-01"}, {"a": "2021-03-04"}], True)
    plan = LoadPlan()
    assert json_schema([path], False, plan) == {"a": DATE}
    assert isinstance(as_loaded({"a": "0000-01-01"}, plan, (0, 0), timestamps=True), NotFollowed)
    stamped = as_loaded({"a": "2021-03-04"}, plan, (0, 1), timestamps=True)
    assert isinstance(stamped, Rewritten) and stamped.why == "an ISO date read as a timestamp"


def test_a_json_array_with_a_whole_number_past_64_bits_does_not_load(tmp_path: Path) -> None:
    """ujson, datasets' reader of a JSON array, refuses a whole number outside [-2**63, 2**64); JSON Lines (pyarrow)
    reads it as a decimal."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    outcomes = {}
    for k, (number, lines) in enumerate([(2**64, False), (-2**63 - 1, False), (2**64 - 1, False), (2**64, True)]):
        path = _write(tmp_path / f"n{k}.json", [{"a": "x", "n": number}], lines)
        try:
            datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / f"c{k}"))
            theirs = True
        except Exception:
            theirs = False
        try:
            json_schema([path], _mixed_as_json())
            mine = True
        except TypeClash:
            mine = False
        outcomes[(number, lines)] = (theirs, mine)
    assert all(theirs == mine for theirs, mine in outcomes.values()), outcomes
    assert {theirs for theirs, _ in outcomes.values()} == {True, False}
