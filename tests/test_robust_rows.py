"""One bad row, file or checkpoint never ends a scan (issue 15): hostile paths, JSON a parser cannot nest,
templates that raise or run away, broken checkpoints (a usage error before the scan), and the CLI's own
exit codes for a crash, Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vlmcheck
from builders import image, records, spec, write_jsonl
from vlmcheck.cli import main
from vlmcheck.errors import ModelError, UsageError


def row(id_: str, images: Any = None, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "messages": [{"role": "user", "content": "<image>What is this?"},
                                                   {"role": "assistant", "content": "A thing."}]}
    out["images"] = ["good.png"] if images is None else images
    out.update(changes)
    return out


def test_hostile_paths_are_findings(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", 280, 224)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo.png")
    rows = [
        row("good"),
        row("nul", ["a\x00b.png"]),
        row("long", ["x" * 300 + ".png"]),
        row("through-a-file", ["good.png/x.png"]),
        row("loop", ["loop"]),
        row("fifo", ["fifo.png"]),
        row("folder", ["."]),
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    started = time.monotonic()
    got = {r["id"]: r["findings"] for r in records(data, model=qwen2_vl_checkpoint)}
    assert time.monotonic() - started < 30  # the FIFO is never opened for reading
    assert got == {"good": [], "nul": ["VC101"], "long": ["VC101"], "through-a-file": ["VC101"],
                   "loop": ["VC101"], "fifo": ["VC102"], "folder": ["VC102"]}


def test_lone_surrogates_and_unparseable_json_are_row_findings(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", 280, 224)
    lines = [
        json.dumps(row("good")),
        json.dumps(row("surrogate-path", ["\udc80.png"])),
        json.dumps({"id": "surrogate-text", "messages": [{"role": "user", "content": "hi \ud800"},
                                                          {"role": "assistant", "content": "ok"}]}),
        json.dumps(row("surrogate-role", images=[], messages=[{"role": "\ud800", "content": "x"},
                                                    {"role": "assistant", "content": "y"}])),
        "[" * 100_000 + "]" * 100_000,
        json.dumps(row("big-int")).replace('"id": "big-int"', '"id": "big-int", "n": ' + "9" * 5000),
        json.dumps(row("type-list", images=[], messages=[{"role": "user", "content": [{"type": ["text"], "text": "x"}]},
                                               {"role": "assistant", "content": "y"}])),
        json.dumps(row("good-2")),
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # a BOM: row 0 still reads
    got = records(data, model=qwen2_vl_checkpoint)
    assert len(got) == len(lines)
    found = {r["id"]: r["findings"] for r in got}
    assert found["good"] == found["good-2"] == found["big-int"] == []
    for key in ("surrogate-path", "surrogate-text", "surrogate-role", "4", "type-list"):
        assert found[key] and set(found[key]) <= {"VC001", "VC101", "VC003"}, (key, found[key])


def test_nested_too_deep_in_a_json_array(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", 280, 224)
    deep = "[" * 100_000 + "]" * 100_000
    data = tmp_path / "d.json"
    data.write_text(f"[{json.dumps(row('a'))}, {deep}, {json.dumps(row('b'))}]", encoding="utf-8")
    got = records(data, model=qwen2_vl_checkpoint)
    assert [(r["id"], r["findings"]) for r in got] == [("a", []), ("1", ["VC001"]), ("b", [])]


def test_deeply_nested_extras_with_workers(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", 280, 224)
    deep = json.dumps(row("deep", extra=0)).replace('"extra": 0', '"extra": ' + '{"x": ' * 600 + "1" + "}" * 600)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([json.dumps(row("a")), deep, json.dumps(row("b"))]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    vlmcheck.scan(data, model=qwen2_vl_checkpoint, workers=2, output=out)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", "deep", "b"]
    assert got[0]["findings"] == got[2]["findings"] == []


TEMPLATES = {
    "zero-division": "{{ 1 / 0 }}",
    "type-error": "{{ messages + 1 }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "huge-string": "{{ 'x' * 1000000000 }}",
    "syntax": "{% for %}",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_broken_template_is_a_usage_error(tmp_path: Path, qwen2_vl_checkpoint: Path, name: str) -> None:
    image(tmp_path / "good.png", 280, 224)
    data = write_jsonl(tmp_path / "d.jsonl", [row("a")])
    with pytest.raises(UsageError, match="chat template"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, chat_template=TEMPLATES[name])


def test_a_template_that_runs_away_on_one_row_is_a_finding(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import vlmcheck.chat as chat

    monkeypatch.setattr(chat, "MAX_RENDER_SECONDS", 0.5)
    template = ("{% for m in messages %}{% if m.content == 'spin' %}{% for i in range(100000) %}"
                "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
                "{% if m.content == 'boom' %}{{ 1 / 0 }}{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    image(tmp_path / "good.png", 280, 224)
    rows = [{"id": k, "messages": [{"role": "user", "content": k}, {"role": "assistant", "content": "ok"}]}
            for k in ("fine", "spin", "boom")]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o.jsonl"
    vlmcheck.scan(data, model=qwen2_vl_checkpoint, chat_template=template, output=out)
    got = {r["id"]: r["findings"] for r in map(json.loads, out.read_text().splitlines())}
    assert got == {"fine": [], "spin": ["VC001"], "boom": ["VC001"]}


def _broken(qwen2_vl_checkpoint: Path, tmp_path: Path, name: str, content: bytes | None = None,
            **preprocessor: Any) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(qwen2_vl_checkpoint, folder)
    if content is not None:
        (folder / name).write_bytes(content)
    if preprocessor:
        config = json.loads((folder / "preprocessor_config.json").read_text())
        config.update(preprocessor)
        (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("broken", [
    {"name": "tokenizer.json", "content": b'{"version": "1.0", "model": {"type": "BPE"'},
    {"name": "tokenizer.json", "content": b'{"version": "1.0", "model": {"type": "Nope"}}'},
    {"name": "chat_template.jinja", "content": b"\xff\xfe{{ messages }}"},
    {"name": "x", "patch_size": 0},
    {"name": "x", "patch_size": -14},
    {"name": "x", "merge_size": "two"},
    {"name": "x", "max_pixels": float("inf")},
    {"name": "x", "min_pixels": -1},
], ids=lambda b: "-".join(f"{k}={v}"[:24] for k, v in b.items()))
def test_a_broken_checkpoint_is_a_usage_error(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                               broken: dict[str, Any]) -> None:
    image(tmp_path / "good.png", 280, 224)
    data = write_jsonl(tmp_path / "d.jsonl", [row("a")])
    folder = _broken(qwen2_vl_checkpoint, tmp_path, **broken)
    with pytest.raises((ModelError, UsageError)):
        vlmcheck.scan(data, model=folder)


def test_a_broken_checkpoint_exits_2(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", 280, 224)
    data = write_jsonl(tmp_path / "d.jsonl", [row("a")])
    folder = _broken(qwen2_vl_checkpoint, tmp_path, "x", patch_size=0)
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(folder)])
    assert result.exit_code == 2 and "must be positive" in result.output, result.output


def test_a_mistyped_local_model_is_a_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from vlmcheck.model import resolve_model_path

    with pytest.raises(ModelError, match="no such folder"):
        resolve_model_path("runs/ckpt-12OO")


def test_cli_exit_codes_for_a_crash_and_an_interrupt(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    image(tmp_path / "good.png", 280, 224)
    data = write_jsonl(tmp_path / "d.jsonl", [row("a")])
    import sys

    scan_module = sys.modules["vlmcheck.scan"]

    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(scan_module, "scan", crash)
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint)])
    assert result.exit_code == 3 and "bug in vlmcheck" in result.output

    def interrupt(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_module, "scan", interrupt)
    result = CliRunner().invoke(main, ["scan", str(data), "--model", str(qwen2_vl_checkpoint)])
    assert result.exit_code == 130


def test_sigterm_exits_143_and_leaves_no_temp_files(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    import signal
    import subprocess
    import sys

    image(tmp_path / "good.png", 280, 224)
    data = write_jsonl(tmp_path / "d.jsonl", [row(str(i)) for i in range(60_000)])
    out = tmp_path / "out" / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", "from vlmcheck.cli import main; main()", "scan", str(data), "--model",
                             str(qwen2_vl_checkpoint), "-o", str(out), "-q"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.parent.exists() and any(out.parent.iterdir())):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    # no temporary file, and the folder vlmcheck made for the output is gone with it
    assert not out.exists() and not out.parent.exists()


def test_spec_builder_still_loads(qwen2_vl_checkpoint: Path) -> None:
    assert spec(qwen2_vl_checkpoint).family.name == "qwen2_vl"
