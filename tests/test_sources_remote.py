"""Datasets and images at ``s3://`` URLs, read through fsspec's own S3 filesystem (s3fs) from a real
S3-compatible server (moto in server mode) started on loopback: the records equal the local scan's, an ``s3://``
image path is never taken for a local path, and an image probe reads a header block, not the object."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs
from moto.server import ThreadedMotoServer
from PIL import Image

import vlmcheck
from builders import spec
from vlmcheck.demo.run import DATA

MAX_LENGTH = 1024
BUCKET = "vlmcheck-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[s3fs.S3FileSystem]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": host}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    for image in sorted((DATA.parent / "images").iterdir()):
        fs.pipe(f"{BUCKET}/demo/images/{image.name}", image.read_bytes())
    fs.pipe(f"{BUCKET}/demo/train.jsonl.gz", gzip.compress(DATA.read_bytes()))
    lines = DATA.read_text().splitlines(keepends=True)
    fs.pipe(f"{BUCKET}/demo/parts/part-0.jsonl", "".join(lines[:9]).encode())
    fs.pipe(f"{BUCKET}/demo/parts/part-1.jsonl", "".join(lines[9:]).encode())
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


def _records(dataset: Any, model: Any, **options: Any) -> list[dict[str, Any]]:
    return list(vlmcheck.scan(dataset, model=model, max_length=MAX_LENGTH, **options).records())


def test_a_dataset_at_an_s3_url_gives_the_local_records(s3: Any, model: Any):
    local = _records(DATA, model, image_root=DATA.parent)
    assert {"VC101", "VC102", "VC103", "VC201"} <= {c for r in local for c in r["findings"]}
    # relative image paths are under the dataset's own folder: s3://vlmcheck-test/demo/images/...
    assert _records(f"s3://{BUCKET}/demo/train.jsonl.gz", model) == local
    # parts/ holds no images: its rows' paths start from an image root at a URL
    root = f"s3://{BUCKET}/demo/"
    assert _records(f"s3://{BUCKET}/demo/parts/part-*.jsonl", model, image_root=root) == local
    assert _records(f"s3://{BUCKET}/demo/parts", model, image_root=root) == local
    with pytest.raises(vlmcheck.DatasetError, match="not found"):
        _records(f"s3://{BUCKET}/demo/nothing.jsonl", model)


def test_s3_image_urls_in_local_rows(s3: Any, model: Any, tmp_path: Path):
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.endswith("}")]
    for row in rows:
        if isinstance(row.get("images"), list):
            row["images"] = [f"s3://{BUCKET}/demo/{p}" if isinstance(p, str) and p.startswith("images/") else p
                             for p in row["images"]]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(line + "\n" for line in DATA.read_text().splitlines() if line.endswith("}")))
    report = vlmcheck.scan(data, model=model, max_length=MAX_LENGTH)
    assert list(report.records()) == _records(plain, model, image_root=DATA.parent)
    missing = [f.message for f in report.findings if f.code == "VC101" and "bridge" in f.message]
    assert missing and f"file not found: s3://{BUCKET}/demo/images/bridge_0042.jpg" in missing[0]
    assert "s3:/" + BUCKET not in " ".join(f.message for f in report.findings)  # never mangled to a local path


def test_an_image_probe_reads_a_header_block_not_the_object(s3: Any, model: Any, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture):
    noise = Image.frombytes("RGB", (1500, 1500), os.urandom(1500 * 1500 * 3))
    noise.save(tmp_path / "big.jpg", quality=95)
    noise.save(tmp_path / "big.png", compress_level=0)
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "Noise."}]}
    fetched: dict[str, list[tuple[int, int]]] = {}
    for name in ("big.jpg", "big.png"):
        s3.pipe(f"{BUCKET}/big/{name}", (tmp_path / name).read_bytes())
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="s3fs"):
            records = _records([{**row, "images": [f"s3://{BUCKET}/big/{name}"]}], model)
        assert records[0]["image_tokens"] == [2916]  # 1512 / 28 = 54 tokens a side
        fetched[name] = [(int(a), int(b)) for a, b in re.findall(rf"Fetch: \S+{name}, (\d+)-(\d+)", caplog.text)]
    jpeg = (tmp_path / "big.jpg").stat().st_size
    assert jpeg > 1_000_000 and fetched["big.jpg"]
    # a JPEG: a block at the head and the tail (its end marker), never the object
    assert sum(end - start for start, end in fetched["big.jpg"]) < 200_000
    assert all(end <= 100_000 or start >= jpeg - 100_000 for start, end in fetched["big.jpg"])
    # a PNG whose chunks are walked to the end: a few large reads, not one per 64 KiB chunk
    png = (tmp_path / "big.png").stat().st_size
    assert png > 6_000_000 and len(fetched["big.png"]) <= png // (1 << 23) + 3
