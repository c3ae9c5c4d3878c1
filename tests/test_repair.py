"""`vlmcheck repair`: every input row accounted for exactly once, unchanged rows kept as they were,
the input never modified, outputs atomic, and the output scans clean and repairs to itself."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlmcheck
from builders import image, spec, tokenizer, write_json, write_jsonl
from vlmcheck.cli import main
from vlmcheck.data.readers import iter_rows
from vlmcheck.demo.run import DATA as DEMO_DATA
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.findings import CATALOGUE, Severity
from vlmcheck.repairing import OUTCOMES, images_dir, manifest_path, parse_hold, review_path

MAX_LENGTH = 512
ERROR_CODES = {c for c, r in CATALOGUE.items() if r.severity >= Severity.ERROR}


def qa(prompt: str = "<image>What is it?", answer: str = "A square.") -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


# One row per kind, and the outcome repair must give it at MAX_LENGTH.
KINDS: dict[str, tuple[Any, str]] = {
    "good": ({"id": "good", "messages": qa(), "images": ["small.png"], "extra": {"keep": [1, 2]}}, "kept"),
    "text-only": ({"messages": qa("Hi", "Hello"), "source": "chat"}, "kept"),
    "overlong-image": ({"id": "big", "messages": qa(), "images": ["big.png"]}, "changed"),
    "overlong-two": ({"id": "two", "messages": qa("<image><image>Compare."), "images": ["small.png", "big.png"]},
                     "changed"),
    "overlong-text": ({"id": "essay", "messages": qa("<image>" + "lorem ipsum " * 400), "images": ["small.png"]},
                      "dropped"),
    "missing-image": ({"id": "gone", "messages": qa(), "images": ["nope.png"]}, "dropped"),
    "mismatch": ({"id": "tags", "messages": qa("<image><image>Two?"), "images": ["small.png"]}, "dropped"),
    "no-answer": ({"id": "mute", "messages": qa()[:1], "images": ["small.png"]}, "dropped"),
    "not-an-object": ([1, 2, 3], "dropped"),
    # three rounds whose text alone is over MAX_LENGTH (no pixel budget helps), each round fits alone
    "multi-round": ({"id": "chat", "messages": qa("<image>" + "lorem ipsum " * 100, "A square.")
                     + qa("<image>" + "lorem ipsum " * 100, "Another.") + qa("<image>" + "lorem ipsum " * 100, "Third."),
                     "images": ["small.png", "small.png", "small.png"], "source": "multi"}, "split"),
    # the second round alone is over MAX_LENGTH, with its image cut: only dropping it helps
    "long-tail": ({"id": "tail", "messages": qa() + qa("lorem ipsum " * 400 + "<image>", "ok"),
                   "images": ["small.png", "small.png"]}, "changed"),
}


@pytest.fixture(scope="module")
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


@pytest.fixture(autouse=True)
def shared_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI loads the model as usual; only the one-second read of tokenizer.json is shared."""
    scan_module = importlib.import_module("vlmcheck.scan")  # repair loads the model through it
    real = scan_module.load_model

    def load_model(model: Any, **kwargs: Any) -> Any:
        loaded = real(model, **kwargs)
        loaded.__dict__["tokenizer"] = tokenizer(Path(loaded.path))
        return loaded

    monkeypatch.setattr(scan_module, "load_model", load_model)


def images(folder: Path) -> None:
    image(folder / "small.png", 280, 224)  # 80 tokens
    image(folder / "big.png", 1400, 1120)  # 2,000 tokens: over MAX_LENGTH, fits when capped


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest_path(out).read_text(encoding="utf-8").splitlines()]


def output_indices(record: dict[str, Any]) -> list[int]:
    if record["outcome"] == "split":
        assert record["output_index"] is None and len(record["split_into"]) >= 2
        return [piece["output_index"] for piece in record["split_into"]]
    if record["outcome"] in ("dropped", "held"):
        assert record["output_index"] is None and record["reason"]
        return []
    return [record["output_index"]]


def check_conservation(records: list[dict[str, Any]], n: int, out_rows: int, review_rows: int = 0) -> None:
    assert [r["index"] for r in records] == list(range(n))  # every input index, once, in order
    assert all(r["outcome"] in OUTCOMES for r in records)
    # every output row comes from exactly one input row, in order; likewise every review row
    assert [i for r in records for i in output_indices(r)] == list(range(out_rows))
    assert [r["review_index"] for r in records if r["outcome"] == "held"] == list(range(review_rows))
    assert all(("review_index" in r) == (r["outcome"] == "held") for r in records)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from([*KINDS, "bad-json"]), max_size=10), as_array=st.booleans(),
       hold=st.sampled_from([None, "broken", "all", "overlong", "VC002,VC101", "VC001"]))
