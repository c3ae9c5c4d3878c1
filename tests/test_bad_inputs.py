"""Every kind of bad input becomes its finding, and the scan goes on: the other samples are still
counted. A scan never writes to its inputs, and ``--output`` appears whole or not at all."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import vlmcheck
from builders import image, png_header_only, records, spec, write_json

GOOD = (280, 224)  # 80 image tokens


def turns(prompt: str = "<image>What is this?", answer: str = "A thing.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def row(id_: str, images: Any, **changes: Any) -> dict[str, Any]:
    return {"id": id_, "messages": turns(), "images": images, **changes}


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    from PIL import Image

    Image.effect_noise((320, 240), 64).convert("RGB").save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])  # a download cut half-way
    return path


@pytest.fixture
def bad_dataset(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """One JSONL file holding every bad case between good rows; returns it and the codes expected
    per row (keyed by id, or by line index for rows that have no readable id)."""
    root = tmp_path / "ds"
    img = root / "img"
    image(img / "good.png", *GOOD)
    truncated_jpeg(img / "cut.jpg")
    (img / "empty.jpg").write_bytes(b"")
    (img / "page.jpg").write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    png_header_only(img / "huge.png", 100_000, 100_000)
    image(img / "banner.png", 6000, 29)  # 206.9 : 1, both sides >= 28
    image(img / "icon.png", 20, 20)
    outside = image(tmp_path / "elsewhere" / "secret.png", *GOOD)
    (img / "link-out.png").symlink_to(outside)
    (img / "link-in.png").symlink_to(img / "good.png")

    cases: list[tuple[str | bytes, list[str]]] = [
        (json.dumps(row("good-1", ["img/good.png"])), []),
        (json.dumps(row("cut-jpeg", ["img/cut.jpg"])), ["VC103"]),
        (json.dumps(row("zero-byte", ["img/empty.jpg"])), ["VC102"]),
        (json.dumps(row("html-as-jpg", ["img/page.jpg"])), ["VC102"]),
        (json.dumps(row("missing", ["img/nope.jpg"])), ["VC101"]),
        (json.dumps({"id": "messages-str", "messages": "hello", "images": []}), ["VC001"]),
        (json.dumps(row("images-number", 5)), ["VC001"]),
        (json.dumps({"id": "content-number", "messages": [{"role": "user", "content": 5}]}), ["VC001"]),
        ('{"id": "bad-json", "messages": [', ["VC001"]),
        (b'{"id": "latin-1", "messages": [{"role": "user", "content": "caf\xe9"}]}', ["VC001"]),
        (json.dumps(["a", "list"]), ["VC001"]),
        (json.dumps(row("huge", ["img/huge.png"])), ["VC105"]),
        (json.dumps(row("dotdot", ["../elsewhere/secret.png"])), ["VC104"]),
        (json.dumps(row("absolute", [str(outside)])), ["VC104"]),
        (json.dumps(row("symlink-out", ["img/link-out.png"])), ["VC104"]),
        (json.dumps(row("symlink-in", ["img/link-in.png"])), []),
        (json.dumps(row("banner", ["img/banner.png"])), ["VC107"]),
        (json.dumps(row("icon", ["img/icon.png"])), ["VC106"]),
        (json.dumps(row("two-tags-one-image", ["img/good.png"],
                        messages=turns("<image><image>Compare."))), ["VC002"]),
        (json.dumps(row("no-tag-one-image", ["img/good.png"], messages=turns("Describe."))), ["VC002"]),
        (json.dumps(row("no-assistant", ["img/good.png"], messages=turns()[:1])), ["VC003"]),
        (json.dumps(row("empty-assistant", ["img/good.png"], messages=turns(answer=" "))), ["VC003"]),
        (json.dumps(row("good-2", ["img/good.png", "img/good.png"],
                        messages=turns("<image>and<image>?"))), []),
    ]
    lines = [c if isinstance(c, bytes) else c.encode() for c, _ in cases]
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected = {}
    for index, (content, codes) in enumerate(cases):
        try:
            key = str(json.loads(content)["id"])
        except (ValueError, TypeError, KeyError):
            key = str(index)
        expected[key] = codes
    return root / "train.jsonl", expected


def test_each_bad_input_yields_its_finding(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, expected = bad_dataset
    rows = records(dataset, model=qwen2_vl_checkpoint, max_length=4096, confine=True)
    assert {r["id"]: r["findings"] for r in rows} == expected
    # the scan went through every line, and the good samples are counted
    assert [r["index"] for r in rows] == list(range(len(expected)))
    good = {r["id"]: (r["tokens"], r["image_tokens"]) for r in rows if r["id"].startswith(("good", "symlink-in"))}
    assert good["good-1"][1] == [80] and good["good-2"][1] == [80, 80]
    assert good["symlink-in"] == good["good-1"]
    assert all(tokens and tokens > 80 for tokens, _ in good.values())


def test_bad_input_messages_name_the_problem(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    report = vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), max_length=4096, confine=True)
    by_id: dict[str, list[str]] = {}
    for f in report.findings:
        by_id.setdefault(str(f.id), []).append(f.message)
    assert by_id["messages-str"] == ["'messages' must be a list"]
    assert by_id["images-number"] == ["'images' must be a list, got int"]
    assert by_id["content-number"] == ["messages[0].content must be a string, got int"]
    assert by_id["8"] == ["line 9 is not valid JSON: Expecting value at column 33"]
    assert by_id["9"] == ["line 10 is not UTF-8 (byte 63)"]
    assert by_id["10"] == ["no conversation found (fields: list)"]
    assert "100000x100000" in by_id["huge"][0] or "10000000000 pixels" in by_id["huge"][0]
    assert by_id["banner"] == ["image 1 of 1 (img/banner.png): aspect ratio 206.9 is over the processor's "
                               "limit of 200 (6000x29)"]
    assert by_id["two-tags-one-image"] == ["2 image placeholder(s) in the text but 1 image(s)"]
    assert by_id["no-tag-one-image"] == ["0 image placeholder(s) in the text but 1 image(s)"]
    for key in ("dotdot", "absolute", "symlink-out"):
        assert "outside the image root" in by_id[key][0]
    assert report.summary["samples"] == 23


def test_huge_declared_dimensions_are_read_from_the_header_only(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from vlmcheck.data.images import ImageProblem, probe_path

    huge = png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    assert huge.stat().st_size < 100
    tracemalloc.start()
    with pytest.raises(ImageProblem) as raised:
        probe_path(huge)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert raised.value.code == "VC105"
    assert peak < 1 << 20  # 3e10 bytes of pixels were never allocated


def test_paths_outside_the_root_are_read_unless_confined(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    # absolute paths, `..` and symlinked folders are how users keep their own data (ms-swift's layout,
    # HF image structs): read by default; --confine is for data you do not trust
    dataset, _ = bad_dataset
    rows = records(dataset, model=qwen2_vl_checkpoint)
    got = {r["id"]: (r["findings"], r["image_tokens"]) for r in rows}
    for key in ("dotdot", "absolute", "symlink-out"):
        assert got[key] == ([], [80])


def test_a_json_array_cut_short(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    full = write_json(tmp_path / "full.json", [row(f"r{i}", ["good.png"]) for i in range(3)])
    cut = tmp_path / "cut.json"
    text = full.read_text()
    cut.write_text(text[: text.index('"r2"') + 20])  # the third object is cut off
    rows = records(cut, model=qwen2_vl_checkpoint)
    assert [(r["id"], r["findings"]) for r in rows] == [("r0", []), ("r1", []), ("2", ["VC001"])]
    report = vlmcheck.scan(cut, model=spec(qwen2_vl_checkpoint))
    assert report.findings[0].message.startswith("invalid JSON at byte")


def test_a_json_array_missing_its_bracket(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    path = tmp_path / "open.json"
    path.write_text(json.dumps([row("r0", ["good.png"])])[:-1] + ",\n")
    rows = records(path, model=qwen2_vl_checkpoint)
    assert [(r["id"], r["findings"]) for r in rows] == [("r0", []), ("1", ["VC001"])]


def test_a_chat_template_that_raises(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    image(tmp_path / "good.png", *GOOD)
    rows = [row("ok", ["good.png"]), row("starts-with-assistant", [], messages=[
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."}])]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = copy.copy(spec(qwen2_vl_checkpoint))  # keeps the loaded tokenizer
    assert model.chat_template is not None
    model.chat_template = ("{% if messages[0]['role'] == 'assistant' %}"
                           "{{ raise_exception('Conversations must start with a user turn') }}{% endif %}"
                           + model.chat_template)
    report = vlmcheck.scan(dataset, model=model)
    assert report.counts == {"VC001": 1}
    (finding,) = report.findings
    assert (finding.id, finding.message) == (
        "starts-with-assistant",
        "the chat template rejects this conversation: Conversations must start with a user turn")
    assert report.summary["samples"] == 2 and report.summary["samples_without_length"] == 1


# -- the scan leaves its inputs alone and writes outputs atomically ---------------------------------
def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_inputs_are_unchanged(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    folder = dataset.parent.parent
    before = _hashes(folder)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), max_length=64, output=folder / "out" / "r.jsonl")
    after = _hashes(folder)
    assert after.pop("out/r.jsonl")
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_output_is_complete_and_leaves_no_temp_files(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, expected = bad_dataset
    out = dataset.parent / "out"
    out.mkdir()
    vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl")
    assert os.listdir(out) == ["r.jsonl"]
    assert len((out / "r.jsonl").read_text().splitlines()) == len(expected)


class Interrupted(Exception):
    pass


def test_a_scan_that_raises_leaves_no_partial_output(bad_dataset, qwen2_vl_checkpoint: Path) -> None:
    dataset, _ = bad_dataset
    out = dataset.parent / "out"
    out.mkdir()

    def progress(done: int, total: int | None) -> None:
        if done == 5:  # records of the first samples are already written to the temp file
            raise Interrupted

    with pytest.raises(Interrupted):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl", progress=progress)
    assert os.listdir(out) == []

    # an earlier complete output (vlmcheck's records) survives a failed re-run untouched
    previous = '{"index": 0, "id": "earlier run"}\n'
    (out / "r.jsonl").write_text(previous)
    with pytest.raises(Interrupted):
        vlmcheck.scan(dataset, model=spec(qwen2_vl_checkpoint), output=out / "r.jsonl", progress=progress)
    assert os.listdir(out) == ["r.jsonl"]
    assert (out / "r.jsonl").read_text() == previous


def test_scan_output_never_replaces_the_dataset(tmp_path, qwen2_vl_checkpoint):
    from vlmcheck.errors import UsageError

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    before = data.read_bytes()
    with pytest.raises(UsageError, match="never writes over its input"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, output=tmp_path / "." / "d.jsonl")
    assert data.read_bytes() == before


# -- hostile inputs outside the dataset rows: refused with exit 2 and a message, never a traceback (exit 3) ---------
DEEP = "[" * 5000 + "]" * 5000  # past every parser's recursion
NESTED = "nested deeper than vlmcheck reads"


def cli(*args: str | Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from vlmcheck.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def qa_rows(path: Path, n: int = 2) -> Path:
    path.write_text("".join(json.dumps({"messages": turns("Hi", "Hello.")}) + "\n" for _ in range(n)))
    return path


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qwen2_vl_checkpoint: Path) -> Path:
    """A folder holding a small dataset and the checkpoint's path in ``ck``; the working folder."""
    monkeypatch.chdir(tmp_path)
    qa_rows(tmp_path / "train.jsonl")
    (tmp_path / "ck").write_text(str(qwen2_vl_checkpoint))
    return tmp_path


