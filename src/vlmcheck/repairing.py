"""``repair()``: turn a dataset that would crash training into one that trains, losing nothing.

>>> report = repair("train.jsonl", model="Qwen/Qwen2-VL-7B-Instruct", max_length=4096,
...                 output="train.fixed.jsonl")  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'kept': 9812, 'changed': 41, 'dropped': 3}

Each sample is scanned exactly as ``scan()`` would, then:

- **kept**: no error finding; the row is written unchanged (JSON Lines: the very same bytes).
- **changed** (``cap-pixels``): the sample is over ``max_length`` with an image span cut (VC201) or
  all supervision cut (VC202), and a smaller pixel budget makes it fit whole. Its oversized images
  are resized to that budget and written as PNG next to the output (``OUT.images/``); the row's
  image paths point at them. The originals are never touched.
- **dropped**: anything else at error severity (malformed row, missing/corrupt image, placeholder
  mismatch, aspect ratio, or still too long), with the codes and the reason in the manifest.

The manifest (``OUT.manifest.jsonl``, next to the output) has one line per input row, in order. All
files are written to temporary names and renamed at the end: an interrupted run leaves no output.
The module is named ``repairing`` so that ``vlmcheck.repair`` stays the function.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.data.formats import RowError, detect_format, to_conversation
from vlmcheck.data.images import ImageProblem
from vlmcheck.data.readers import BadRow, dataset_kind, iter_rows
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.model import ModelSpec
from vlmcheck.scan import SampleResult, Scanner, build_scanner

ON_OVERLONG = ("cap-pixels", "drop")
OUTCOMES = ("kept", "changed", "dropped")
_LENGTH_CODES = frozenset({"VC201", "VC202"})
_CHUNK = 64
_SHRINK_STEPS = 60


@dataclass
class RepairReport:
    """What ``repair()`` did (or, with ``dry_run``, would do)."""

    dataset: str
    output: str | None
    manifest: str | None
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    # dropped samples per error code (a sample with two codes counts under both)
    dropped_codes: dict[str, int] = field(default_factory=dict)
    images_written: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "output": self.output, "manifest": self.manifest, "dry_run": self.dry_run,
            "total": self.total, "counts": self.counts, "dropped_codes": self.dropped_codes,
            "images_written": self.images_written,
        }

    def render(self) -> str:
        head = "would repair" if self.dry_run else "repaired"
        lines = [f"{head} {self.dataset}: {self.total:,} samples"]
        for outcome in OUTCOMES:
            lines.append(f"  {outcome:<8} {self.counts.get(outcome, 0):>8,}")
        if self.dropped_codes:
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(self.dropped_codes.items()))
            lines.append(f"  dropped for: {codes}")
        if self.dry_run:
            lines.append("dry run: nothing written")
        else:
            lines.append(f"output:   {self.output}")
            lines.append(f"manifest: {self.manifest}")
            if self.images_written:
                lines.append(f"images:   {self.images_written:,} resized copies")
        return "\n".join(lines) + "\n"


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``output`` goes: ``fixed.jsonl`` -> ``fixed.manifest.jsonl``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.manifest.jsonl")


def images_dir(output: str | os.PathLike[str]) -> Path:
    """Where resized images of ``output`` go: ``fixed.jsonl`` -> ``fixed.images/``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.images")


def _raw_lines(path: Path) -> Iterator[bytes]:
    """The raw bytes of each non-blank line, in step with ``readers._json_lines``."""
    with open(path, "rb") as fp:
        for raw in fp:
            if raw.strip():
                yield raw if raw.endswith(b"\n") else raw + b"\n"


@dataclass
class _Plan:
    """The fix for one over-long sample: its new row and the image files to write."""

    row: dict[str, Any]
    max_pixels: int
    images: list[dict[str, Any]]  # {"from", "to", "source", "size", "resized"}


