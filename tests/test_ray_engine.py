"""``engine="ray"`` (``--engine ray``) on a real local Ray cluster: every record and the summary equal the local
engine's on the same data, for JSON Lines, Parquet, a list of dicts and a pyarrow Table, bad rows included, and a
Parquet file damaged midway; ``vlmcheck check --engine ray`` gives the local check's records; and a cluster started
with ``ray start --head`` is reached by its address."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import vlmcheck
from builders import image, write_jsonl
from vlmcheck.cli import main
from vlmcheck.demo.run import DATA

ray = pytest.importorskip("ray")

MAX_LENGTH = 512


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One small local cluster for the module: 2 CPUs (two actors), a small object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    # blocks of 8 KB (the engine takes the user's block size when it is below its own): a few dozen rows make
    # several blocks, spread over both actors, so equal records mean the blocks came back in row order
    context = ray.data.DataContext.get_current()
    saved, context.target_max_block_size = context.target_max_block_size, 8 * 1024
    yield ray
    context.target_max_block_size = saved
    ray.shutdown()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # batches of 16 rows (both engines): a few dozen rows make several batches spread over both actors,
    # so equal records mean the batches came back in row order
    monkeypatch.setattr(importlib.import_module("vlmcheck.scan"), "_CHUNK", 16)


def _summary(report: Any) -> dict[str, Any]:
    out = report.to_dict()
    for key in ("seconds", "samples_per_second"):  # the only fields that depend on the clock
        out["summary"].pop(key, None)
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(tmp_path: Path, *, copies: int) -> list[dict[str, Any]]:
    """Rows with embedded and missing images, in one Arrow schema: clean ones, a too-large image (VC201), a
    missing image (VC101), no reply (VC003), a placeholder without its image (VC002), no messages,
    a long reply cut (VC203); some rows without an id (its index is its id)."""
    sizes = {"a": (56, 56), "b": (1000, 1000), "c": (112, 84), "d": (28, 280)}
    for name, (w, h) in sizes.items():
        image(tmp_path / "img" / f"{name}.png", w, h)

    def struct(name: str) -> dict[str, Any]:
        path = tmp_path / "img" / f"{name}.png"
        return {"bytes": path.read_bytes() if path.exists() else None, "path": f"img/{name}.png"}

    def row(sid: str, names: list[str], question: str, reply: str) -> dict[str, Any]:
        user = "<image>" * len(names) + question
        return {"id": sid, "images": [struct(n) for n in names],
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}

    rows = []
    for n in range(copies):
        rows += [
            row(f"ok-{n}", ["a"], "What colour?", f"Red {n}."),
            row(f"big-{n}", ["b"], "Describe everything.", "A lot."),
            row(f"two-{n}", ["c", "d"], "Compare.", "Alike."),
            row(f"missing-{n}", ["gone"], "Where?", "Nowhere."),
            row(f"noreply-{n}", ["a"], "Look.", ""),
            row(f"extra-tag-{n}", ["a"], "<image>Twice?", "Once."),
            {"id": f"empty-{n}", "images": [], "messages": []},
            row(f"long-{n}", ["a"], "A story.", "once upon a time " * 200),
            row("", [], "No id here.", "Then the index."),
        ]
    return rows


def _both(dataset: Any, tmp_path: Path, **options: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                              dict[str, Any], dict[str, Any]]:
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    a = vlmcheck.scan(dataset, output=local, **options)
    b = vlmcheck.scan(dataset, output=remote, engine="ray", **options)
    return _records(local), _records(remote), _summary(a), _summary(b)


def test_demo_data_through_the_cli(tmp_path: Path, cluster: Any, small_batches: None, qwen2_vl_checkpoint: Path):
    """The bundled demo (with its bad rows) many times over, scanned by ``vlmcheck scan --engine ray``."""
    lines = DATA.read_text().splitlines() * 3
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    local = tmp_path / "local.jsonl"
    expected = vlmcheck.scan(data, model=qwen2_vl_checkpoint, max_length=1024, image_root=DATA.parent, output=local)
    result = CliRunner().invoke(main, [
        "scan", str(data), "--model", str(qwen2_vl_checkpoint), "--max-length", "1024", "--image-root",
        str(DATA.parent), "--engine", "ray", "--output", str(tmp_path / "ray.jsonl"),
        "--json", str(tmp_path / "ray.json"), "--quiet"])
    assert result.exit_code == expected.exit_code("error"), result.output
    records = _records(local)
    assert _records(tmp_path / "ray.jsonl") == records
    assert len(records) == sum(1 for line in lines if line.strip())
    summary = json.loads((tmp_path / "ray.json").read_text())
    for key in ("seconds", "samples_per_second"):
        summary["summary"].pop(key, None)
    assert summary == json.loads(json.dumps(_summary(expected)))
    codes = {c for r in records for c in r["findings"]}
    assert "VC001" in codes  # the demo's bad rows are findings on both engines


@pytest.mark.parametrize("form", ["jsonl", "parquet", "list of dicts", "pyarrow Table"])
def test_records_and_summary_equal_the_local_engine(form: str, tmp_path: Path, cluster: Any, small_batches: None,
                                                     qwen2_vl_checkpoint: Path):
    rows = _rows(tmp_path, copies=6)
    table = pa.Table.from_pylist(rows)
    if form == "jsonl":
        for r in rows:  # JSON keeps the paths; the images are the files
            r["images"] = [i["path"] for i in r["images"]]
        dataset: Any = write_jsonl(tmp_path / "data.jsonl", rows)
        dataset.write_text(dataset.read_text() + "{not json\n")  # a line that does not parse: VC001
    elif form == "parquet":
        dataset = tmp_path / "data.parquet"
        pq.write_table(table, dataset, row_group_size=10)
    elif form == "list of dicts":
        dataset = rows + [{"id": "no-conversation", "text": "plain"}, "not a dict"]  # rows of another shape
    else:
        dataset = table
    local, remote, a, b = _both(dataset, tmp_path, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH,
                                image_root=tmp_path)
    assert remote == local
    assert b == a
    found = {r["id"]: r["findings"] for r in local}
    # the rows are what they say, so that equality means something
    assert found["ok-0"] == [] and found["two-0"] == []
    assert "VC201" in found["big-0"] and found["missing-0"] == ["VC101"] and "VC003" in found["noreply-0"]
    assert "VC002" in found["extra-tag-0"] and found["empty-0"] and found["long-0"] == ["VC203"]
    assert [r["id"] for r in local if r["id"].isdigit()] == [str(r["index"]) for r in local if r["id"].isdigit()]
    assert [r["index"] for r in local] == list(range(len(local)))
    if form == "jsonl":
        assert local[-1]["findings"] == ["VC001"]
    if form == "list of dicts":
        assert local[-1]["findings"] == local[-2]["findings"] == ["VC001"]


def test_limit_and_shard(tmp_path: Path, cluster: Any, small_batches: None, qwen2_vl_checkpoint: Path):
    data = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(tmp_path, copies=4)), data)
    local, remote, a, b = _both(data, tmp_path, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH,
                                image_root=tmp_path, limit=20)
    assert remote == local and b == a and len(local) == 20
    # a shard goes through vlmcheck's reader, whose rows carry their index
    local, remote, a, b = _both(data, tmp_path, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH,
                                image_root=tmp_path, shard="1/3")
    assert remote == local and b == a
    assert [r["index"] for r in local] == list(range(1, 36, 3))


def _damage(path: Path, group: int) -> None:
    """Overwrite the page header of row group ``group``'s first column (the footer stays readable)."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    at = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_a_damaged_parquet_file_is_a_finding(tmp_path: Path, cluster: Any, small_batches: None,
                                             qwen2_vl_checkpoint: Path):
    """Two Parquet files, the first damaged midway: each engine ends that file with one VC001 row (at the start of
    the reader's batch that holds the damage: here the first) and goes on with the next file, row for row the
    same; a file whose footer is gone is the same DatasetError on both."""
    rows = _rows(tmp_path, copies=8)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows), first, row_group_size=8)
    pq.write_table(pa.Table.from_pylist(rows[:20]), second, row_group_size=8)
    _damage(first, 5)
    local, remote, a, b = _both([first, second], tmp_path, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH,
                                image_root=tmp_path)
    assert remote == local and b == a
    damaged = [r for r in local if r["findings"] == ["VC001"]]
    assert len(damaged) == 1 and damaged[0]["index"] < len(rows)  # the first file, cut short
    assert len(local) == damaged[0]["index"] + 1 + 20  # then every row of the second file
    assert "damaged past this point" in a["findings"][[f["index"] for f in a["findings"]].index(
        damaged[0]["index"])]["message"]
    broken = tmp_path / "c.parquet"
    broken.write_bytes(first.read_bytes()[:-12])  # no footer: nothing in it can be read
    errors = []
    for engine in ("local", "ray"):
        with pytest.raises(vlmcheck.DatasetError) as raised:
            vlmcheck.scan(broken, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH, image_root=tmp_path,
                          engine=engine)
        errors.append(type(raised.value))
        assert "is not a readable Parquet file" in str(raised.value)
    assert errors == [vlmcheck.DatasetError, vlmcheck.DatasetError]