def _verl(folder: Path, *overrides: str) -> Path:
    model = (folder / "ck").read_text()
    script = folder / "run.sh"
    script.write_text("python3 -m verl.trainer.main_ppo data.train_files=train.jsonl "
                      f"actor_rollout_ref.model.path={model} {' '.join(overrides)}\n")
    return script


@pytest.mark.parametrize("case", ["config", "lint-config", "json-config", "verl-override", "lint-override",
                                  "notebook", "lint-notebook", "script", "lint-script", "template",
                                  "processor-option", "merge"])
def test_deep_nesting_is_refused_naming_the_input(hostile: Path, case: str) -> None:
    model = (hostile / "ck").read_text()
    deep_script = "from unsloth import FastVisionModel\nx = " + "-" * 50_000 + "1\n"
    files = {
        "config": ("train.yaml", f"model_name_or_path: {model}\ncutoff_len: 4096\nx: {DEEP}\n"),
        "json-config": ("train.json", '{"actor_rollout_ref": {"x": 1}, "data": {"train_files": "t.parquet"}, "d": '
                        + '{"a": ' * 960 + "1" + "}" * 960 + "}"),
        "notebook": ("nb.ipynb", '{"cells": ' + DEEP + "}"),
        "script": ("train.py", deep_script),
        "template": ("x.json", DEEP),
        "merge": ("deep.json", DEEP),
    }
    name, text = files.get(case.removeprefix("lint-"), (None, None))
    if name is not None:
        (hostile / name).write_text(text)
    args: list[str | Path] = {
        "config": ["check", "train.yaml"], "lint-config": ["lint", "train.yaml"],
        "json-config": ["check", "train.json"],
        "verl-override": ["check", _verl(hostile, f"data.max_prompt_length={DEEP}")],
        "lint-override": ["lint", _verl(hostile, f"data.max_prompt_length={DEEP}")],
        "notebook": ["check", "nb.ipynb"], "lint-notebook": ["lint", "nb.ipynb"],
        "script": ["check", "train.py"], "lint-script": ["lint", "train.py"],
        "template": ["template", "x.json", "--tokenizer", model, "--template", "trl"],
        "processor-option": ["scan", "train.jsonl", "-m", model, "--processor-option", f"fps={DEEP}"],
        "merge": ["merge", "deep.json"],
    }[case]
    code, output = cli(*args)
    assert code == 2, output
    assert NESTED in output
    assert "Traceback" not in output


