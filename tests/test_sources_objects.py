"""``vlmcheck.scan`` takes the objects a notebook holds: a real ``datasets.Dataset`` / ``IterableDataset`` /
``DatasetDict``, a list of dicts, a pandas DataFrame, a pyarrow Table, with images as ``{bytes, path}`` structs or
opened PIL images; every record equals that of the same rows written to JSON Lines with image files. The report
gives the records back (``records()``, ``to_pandas()``) and the good rows as the user's own type (``keep``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import vlmcheck
from builders import image, spec, write_jsonl

MAX_LENGTH = 512
# (id, image sizes, question): a clean sample, one whose 1000x1000 image cannot fit 512 tokens (VC201, an
# error), one with two images, one without an assistant reply (VC003, an error), one naming a missing file
# (VC101), one whose long reply is cut in its text (VC203, a warning)
SAMPLES = [
    ("ok-small", [(56, 56)], "What colour is this?"),
    ("long-image", [(1000, 1000)], "Describe everything."),
    ("ok-two", [(112, 84), (28, 280)], "Compare the two."),
    ("no-reply", [(64, 64)], None),
    ("missing", [None], "Where is it?"),
    ("ok-text", [], "No image here."),
    ("long-reply", [(56, 56)], "Tell me a long story."),
]
GOOD = ["ok-small", "ok-two", "ok-text", "long-reply"]  # the rows without an error finding


def _rows(tmp_path: Path, as_image: Any) -> list[dict[str, Any]]:
    rows = []
    for n, (sid, sizes, question) in enumerate(SAMPLES):
        images = []
        for k, size in enumerate(sizes):
            name = f"img/{sid}-{k}.png"
            if size is not None and not (tmp_path / name).exists():
                image(tmp_path / name, *size, color=["red", "blue"][(n + k) % 2])
            images.append(as_image(tmp_path, name, size))
        user = "<image>" * len(sizes) + (question or "Look.")
        messages = [{"role": "user", "content": user}]
        reply = ("once upon a time " * 200 if sid == "long-reply" else f"Answer {n}.") if question else ""
        messages.append({"role": "assistant", "content": reply})
        rows.append({"id": sid, "messages": messages, "images": images})
    return rows


def _path(tmp_path: Path, name: str, size: Any) -> str:
    return name


def _struct(tmp_path: Path, name: str, size: Any) -> dict[str, Any]:
    # as a datasets Image column stores an embedded image; a missing file stays a path
    if size is None:
        return {"bytes": None, "path": name}
    return {"bytes": (tmp_path / name).read_bytes(), "path": name}


def _pil(tmp_path: Path, name: str, size: Any) -> Any:
    return Image.open(tmp_path / name) if size is not None else name


@pytest.fixture
def model(qwen2_vl_checkpoint: Path) -> Any:
    return spec(qwen2_vl_checkpoint)


@pytest.fixture
def expected(tmp_path: Path, model: Any) -> list[dict[str, Any]]:
    """The records of the rows written to JSON Lines, images as files: what every object must give."""
    data = write_jsonl(tmp_path / "data.jsonl", _rows(tmp_path, _path))
    out = tmp_path / "jsonl.records.jsonl"
    vlmcheck.scan(data, model=model, max_length=MAX_LENGTH, image_root=tmp_path, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # the samples are what their names say, so that equality below means something
    found = {r["id"]: r["findings"] for r in records}
    assert found["long-image"] == ["VC201", "VC202"] and found["missing"] == ["VC101"] and found["no-reply"] == ["VC003"]
    assert found["ok-small"] == found["ok-two"] == found["ok-text"] == [] and found["long-reply"] == ["VC203"]
    assert [r["image_tokens"] for r in records][:3] == [[4], [1296], [12, 10]]
    return records


def _image_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))


def _objects(tmp_path: Path) -> dict[str, Any]:
    structs = _rows(tmp_path, _struct)
    ds = _image_dataset(structs)
    parquet = tmp_path / "embedded.parquet"
    pq.write_table(ds.with_format("arrow")[:], parquet)  # to_parquet would try to embed the missing file
    return {
        "list of dicts, PIL images": _rows(tmp_path, _pil),
        "list of dicts, byte structs": structs,
        "datasets.Dataset, Image column": ds,
        "datasets.IterableDataset": ds.to_iterable_dataset(num_shards=2),
        "pandas DataFrame of dicts": pd.DataFrame(structs),
        "pandas DataFrame read from Parquet": pd.read_parquet(parquet),  # list columns come as numpy arrays
        "pyarrow Table": pq.read_table(parquet),
    }


def test_every_object_gives_the_records_of_its_jsonl(tmp_path: Path, model: Any, expected: list[dict[str, Any]]):
    objects = _objects(tmp_path)
    assert isinstance(objects["datasets.Dataset, Image column"][0]["images"][0], Image.Image)  # a real Image column
    for name, obj in objects.items():
        report = vlmcheck.scan(obj, model=model, max_length=MAX_LENGTH, image_root=tmp_path)
        assert list(report.records()) == expected, name
        assert report.summary["samples"] == len(SAMPLES), name


def test_workers_scan_an_object_as_one_process_does(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                     expected: list[dict[str, Any]]):
    ds = _image_dataset(_rows(tmp_path, _struct))
    report = vlmcheck.scan(ds, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH, image_root=tmp_path, workers=2)
    assert list(report.records()) == expected


def test_a_dataset_dict_split_and_a_selection(tmp_path: Path, model: Any, expected: list[dict[str, Any]]):
    ds = _image_dataset(_rows(tmp_path, _struct))
    both = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    report = vlmcheck.scan(both, model=model, max_length=MAX_LENGTH, image_root=tmp_path)  # train by default
    assert list(report.records()) == expected
    test = vlmcheck.scan(both, split="test", model=model, max_length=MAX_LENGTH, image_root=tmp_path)
    assert [(r["id"], r["findings"]) for r in test.records()] == [("long-image", ["VC201", "VC202"])]
    # select() reorders through an indices mapping: the scan sees the rows the object shows
    picked = vlmcheck.scan(ds.select([5, 0, 1]), model=model, max_length=MAX_LENGTH, image_root=tmp_path)
    assert [r["id"] for r in picked.records()] == ["ok-text", "ok-small", "long-image"]
    assert [r["index"] for r in picked.records()] == [0, 1, 2]
    with pytest.raises(vlmcheck.UsageError, match="splits"):
        vlmcheck.scan(datasets.DatasetDict({"a": ds, "b": ds}), model=model, max_length=MAX_LENGTH)


def test_keep_returns_the_good_rows_as_the_users_type(tmp_path: Path, model: Any):
    objects = _objects(tmp_path)
    for name, obj in objects.items():
        report = vlmcheck.scan(obj, model=model, max_length=MAX_LENGTH, image_root=tmp_path)
        good = report.keep(obj)
        assert type(good) is type(obj), name
        if isinstance(good, pd.DataFrame):
            ids = list(good["id"])
        elif isinstance(good, pa.Table):
            ids = good.column("id").to_pylist()
        else:
            ids = [row["id"] for row in good]
        assert ids == GOOD, name
        assert report.indices() == [0, 2, 5, 6]
        assert report.indices(fail_on="warning") == [0, 2, 5]  # the cut reply goes too
    ds = objects["datasets.Dataset, Image column"]
    report = vlmcheck.scan(ds, model=model, max_length=MAX_LENGTH, image_root=tmp_path, limit=3)
    with pytest.raises(vlmcheck.UsageError, match="covers 3"):
        report.keep(ds)


def test_to_pandas_holds_one_row_per_sample(tmp_path: Path, model: Any, expected: list[dict[str, Any]]):
    ds = _image_dataset(_rows(tmp_path, _struct))
    frame = vlmcheck.scan(ds, model=model, max_length=MAX_LENGTH, image_root=tmp_path).to_pandas()
    assert list(frame.columns) == ["index", "id", "tokens", "image_tokens", "supervised_tokens", "findings"]
    assert str(frame["tokens"].dtype) == "Int64"  # whole numbers, with <NA> where a sample has no length
    as_records = [{k: (None if v is pd.NA else v) for k, v in row.items()} for row in frame.to_dict("records")]
    assert as_records == expected
    assert frame.loc[frame["id"] == "long-image", "findings"].item() == ["VC201", "VC202"]


def test_file_output_and_records_agree(tmp_path: Path, model: Any, expected: list[dict[str, Any]]):
    out = tmp_path / "records.jsonl"
    ds = _image_dataset(_rows(tmp_path, _struct))
    report = vlmcheck.scan(ds, model=model, max_length=MAX_LENGTH, image_root=tmp_path, output=out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == list(report.records()) == expected


def test_an_object_of_another_type_is_a_usage_error(model: Any):
    with pytest.raises(vlmcheck.UsageError, match="cannot scan a builtins.dict"):
        vlmcheck.scan({"messages": []}, model=model)
    with pytest.raises(vlmcheck.UsageError, match="split= picks"):
        vlmcheck.scan([{"messages": []}], model=model, split="train")


def test_repair_says_how_to_keep_the_good_rows_of_an_object(tmp_path: Path, model: Any):
    ds = _image_dataset(_rows(tmp_path, _struct))
    with pytest.raises(vlmcheck.UsageError, match=r"scan\(obj, \.\.\.\)\.keep\(obj\)"):
        vlmcheck.repair(ds, model=model, max_length=MAX_LENGTH, dry_run=True)