def test_check_through_the_cli(tmp_path: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch,
                               qwen2_vl_checkpoint: Path):
    """``vlmcheck check CONFIG --engine ray`` on the bundled LLaMA-Factory run: LLaMA-Factory's verdicts, the records
    and the summary are the local check's, in batches of 3 rows spread over both actors."""
    from vlmcheck.checking import CheckCounter
    from vlmcheck.demo.run import LLAMAFACTORY_CONFIG

    monkeypatch.setattr(CheckCounter, "chunk_size", 3)
    local = tmp_path / "local.jsonl"
    expected = vlmcheck.check(LLAMAFACTORY_CONFIG, model=qwen2_vl_checkpoint, output=local)
    result = CliRunner().invoke(main, [
        "check", str(LLAMAFACTORY_CONFIG), "--model", str(qwen2_vl_checkpoint), "--engine", "ray",
        "--output", str(tmp_path / "ray.jsonl"), "--json", str(tmp_path / "ray.json"), "--quiet"])
    assert result.exit_code == expected.exit_code("error"), result.output
    records = _records(local)
    assert _records(tmp_path / "ray.jsonl") == records and len(records) > 6
    assert {r["framework"]["verdict"] for r in records} >= {"ok"} and any(r["findings"] for r in records)
    summary = json.loads((tmp_path / "ray.json").read_text())
    for key in ("seconds", "samples_per_second"):
        summary["summary"].pop(key, None)
    assert summary == json.loads(json.dumps(_summary(expected)))
    with pytest.raises(vlmcheck.UsageError, match="applies with engine='ray'"):
        vlmcheck.check(LLAMAFACTORY_CONFIG, model=qwen2_vl_checkpoint, ray_address="127.0.0.1:6379")


