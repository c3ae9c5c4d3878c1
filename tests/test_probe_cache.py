"""Each image file version probed once (``vlmcheck.data.probecache``), with the answers of probing every time.

Oracle: the probe itself (``probe_path``), run on every reference with ``VLMCHECK_PROBE_CACHE=0``. Whole scans
over files that rows share (PNG, JPEG, an EXIF-rotated JPEG, a truncated JPEG, a text file named .png, a
missing file, a folder) must give identical records both ways; a file rewritten between two probes must be
probed again, even at the same size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from builders import image, png_header_only, write_jsonl
from vlmcheck import scan
from vlmcheck.data.images import ImageInfo, ImageProblem
from vlmcheck.data.probecache import ProbeCache
from vlmcheck.demo.checkpoints import qwen_checkpoint


def _files(folder: Path) -> list[str]:
    image(folder / "a.png", 640, 480)
    image(folder / "b.jpg", 300, 1200, fmt="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (800, 200), "blue").save(folder / "rotated.jpg", "JPEG", exif=exif.tobytes())
    whole = (folder / "b.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.png").write_text("not an image")
    (folder / "dir.png").mkdir()
    return ["a.png", "b.jpg", "rotated.jpg", "cut.jpg", "text.png", "dir.png", "missing.png"]


def test_scan_records_identical_with_and_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _files(tmp_path)
    rows: list[dict[str, Any]] = []
    for i in range(70):
        images = [names[i % len(names)], names[(i * 3) % len(names)]][: 1 + i % 2]
        rows.append({"id": f"r{i}", "images": images, "messages": [
            {"role": "user", "content": "<image>" * len(images) + "What is it?"},
            {"role": "assistant", "content": "A picture."}]})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out: dict[str, Any] = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("VLMCHECK_PROBE_CACHE", setting)
        records = tmp_path / f"records{setting}.jsonl"
        report = scan(data, model=qwen_checkpoint("qwen2_vl"), max_length=2048, output=records)
        summary = report.to_dict()
        for key in ("seconds", "samples_per_second"):
            summary["summary"].pop(key)
        out[setting] = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()], summary
    codes = {code for r in out["1"][0] for code in r["findings"]}
    assert {"VC101", "VC102", "VC103"} <= codes
    assert out["1"][0] == out["0"][0]
    assert out["1"][1] == out["0"][1]  # the findings' messages and the summary too


def test_a_rewritten_file_is_probed_again(tmp_path: Path) -> None:
    probes = ProbeCache(enabled=True)
    path = png_header_only(tmp_path / "x.png", 100, 50)
    assert probes.probe_path(path).size() == (100, 50)
    size = path.stat().st_size
    png_header_only(path, 50, 100)  # same byte size, other dimensions
    assert path.stat().st_size == size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # even where the clock is coarse
    assert probes.probe_path(path).size() == (50, 100)
    image(path, 20, 10)
    assert probes.probe_path(path).size() == (20, 10)


def test_a_problem_is_raised_anew_each_time(tmp_path: Path) -> None:
    probes = ProbeCache(enabled=True)
    (tmp_path / "t.png").write_text("not an image")
    raised = []
    for _ in range(3):
        with pytest.raises(ImageProblem) as e:
            probes.probe_path(tmp_path / "t.png")
        raised.append(e.value)
    assert raised[0] is not raised[1]
    assert {(p.code, p.message) for p in raised} == {(raised[0].code, raised[0].message)}
    assert raised[0].code == "VC102"


def test_answers_are_bounded(tmp_path: Path) -> None:
    probes = ProbeCache(enabled=True, max_entries=3)
    for k in range(6):
        assert isinstance(probes.probe_path(image(tmp_path / f"{k}.png", 10 + k, 10)), ImageInfo)
    assert len(probes._answers) == 3
