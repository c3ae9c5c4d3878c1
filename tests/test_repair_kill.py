"""`vlmcheck repair` killed mid-run (SIGKILL: no cleanup code runs) leaves its input byte for byte
as it was and nothing at the output's names: no data file, no manifest, no images folder. Only
hidden temporary files remain, which a later run never mistakes for output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import image

ROWS = 20_000  # many seconds of work after the first manifest bytes reach the disk


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dataset(folder: Path, fmt: str) -> Path:
    image(folder / "small.png", 280, 224)
    image(folder / "big.png", 1400, 1120)
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": "<image>What is it?"},
                                         {"role": "assistant", "content": "A square."}],
             "images": ["big.png" if i % 50 == 0 else "small.png"]} for i in range(ROWS)]
    if fmt == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_sigkill_mid_run_leaves_input_intact_and_no_output(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                           fmt: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = dataset(data_dir, fmt)
    before = fingerprint(data_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"fixed.{fmt}"
    command = [sys.executable, "-c", "from vlmcheck.cli import main; main()", "repair", str(data),
               "--model", str(qwen2_vl_checkpoint), "--max-length", "512", "-o", str(out),
               "--image-root", str(data_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Mid-run: the manifest's temporary file has records on disk (rows are being written).
        while process.poll() is None:
            temps = [p for p in out_dir.iterdir() if p.name.startswith(".fixed.manifest.jsonl.")]
            if temps and temps[0].stat().st_size > 0:
                break
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert fingerprint(data_dir) == before  # the input, byte for byte, and nothing added next to it
    left = sorted(p.name for p in out_dir.iterdir())
    assert not {"fixed.jsonl", "fixed.parquet", "fixed.manifest.jsonl", "fixed.images"} & set(left)
    # what remains is hidden and named as temporary: the data, the manifest and the images folder
    assert left and all(name.startswith(".fixed.") and name.endswith(".tmp") for name in left), left
    assert any(name.startswith(f".fixed.{fmt}.") for name in left)
