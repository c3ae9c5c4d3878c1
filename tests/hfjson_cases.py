"""Files on which ``datasets`` decides whether a dataset loads, and vlmcheck's judgement of each, shared by the test
that runs them through the test environment's ``datasets`` (tests/test_hfjson_loads.py) and the one that runs them
through LLaMA-Factory's (datasets 4.0.0: tests/frameworks/test_llamafactory_config.py).

- A lone UTF-16 surrogate escape (``"\\ud800"`` as written in the file) in JSON text: ``hfjson.json_schema`` /
  ``as_loaded`` against ``load_dataset("json")``.
- Parquet, Arrow and CSV tables whose types differ: ``hfjson.tables_problem`` against ``load_dataset`` of each pair
  of files in both orders, and of CSV files past one 10,000-row chunk; JSON and JSON Lines files whose columns
  differ: ``hfjson.json_columns_problem``, the same way.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from vlmcheck.data.hfjson import (
    ListingOrder,
    LoadPlan,
    NotFollowed,
    TypeClash,
    Unmodelled,
    as_loaded,
    json_columns_problem,
    json_schema,
    tables_problem,
)
from vlmcheck.data.readers import CSV_CHUNK_ROWS, builder_rows, iter_rows, table_schemas

# escapes as written in the file (backslashes literal): lone halves, pairs, a high half before another escape
ESCAPES = ["a\\ud800b", "x\\uDBFF", "a\\udc00b", "a\\ud800\\u0041b", "a\\ud800\\nb", "a\\ud800\\\\u0041b",
           "a\\ud83d\\ude00b", "\\ud800\\ud800\\udc00"]

# datasets' own load of each case: {name: [builder, [files]]} -> {name: rows (JSON text of each value) or None}
LOAD = textwrap.dedent('''
    import json, sys, warnings

    def load_all(cases, cache):
        import datasets
        datasets.disable_progress_bars(); datasets.disable_caching(); datasets.logging.set_verbosity_error()
        warnings.filterwarnings("ignore")
        out = {}
        for k, (name, (builder, files)) in enumerate(cases.items()):
            try:
                ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=f"{cache}/{k}")
                out[name] = [json.loads(json.dumps(dict(r), default=repr)) for r in ds]
            except Exception:  # DatasetGenerationError, or the cast's, ujson's or pandas' own error
                out[name] = None
        return out

    if __name__ == "__main__":
        print("LOADS" + json.dumps(load_all(json.loads(sys.argv[1]), sys.argv[2])))
''')


def load(cases: dict[str, tuple[str, list[Path]]], cache: Path, python: Path | None = None) -> dict[str, Any]:
    """datasets' load of each case: in this process, or with ``python`` (another environment's)."""
    spec = {name: [builder, [str(f) for f in files]] for name, (builder, files) in cases.items()}
    if python is None:
        space: dict[str, Any] = {}
        exec(LOAD, space)  # noqa: S102 - the script the other environment runs, run here
        return dict(space["load_all"](spec, str(cache)))
    done = subprocess.run([str(python), "-c", LOAD, json.dumps(spec), str(cache)], capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADS")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return dict(json.loads(lines[-1][len("LOADS"):]))


def surrogate_cases(folder: Path) -> dict[str, tuple[str, list[Path]]]:
    """Each escape in a JSON array, a JSON Lines file, a one-line JSON Lines file, an object key, and a JSON Lines
    file whose `m` objects have other fields in each row (from datasets 4.7 kept as JSON text: its lines are
    written again with ujson)."""
    cases = {}
    for k, esc in enumerate(ESCAPES):
        rows = [{"t": "plain", "k": 1}, {"t": "SURR", "k": 2}, {"t": "end", "k": 3}]
        mixed = [{"t": "plain", "m": {"a": 1}}, {"t": "SURR", "m": {"b": 2}}]
        for name, text in ((f"array{k}.json", json.dumps(rows)),
                           (f"lines{k}.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                           (f"one{k}.jsonl", json.dumps(rows[1]) + "\n"),
                           (f"key{k}.json", json.dumps([{"t": "x", "SURR": 1}])),
                           (f"mixed{k}.jsonl", "".join(json.dumps(r) + "\n" for r in mixed))):
            (folder / name).write_text(text.replace("SURR", esc))
            cases[name] = ("json", [folder / name])
    return cases


def judge_surrogates(cases: dict[str, tuple[str, list[Path]]], theirs: dict[str, Any], *, mixed_as_json: bool
                     ) -> tuple[list[Any], dict[str, int]]:
    """vlmcheck's load of each surrogate case against datasets': the cases that differ, and how many loaded,
    failed, lost a surrogate and were refused (the one-line fallback only)."""
    differ: list[Any] = []
    counts = {"loads": 0, "fails": 0, "dropped": 0, "refused": 0}
    for name, (_, files) in cases.items():
        rows, file = theirs[name], files[0]
        counts["loads" if rows is not None else "fails"] += 1
        plan = LoadPlan()
        try:
            json_schema([file], mixed_as_json, plan)
            loaded = [as_loaded(r, plan, (0, n)) for n, r in enumerate(iter_rows(file))]
            ours: Any = "refused" if any(isinstance(r, NotFollowed) for r in loaded) else [dict(r) for r in loaded]
        except TypeClash:
            ours = None
        except Unmodelled:
            ours = "refused"
        if ours == "refused":
            counts["refused"] += 1
            if not name.startswith("one"):  # only datasets' one-line fallback (pandas) is not followed
                differ.append((name, "refused"))
            continue
        counts["dropped"] += rows is not None and any(r.get("t") in ("ab", "x", "a\nb") for r in rows)
        if ours is not None and rows is not None:  # an object's fields other rows have are null in it: not this
            ours, rows = _present(ours), _present(rows)
        if ours != rows:
            differ.append((name, file.read_text()[:80], rows, ours))
    return differ, counts


def _present(value: Any) -> Any:
    """``value`` without the object fields that are null."""
    if isinstance(value, list):
        return [_present(v) for v in value]
    if isinstance(value, dict):
        return {k: _present(v) for k, v in value.items() if v is not None}
    return value


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _arrow(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)
    return path


def table_cases(folder: Path) -> dict[str, tuple[str, list[Path]]]:
    """Pairs of files, in both orders, whose tables differ: columns left out, added or reordered, text and
    numbers, an empty column, an Image feature (Parquet written by datasets) beside paths and beside structs of
    bytes and path (written by pyarrow); and CSV files past one chunk whose later chunk is typed otherwise."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    (folder / "p.png").write_bytes(buf.getvalue())
    groups: dict[str, dict[str, Path]] = {
        "csv": {"full": _csv(folder / "full.csv", ["q", "a", "img"], [["q", "a", "p.png"]]),
                "less": _csv(folder / "less.csv", ["q", "a"], [["q", "a"]]),
                "reorder": _csv(folder / "reorder.csv", ["a", "q", "img"], [["a", "q", "p.png"]]),
                "numbers": _csv(folder / "numbers.csv", ["q", "a", "img"], [["q", "4", "p.png"]]),
                "empty": _csv(folder / "empty.csv", ["q", "a", "img"], [["q", "a", ""]])},
        "arrow": {"full": _arrow(folder / "full.arrow", [{"q": "q", "a": "a", "img": ["p.png"]}]),
                  "less": _arrow(folder / "less.arrow", [{"q": "q", "a": "a"}]),
                  "more": _arrow(folder / "more.arrow", [{"q": "q", "a": "a", "img": ["p.png"], "x": 1}]),
                  "reorder": _arrow(folder / "reorder.arrow", [{"a": "a", "q": "q", "img": ["p.png"]}]),
                  "empty": _arrow(folder / "empty.arrow", [{"q": "q", "a": "a", "img": []}])},
    }
    image = {"bytes": buf.getvalue(), "path": None}
    features = datasets.Features({"q": datasets.Value("string"), "img": datasets.List(datasets.Image())})
    datasets.Dataset.from_dict({"q": ["q"], "img": [[image]]}, features=features).to_parquet(str(folder / "f.parquet"))
    pq.write_table(pa.table({"q": ["q"], "img": [[str(folder / "p.png")]]}), folder / "paths.parquet")
    pq.write_table(pa.table({"q": ["q"], "img": [[image]]}), folder / "struct.parquet")
    groups["parquet"] = {"feature": folder / "f.parquet", "paths": folder / "paths.parquet",
                         "struct": folder / "struct.parquet"}
    # JSON files whose columns differ (their types are json_schema's, judged in the listing order: not here)
    for ext in ("json", "jsonl"):
        group = {}
        for name, row in (("full", {"q": "q", "a": "a"}), ("less", {"q": "q"}), ("other", {"q": "q", "x": "x"}),
                          ("reorder", {"a": "a", "q": "q"})):
            rows = [row, {"q": "r"}] if name == "less" else [row]
            text = json.dumps(rows) if ext == "json" else "".join(json.dumps(r) + "\n" for r in rows)
            (folder / f"{name}.{ext}").write_text(text)
            group[name] = folder / f"{name}.{ext}"
        groups[ext] = group
    cases: dict[str, tuple[str, list[Path]]] = {}
    for kind, group in groups.items():
        builder = "json" if kind == "jsonl" else kind
        for a, b in itertools.permutations(group, 2):
            cases[f"{kind} {a}, {b}"] = (builder, [group[a], group[b]])
    for name, first, then in (("numbers then text", "1", "t"), ("text then numbers", "t", "1"),
                              ("empty then text", "", "t"), ("text then empty", "t", "")):
        rows = [["q", first]] * CSV_CHUNK_ROWS + [["q", then]]
        cases[f"csv chunks, {name}"] = ("csv", [_csv(folder / f"{name}.csv", ["q", "a"], rows)])
    return cases