def test_every_input_row_is_accounted_for_exactly_once(model: Any, kinds: list[str], as_array: bool,
                                                       hold: str | None) -> None:
    if as_array:
        kinds = [k for k in kinds if k != "bad-json"]  # an array with a bad element is unreadable past it
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images(folder)
        rows = [KINDS[k][0] for k in kinds if k != "bad-json"]
        data = folder / ("data.json" if as_array else "data.jsonl")
        if as_array:
            write_json(data, rows)
        else:
            data.write_text("".join("{oops\n" if k == "bad-json" else json.dumps(KINDS[k][0]) + "\n"
                                    for k in kinds), encoding="utf-8")
        before = digest(data)
        out = folder / ("fixed.json" if as_array else "fixed.jsonl")
        if not kinds:  # an empty dataset is an error, and nothing is written
            with pytest.raises(DatasetError, match="no rows"):
                vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, hold=hold)
            assert not out.exists() and not manifest_path(out).exists()
            return
        report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, hold=hold)
        records = manifest(out)
        written = list(iter_rows(out))
        review = review_path(out)
        assert review.exists() == (hold is not None)
        held = list(iter_rows(review)) if hold else []
        check_conservation(records, len(kinds), len(written), len(held))
        expected = [KINDS[k][1] if k in KINDS else "dropped" for k in kinds]
        assert [r["outcome"] for r in records] == [
            "held" if e == "dropped" and set(r["codes"]) & parse_hold(hold) else e for e, r in zip(expected, records)]
        assert report.counts == {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES}
        # a held row is in the review file as it was in the input (JSON Lines: the same bytes)
        lines = data.read_bytes().splitlines(keepends=True)
        review_lines = review.read_bytes().splitlines(keepends=True) if hold and not as_array else []
        for record in records:
            if record["outcome"] == "held":
                if as_array:
                    assert held[record["review_index"]] == KINDS[kinds[record["index"]]][0]
                else:
                    assert review_lines[record["review_index"]] == lines[record["index"]]
        if written:  # (an output with no rows is not a dataset a scan passes)
            assert not set(vlmcheck.scan(out, model=model, max_length=MAX_LENGTH).counts) & ERROR_CODES
        assert digest(data) == before


def test_jsonl_round_trip_keeps_unchanged_rows_byte_for_byte(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    kinds = ["good", "overlong-image", "text-only", "missing-image", "good"]
    raw = [json.dumps(KINDS[k][0], indent=None, separators=(", ", ":")) for k in kinds]  # an unusual spacing
    data = tmp_path / "data.jsonl"
    data.write_bytes(("\n".join(raw) + "\r\n\n").encode())
    before = digest(data)
    out = tmp_path / "fixed.jsonl"
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    lines = out.read_bytes().splitlines(keepends=True)
    records = manifest(out)
    for record, line in zip(records, raw):
        if record["outcome"] == "kept":
            assert lines[record["output_index"]].rstrip(b"\r\n") == line.encode()
    changed = [r for r in records if r["outcome"] == "changed"]
    assert len(changed) == 1 and changed[0]["change"]["strategy"] == "cap-pixels"
    new = json.loads(lines[changed[0]["output_index"]])
    assert list(new) == list(KINDS["overlong-image"][0])  # same keys, same order
    assert new["images"] == [changed[0]["change"]["images"][0]["to"]]
    assert new["images"][0].startswith("fixed.images/") and (tmp_path / new["images"][0]).is_file()
    assert digest(data) == before


def test_json_array_round_trip_keeps_fields_and_key_order(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    rows = [KINDS[k][0] for k in ["good", "mismatch", "text-only", "overlong-two"]]
    data = write_json(tmp_path / "data.json", rows)
    before, big = digest(data), digest(tmp_path / "big.png")
    out = tmp_path / "fixed.json"
    vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    written = json.loads(out.read_text(encoding="utf-8"))
    records = manifest(out)
    check_conservation(records, len(rows), len(written))
    for record, row in zip(records, rows):
        if record["outcome"] == "kept":
            kept = written[record["output_index"]]
            assert kept == row and list(kept) == list(row)
    two = written[records[3]["output_index"]]
    assert two["images"][0] == "small.png" and two["images"][1].startswith("fixed.images/")
    assert (digest(data), digest(tmp_path / "big.png")) == (before, big)


def test_output_scans_clean_and_repairs_to_itself(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS[k][0] for k in KINDS])
    out = tmp_path / "fixed.jsonl"
    first = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out)
    assert first.counts == {"kept": 2, "changed": 3, "split": 1, "held": 0, "dropped": 5}
    assert first.changed_by == {"cap-pixels": 2, "truncate-turns": 1} and first.split_rows == 3
    rescan = vlmcheck.scan(out, model=model, max_length=MAX_LENGTH)
    assert not set(rescan.counts) & ERROR_CODES, rescan.counts
    again = tmp_path / "again.jsonl"
    second = vlmcheck.repair(out, model=model, max_length=MAX_LENGTH, output=again)
    assert second.counts == {"kept": 8, "changed": 0, "split": 0, "held": 0, "dropped": 0}
    assert again.read_bytes() == out.read_bytes()
    assert not images_dir(again).exists()