class _Repairer:
    def __init__(self, scanner: Scanner, *, max_length: int, on_overlong: str, out_images: Path | None,
                 out_root: Path) -> None:
        self.scanner = scanner
        self.family = scanner.family
        self.settings = scanner.spec.settings
        self.max_length = max_length
        self.on_overlong = on_overlong
        self.out_images = out_images
        self.out_root = out_root

    def decide(self, row: Any, result: SampleResult) -> tuple[str, str | None, _Plan | None]:
        """(outcome, reason, plan) for one scanned row."""
        errors = [f for f in result.findings if f.severity >= F.Severity.ERROR]
        if not errors:
            return "kept", None, None
        reason = "; ".join(f"{f.code} {f.message}" for f in errors)
        codes = {f.code for f in errors}
        if not codes <= _LENGTH_CODES:
            return "dropped", reason, None
        if self.on_overlong == "drop":
            return "dropped", f"{reason} (--on-overlong drop)", None
        plan = self._cap(row, result)
        if isinstance(plan, str):
            return "dropped", f"{reason}; cap-pixels: {plan}", None
        return "changed", f"cap-pixels {plan.max_pixels:,}: {reason}", plan

    def _cap(self, row: Any, result: SampleResult) -> _Plan | str:
        if result.fits_max_pixels is None or result.text_only_tokens is None:
            return "no pixel budget makes the sample fit (its text alone is too long)"
        fmt = self.scanner.options.format or detect_format(row)
        if fmt is None or not isinstance(row, dict):
            return "the row has no conversation"
        try:
            conv = to_conversation(row, fmt)
        except RowError as e:
            return str(e)
        key = "images" if "images" in row else "image"
        value = row.get(key)
        entries = [value] if isinstance(value, str) else value
        if (not isinstance(entries, list) or len(entries) != len(conv.images)
                or not all(isinstance(v, str) for v in entries) or any(r.kind != "path" for r in conv.images)):
            return "only image paths listed in 'images' / 'image' are rewritten (not inline or embedded images)"
        sizes = []
        exif = self.scanner.options.exif_transpose
        for ref in conv.images:
            try:
                sizes.append(self.scanner._probe(ref).size(exif_transpose=exif))
            except ImageProblem as p:
                return p.message
        cap = result.fits_max_pixels
        for _ in range(_SHRINK_STEPS):
            targets = [self._shrink(w, h, cap) for w, h in sizes]
            tokens = result.text_only_tokens + sum(self.family.image_tokens(w, h, self.settings) for w, h in targets)
            bad = any(i.code in F.CATALOGUE and F.CATALOGUE[i.code].severity >= F.Severity.ERROR
                      for w, h in targets for i in self.family.check_image(w, h, self.settings))
            if tokens <= self.max_length and not bad:
                break
            cap = int(cap * 0.95)
        else:
            return "no resize found that fits"
        new_entries = list(entries)
        images = []
        for k, ((w, h), (tw, th)) in enumerate(zip(sizes, targets)):
            if (tw, th) == (w, h):
                continue
            source = self._resolve(entries[k])
            digest = hashlib.sha256(f"{os.path.realpath(source)}:{exif}".encode()).hexdigest()[:12]
            name = f"{Path(entries[k]).stem}-{tw}x{th}-{digest}.png"
            target = (self.out_images or Path(".")) / name
            new_entries[k] = os.path.relpath(target, self.out_root).replace(os.sep, "/")
            images.append({"from": entries[k], "to": new_entries[k], "source": source, "name": name,
                           "size": [w, h], "resized": [tw, th]})
        new_row = dict(row)  # same keys, same order; only the image field changes
        new_row[key] = new_entries[0] if isinstance(value, str) else new_entries
        return _Plan(row=new_row, max_pixels=cap, images=images)

    def _shrink(self, width: int, height: int, cap: int) -> tuple[int, int]:
        """The largest size within ``cap`` pixels, keeping the aspect ratio, on the family's grid."""
        if width * height <= cap:
            return width, height
        factor = int(getattr(self.settings, "factor", 1) or 1)
        scale = math.sqrt(cap / (width * height))
        w = max(factor, math.floor(width * scale / factor) * factor)
        h = max(factor, math.floor(height * scale / factor) * factor)
        return w, h

    def _resolve(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.scanner.root / path


def _write_image(source: Path, target: Path, size: tuple[int, int], *, exif_transpose: bool) -> None:
    from PIL import Image, ImageOps

    with Image.open(source) as img:
        img.load()
        out = ImageOps.exif_transpose(img) if exif_transpose else img
        if out.mode not in ("RGB", "RGBA", "L", "LA"):
            out = out.convert("RGB")
        out = out.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
    target.write_bytes(buf.getvalue())


def repair(
    dataset: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | ModelSpec,
    max_length: int,
    output: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    on_overlong: str = "cap-pixels",
    truncation: str = "right",
    format: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    resize: str = "processor",
    exif_transpose: bool | None = None,
    allow_outside_root: bool = False,
    chat_template: str | None = None,
) -> RepairReport:
    """Write a copy of ``dataset`` in which no sample crashes or trains on nothing at ``max_length``.

    Every input row is accounted for in the manifest (``OUT.manifest.jsonl``): kept, changed (how)
    or dropped (why). The input is only read. Options mean what they mean for :func:`vlmcheck.scan`;
    scan the output with the same options to check it.

    Args:
        dataset: a .json (array) or .jsonl file.
        output: the repaired dataset, same format as the input; required unless ``dry_run``.
        dry_run: decide everything, write nothing.
        on_overlong: ``cap-pixels`` (default: resize the sample's images to the largest budget that
            fits, else drop) or ``drop``.
    """
    if max_length <= 0:
        raise UsageError("max_length must be positive")
    if on_overlong not in ON_OVERLONG:
        raise UsageError(f"on_overlong must be one of {', '.join(ON_OVERLONG)}, not {on_overlong!r}")
    path = Path(dataset)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    kind = dataset_kind(path)
    if kind not in ("json", "jsonl"):
        raise UsageError(f"repair writes JSON and JSON Lines datasets for now, not {kind}")
    out: Path | None = None
    if output is not None:
        out = Path(output)
        if out.exists() and out.resolve() == path.resolve():
            raise UsageError("the output must not be the input: repair never modifies its input")
    elif not dry_run:
        raise UsageError("pass an output path (or dry_run=True)")
    scanner = build_scanner(
        path, model=model, max_length=max_length, truncation=truncation, format=format, image_root=image_root,
        max_pixels=max_pixels, min_pixels=min_pixels, resize=resize, exif_transpose=exif_transpose,
        allow_outside_root=allow_outside_root, chat_template=chat_template,
    )
    root = scanner.root
    # The output is scanned with the same --image-root, or by default its own folder.
    out_root = root if image_root is not None else (out.parent if out is not None else path.parent)
    final_images = images_dir(out) if out is not None else None
    repairer = _Repairer(scanner, max_length=max_length, on_overlong=on_overlong, out_images=final_images,
                         out_root=out_root)
    report = RepairReport(dataset=str(path), output=None if dry_run or out is None else str(out),
                          manifest=None if dry_run or out is None else str(manifest_path(out)), dry_run=dry_run)
    writer = None if dry_run or out is None else _Writer(out, kind)
    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    try:
        raws: Iterator[bytes | None] = _raw_lines(path) if kind == "jsonl" else iter(lambda: None, 0)
        for chunk in _chunks(iter_rows(path), raws):
            results = scanner.analyze([(i, row) for i, row, _ in chunk])
            for (index, row, raw), result in zip(chunk, results):
                outcome, reason, plan = repairer.decide(row, result)
                counts[outcome] += 1
                record: dict[str, Any] = {"index": index, "id": result.id, "outcome": outcome,
                                          "output_index": None, "codes": [f.code for f in result.findings]}
                if reason is not None:
                    record["reason"] = reason
                if outcome == "dropped":
                    dropped.update({f.code for f in result.findings if f.severity >= F.Severity.ERROR})
                if plan is not None:
                    record["change"] = {"strategy": "cap-pixels", "max_pixels": plan.max_pixels,
                                        "images": [{k: v for k, v in im.items() if k not in ("source", "name")}
                                                   for im in plan.images]}
                if writer is not None:
                    if outcome != "dropped":
                        record["output_index"] = writer.add_row(row if plan is None else plan.row,
                                                                raw if plan is None else None)
                    if plan is not None:
                        for im in plan.images:
                            writer.add_image(im["source"], im["name"], tuple(im["resized"]),
                                             exif_transpose=scanner.options.exif_transpose)
                    writer.add_record(record)
                elif outcome != "dropped":
                    record["output_index"] = counts["kept"] + counts["changed"] - 1
        if writer is not None:
            report.images_written = writer.images
            writer.commit()
    finally:
        if writer is not None:
            writer.discard()
    report.counts = {k: counts.get(k, 0) for k in OUTCOMES}
    report.dropped_codes = dict(sorted(dropped.items()))
    return report


def _chunks(rows: Iterator[Any], raws: Iterator[bytes | None]) -> Iterator[list[tuple[int, Any, bytes | None]]]:
    chunk: list[tuple[int, Any, bytes | None]] = []
    for index, row in enumerate(rows):
        raw = next(raws, None)  # JSON Lines: one non-blank line per row, parsed or not
        chunk.append((index, row, None if isinstance(row, BadRow) else raw))
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Writer:
    """The output, its manifest and its resized images, under temporary names until ``commit()``."""

    def __init__(self, out: Path, kind: str) -> None:
        self.out = out
        self.kind = kind
        self.manifest = manifest_path(out)
        self.images_dir = images_dir(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.images = 0
        self._tmp: list[Path] = []
        self.data = self._open(out)
        self.log = self._open(self.manifest)
        self.image_tmp = Path(tempfile.mkdtemp(prefix=f".{self.images_dir.name}.", suffix=".tmp", dir=out.parent))
        self.done = False
        if kind == "json":
            self.data.write(b"[")

    def _open(self, path: Path) -> Any:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._tmp.append(Path(tmp))
        return os.fdopen(fd, "wb")

    def add_row(self, row: Any, raw: bytes | None) -> int:
        if self.kind == "jsonl":
            self.data.write(raw if raw is not None else json.dumps(row, ensure_ascii=False).encode() + b"\n")
        else:
            text = json.dumps(row, ensure_ascii=False, indent=1).replace("\n", "\n ")
            self.data.write((",\n " if self.rows else "\n ").encode() + text.encode())
        self.rows += 1
        return self.rows - 1

    def add_image(self, source: Path, name: str, size: tuple[int, ...], *, exif_transpose: bool) -> None:
        target = self.image_tmp / name
        if not target.exists():
            _write_image(source, target, (size[0], size[1]), exif_transpose=exif_transpose)
            self.images += 1

    def add_record(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")

    def commit(self) -> None:
        if self.kind == "json":
            self.data.write(b"\n]\n" if self.rows else b"]\n")
        for fp in (self.data, self.log):
            fp.flush()
            os.fsync(fp.fileno())
            fp.close()
        names = sorted(p.name for p in self.image_tmp.iterdir())
        if names:
            self.images_dir.mkdir(exist_ok=True)
            for name in names:
                os.replace(self.image_tmp / name, self.images_dir / name)
        # the data file last: when it exists, the manifest and images it refers to are complete
        data_tmp, log_tmp = self._tmp
        os.replace(log_tmp, self.manifest)
        os.replace(data_tmp, self.out)
        self.done = True

    def discard(self) -> None:
        for fp in (self.data, self.log):
            if not fp.closed:
                fp.close()
        if not self.done:
            for tmp in self._tmp:
                tmp.unlink(missing_ok=True)
        shutil.rmtree(self.image_tmp, ignore_errors=True)


__all__ = ["ON_OVERLONG", "OUTCOMES", "RepairReport", "images_dir", "manifest_path", "repair"]
