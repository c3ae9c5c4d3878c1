"""A JSON dataset whose rows give one column two types (a string in one row and a list in another, a number and a
string, an object and a list ...) cannot be loaded by ``datasets`` as one table: LLaMA-Factory's loader raises and
the run stops before step 1. vlmcheck must say so (a DatasetError naming the column), and must not say it where
``datasets`` merges the types (null with anything, int with float, objects with different fields, empty lists).
Proved against ``datasets.load_dataset("json")`` in LLaMA-Factory's own environment, for .json and .jsonl files,
on every pair of a pool of values (nested ones included) and on three-row files.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from llamafactory_env import oracle_env

from vlmcheck.data.hfjson import TypeClash, json_schema, json_type, unify_types

POOL: list[Any] = [None, True, 3, 2.5, "a", ["a"], [1], [{"x": 1}], {"x": 1}, {"y": "s"}, [], [None], {},
                   {"x": "s"}, [["a"]], [[1]], [{"x": 1}, {"y": 2}], [{"x": 1}, {"x": "s"}], [1, "a"], [1, 2.5],
                   {"x": [1]}, {"x": None}, [{"role": "user", "content": "hi"}],
                   [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]]

LOADER = r'''
import json, sys, shutil, datasets
datasets.disable_progress_bars(); datasets.disable_caching()
out = {}
for path in json.load(open(sys.argv[1])):
    try:
        datasets.load_dataset("json", data_files=path, split="train", cache_dir=path + ".cache")
        out[path] = True
    except Exception:
        out[path] = False
    shutil.rmtree(path + ".cache", ignore_errors=True)
print("LOADED" + json.dumps(out))
'''


def _mine(rows: list[dict[str, Any]]) -> bool:
    columns: dict[str, Any] = {}
    try:
        for row in rows:
            for key, value in row.items():
                columns[key] = unify_types(columns.get(key), json_type(value, key), key)
    except TypeClash:
        return False
    return True


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path) -> list[tuple[list[dict], bool]]:
    folder = tmp_path_factory.mktemp("json_types")
    rng = random.Random(5)
    files: list[tuple[str, list[dict[str, Any]]]] = []
    combos = [list(pair) for pair in itertools.combinations_with_replacement(POOL, 2)]
    combos += [[rng.choice(POOL) for _ in range(3)] for _ in range(40)]
    for k, values in enumerate(combos):
        rows = [{"k": v, "n": i} for i, v in enumerate(values)]
        for ext in ("json", "jsonl"):
            path = folder / f"c{k}.{ext}"
            text = json.dumps(rows) if ext == "json" else "\n".join(json.dumps(r) for r in rows)
            path.write_text(text)
            files.append((str(path), rows))
    listing = folder / "files.json"
    listing.write_text(json.dumps([f for f, _ in files]))
    done = subprocess.run([str(llamafactory_python), "-c", LOADER, str(listing)], capture_output=True, text=True,
                          timeout=900, env=oracle_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    loaded = json.loads(lines[-1][len("LOADED"):])
    return [(rows, loaded[f]) for f, rows in files]


def test_vlmcheck_refuses_exactly_what_datasets_cannot_load(cases: list[tuple[list[dict], bool]]) -> None:
    differ = [(rows, ok) for rows, ok in cases if _mine(rows) != ok]
    assert not differ, f"{len(differ)} of {len(cases)} files judged otherwise, e.g. {differ[:4]}"
    outcomes = {ok for _, ok in cases}
    assert outcomes == {True, False}  # both kinds of file are in the pool


def test_check_stops_on_a_dataset_datasets_cannot_load(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """End to end: an images column holding a string in one row and a list in another."""
    import vlmcheck
    from vlmcheck.errors import DatasetError

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hello."}],
             "images": images} for images in (["a.png"], "a.png")]
    (data / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "dataset_info.json").write_text(json.dumps({"mixed": {
        "file_name": "mixed.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {qwen2_vl_checkpoint}\nstage: sft\ntemplate: qwen2_vl\ndataset: mixed\n"
                      f"dataset_dir: {data}\n")
    with pytest.raises(DatasetError, match="row 1: images is a string here and a list in an earlier row"):
        vlmcheck.check(config)


# files past datasets' 10 MiB JSON chunk: (the rows filling the first chunk, the rows after it, alone in the second)
MESSAGE = {"from": "human", "value": "q"}
CHUNKED = {
    "a new column": ({"q": "a"}, {"q": "a", "system": "s"}),
    "a new nested field": ({"c": [MESSAGE]}, {"c": [{**MESSAGE, "weight": 1}]}),
    "a column missing later": ({"q": "a", "system": "s"}, {"q": "a"}),
    "a nested field missing later": ({"c": [{**MESSAGE, "weight": 1}]}, {"c": [MESSAGE]}),
    "decimals after whole numbers": ({"q": 1}, {"q": 2.5}),
    "whole decimals after whole numbers": ({"q": 1}, {"q": 2.0}),
    "whole numbers after decimals": ({"q": 1.5}, {"q": 2}),
    "strings after nulls": ({"q": None}, {"q": "s"}),
    "nulls after strings": ({"q": "s"}, {"q": None}),
    "numbers after strings": ({"q": "s"}, {"q": 5}),
    "true/false after strings": ({"q": "s"}, {"q": True}),
    "true/false after numbers": ({"q": 1}, {"q": False}),
    "numbers after true/false": ({"q": True}, {"q": 3}),
    "words after numbers": ({"q": 1}, {"q": "x"}),
    "a list after strings": ({"q": "s"}, {"q": ["s"]}),
    "list items after empty lists": ({"q": []}, {"q": ["s"]}),
    "same columns": ({"q": "a", "n": 1}, {"q": "b", "n": 2}),
}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path) -> dict[str, tuple[Path, bool]]:
    folder = tmp_path_factory.mktemp("json_chunks")
    pad = "x" * 900  # rows of about 1 KB: some 10,300 fill the first chunk
    files = {}
    for k, (name, (first, later)) in enumerate(CHUNKED.items()):
        path = folder / f"chunked{k}.jsonl"
        with path.open("w") as f:
            size = 0
            while size <= 10 << 20:  # the last of these starts within the first 10 MiB, the next row past it
                line = json.dumps({**first, "pad": pad}) + "\n"
                f.write(line)
                size += len(line)
            f.writelines(json.dumps({**later, "pad": pad}) + "\n" for _ in range(20))
        files[name] = path
    listing = folder / "files.json"
    listing.write_text(json.dumps([str(p) for p in files.values()]))
    done = subprocess.run([str(llamafactory_python), "-c", LOADER, str(listing)], capture_output=True, text=True,
                          timeout=900, env=oracle_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    loaded = json.loads(lines[-1][len("LOADED"):])
    return {name: (path, loaded[str(path)]) for name, path in files.items()}


def test_past_the_first_10_mib_the_chunk_rules_of_datasets_hold(chunked: dict[str, tuple[Path, bool]]) -> None:
    differ = []
    for name, (path, ok) in chunked.items():
        try:
            json_schema([path])
            mine = True
        except TypeClash:
            mine = False
        if mine != ok:
            differ.append(f"{name}: datasets {'loads' if ok else 'fails'}, vlmcheck {'loads' if mine else 'fails'}")
    assert not differ, differ
    assert {ok for _, ok in chunked.values()} == {True, False}


def test_a_chunk_ends_where_datasets_readline_ends_it(tmp_path: Path, llamafactory_python: Path) -> None:
    """Blank lines across the 10 MiB mark: datasets' chunk ends at the first line end past it, not at the last
    row's end, and every later chunk is shifted by as much. Here the first 10 MiB ends inside 150,000 blank
    lines; the last row (true, after whole numbers) starts past the old estimate of the second chunk's end but
    inside the real second chunk, where true/false beside numbers stops the load (alone in a third chunk it would
    be cast and load)."""
    pad = "x" * 900
    path = tmp_path / "blank.jsonl"
    with path.open("w") as f:
        at = 0
        while at < (10 << 20) - 100_000:
            at += f.write(json.dumps({"q": 1, "pad": pad}) + "\n")
        row_end = at
        at += f.write("\n" * 150_000)
        while at <= row_end + (10 << 20):  # the last row starts past row_end + 10 MiB, before 20 MiB + 1
            at += f.write(json.dumps({"q": 2, "pad": pad}) + "\n")
        assert row_end + (10 << 20) < at <= (20 << 20)
        f.write(json.dumps({"q": True, "pad": pad}) + "\n")
    listing = tmp_path / "files.json"
    listing.write_text(json.dumps([str(path)]))
    done = subprocess.run([str(llamafactory_python), "-c", LOADER, str(listing)], capture_output=True, text=True,
                          timeout=900, env=oracle_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    assert json.loads(lines[-1][len("LOADED"):])[str(path)] is False
    with pytest.raises(TypeClash, match="q is true/false here and a whole number in an earlier row"):
        json_schema([path])
