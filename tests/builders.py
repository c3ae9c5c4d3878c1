"""Small builders for scan tests: real image files made with PIL, datasets written in the layouts
users have, and the per-sample records of a scan (``--output``)."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image
from tokenizers import Tokenizer

import vlmcheck
from vlmcheck.data.images import ImageProblem, probe_bytes
from vlmcheck.families import Overrides
from vlmcheck.model import ModelSpec, load_model


@cache
def spec(checkpoint: Path, *, max_pixels: int | None = None, resize: str = "processor") -> ModelSpec:
    """A loaded model, shared between tests: reading tokenizer.json takes about a second, so models
    that differ only in processor settings share one tokenizer."""
    loaded = load_model(checkpoint, overrides=Overrides(max_pixels=max_pixels, resize=resize))
    loaded.__dict__["tokenizer"] = tokenizer(checkpoint)  # ModelSpec.tokenizer is a cached_property
    return loaded


@cache
def tokenizer(checkpoint: Path) -> Tokenizer:
    """The checkpoint's real tokenizer (tokenizer.json read by the `tokenizers` library)."""
    return Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


def image(path: Path, width: int, height: int, *, fmt: str | None = None, color: str = "red") -> Path:
    """A real, small (one-colour) image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, format=fmt)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` with a valid CRC, and one tiny IDAT: PIL reads
    the size from the header without allocating the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def records(dataset: Path, *, model: Path, out: Path | None = None, **options: Any) -> list[dict[str, Any]]:
    """Scan ``dataset`` and return its ``--output`` records, in order."""
    out = out or dataset.parent / f"{dataset.name}.records.jsonl"
    # a loaded ModelSpec carries its own processor settings: build it with the pixel options
    loaded = spec(model, max_pixels=options.pop("max_pixels", None), resize=options.pop("resize", "processor"))
    vlmcheck.scan(dataset, model=loaded, output=out, **options)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def scan_rows(rows: list[dict[str, Any]], *, model: Any, image_root: Path, tmp_path: Path,
              **options: Any) -> list[dict[str, Any]]:
    """Write ``rows`` as JSON Lines, scan them with ``model`` (a checkpoint folder or a loaded
    ModelSpec) and return the ``--output`` records, checked to be one per row, in order."""
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "records.jsonl"
    vlmcheck.scan(data, model=model, image_root=image_root, output=out, **options)
    found = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in found] == [str(row.get("id", i)) for i, row in enumerate(rows)]
    return found


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def pil_decodes(data: bytes, *, convert: bool = False) -> bool:
    """The oracle for image files: PIL opens them and decodes every pixel (``load()``, what transformers'
    ``load_image`` calls; ``convert``: ``convert("RGB")``, what LLaMA-Factory's ``_regularize_images`` does)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB") if convert else im.load()
        return True
    except Exception:
        return False


def vlmcheck_passes(data: bytes) -> bool:
    """vlmcheck's probe takes the file as whole (a cut or unreadable one raises VC103 / VC102)."""
    try:
        probe_bytes(data)
        return True
    except ImageProblem as p:
        assert p.code in ("VC102", "VC103"), p.code
        return False


def noise_image(fmt: str, options: dict[str, object], mode: str, size: tuple[int, int] = (97, 61)) -> bytes:
    """A noise picture in ``mode`` saved by PIL as ``fmt`` with ``options``."""
    out = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").convert(mode).save(out, format=fmt, **options)
    return out.getvalue()