def test_the_nesting_walk_is_linear_and_ends_on_a_value_that_holds_itself() -> None:
    import yaml

    from vlmcheck.data.nesting import DEPTH_LIMIT, too_deep

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    assert not too_deep(yaml.safe_load(laughs))  # 9**9 leaves, 10 containers: each walked once
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, DEPTH_LIMIT + 1))
    assert too_deep(yaml.safe_load(chain))  # deep through aliases, not through brackets
    loop: list[Any] = []
    loop.append(loop)
    assert too_deep(loop)
    assert not too_deep(json.loads("[" * DEPTH_LIMIT + "]" * DEPTH_LIMIT))


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_a_non_finite_number_setting_is_refused(hostile: Path, value: str) -> None:
    code, output = cli("check", _verl(hostile, f"data.max_prompt_length={value}"))
    assert code == 2, output
    assert "data.max_prompt_length must be a whole number" in output


def test_a_non_finite_trl_max_length_is_refused(hostile: Path) -> None:
    (hostile / "sft.yaml").write_text(f"model_name_or_path: {(hostile / 'ck').read_text()}\n"
                                      "dataset_name: train.jsonl\noutput_dir: out\nmax_length: .inf\n")
    code, output = cli("check", "sft.yaml")
    assert code == 2, output
    assert "max_length must be a whole number, got inf" in output


@pytest.mark.parametrize("files", ["5", "{a: b.jsonl}", "[5]"])
def test_verl_train_files_of_another_type_is_refused(hostile: Path, files: str) -> None:
    script = _verl(hostile)
    script.write_text(script.read_text().replace("data.train_files=train.jsonl", f"'data.train_files={files}'"))
    code, output = cli("check", script)
    assert code == 2, output
    assert "data.train_files must be a file path or a list of file paths" in output


@pytest.mark.parametrize(("notebook", "says"), [
    ('{"cells": 5}', "its cells are int, not a list"),
    ('{"cells": [{"cell_type": "code", "source": [1]}]}', "cell 1's source is not text"),
    ('{"cells": [{"cell_type": "code", "source": {"a": 1}}]}', "cell 1's source is not text"),
])
@pytest.mark.parametrize("command", ["check", "lint"])
def test_a_malformed_notebook_is_refused(hostile: Path, notebook: str, says: str, command: str) -> None:
    (hostile / "nb.ipynb").write_text(notebook)
    code, output = cli(command, "nb.ipynb")
    assert code == 2, output
    assert says in output


