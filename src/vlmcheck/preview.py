"""What the HTML report shows of one sample: downscaled thumbnails of its images and its token layout.

The scan makes a preview only for the first few samples of each finding code (:data:`PREVIEWS_PER_CODE` per
worker; the report keeps the first of them), so a 1M-row scan decodes a few dozen images, not a million.

>>> from vlmcheck.layout import Layout
>>> layout = Layout(total=10, images=[(2, 6)], supervised=[(7, 10)], runs=[[(2, 6)]])
>>> layout_spans(layout, kinds=["image"], max_length=8, truncation="right")
{'total': 10, 'media': [[2, 6, 'image', 1]], 'supervised': [[7, 10]], 'kept': [[0, 8]], 'max_length': 8}
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmcheck.data.files import FileProblem, open_regular
from vlmcheck.data.formats import ImageRef
from vlmcheck.data.images import ImageProblem, decode_data_url
from vlmcheck.layout import Layout, kept_ranges
from vlmcheck.results import SampleResult

PREVIEWS_PER_CODE = 3  # samples previewed per finding code (the report's ReportBuilder keeps as many)
THUMBNAIL_SIDE = 160  # px, the longer side of an embedded thumbnail
IMAGES_PER_PREVIEW = 4  # thumbnails per sample: the images a finding names first
_DECODE_LIMIT = 64_000_000  # pixels: larger images are not decoded for a preview (VC105 is about them)


def thumbnail(source: bytes | Path, *, exif_transpose: bool = True, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG data URL of the image, its longer side at most ``side`` px. Raises ``OSError``/``ValueError``
    (and PIL's errors) when it cannot be decoded."""
    from PIL import Image, ImageOps

    # a path opens only as a regular file: a FIFO or device named by a hostile row would block the read forever
    fp = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
    with fp, Image.open(fp) as opened:
        if opened.width * opened.height > _DECODE_LIMIT:
            raise ValueError(f"{opened.width:,}x{opened.height:,} px is too large to decode for a preview")
        opened.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a fraction of the size
        image = ImageOps.exif_transpose(opened) if exif_transpose else opened
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def layout_spans(layout: Layout, *, kinds: Sequence[str], max_length: int | None, truncation: str) -> dict[str, Any]:
    """The token layout as plain lists: media spans ``[start, end, kind, k]``, supervised spans, and the positions
    that survive truncation (``kept``; None when the framework drops the sample)."""
    media: list[list[Any]] = []
    seen: Counter[str] = Counter()
    for i, (start, end) in enumerate(layout.images):
        kind = kinds[i] if i < len(kinds) else "image"
        seen[kind] += 1
        media.append([start, end, kind, seen[kind]])
    kept: list[tuple[int, int]] | None = [(0, layout.total)]
    if max_length is not None:
        kept = kept_ranges(layout, max_length, truncation)
    return {
        "total": layout.total,
        "media": media,
        "supervised": [list(r) for r in layout.supervised],
        "kept": None if kept is None else [list(r) for r in kept],
        "max_length": max_length,
    }


def token_spans(image_of: Sequence[int], trained: Sequence[bool], *, kept: Sequence[tuple[int, int]] | None,
                max_length: int | None, first_video: int | None = None) -> dict[str, Any]:
    """The layout of a sample a framework built token by token: ``image_of`` is each token's image (0-based, -1 for
    text; from ``first_video`` on, videos), ``trained`` whether it carries a label, ``kept`` the positions that
    survive the cut (None: dropped).

    >>> token_spans([-1, 0, 0, -1, -1], [False, False, False, True, True], kept=[(0, 4)], max_length=4)["media"]
    [[1, 3, 'image', 1]]
    >>> token_spans([0, -1, 1, 1], [False] * 4, kept=None, max_length=None, first_video=1)["media"]
    [[0, 1, 'image', 1], [2, 4, 'video', 1]]
    """
    media: list[list[Any]] = []
    supervised: list[list[int]] = []
    for values, out in ((image_of, media), (trained, supervised)):
        i = 0
        while i < len(values):
            j = i + 1
            while j < len(values) and values[j] == values[i]:
                j += 1
            if out is media and values[i] >= 0:
                k = int(values[i])
                if first_video is not None and k >= first_video:
                    media.append([i, j, "video", k - first_video + 1])
                else:
                    media.append([i, j, "image", k + 1])
            elif out is supervised and values[i]:
                supervised.append([i, j])
            i = j
    return {"total": len(image_of), "media": media, "supervised": supervised,
            "kept": None if kept is None else [list(r) for r in kept], "max_length": max_length}