def judge_tables(cases: dict[str, tuple[str, list[Path]]], theirs: dict[str, Any]) -> tuple[list[Any], set[str]]:
    """vlmcheck's judgement of each table case (loads, fails, or follows the listing order: one order loads and
    the other fails) against datasets' loads in both orders, and the rows it reads where they load (but Parquet's
    decoded images); the cases that differ, and the judgements reached."""
    differ: list[Any] = []
    reached = set()
    for name, (builder, files) in cases.items():
        rows = theirs[name]
        kind, pair = name.split(" ", 1)
        swapped = f"{kind} {', '.join(reversed(pair.split(', ')))}"
        other = theirs[swapped] if len(files) == 2 else rows
        want = "loads" if rows is not None and other is not None else (
            "fails" if rows is None and other is None else "order")
        try:
            if builder == "json":
                json_columns_problem(files)
            else:
                tables_problem([(f.name, list(table_schemas(f, builder))) for f in files])
            ours = "loads"
        except TypeClash:
            ours = "fails"
        except ListingOrder:
            ours = "order"
        reached.add(ours)
        if ours != want:
            differ.append((name, want, ours))
        if ours == "loads" and rows is not None and builder != "parquet" and len(rows) < 100:
            read = [{k: r.get(k) for k in rows[0]} for f in files for r in builder_rows(f, builder)]
            if read != rows:
                differ.append((name, rows, read))
    return differ, reached
