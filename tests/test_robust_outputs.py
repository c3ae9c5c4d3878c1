"""Repair never writes a partial dataset, and every output is written one way (issue 15): ``-`` is standard
output, a symlink or device is refused (standard output is written through), files honour the umask, an
empty dataset is an error, and a damaged Parquet file is a finding."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlmcheck
from builders import image, spec, write_json, write_jsonl
from vlmcheck.cli import main
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.repairing import manifest_path, remainder_path


def row(id_: str) -> dict[str, Any]:
    return {"id": id_, "messages": [{"role": "user", "content": "<image>What is this?"},
                                    {"role": "assistant", "content": "A thing."}], "images": ["good.png"]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    image(tmp_path / "good.png", 280, 224)
    return tmp_path


def test_repair_of_a_broken_json_array_writes_nothing(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    text = json.dumps([row(f"r{i}") for i in range(5)])
    broken = folder / "broken.json"
    broken.write_text(text.replace('{"id": "r3"', 'oops, {"id": "r3"'), encoding="utf-8")
    out = folder / "out" / "fixed.json"
    with pytest.raises(DatasetError, match="repair wrote nothing"):
        vlmcheck.repair(broken, model=spec(qwen2_vl_checkpoint), max_length=4096, output=out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_hold_keeps_the_unreadable_remainder_verbatim(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    text = json.dumps([row(f"r{i}") for i in range(5)])
    broken = folder / "broken.json"
    broken.write_text(text.replace('{"id": "r3"', 'oops, {"id": "r3"'), encoding="utf-8")
    out = folder / "fixed.json"
    report = vlmcheck.repair(broken, model=spec(qwen2_vl_checkpoint), max_length=4096, output=out, hold="broken")
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["kept", "kept", "kept", "held"]
    data = broken.read_bytes()
    spans = [r["bytes"] for r in records]
    assert spans[-1][1] == len(data)
    assert remainder_path(out).read_bytes() == data[spans[-1][0]:]
    assert [json.loads(data[a:b]) ["id"] for a, b in spans[:-1]] == ["r0", "r1", "r2"]
    assert report.rows_written == 3


def test_manifest_spans_cover_every_row_of_json_lines(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = folder / "d.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(row(f"r{i}")).encode() + b"\n" for i in range(3))
                     + b"not json\n")
    out = folder / "fixed.jsonl"
    vlmcheck.repair(data, model=spec(qwen2_vl_checkpoint), max_length=4096, output=out, hold="broken")
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["kept", "kept", "kept", "held"]
    assert [r["bytes"] for r in records][0][0] == 0 and records[-1]["bytes"][1] == data.stat().st_size
    assert all(a["bytes"][1] == b["bytes"][0] for a, b in zip(records, records[1:]))
    assert out.read_bytes() == data.read_bytes()[3:-len(b"not json\n")]  # the BOM is not part of row 0


def _damage(path: Path, at: float) -> None:
    """Overwrite 64 bytes of the data pages at ``at`` of the way (the footer stays readable)."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    k = max(4, int((len(data) - footer - 64) * at))
    data[k:k + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_a_damaged_parquet_file_is_a_finding(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = [{"id": f"r{i}", "messages": row(f"r{i}")["messages"], "images": ["good.png"]} for i in range(2000)]
    path = folder / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    _damage(path, 0.6)
    report = vlmcheck.scan(path, model=spec(qwen2_vl_checkpoint))
    (finding,) = report.findings
    assert finding.code == "VC001" and "damaged past this point" in finding.message
    assert report.summary["samples"] == finding.index + 1 > 1


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.integers(min_value=1, max_value=12), cut=st.floats(min_value=0.05, max_value=0.999),
       hold=st.booleans())
def test_repair_conserves_rows_on_a_truncated_json_array(tmp_path_factory: pytest.TempPathFactory,
                                                         qwen2_vl_checkpoint: Path, rows: int, cut: float,
                                                         hold: bool) -> None:
    folder = tmp_path_factory.mktemp("prop")
    image(folder / "good.png", 280, 224)
    full = write_json(folder / "full.json", [row(f"r{i}") for i in range(rows)]).read_bytes()
    data = folder / "cut.json"
    data.write_bytes(full[: max(2, int(len(full) * cut))])
    out = folder / "o" / "fixed.json"
    try:
        report = vlmcheck.repair(data, model=spec(qwen2_vl_checkpoint), max_length=4096, output=out,
                                 hold="broken" if hold else None)
    except (DatasetError, UsageError):
        assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing written
        return
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    size = data.stat().st_size
    assert records[-1]["bytes"][1] == size
    assert sum(report.counts.values()) == len(records)
    kept = [r for r in records if r["outcome"] == "kept"]
    assert len(json.loads(out.read_text())) == report.rows_written == len(kept)
    if records[-1].get("remainder"):
        assert remainder_path(out).read_bytes() == data.read_bytes()[records[-1]["bytes"][0]:]


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(at=st.floats(min_value=0.05, max_value=0.95), hold=st.booleans())
def test_repair_conserves_rows_on_damaged_parquet(tmp_path_factory: pytest.TempPathFactory,
                                                  qwen2_vl_checkpoint: Path, at: float, hold: bool) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    folder = tmp_path_factory.mktemp("pq")
    image(folder / "good.png", 280, 224)
    rows = [{"id": f"r{i}", "messages": row(f"r{i}")["messages"], "images": ["good.png"]} for i in range(600)]
    path = folder / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    _damage(path, at)
    out = folder / "o" / "fixed.parquet"
    try:
        report = vlmcheck.repair(path, model=spec(qwen2_vl_checkpoint), max_length=4096, output=out,
                                 hold="broken" if hold else None)
    except (DatasetError, UsageError):
        assert not out.parent.exists() or list(out.parent.iterdir()) == []
        return
    records = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(records)))
    assert report.rows_written == pq.ParquetFile(out).metadata.num_rows
    assert report.rows_written + report.counts["held"] + report.counts["dropped"] == len(records)