def image_refs(images: Sequence[Any]) -> list[ImageRef]:
    """A framework's row images (a path, a data URL, an image struct ``{"bytes", "path"}``, bytes) as the previews
    read them; anything else (an opened PIL image) is listed, not drawn."""
    refs = []
    for image in images:
        if isinstance(image, Mapping):
            image = image.get("bytes") or image.get("path") or ""
        if isinstance(image, (bytes, bytearray)):
            refs.append(ImageRef("bytes", bytes(image)))
        elif isinstance(image, str) and image.startswith("data:"):
            refs.append(ImageRef("data_url", image))
        elif isinstance(image, str) and image.startswith(("http://", "https://", "s3://", "gs://")):
            refs.append(ImageRef("url", image))
        elif isinstance(image, str):
            refs.append(ImageRef("path", image))
        else:
            refs.append(ImageRef("object", type(image).__name__))
    return refs


class Previewer:
    """Decides which samples get a preview (the first :data:`PREVIEWS_PER_CODE` per code) and makes it.

    ``local_path`` turns a dataset path into a file path, raising :class:`ImageProblem` for one that must not be
    read (outside the image root)."""

    def __init__(self, *, local_path: Callable[[str, str], Path], exif_transpose: bool, max_length: int | None,
                 truncation: str, per_code: int = PREVIEWS_PER_CODE) -> None:
        self.local_path = local_path
        self.exif_transpose = exif_transpose
        self.max_length = max_length
        self.truncation = truncation
        self.per_code = per_code
        self.taken: Counter[str] = Counter()

    def wants(self, result: SampleResult) -> bool:
        return any(self.taken[f.code] < self.per_code for f in result.findings)

    def make(self, result: SampleResult, *, images: Sequence[ImageRef] = (), layout: Layout | None = None,
             kinds: Sequence[str] = (), spans: dict[str, Any] | None = None) -> dict[str, Any]:
        """The preview of ``result``: thumbnails of ``images`` (those a finding names first) and the token layout,
        from a scan's ``layout`` or as ready ``spans`` (see :func:`layout_spans`) from a framework's judge."""
        for code in {f.code for f in result.findings}:
            self.taken[code] += 1
        named = [f.data["image"] for f in result.findings if isinstance(f.data.get("image"), int)]
        order = sorted(range(1, len(images) + 1), key=lambda k: (k not in named, k))[:IMAGES_PER_PREVIEW]
        shown = []
        for k in sorted(order):
            ref = images[k - 1]
            tokens = result.image_tokens[k - 1] if k - 1 < len(result.image_tokens) else None
            entry: dict[str, Any] = {"k": k, "source": ref.describe()[:160], "tokens": tokens, "named": k in named}
            try:
                entry["thumbnail"] = thumbnail(self._source(ref), exif_transpose=self.exif_transpose)
            except ImageProblem as p:
                entry["note"] = "not read: outside the image root" if p.code == "VC104" else f"not read: {p.message[:60]}"
            except FileNotFoundError:
                entry["note"] = "file not found"
            except FileProblem as p:
                entry["note"] = f"not read: {p}"[:80]
            except Exception as e:  # noqa: BLE001  (a preview never stops a scan: any decoder error is a note)
                entry["note"] = f"cannot be decoded ({type(e).__name__})"
            shown.append(entry)
        preview: dict[str, Any] = {"images": shown, "image_count": len(images)}
        if spans is not None:
            preview["layout"] = spans
        elif layout is not None:
            preview["layout"] = layout_spans(layout, kinds=kinds, max_length=self.max_length,
                                             truncation=self.truncation)
        return preview

    def _source(self, ref: ImageRef) -> bytes | Path:
        if ref.kind == "bytes":
            return bytes(ref.value)
        if ref.kind == "data_url":
            return decode_data_url(ref.value)
        if ref.kind == "url":
            raise ImageProblem("VC101", "a remote image, not downloaded")
        if ref.kind == "object":
            raise ImageProblem("VC102", f"a {ref.value} object, not previewed")
        return self.local_path(str(ref.value), "image")