def test_resized_images_fit_and_have_deterministic_names(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS["overlong-image"][0]])
    out_a, out_b = tmp_path / "a" / "fixed.jsonl", tmp_path / "b" / "fixed.jsonl"
    for out in (out_a, out_b):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, image_root=tmp_path)
    names = [sorted(p.name for p in images_dir(o).iterdir()) for o in (out_a, out_b)]
    assert names[0] == names[1] and len(names[0]) == 1
    (record,) = manifest(out_a)
    w, h = record["change"]["images"][0]["resized"]
    assert w * h <= record["change"]["max_pixels"] and w % 28 == 0 and h % 28 == 0
    # with --image-root, the rewritten path is relative to it
    assert json.loads(out_a.read_text())["images"] == ["a/fixed.images/" + names[0][0]]
    assert not set(vlmcheck.scan(out_a, model=model, max_length=MAX_LENGTH, image_root=tmp_path).counts) & ERROR_CODES


def test_on_overlong_drop(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS["overlong-image"][0], KINDS["good"][0]])
    out = tmp_path / "fixed.jsonl"
    report = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=out, on_overlong="drop")
    assert report.counts == {"kept": 1, "changed": 0, "split": 0, "held": 0, "dropped": 1}
    assert "VC201" in manifest(out)[0]["codes"] and "--on-overlong drop" in manifest(out)[0]["reason"]


def test_interrupted_repair_leaves_input_intact_and_no_output(tmp_path: Path, model: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl",
                       [KINDS[k][0] for k in ["mismatch", "good", "overlong-image", "good", "good"]])
    before = sorted((p.name, digest(p)) for p in tmp_path.iterdir() if p.is_file())
    repairing = importlib.import_module("vlmcheck.repairing")
    real = repairing._Writer.add_row

    def add_row(self: Any, row: Any, raw: bytes | None) -> int:
        if self.sink.rows == 2:  # after the resized image of row 1 is written
            raise KeyboardInterrupt
        return real(self, row, raw)

    monkeypatch.setattr(repairing._Writer, "add_row", add_row)
    with pytest.raises(KeyboardInterrupt):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=tmp_path / "fixed.jsonl", hold="all")
    # no output, no review file (it held row 0), no temp files
    assert sorted((p.name, digest(p)) for p in tmp_path.iterdir()) == before


def test_dry_run_counts_and_writes_nothing(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS[k][0] for k in KINDS])
    listing = sorted(tmp_path.iterdir())
    dry = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=tmp_path / "fixed.jsonl", dry_run=True)
    assert sorted(tmp_path.iterdir()) == listing
    real = vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=tmp_path / "fixed.jsonl")
    assert dry.counts == real.counts and dry.dropped_codes == real.dropped_codes


def test_output_must_not_be_the_input(tmp_path: Path, model: Any) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS["text-only"][0]])
    with pytest.raises(UsageError):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=data)


def test_demo_data_manifest_matches_the_scan(tmp_path: Path, model: Any) -> None:
    shutil.copytree(DEMO_DATA.parent, tmp_path / "demo")
    data = tmp_path / "demo" / DEMO_DATA.name
    records_path = tmp_path / "scan.jsonl"
    vlmcheck.scan(data, model=model, max_length=4096, output=records_path)
    scanned = [json.loads(line) for line in records_path.read_text().splitlines()]
    out = tmp_path / "demo" / "fixed.jsonl"
    vlmcheck.repair(data, model=model, max_length=4096, output=out)
    records = manifest(out)
    check_conservation(records, len(scanned), len(out.read_text().splitlines()))
    for record, sample in zip(records, scanned):
        assert (record["id"], record["codes"]) == (sample["id"], sample["findings"])
        errors = set(sample["findings"]) & ERROR_CODES
        if not errors:
            assert record["outcome"] == "kept"
        elif errors - {"VC201", "VC202"}:
            assert record["outcome"] == "dropped"
        if record["outcome"] != "kept":
            assert all(code in record["reason"] for code in errors)
    by_id = {r["id"]: r["outcome"] for r in records}
    assert by_id["camera-12mp"] == "changed" and by_id["long-prompt"] == "dropped"
    assert not set(vlmcheck.scan(out, model=model, max_length=4096).counts) & ERROR_CODES