def test_a_damaged_zstd_dataset_is_a_finding(hostile: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    (hostile / "garbage.jsonl.zst").write_bytes(bytes(range(256)) * 4)
    code, output = cli("scan", "garbage.jsonl.zst", "-m", (hostile / "ck").read_text())
    assert code == 1, output
    assert "garbage.jsonl.zst is damaged past this point (OSError: not a valid Zstandard stream" in output
    good = zstandard.ZstdCompressor().compress((hostile / "train.jsonl").read_bytes())
    (hostile / "good.jsonl.zst").write_bytes(good)
    code, output = cli("scan", "good.jsonl.zst", "-m", (hostile / "ck").read_text())
    assert code == 0 and "clean, no findings in 2 samples" in output, output


CUT_SHORT = "is damaged past this point (EOFError: Compressed file ended before the end-of-stream marker was reached)"


def test_a_zstd_dataset_cut_short_is_a_finding_as_a_cut_gzip_is(hostile: Path) -> None:
    import gzip

    zstandard = pytest.importorskip("zstandard")
    qa_rows(hostile / "many.jsonl", 3000)
    plain = (hostile / "many.jsonl").read_bytes()
    packed = {".gz": gzip.compress(plain), ".zst": zstandard.ZstdCompressor(write_checksum=True).compress(plain)}
    for suffix, data in packed.items():
        for cut in (len(data) // 2, len(data) - 2, 6):  # mid-stream, inside the checksum, inside the header
            (hostile / f"cut.jsonl{suffix}").write_bytes(data[:cut])
            code, output = cli("scan", f"cut.jsonl{suffix}", "-m", (hostile / "ck").read_text())
            assert code == 1, (suffix, cut, output)
            assert f"cut.jsonl{suffix} {CUT_SHORT}" in output, (suffix, cut, output)


def test_a_zstd_dataset_of_several_frames_is_read_whole(hostile: Path) -> None:
    import shutil
    import subprocess

    from vlmcheck.data.compressed import open_binary

    zstandard = pytest.importorskip("zstandard")
    rows = qa_rows(hostile / "many.jsonl", 3000).read_bytes()
    frames = [zstandard.ZstdCompressor().compress(rows), zstandard.ZstdCompressor(write_checksum=True).compress(rows),
              b"\x5f\x2a\x4d\x18\x03\x00\x00\x00abc",  # a skippable frame (pzstd writes them)
              zstandard.ZstdCompressor(write_content_size=False).compress(rows)]
    (hostile / "frames.jsonl.zst").write_bytes(b"".join(frames))
    with open_binary(hostile / "frames.jsonl.zst") as fp:
        assert fp.read() == rows * 3
    if shutil.which("zstd"):  # the reference decoder agrees, and on files it wrote: `cat a.zst b.zst`
        made = subprocess.run(["zstd", "-q", "-c", "many.jsonl"], capture_output=True, check=True).stdout
        (hostile / "cat.jsonl.zst").write_bytes(made + made)
        assert subprocess.run(["zstd", "-d", "-c", "cat.jsonl.zst"], capture_output=True).stdout == rows * 2
        with open_binary(hostile / "cat.jsonl.zst") as fp:
            assert fp.read() == rows * 2
        (hostile / "cut.jsonl.zst").write_bytes(made[:-1])
        assert subprocess.run(["zstd", "-t", "-q", "cut.jsonl.zst"], capture_output=True).returncode != 0
        with open_binary(hostile / "cut.jsonl.zst") as fp, pytest.raises(EOFError):
            fp.read()
    code, output = cli("scan", "frames.jsonl.zst", "-m", (hostile / "ck").read_text())
    assert code == 0 and "clean, no findings in 9,000 samples" in output, output


def _gzip_of(path: Path, *pieces: bytes | int) -> Path:
    """A .gz file of ``pieces``, each bytes or a count of NUL bytes (written 16 MiB at a time: never held)."""
    import gzip

    with gzip.open(path, "wb", compresslevel=1) as out:
        for piece in pieces:
            if isinstance(piece, bytes):
                out.write(piece)
                continue
            for _ in range(piece >> 24):
                out.write(bytes(1 << 24))
    return path


QA_ROW = json.dumps({"messages": turns("Hi", "Hello.")}).encode()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", ["sparse", "gzip", "deep"])
def test_a_json_array_that_cannot_end_is_a_finding_within_bounds(hostile: Path, case: str) -> None:
    """A .json array whose second element is 100 GiB of NUL bytes (a sparse file), 256 MiB of them compressed, or
    100 MiB of opening brackets: the first row is counted and the rest is one finding naming the file, in bounded
    time and memory (the whole rest was read into the buffer, again and again: 15 s and 440 MB for 200 MB)."""
    name = {"sparse": "big.json", "gzip": "big.json.gz", "deep": "deep.json.gz"}[case]
    head = b"[" + QA_ROW + b", "
    if case == "sparse":
        (hostile / name).write_bytes(head)
        os.truncate(hostile / name, 100 << 30)  # sparse: no disk used
    elif case == "gzip":
        _gzip_of(hostile / name, head, 256 << 20)
    else:
        _gzip_of(hostile / name, head + b"[" * (100 << 20))
    code, output = cli("scan", name, "-m", (hostile / "ck").read_text())
    assert code == 1, output
    assert "1 error in 1 of 2 samples" in output, output
    assert (f"the element at byte {len(head):,} is not complete within 64 MiB" if case == "deep" else
            f"invalid JSON at byte {len(head)}: Expecting value (a NUL byte: {name} is not JSON text from here)") \
        in output, output


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", ["sparse", "gzip"])
def test_a_json_lines_line_over_the_row_bound_is_a_finding_and_the_next_lines_are_read(hostile: Path,
                                                                                       case: str) -> None:
    """One line of 100 GiB (sparse) or 256 MiB (compressed) of NUL bytes between good rows is a finding for its row,
    passed over without being held (it was read whole: 4.3 GB of memory for 2 GB); the rows after it are read."""
    from vlmcheck.data.readers import BadRow, iter_rows

    name = f"big.jsonl{'.gz' if case == 'gzip' else ''}"
    if case == "sparse":
        (hostile / name).write_bytes(QA_ROW + b"\n")
        os.truncate(hostile / name, 100 << 30)  # sparse: no disk used
        with open(hostile / name, "ab") as f:
            f.write(b"\n" + QA_ROW + b"\n")
        size = (100 << 30) - len(QA_ROW)
    else:
        _gzip_of(hostile / name, QA_ROW + b"\n", 256 << 20, b"\n" + QA_ROW + b"\n")
        size = (256 << 20) + 1
    tracemalloc.start()
    try:
        rows = list(iter_rows(hostile / name))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, peak  # the 64 MiB read of the line's start, never the line
    assert [type(r).__name__ for r in rows] == ["dict", "BadRow", "dict"]
    assert isinstance(rows[1], BadRow) and rows[1].line == 2 and not rows[1].terminal
    code, output = cli("scan", name, "-m", (hostile / "ck").read_text())
    assert code == 1, output
    assert "1 error in 1 of 3 samples" in output, output
    assert f"line 2 of {name} is {size:,} bytes, over the 64 MiB vlmcheck reads of one row" in output, output


@pytest.mark.parametrize("path", ["", " ", "out/"])
def test_an_empty_or_folder_output_path_is_refused_up_front(hostile: Path, path: str) -> None:
    code, output = cli("scan", "train.jsonl", "-m", (hostile / "ck").read_text(), "--json", path)
    assert code == 2, output
    assert "the output path is empty" in output or "names a folder" in output
    assert sorted(p.name for p in hostile.iterdir()) == ["ck", "train.jsonl"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from vlmcheck import util
    from vlmcheck.util import AtomicOutput, atomic_write_text

    target = tmp_path / "summary.json"
    with pytest.raises(IsADirectoryError):
        with AtomicOutput(target) as out:
            out.write("{}\n")
            target.mkdir()  # a folder appears under the name before the rename: os.replace fails
            (target / "x").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    writer = AtomicOutput(tmp_path / "other.json")
    (tmp_path / "other.json").mkdir()
    with pytest.raises(IsADirectoryError):
        writer.commit()  # a caller that commits by hand
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "summary.json"]

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with AtomicOutput(tmp_path / "full.json") as out:
            out.write("{}\n")
            out.fp.flush = disk_full  # type: ignore[method-assign]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "summary.json"]

    def cross_device(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(util.os, "replace", cross_device)
    with pytest.raises(OSError, match="cross-device"):
        atomic_write_text(tmp_path / "third.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "summary.json"]


def test_template_refuses_a_chat_template_the_sandbox_refuses(hostile: Path) -> None:
    model = (hostile / "ck").read_text()
    (hostile / "range.jinja").write_text("{% for i in range(10**9) %}x{% endfor %}")
    code, output = cli("template", "train.jsonl", "--tokenizer", model, "--template", "chat_template",
                       "--chat-template", "range.jinja")
    assert code == 2, output
    assert "fails on a plain two-turn conversation (OverflowError: Range too big" in output
    (hostile / "attr.jinja").write_text("{{ ''.__class__.__mro__ }}")
    code, output = cli("template", "train.jsonl", "--tokenizer", model, "--template", "chat_template",
                       "--chat-template", "attr.jinja")
    assert code == 2, output
    assert "does something the sandbox refuses" in output


def test_template_judges_a_row_the_chat_template_raises_on(hostile: Path) -> None:
    from vlmcheck.model import load_model

    model = (hostile / "ck").read_text()
    chat = load_model(model).chat_template
    assert chat is not None
    raising = "{% if messages[0]['content'] == 'Stop' %}{{ 1 / 0 }}{% endif %}" + chat
    rows = [{"messages": turns("Hi", "Hello.")}, {"messages": turns("Stop", "Hello.")}]
    report = vlmcheck.check_template(rows, tokenizer=model, template=["chat_template", "llamafactory"],
                                     chat_template=raising)
    verdicts = {(v.framework, v.index): v.verdict for v in report.verdicts}
    assert verdicts == {("chat_template", 0): "exact", ("chat_template", 1): "refused",
                        ("llamafactory", 0): "exact", ("llamafactory", 1): "refused"}
    refused = next(v for v in report.verdicts if v.verdict == "refused")
    assert refused.findings[0].code == "VT007"
    assert "the chat template raises on this conversation (ZeroDivisionError: division by zero)" in \
        refused.findings[0].message


@pytest.mark.parametrize(("change", "says"), [
    ({"counts": {"VC999": 5}}, "summary.counts has 'VC999': 5"),
    ({"counts": {"VC001": "x"}}, "summary.counts has 'VC001': 'x'"),
    ({"histograms": {"tokens": {"abc": 1}, "fits_max_pixels": {}}}, "summary.histograms.tokens has 'abc': 1"),
    ({"histograms": {"tokens": {"12": 1}}}, "summary.histograms.fits_max_pixels is missing"),
    ({"shard": {"index": 0}}, "summary.shard is {'index': 0}, not I/N"),
    ({"shard": "x"}, "summary.shard is 'x', not I/N"),
    ({"shard": "3/2"}, "summary.shard is '3/2', not I/N"),
    ({"samples": -5}, "summary.samples is -5, not a whole number >= 0"),
    ({"samples": float("nan")}, "summary.samples is nan, not a whole number >= 0"),
    ({"samples": True}, "summary.samples is True, not a whole number >= 0"),
    ({"samples_with_findings": 99}, "more samples with findings or without a length than the 2 samples"),
    ({"image_tokens": None}, "summary.image_tokens is None"),
    ({"dataset": ["a"]}, "summary.dataset is ['a'], not a string"),
    ({"seconds": "abc"}, "summary.seconds is 'abc'"),
    ({"max_length": -1}, "summary.max_length is -1"),
])
def test_merge_refuses_a_summary_vlmcheck_did_not_write(hostile: Path, change: dict[str, Any], says: str) -> None:
    code, output = cli("scan", "train.jsonl", "-m", (hostile / "ck").read_text(), "--json", "s0.json")
    assert code == 0, output
    summary = json.loads((hostile / "s0.json").read_text())
    summary["summary"].update(change)
    (hostile / "s1.json").write_text(json.dumps(summary))
    code, output = cli("merge", "s0.json", "s1.json")
    assert code == 2, output
    assert f"s1.json is not a summary vlmcheck wrote: {says}" in output
    summary = json.loads((hostile / "s0.json").read_text())
    summary["findings"] = [{"code": "VC999", "message": "m", "fix": "f", "index": 0, "id": "0"}]
    (hostile / "s2.json").write_text(json.dumps(summary))
    code, output = cli("merge", "s0.json", "s2.json")
    assert code == 2 and "s2.json is not a summary vlmcheck wrote: a finding is" in output, output
    code, output = cli("merge", "s0.json", "s0.json")
    assert code == 0 and "clean, no findings in 4 samples" in output, output


def test_a_fifo_chat_template_is_refused_not_read(hostile: Path) -> None:
    os.mkfifo(hostile / "t.jinja")  # opening it for reading would block until a writer comes: forever
    code, output = cli("scan", "train.jsonl", "-m", (hostile / "ck").read_text(), "--chat-template", "t.jinja")
    assert code == 2, output
    assert "--chat-template cannot be read: not a regular file (a FIFO, socket or device)" in output


@pytest.mark.parametrize("command", ["check", "lint"])
def test_a_config_over_the_size_bound_is_refused_before_it_is_read(hostile: Path, command: str) -> None:
    config = hostile / "big.yaml"
    config.write_text(f"model_name_or_path: {(hostile / 'ck').read_text()}\ncutoff_len: 4096\n# ")
    os.truncate(config, (64 << 20) + 1)  # sparse: no disk used
    code, output = cli(command, config)
    assert code == 2, output
    assert "big.yaml is 67,108,865 bytes, over the 64 MiB vlmcheck reads of a file it reads whole" in output


HOSTILE_FILE = {  # what each hostile file is refused for, never read (a FIFO blocks, 100 GiB fills memory)
    "fifo": "not a regular file (a FIFO, socket or device)",
    "huge": "is 107,374,182,400 bytes, over the 64 MiB vlmcheck reads of a file it reads whole",
    "deep": NESTED,
}


def _hostile_file(path: Path, kind: str, *, prefix: str = "") -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_text(prefix + "{}\n")
        os.truncate(path, 100 << 30)  # sparse: no disk used
    else:
        path.write_text(prefix + "[" * 100_000)


def _checkpoint_with(folder: Path, checkpoint: Path, name: str, kind: str) -> Path:
    """The checkpoint's files linked into ``folder``, with ``name`` a hostile file of ``kind``."""
    folder.mkdir()
    for file in checkpoint.iterdir():
        (folder / file.name).symlink_to(file)
    _hostile_file(folder / name, kind)
    return folder


LLAVA_NEXT = """torchrun --nproc_per_node=8 llava/train/train_mem.py \\
    --model_name_or_path {model} --version qwen_1_5 --data_path {data} --image_folder ./images \\
    --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" --vision_tower {tower} \\
    --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end False \\
    --mm_use_im_patch_token False --image_aspect_ratio pad --mm_patch_merge_type flat --bf16 True \\
    --model_max_length 2048
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["fifo", "huge", "deep"])
@pytest.mark.parametrize("case", ["easyr1", "lint-easyr1", "vlm-r1", "llamafactory-v1", "llava-data", "llava-tower",
                                  "lint-checkpoint", "lint-preprocessor", "tokenizer-config", "chat-template"])
def test_a_file_a_run_names_is_refused_when_hostile(hostile: Path, case: str, kind: str) -> None:
    """The YAML and JSON files a config or checkpoint names, read whole: a FIFO, a sparse 100 GiB file and one
    nested 100,000 levels deep are each refused naming the file (exit 2), never a hang or a crash (exit 3)."""
    model = Path((hostile / "ck").read_text())
    (hostile / "Qwen2.5-VL-3B").symlink_to(model)  # VLM-R1 runs Qwen2(.5)-VL names only
    named, args = {
        "easyr1": ("cfg.yaml", ["check", "e.sh"]),
        "lint-easyr1": ("cfg.yaml", ["lint", "e.sh"]),
        "vlm-r1": ("rec.yaml", ["check", "r.sh"]),
        "llamafactory-v1": ("list.yaml", ["check", "v1.yaml"]),
        "llava-data": ("mix.yaml", ["check", "next.sh"]),
        "llava-tower": ("clip-vit-large-patch14-336/config.json", ["check", "tower.sh"]),
        "lint-checkpoint": ("bad/config.json", ["lint", "sft.yaml", "--model", "bad"]),
        "lint-preprocessor": ("bad/preprocessor_config.json", ["lint", "sft.yaml", "--model", "bad"]),
        "tokenizer-config": ("bad/tokenizer_config.json", ["template", "train.jsonl", "--tokenizer", "bad",
                                                           "--template", "trl"]),
        "chat-template": (f"bad/chat_template.{'json' if kind == 'deep' else 'jinja'}",  # deep text is a template
                          ["template", "train.jsonl", "--tokenizer", "bad", "--template", "trl"]),
    }[case]
    (hostile / "e.sh").write_text("python3 -m verl.trainer.main config=cfg.yaml data.train_files=train.jsonl "
                                  f"worker.actor.model.model_path={model}\n")
    (hostile / "r.sh").write_text("torchrun --nproc_per_node=8 src/open_r1/grpo_rec.py --dataset_name rec.yaml "
                                  f"--image_root . --model_name_or_path {hostile / 'Qwen2.5-VL-3B'} --output_dir o\n")
    (hostile / "v1.yaml").write_text(f"model: {model}\ntrain_dataset: list.yaml\n")
    (hostile / "next.sh").write_text(LLAVA_NEXT.format(model=model, data="./mix.yaml",
                                                       tower="google/siglip-so400m-patch14-384"))
    (hostile / "tower.sh").write_text(LLAVA_NEXT.format(model=model, data="./rows.json",
                                                        tower=hostile / "clip-vit-large-patch14-336"))
    (hostile / "rows.json").write_text(json.dumps([{"id": "1", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]))
    (hostile / "clip-vit-large-patch14-336").mkdir()
    (hostile / "sft.yaml").write_text("output_dir: x\nmax_length: 2048\n")
    if named.startswith("bad/"):
        _checkpoint_with(hostile / "bad", model, named.removeprefix("bad/"), kind)
    else:
        _hostile_file(hostile / named, kind, prefix="x: " if named.endswith(".yaml") else "")
    code, output = cli(*args)
    assert code == 2, output
    assert HOSTILE_FILE[kind] in output, output
    assert Path(named).name in output, output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "huge"])
@pytest.mark.parametrize("command", ["scan", "template"])
def test_a_hostile_tokenizer_json_is_refused_before_the_tokenizers_library_reads_it(hostile: Path, kind: str,
                                                                                    command: str) -> None:
    """The tokenizers library reads tokenizer.json whole (a FIFO blocks it forever, a sparse 100 GiB one fills
    memory): refused naming it, never called missing."""
    model = Path((hostile / "ck").read_text())
    folder = _checkpoint_with(hostile / "bad", model, "tokenizer.json", "fifo" if kind == "fifo" else "deep")
    if kind == "huge":
        os.truncate(folder / "tokenizer.json", 100 << 30)  # sparse: no disk used
    args = ["scan", "train.jsonl", "--model", str(folder)] if command == "scan" else \
        ["template", "train.jsonl", "--tokenizer", str(folder), "--template", "trl"]
    code, output = cli(*args)
    assert code == 2, output
    assert "tokenizer.json" in output and "has no tokenizer.json" not in output, output
    assert ("not a regular file (a FIFO" if kind == "fifo" else "is 107,374,182,400 bytes, over the 1 GiB") in output


def _checkpoint_copy(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest


def test_a_fifo_processor_file_is_refused_not_taken_for_absent(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from vlmcheck.errors import ModelError
    from vlmcheck.model import load_model

    folder = _checkpoint_copy(qwen2_vl_checkpoint, tmp_path / "ck")
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        saved = (folder / name).read_bytes()
        (folder / name).unlink()
        os.mkfifo(folder / name)
        with pytest.raises(ModelError, match=f"the checkpoint's {name} cannot be read \\(not a regular file"):
            load_model(folder)
        (folder / name).unlink()
        (folder / name).write_bytes(saved)
    assert load_model(folder).settings.max_pixels == 12_845_056


def test_a_checkpoint_without_an_image_processor_config_is_refused(tmp_path: Path,
                                                                    qwen2_vl_checkpoint: Path) -> None:
    from vlmcheck.errors import ModelError
    from vlmcheck.model import load_model

    folder = _checkpoint_copy(qwen2_vl_checkpoint, tmp_path / "ck")
    values = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    # transformers' AutoProcessor.from_pretrained raises OSError ("Can't load image processor"): no defaults
    with pytest.raises(ModelError, match="has no preprocessor_config.json"):
        load_model(folder)
    # transformers (4.56+) also reads the image processor nested in processor_config.json
    processor = json.loads((folder / "processor_config.json").read_text()) \
        if (folder / "processor_config.json").is_file() else {}
    (folder / "processor_config.json").write_text(json.dumps({**processor, "image_processor": values}))
    assert load_model(folder).settings.max_pixels == values["max_pixels"]


def test_a_script_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from vlmcheck.checking import read_config_file
    from vlmcheck.lint.readers import read_config

    script = tmp_path / "train.py"
    script.write_text("\ufefffrom unsloth import FastVisionModel\nMAX_LEN = 100\n"
                      "UnslothVisionDataCollator(None, None, max_seq_length = MAX_LEN)\n", encoding="utf-8")
    assert "unsloth_script" in read_config_file(script)
    run = read_config(script)
    assert run.framework == "unsloth"
    assert run.calls["UnslothVisionDataCollator"] == {"max_seq_length": 100}


# -- lint says what check says; names, outputs and interrupted runs --------------------------------------------------
def test_lint_data_refuses_a_fifo_dataset_info_as_check_does(hostile: Path) -> None:
    model = (hostile / "ck").read_text()
    config = hostile / "lf.yaml"
    config.write_text(f"model_name_or_path: {model}\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                      "dataset: demo\ntemplate: qwen2_vl\ncutoff_len: 4096\noutput_dir: out\n")
    (hostile / "d").mkdir()
    qa_rows(hostile / "d" / "train.jsonl")
    os.mkfifo(hostile / "d" / "dataset_info.json")  # never opened: it would block forever
    for command in ("check", "lint"):
        code, output = cli(command, config, "--data", "d", "--model", model)
        assert code == 2, (command, output)
        assert "d/dataset_info.json: not a regular file (a FIFO, socket or device)" in output, (command, output)


@pytest.mark.parametrize("text", ["", " \n\n", "# a comment, no settings\n", "{}\n", "null\n"])
@pytest.mark.parametrize("command", ["check", "lint"])
def test_a_config_without_settings_is_refused(hostile: Path, command: str, text: str) -> None:
    (hostile / "empty.yaml").write_text(text)
    code, output = cli(command, "empty.yaml")
    assert code == 2, output
    assert f"empty.yaml holds no settings: there is nothing to {command}" in output


@pytest.mark.parametrize("name", ["empty.json", "empty.py"])
def test_lint_refuses_an_empty_json_or_python_config(hostile: Path, name: str) -> None:
    (hostile / name).write_text("\n# nothing\n" if name.endswith(".py") else "\n")
    code, output = cli("lint", name)
    assert code == 2, output
    assert f"{name} holds no settings: there is nothing to lint" in output


@pytest.mark.parametrize("command", ["check", "lint"])
def test_a_config_that_is_a_symlink_loop_is_called_one(hostile: Path, command: str) -> None:
    (hostile / "loop.yaml").symlink_to("loop.yaml")
    code, output = cli(command, "loop.yaml")
    assert code == 2, output
    assert "loop.yaml: a symbolic link loop" in output
    assert "not found" not in output


@pytest.mark.parametrize("command", ["check", "lint"])
def test_a_dataset_info_that_is_a_symlink_loop_is_called_one(hostile: Path, command: str) -> None:
    model = (hostile / "ck").read_text()
    config = hostile / "lf.yaml"
    config.write_text(f"model_name_or_path: {model}\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                      "dataset: demo\ntemplate: qwen2_vl\ncutoff_len: 4096\noutput_dir: out\n")
    (hostile / "d").mkdir()
    (hostile / "d" / "dataset_info.json").symlink_to("dataset_info.json")
    code, output = cli(command, config, "--data", "d", "--model", model)
    assert code == 2, output
    assert "d/dataset_info.json: a symbolic link loop" in output, output
    assert "not found" not in output, output


def test_a_long_output_name_the_file_system_takes_is_written(hostile: Path) -> None:
    model = (hostile / "ck").read_text()
    records, summary = "r" * 244 + ".jsonl", "s" * 245 + ".json"  # 250 bytes: NAME_MAX is 255
    code, output = cli("scan", "train.jsonl", "-m", model, "-o", records, "--json", summary)
    assert code == 0, output
    assert sorted(p.name for p in hostile.iterdir()) == sorted(["ck", "train.jsonl", records, summary])
    assert json.loads((hostile / summary).read_text())["summary"]["samples"] == 2
    too_long = "t" * 252 + ".json"
    code, output = cli("scan", "train.jsonl", "-m", model, "--json", too_long)
    assert code == 2, output
    assert "is 257 bytes, longer than a file name can be (255 bytes)" in output
    code, output = cli("scan", "train.jsonl", "-m", model, "-o", "u" * 245 + ".jsonl", "--resume")
    assert code == 2, output  # OUTPUT.partial.json, the resumable scan's snapshot, is past 255 bytes
    assert ".jsonl.partial.json is 264 bytes, longer than a file name can be" in output
    assert sorted(p.name for p in hostile.iterdir()) == sorted(["ck", "train.jsonl", records, summary])


def _trl_config(folder: Path) -> Path:
    config = folder / "sft.yaml"
    config.write_text(f"model_name_or_path: {(folder / 'ck').read_text()}\ndataset_name: train.jsonl\n"
                      "output_dir: out\nmax_length: 4096\n")
    return config


def test_an_interrupted_check_leaves_no_folder_it_made(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmcheck import checking

    config = _trl_config(hostile)
    (hostile / "kept").mkdir()
    code, output = cli("check", config, "-o", "kept/new/r.jsonl")
    assert code == 0 and (hostile / "kept" / "new" / "r.jsonl").is_file(), output
    (hostile / "kept" / "new" / "r.jsonl").unlink()
    (hostile / "kept" / "new").rmdir()

    def interrupt(*args: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while the rows are judged

    monkeypatch.setattr(checking, "judge_row", interrupt)
    for output_path in ("out/report.jsonl", "a/b/c/report.jsonl", "kept/new/report.jsonl"):
        code, output = cli("check", config, "-o", output_path)
        assert code == 130, output
    # what vlmcheck made and left empty is gone; the folder that was there stays, as it was
    assert sorted(p.name for p in hostile.iterdir()) == ["ck", "kept", "sft.yaml", "train.jsonl"]
    assert list((hostile / "kept").iterdir()) == []


def test_a_failed_write_of_the_records_is_not_called_a_dataset_error(hostile: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from vlmcheck import util

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(util.os, "fsync", disk_full)
    code, output = cli("check", _trl_config(hostile), "-o", "out/r.jsonl")
    assert code == 2, output
    assert "cannot write the --output records out/r.jsonl: [Errno 28] No space left on device" in output
    assert "reading the datasets" not in output
    assert not (hostile / "out").exists()


def test_a_row_whose_judging_raises_keeps_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             qwen2_vl_checkpoint: Path) -> None:
    """A row a framework's judge raises on unexpectedly is VC001 with verdict unknown, and its record still names
    the dataset and row it came from (it lost them: a lone surrogate once did this)."""
    import shutil

    import vlmcheck
    from vlmcheck.frameworks import llamafactory as lf

    demo = Path(vlmcheck.__file__).parent / "demo" / "llamafactory"
    shutil.copytree(demo, tmp_path / "run")

    def boom(self: Any, image: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(lf.Run, "_size", boom)  # a fault injected into the run's judge, after it knows the row
    out = tmp_path / "records.jsonl"
    vlmcheck.check(tmp_path / "run" / "train.yaml", model=qwen2_vl_checkpoint, output=out)  # in this process
    records = [json.loads(line) for line in out.read_text().splitlines()]
    hit = [r for r in records if r["framework"]["verdict"] == "unknown"]
    assert hit and all(r["findings"] == ["VC001"] for r in hit)
    assert all(r["framework"]["dataset"] and isinstance(r["framework"]["row"], int) for r in hit), hit[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("part", ["jsonl", "json"])
def test_a_llava_next_data_part_too_large_to_hold_is_read_within_bounds(hostile: Path, part: str) -> None:
    """LLaVA-NeXT's YAML data parts are read with its own json.load / json.loads rules, within bounded memory: a
    100 GiB line (sparse) or a 100 GiB array that cannot be JSON is one finding saying LLaVA-NeXT raises, fast."""
    model = Path((hostile / "ck").read_text())
    (hostile / "mix.yaml").write_text(f"datasets:\n  - json_path: part.{part}\n    sampling_strategy: all\n")
    good = json.dumps({"id": "1", "conversations": [{"from": "human", "value": "Hi"},
                                                    {"from": "gpt", "value": "Hello."}]})
    with open(hostile / f"part.{part}", "wb") as f:
        f.write((good + "\n" + '{"id": "') .encode() if part == "jsonl" else ("[" + good + ", ").encode())
        f.seek(100 << 30, os.SEEK_CUR)  # a sparse hole: NULs the file system does not store
        f.write(b'"}\n' if part == "jsonl" else b"]")
    (hostile / "next.sh").write_text(LLAVA_NEXT.format(model=model, data="./mix.yaml",
                                                       tower="google/siglip-so400m-patch14-384"))
    code, output = cli("check", "next.sh")
    assert code in (1, 2), output
    assert "LLaVA-NeXT" in output and ("over the 64 MiB" in output if part == "jsonl" else "json.load raises" in output)


@pytest.mark.parametrize("where", ["yaml part", "data_path"])
@pytest.mark.parametrize("digits", [4300, 4301])
def test_a_llava_json_file_with_a_whole_number_python_cannot_convert_stops_the_load(hostile: Path, where: str,
                                                                                   digits: int) -> None:
    """LLaVA and LLaVA-NeXT json.load their data files: a whole number of more than 4,300 digits makes Python's
    json raise (ValueError, int_max_str_digits), so the dataset is never built; 4,300 digits load. vlmcheck read it
    as a float (as datasets does) and judged the rows."""
    model = Path((hostile / "ck").read_text())
    rows = [{"id": str(i), "big": "BIG" if i == 1 else 0,
             "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
            for i in range(3)]
    (hostile / "part.json").write_text(json.dumps(rows).replace('"BIG"', "9" * digits))
    if where == "yaml part":
        (hostile / "mix.yaml").write_text("datasets:\n  - json_path: part.json\n    sampling_strategy: all\n")
    (hostile / "next.sh").write_text(LLAVA_NEXT.format(model=model, tower="google/siglip-so400m-patch14-384",
                                                       data="./mix.yaml" if where == "yaml part" else "./part.json"))
    code, output = cli("check", "next.sh", "-o", "r.jsonl")
    if digits == 4300:  # the rows are read and judged (this checkpoint is not one preprocess_qwen can use)
        assert "Exceeds the limit" not in output, output
        assert len((hostile / "r.jsonl").read_text().splitlines()) == 3
    else:
        assert code in (1, 2), output
        assert "Exceeds the limit (4300 digits)" in output, output
