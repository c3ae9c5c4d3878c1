"""Image sizes from file headers: width, height and EXIF orientation, without decoding pixels.

Pillow's ``Image.open`` reads only the header; pixel data is decoded on ``load()``, which we never
call. A cheap end-of-file check catches files cut short (what "image file is truncated" reports
mid-training) without decoding either.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from vlmcheck.data.files import FileProblem, open_regular

# EXIF tag 0x0112; values 5-8 rotate by 90 degrees, so transformers' load_image (which applies
# PIL.ImageOps.exif_transpose to paths and URLs) hands the processor W and H swapped.
ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_TAIL = 4096


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as stored in the file
    height: int
    orientation: int = 1
    format: str | None = None

    def size(self, *, exif_transpose: bool = True) -> tuple[int, int]:
        """(width, height) the processor sees."""
        if exif_transpose and self.orientation in _SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


class ImageProblem(Exception):
    """Why an image cannot be used: a finding code and a message."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _complete(fp: IO[bytes], fmt: str | None) -> bool:
    """Whether the file carries its format's end marker (JPEG EOI, PNG IEND, GIF trailer)."""
    if fmt not in ("JPEG", "PNG", "GIF"):
        return True
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(max(0, size - _TAIL))
    tail = fp.read()
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail[-64:]
    return tail.rstrip(b"\x00").endswith(b";")


def _png_chunks_after_pixels(fp: IO[bytes]) -> bool:
    """Whether a PNG has any chunk after its image data besides IEND (or cannot be walked).

    Chunk headers only: 8 bytes read per chunk, the data skipped with a seek.
    """
    start = fp.tell()
    try:
        fp.seek(8)  # signature
        seen_idat = False
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return True
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_idat = True
            elif seen_idat:
                return True
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
    finally:
        fp.seek(start)


def _exif(im: Image.Image, fp: IO[bytes]) -> Image.Exif:
    """``im.getexif()`` without decoding pixels where that changes nothing.

    Pillow's ``PngImageFile.getexif`` calls ``load()`` (a full decode) whenever no eXIf chunk
    precedes the pixels, to pick up metadata chunks written after them. When the file has no chunk
    there, loading adds nothing to ``im.info`` and the base ``Image.getexif`` gives the same answer.
    """
    if im.format == "PNG" and "exif" not in im.info and not _png_chunks_after_pixels(fp):
        return Image.Image.getexif(im)
    return im.getexif()


def probe_stream(fp: IO[bytes], *, check_integrity: bool = True) -> ImageInfo:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                width, height = im.size
                fmt = im.format
                orientation = 1
                if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "MPO", "HEIF", "AVIF"):
                    try:
                        orientation = int(_exif(im, fp).get(ORIENTATION_TAG, 1) or 1)
                    except Exception:  # a broken EXIF block: PIL's exif_transpose ignores it too
                        orientation = 1
    except Image.DecompressionBombError as e:
        raise ImageProblem("VC105", f"PIL refuses to decode it: {e}") from None
    except UnidentifiedImageError:
        raise ImageProblem("VC102", "not an image PIL can identify (empty, corrupt or unsupported)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageProblem("VC102", f"corrupt image header: {e}") from None
    if width <= 0 or height <= 0:
        raise ImageProblem("VC102", f"header declares an empty image ({width}x{height})")
    if check_integrity and not _complete(fp, fmt):
        raise ImageProblem("VC103", f"{fmt} file ends before its end marker (truncated download or copy)",
                           width=width, height=height)
    return ImageInfo(width=width, height=height, orientation=orientation, format=fmt)


def probe_path(path: Path, *, check_integrity: bool = True) -> ImageInfo:
    """Probe a file named by the dataset: only a regular file is opened (see :mod:`vlmcheck.data.files`)."""
    try:
        fp = open_regular(path)
    except FileProblem as p:
        raise ImageProblem("VC101" if p.kind == "missing" else "VC102", p.message) from None
    try:
        with fp:
            return probe_stream(fp, check_integrity=check_integrity)
    except OSError as e:  # a read error mid-file (I/O error, a file shrinking under us)
        raise ImageProblem("VC102", f"read error: {e}") from None


def probe_bytes(data: bytes, *, check_integrity: bool = True) -> ImageInfo:
    return probe_stream(io.BytesIO(data), check_integrity=check_integrity)


def decode_data_url(url: str) -> bytes:
    """The payload of ``data:image/png;base64,....``"""
    header, _, payload = url.partition(",")
    if not header.startswith("data:"):
        raise ImageProblem("VC102", "not a data URL")
    try:
        if ";base64" in header:
            return base64.b64decode(payload, validate=False)
        from urllib.parse import unquote_to_bytes

        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as e:
        raise ImageProblem("VC102", f"data URL is not valid base64: {e}") from None