def test_cli(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS[k][0] for k in ["good", "overlong-image", "mismatch"]])
    base = ["repair", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length", str(MAX_LENGTH)]
    runner = CliRunner()
    dry = runner.invoke(main, [*base, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0  # a row dropped (VC002): a warning, below the default --fail-on error
    assert dry.output == (f"would repair {data}: 3 samples\n  kept            1\n"
                          "  changed         1  (cap-pixels 1)\n  split           0\n"
                          "  held            0\n  dropped         1\n  dropped for: VC002 x1\ndry run: nothing written\n")
    assert runner.invoke(main, base).exit_code == 2  # no --output
    out = tmp_path / "fixed.jsonl"
    done = runner.invoke(main, [*base, "-o", str(out), "--json", str(tmp_path / "summary.json")],
                         catch_exceptions=False)
    assert done.exit_code == 0 and f"manifest: {manifest_path(out)}" in done.output
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == {
        "kept": 1, "changed": 1, "split": 0, "held": 0, "dropped": 1}


def test_parse_hold() -> None:
    assert parse_hold(None) == frozenset() == parse_hold("")
    assert parse_hold("vc002, VC101") == {"VC002", "VC101"}
    assert parse_hold("overlong") == {"VC201", "VC202", "VC205"}
    broken = parse_hold("broken")
    assert {"VC001", "VC002", "VC003", "VC101", "VC102", "VC107"} <= broken and not broken & parse_hold("overlong")
    assert parse_hold(["broken", "overlong"]) == parse_hold("all") == ERROR_CODES
    for bad, says in (("VC106", "VC106 is a warning"), ("everything", "not 'everything'")):
        with pytest.raises(UsageError, match=says):
            parse_hold(bad)


def test_review_file_is_never_the_input(tmp_path: Path, model: Any) -> None:
    images(tmp_path)
    data = write_jsonl(tmp_path / "fixed.review.jsonl", [KINDS["mismatch"][0]])
    with pytest.raises(UsageError, match="review file would be the input"):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=tmp_path / "fixed.jsonl", hold="all")


def test_manifest_is_never_the_input(tmp_path: Path, model: Any) -> None:
    data = write_jsonl(tmp_path / "fixed.manifest.jsonl", [KINDS["text-only"][0]])
    before = digest(data)
    with pytest.raises(UsageError, match="manifest would be the input"):
        vlmcheck.repair(data, model=model, max_length=MAX_LENGTH, output=tmp_path / "fixed.jsonl")
    assert digest(data) == before and not (tmp_path / "fixed.jsonl").exists()


def test_cli_hold(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    images(tmp_path)
    kinds = ["good", "missing-image", "mismatch", "overlong-text", "not-an-object"]
    data = write_jsonl(tmp_path / "data.jsonl", [KINDS[k][0] for k in kinds])
    out = tmp_path / "fixed.jsonl"
    runner = CliRunner()
    done = runner.invoke(main, ["repair", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length",
                                str(MAX_LENGTH), "-o", str(out), "--hold", "VC101,VC002"], catch_exceptions=False)
    assert done.exit_code == 0, done.output  # rows held and dropped: warnings, below the default --fail-on
    assert done.output == (
        f"repaired {data}: 5 samples\n  kept            1\n  changed         0\n  split           0\n"
        "  held            2\n  dropped         2\n  held for: VC002 x1, VC101 x1\n"
        "  dropped for: VC001 x1, VC202 x1\n"
        f"output:   {out} (1 samples)\nmanifest: {manifest_path(out)}\n"
        f"review:   {review_path(out)} (2 samples held; not training data)\n")
    lines = data.read_bytes().splitlines(keepends=True)
    assert review_path(out).read_bytes() == lines[1] + lines[2]
    bad = runner.invoke(main, ["repair", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length", "64",
                               "--dry-run", "--hold", "VC203"])
    assert bad.exit_code == 2 and "VC203 is a warning" in bad.output