def test_a_cluster_at_an_address(tmp_path: Path, qwen2_vl_checkpoint: Path):
    """``ray start --head`` on loopback, then ``vlmcheck scan --engine ray --ray-address`` in another process."""
    rows = _rows(tmp_path, copies=2)
    data = write_jsonl(tmp_path / "data.jsonl", [{**r, "images": [i["path"] for i in r["images"]]} for r in rows])
    expected = tmp_path / "local.jsonl"
    vlmcheck.scan(data, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH, image_root=tmp_path, output=expected)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(vlmcheck.__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    # Ray's token authentication is Ray's to test: the head's token lives in its temp folder, not where a client
    # in another session looks for one
    env["RAY_AUTH_MODE"] = "disabled"
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # Unix socket paths under it must stay short
    # --block: the head lives as long as this process, which the test ends (never `ray stop`, which would stop
    # every Ray node of the machine)
    # Ray itself maps 127.0.0.1 to this machine's own address (on both sides), so the head takes its default
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert head.poll() is None, head.stderr.read().decode()[-2000:] if head.stderr else ""
        scanned = subprocess.run(
            [sys.executable, "-c", "from vlmcheck.cli import main; main()", "scan", str(data), "--model",
             str(qwen2_vl_checkpoint), "--max-length", str(MAX_LENGTH), "--image-root", str(tmp_path), "--engine",
             "ray", "--ray-address", f"127.0.0.1:{port}", "--output", str(tmp_path / "ray.jsonl"), "--quiet"],
            env=env, capture_output=True, text=True, timeout=180)
    finally:
        head.terminate()  # ray start --block stops its node's processes when it ends
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the group this test started, and only it
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
    assert scanned.returncode == 1, scanned.stderr[-2000:]  # the data has errors: exit 1, as the local engine
    assert _records(tmp_path / "ray.jsonl") == _records(expected)


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, qwen2_vl_checkpoint: Path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the package
    result = CliRunner().invoke(main, ["scan", str(DATA), "--model", str(qwen2_vl_checkpoint), "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'vlmcheck[ray]'" in result.output


def test_options_of_the_local_engine_are_refused(qwen2_vl_checkpoint: Path):
    with pytest.raises(vlmcheck.UsageError, match="workers go with the local engine"):
        vlmcheck.scan(DATA, model=qwen2_vl_checkpoint, engine="ray", workers=2)
    with pytest.raises(vlmcheck.UsageError, match="engine must be one of local, ray"):
        vlmcheck.scan(DATA, model=qwen2_vl_checkpoint, engine="spark")
    with pytest.raises(vlmcheck.UsageError, match="applies with engine='ray'"):
        vlmcheck.scan(DATA, model=qwen2_vl_checkpoint, ray_address="127.0.0.1:6379")