def test_json_dash_is_standard_output(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_jsonl(folder / "d.jsonl", [row("a")])
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"]["samples"] == 1
    assert not (Path.cwd() / "-").exists()
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint), "-o", "-"])
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == ["a"]


def test_outputs_that_are_links_or_devices_are_refused(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_jsonl(folder / "d.jsonl", [row("a")])
    (folder / "real.json").write_text("keep")
    (folder / "link.json").symlink_to(folder / "real.json")
    for target in (folder / "link.json", Path("/dev/null")):
        result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint),
                                           "--json", str(target)])
        assert result.exit_code == 2, result.output
        with pytest.raises(UsageError):
            vlmcheck.scan(data, model=spec(qwen2_vl_checkpoint), output=target)
    assert (folder / "real.json").read_text() == "keep" and (folder / "link.json").is_symlink()


def test_outputs_honour_the_umask(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_jsonl(folder / "d.jsonl", [row("a")])
    old = os.umask(0o027)
    try:
        vlmcheck.scan(data, model=spec(qwen2_vl_checkpoint), output=folder / "r.jsonl")
        vlmcheck.repair(data, model=spec(qwen2_vl_checkpoint), max_length=4096, output=folder / "f.jsonl")
    finally:
        os.umask(old)
    for name in ("r.jsonl", "f.jsonl", "f.manifest.jsonl"):
        assert (folder / name).stat().st_mode & 0o777 == 0o640, name


def test_an_empty_dataset_is_not_clean(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    for name, text in (("e.jsonl", ""), ("e.json", "[]"), ("blank.jsonl", "\n\n")):
        (folder / name).write_text(text)
        with pytest.raises(DatasetError, match="no rows"):
            vlmcheck.scan(folder / name, model=spec(qwen2_vl_checkpoint))
        result = CliRunner().invoke(main, ["scan", str(folder / name), "--model", str(qwen2_vl_checkpoint)])
        assert result.exit_code == 2


def test_repair_refuses_a_symlinked_output(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_jsonl(folder / "d.jsonl", [row("a")])
    (folder / "elsewhere.jsonl").write_text("keep")
    (folder / "fixed.jsonl").symlink_to(folder / "elsewhere.jsonl")
    with pytest.raises(UsageError, match="symlink"):
        vlmcheck.repair(data, model=spec(qwen2_vl_checkpoint), max_length=4096, output=folder / "fixed.jsonl")
    assert (folder / "elsewhere.jsonl").read_text() == "keep"


def test_a_lone_surrogate_in_an_id_is_printable(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = folder / "d.jsonl"
    data.write_text('{"id": "\\ud800x", "messages": [{"role": "user", "content": "hi \\udc00"}, '
                    '{"role": "assistant", "content": "ok"}]}\n')
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint), "-o",
                                       str(folder / "r.jsonl"), "--json", str(folder / "s.json")])
    assert result.exit_code == 1, result.output
    (record,) = [json.loads(x) for x in (folder / "r.jsonl").read_text().splitlines()]
    assert record["id"] == "\\ud800x" and record["findings"] == ["VC001"]
    assert "lone surrogate" in result.output


def test_an_output_never_replaces_a_file_vlmcheck_did_not_write(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    """-o, --json and --html pointed at a dataset, an image, a checkpoint's file or any other file vlmcheck did not
    write are refused and leave it as it was; each command's own earlier output is replaced."""
    data = write_jsonl(folder / "d.jsonl", [row("a")])
    array = write_json(folder / "array.json", [row("b")])
    notes = folder / "notes.txt"
    notes.write_text("my notes\n")
    theirs = [data, array, folder / "good.png", notes, qwen2_vl_checkpoint / "preprocessor_config.json"]
    before = {p: p.read_bytes() for p in theirs}
    scan = ["scan", str(data), "--model", str(qwen2_vl_checkpoint)]
    for target in theirs:
        for flag in ("-o", "--json", "--html"):
            result = CliRunner().invoke(main, [*scan, flag, str(target)])
            said = ("never writes over", "would replace")  # the dataset itself is named as such
            assert result.exit_code == 2 and any(w in result.output for w in said), (flag, target, result.output)
        with pytest.raises(UsageError, match="never writes over"):
            vlmcheck.scan(data, model=spec(qwen2_vl_checkpoint), output=target)
    assert {p: p.read_bytes() for p in theirs} == before
    outputs = {"-o": folder / "r.jsonl", "--json": folder / "r.json", "--html": folder / "r.html"}
    for _ in range(2):  # the second run replaces the first run's outputs
        args = [a for flag, path in outputs.items() for a in (flag, str(path))]
        result = CliRunner().invoke(main, [*scan, *args])
        assert result.exit_code == 0, result.output
    lint = CliRunner().invoke(main, ["lint", str(folder / "x.yaml"), "--json", str(folder / "r.json")])
    assert "not a vlmcheck output" not in lint.output
