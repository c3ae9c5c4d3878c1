"""What ``datasets`` does with a lone UTF-16 surrogate escape in JSON text, and how it casts the tables of a
Parquet, Arrow or CSV dataset to the first one's types: vlmcheck's model of both (``hfjson.json_schema`` /
``as_loaded``, ``hfjson.tables_problem``) against ``datasets.load_dataset`` of the test environment (4.7 or later
here; the cases are in hfjson_cases.py, and LLaMA-Factory's datasets 4.0.0 runs them in
tests/frameworks/test_llamafactory_config.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hfjson_cases import ESCAPES, judge_surrogates, judge_tables, load, surrogate_cases, table_cases
from vlmcheck.data.hfjson import json_schema, ujson_surrogates

datasets = pytest.importorskip("datasets")
VERSION = tuple(int(p) for p in datasets.__version__.split(".")[:2])


def test_a_lone_surrogate_loads_as_datasets_loads_it(tmp_path: Path) -> None:
    """A JSON array drops a high half no escape follows (ujson); JSON Lines fails (pyarrow), but from datasets 4.7
    where a field kept as JSON text has its lines written again with ujson."""
    cases = surrogate_cases(tmp_path)
    differ, counts = judge_surrogates(cases, load(cases, tmp_path / "cache"), mixed_as_json=VERSION >= (4, 7))
    assert not differ, differ
    assert counts["loads"] >= 8 and counts["fails"] >= 15 and counts["dropped"] >= 3, counts  # each outcome reached


def test_ujson_reads_surrogate_escapes_as_vlmcheck_says() -> None:
    """The rule itself, against the ujson (pandas') that reads a JSON array for datasets."""
    pandas = pytest.importorskip("pandas")
    for esc in ESCAPES:
        text = f'"{esc}"'
        try:
            theirs: Any = pandas.io.json.ujson_loads(text)
            theirs.encode("utf-8")  # a lone low half stays: pandas / pyarrow then fail to encode it
        except (ValueError, UnicodeEncodeError):
            theirs = None
        try:
            ours: Any = json.loads(ujson_surrogates(text))
        except ValueError:
            ours = None
        assert ours == theirs, (esc, ours, theirs)


def test_tables_are_cast_to_the_first_as_datasets_casts_them(tmp_path: Path) -> None:
    """Each pair of files in both orders, and CSV files past one chunk. From datasets 5 the csv builder, and the
    json builder on JSON arrays, refuse files whose schemas differ at all (measured on 5.1: a JSON array's files
    must even list their columns in the same order), which vlmcheck does not model (its only caller of folders,
    LLaMA-Factory 0.9.5, loads with 4.0.0): those pairs are left to the 4.0.0 test."""
    cases = table_cases(tmp_path)
    if VERSION >= (5, 0):
        cases = {name: case for name, case in cases.items()
                 if not (name.split(" ")[0] in ("csv", "json") and len(case[1]) > 1)}
    differ, reached = judge_tables(cases, load(cases, tmp_path / "cache"))
    assert not differ, differ
    assert reached == {"loads", "fails", "order"}, reached


def test_a_struct_keeps_its_first_rows_field_order(tmp_path: Path) -> None:
    """Objects of one column listing their fields in other orders: datasets (pyarrow) types the struct in the order
    the first row gives; vlmcheck's schema says the same (a struct written back
    as JSON text, as LLaMA-Factory's openai converter writes tool calls, keeps that order)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"s": {"a": 1, "b": "x"}}, {"s": {"b": "y", "a": 2}}, {"s": {"b": "z", "a": None}}]
    for name, text in (("lines.jsonl", "\n".join(json.dumps(r) for r in rows)), ("array.json", json.dumps(rows))):
        file = tmp_path / name
        file.write_text(text)
        loaded = datasets.load_dataset("json", data_files=str(file), split="train", cache_dir=str(tmp_path / "c"))
        theirs = list(loaded.features["s"])
        assert list(json_schema([file])["s"]) == theirs == ["a", "b"], (name, theirs)
