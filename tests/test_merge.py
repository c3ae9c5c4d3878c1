"""Shards, merge and resume. ``shard=I/N`` scans a deterministic slice; the summaries of all N shards merge into
exactly the whole scan's summary (counts, length distribution, recommended max_length and max_pixels, the
findings held), through JSON files and through the CLI; an interrupted resumable scan goes on from its partial
output and ends with the records and summary of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vlmcheck
from builders import spec
from vlmcheck import records
from vlmcheck.cli import main
from vlmcheck.demo.run import DATA
from vlmcheck.records import partial_path, snapshot_path

MAX_LENGTH = 1024
TIMING = ("seconds", "samples_per_second")


def _summary(report: Any) -> dict[str, Any]:
    return {k: v for k, v in report.summary.items() if k not in TIMING}


@pytest.fixture
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    # the demo rows two and a bit times: a length distribution with repeats, rows cut at the max length, budgets
    path = tmp_path / "train.jsonl"
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines * 2 + lines[:7]), encoding="utf-8")
    return path


def _scan(dataset: Path, model: Any, **options: Any) -> Any:
    return vlmcheck.scan(dataset, model=model, max_length=MAX_LENGTH, image_root=DATA.parent, **options)


def test_shards_merge_into_the_whole(tmp_path: Path, model: Any, dataset: Path):
    whole = _scan(dataset, model)
    s = whole.summary
    # a distribution worth merging: several lengths, percentiles apart, a pixel budget recommendation
    assert len(s["histograms"]["tokens"]) > 10 and s["tokens"]["p50"] < s["tokens"]["p90"] < s["tokens"]["max"]
    assert s["recommended_max_pixels"]["99%"] is not None and s["recommended_max_pixels"]["unfixable_samples"] > 0
    for n in (2, 3):
        shards = [_scan(dataset, model, shard=f"{i}/{n}") for i in range(n)]
        assert [sh.summary["shard"] for sh in shards] == [f"{i}/{n}" for i in range(n)]
        # each shard is the rows whose index is i mod n
        assert [[r["index"] for r in sh.records()] for sh in shards] == [
            list(range(i, s["samples"], n)) for i in range(n)]
        # the percentiles of the shards differ from the whole's: only the histograms merge
        assert any(sh.summary["tokens"] != s["tokens"] for sh in shards)
        files = []
        for i, sh in enumerate(shards):
            files.append(tmp_path / f"shard{i}of{n}.json")
            files[-1].write_text(json.dumps(sh.to_dict()))
        merged = vlmcheck.merge(files[::-1])  # in any order
        assert _summary(merged) == {k: v for k, v in _summary(whole).items()}
        assert merged.to_dict()["findings"] == whole.to_dict()["findings"]
        assert merged.render(show=50).split("Result:")[0] == whole.render(show=50).split("Result:")[0]
        # and the records of the shards, in index order, are the whole's
        assert sorted((r for sh in shards for r in sh.records()), key=lambda r: r["index"]) == list(whole.records())


def test_merge_refuses_what_does_not_add_up(tmp_path: Path, model: Any, dataset: Path):
    shards = [_scan(dataset, model, shard=f"{i}/3").to_dict() for i in range(3)]
    with pytest.raises(vlmcheck.UsageError, match="missing 1/3"):
        vlmcheck.merge([shards[0], shards[2]])
    with pytest.raises(vlmcheck.UsageError, match="given twice 0/3"):
        vlmcheck.merge([shards[0], shards[0], shards[1], shards[2]])
    other = _scan(dataset, model, shard="1/3", truncation="left").to_dict()
    with pytest.raises(vlmcheck.UsageError, match="truncation differ"):
        vlmcheck.merge([shards[0], other, shards[2]])
    with pytest.raises(vlmcheck.UsageError, match="shard must be I/N"):
        _scan(dataset, model, shard="2")
    with pytest.raises(vlmcheck.UsageError, match="count from 0"):
        _scan(dataset, model, shard="3/3")
    old = json.loads(json.dumps(shards[0]))
    del old["summary"]["histograms"]
    with pytest.raises(vlmcheck.UsageError, match="no histograms"):
        vlmcheck.merge([old, shards[1], shards[2]])


def test_two_datasets_merge_like_their_concatenation(tmp_path: Path, model: Any, dataset: Path):
    lines = dataset.read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(lines[:30]))
    b.write_text("".join(lines[30:]))
    merged = vlmcheck.merge([_scan(a, model), _scan(b, model)])
    whole = _scan(dataset, model)
    skip = ("dataset",)  # and the findings' indices restart in b
    assert {k: v for k, v in _summary(merged).items() if k not in skip} == \
        {k: v for k, v in _summary(whole).items() if k not in skip}
    assert merged.summary["dataset"] == f"{a}, {b}"


class Interrupted(Exception):
    pass


def _interrupt_at(n: int) -> Any:
    def progress(done: int, total: int | None) -> None:
        if done == n:
            raise Interrupted

    return progress


def test_an_interrupted_scan_resumes_to_the_uninterrupted_result(tmp_path: Path, model: Any, dataset: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    fresh_out = tmp_path / "fresh.jsonl"
    fresh = _scan(dataset, model, output=fresh_out)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(records, "_SNAPSHOT_SECONDS", 0.0)  # a snapshot after every sample, not every 5 s
    with pytest.raises(Interrupted):
        _scan(dataset, model, output=out, resume=True, progress=_interrupt_at(20))
    assert not out.exists()  # the output appears only whole
    partial = partial_path(out).read_text().splitlines()
    assert len(partial) == 20 and snapshot_path(out).is_file()
    # interrupted again, later: each run goes on from the last
    with pytest.raises(Interrupted):
        _scan(dataset, model, output=out, resume=True, progress=_interrupt_at(45))
    assert len(partial_path(out).read_text().splitlines()) == 45
    seen: list[int] = []
    resumed = _scan(dataset, model, output=out, resume=True, progress=lambda done, total: seen.append(done))
    assert seen[0] == 46  # the first 45 samples were not scanned again
    assert out.read_text() == fresh_out.read_text()
    assert _summary(resumed) == _summary(fresh)
    assert resumed.to_dict()["findings"] == fresh.to_dict()["findings"]
    assert not partial_path(out).exists() and not snapshot_path(out).exists()


def test_records_written_after_the_last_snapshot_are_scanned_again(tmp_path: Path, model: Any, dataset: Path):
    """A scan killed outright (no chance to save) leaves records the snapshot does not count, maybe half a line."""
    fresh_out = tmp_path / "fresh.jsonl"
    fresh = _scan(dataset, model, output=fresh_out)
    out = tmp_path / "out.jsonl"
    with pytest.raises(Interrupted):
        _scan(dataset, model, output=out, resume=True, progress=_interrupt_at(10))
    extra = fresh_out.read_text().splitlines(keepends=True)[10:13]
    with open(partial_path(out), "a") as fp:
        fp.write("".join(extra) + extra[0][:17])
    resumed = _scan(dataset, model, output=out, resume=True)
    assert out.read_text() == fresh_out.read_text()
    assert _summary(resumed) == _summary(fresh)


def test_resume_refuses_a_partial_output_of_other_settings(tmp_path: Path, model: Any, dataset: Path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(Interrupted):
        _scan(dataset, model, output=out, resume=True, progress=_interrupt_at(5))
    with pytest.raises(vlmcheck.UsageError, match="other settings"):
        _scan(dataset, model, output=out, resume=True, truncation="left")
    with pytest.raises(vlmcheck.UsageError, match="resume needs output"):
        _scan(dataset, model, resume=True)


def test_cli_shards_merge_and_resume(tmp_path: Path, qwen2_vl_checkpoint: Path, dataset: Path):
    runner = CliRunner()
    common = [str(dataset), "-m", str(qwen2_vl_checkpoint), "--max-length", str(MAX_LENGTH),
              "--image-root", str(DATA.parent), "-q"]
    whole = runner.invoke(main, ["scan", *common, "--json", str(tmp_path / "whole.json")])
    assert whole.exit_code == 1, whole.output  # the demo rows have errors
    for i in range(2):
        result = runner.invoke(main, ["scan", *common, "--shard", f"{i}/2", "--json", str(tmp_path / f"s{i}.json")])
        assert result.exit_code == 1, result.output
    merged = runner.invoke(main, ["merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"),
                                  "-o", str(tmp_path / "all.json")])
    assert merged.exit_code == 1, merged.output
    assert merged.output.startswith(f"vlmcheck scan: {dataset}: 51 samples")

    def summary(name: str) -> dict[str, Any]:
        data = json.loads((tmp_path / name).read_text())
        return {k: v for k, v in data["summary"].items() if k not in TIMING}

    assert summary("all.json") == summary("whole.json")
    bad = runner.invoke(main, ["merge", str(tmp_path / "s0.json")])
    assert bad.exit_code == 2 and "missing 1/2" in bad.output
    out = tmp_path / "records.jsonl"
    resumed = runner.invoke(main, ["scan", *common, "--output", str(out), "--resume"])
    assert resumed.exit_code == 1 and len(out.read_text().splitlines()) == 51
