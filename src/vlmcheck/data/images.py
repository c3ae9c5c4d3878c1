"""Image sizes from file headers: width, height and EXIF orientation, without decoding pixels.

Pillow's ``Image.open`` reads only the header; pixel data is decoded on ``load()``, which we never
call. A cheap end-of-file check catches files cut short (what "image file is truncated" reports
mid-training) without decoding either; where the end is missing, the bytes the decoder needs are counted (a PNG's
image data inflated and discarded, a JPEG decoded at 1/8 scale) rather than the image decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from vlmcheck.data.files import FileProblem, open_regular

# EXIF tag 0x0112; values 5-8 rotate by 90 degrees, so transformers' load_image (which applies
# PIL.ImageOps.exif_transpose to paths and URLs) hands the processor W and H swapped.
ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


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


# Bits per pixel of the modes a "raw" tile is stored in (PIL's raw decoder reads stride x rows bytes).
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 24, "RGBA": 32, "CMYK": 32, "YCbCr": 24, "LAB": 24, "HSV": 24,
              "I": 32, "F": 32, "LA": 16, "PA": 16, "RGBX": 32, "RGBa": 32, "La": 16, "I;16": 16, "I;16B": 16,
              "I;16L": 16}
# Rawmodes of "raw" tiles not in _MODE_BITS (a tile's rawmode, not the image mode, sets the bytes per row: an SGI
# layer is "R", a 16-bit BMP "BGR;15"); any other rawmode made of band letters takes 8 bits a band.
_RAW_BITS = {"1;I": 1, "1;R": 1, "1;IR": 1, "P;1": 1, "P;2": 2, "P;4": 4, "L;2": 2, "L;4": 4, "BGR;15": 16,
             "BGR;16": 16, "RGB;15": 16, "RGB;L": 24, "RGB;16": 16, "I;16N": 16, "I;32": 32, "I;32B": 32, "I;32L": 32,
             "I;32N": 32, "F;32": 32, "F;32F": 32, "F;32B": 32, "F;32BF": 32, "F;32N": 32, "F;32NF": 32}
_BAND_LETTERS = frozenset("RGBAXLPCMYKa")
# A full decode settles what the headers cannot, up to this many pixels (beyond it: taken as complete). JPEG and
# PNG do not need it: their cut files are judged by what the decoder consumes, at any size.
_DECODE_PIXELS = 16 << 20
_TAIL = 4096
# Segments, chunks or blocks a header walk takes before it gives up (and a real decode decides): a file
# crafted from millions of tiny segments must not take seconds of Python.
_MAX_STEPS = 1 << 16


def _size_of(fp: IO[bytes]) -> int:
    fp.seek(0, os.SEEK_END)
    return fp.tell()


# Start-of-frame markers (C4 DHT, C8 JPG and CC DAC share the range), and those of progressive frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg_complete(fp: IO[bytes], size: int, im: Image.Image) -> bool | None:
    """Walk the JPEG's segments by their lengths (so an end marker inside an EXIF thumbnail is skipped) to
    the first scan, then look for the end marker after it; trailing bytes (motion photos) do not matter.

    Without the end marker: libjpeg reads a multi-scan file (progressive, or a first scan holding only some of
    the components) to its end marker before it returns a row (``jpeg_start_decompress`` consumes input until
    EOI), so PIL raises; a single-scan file loads when its last coded unit is there (a cut that took only the
    marker or padding bits loads), which only decoding tells: it is decoded at 1/8 scale, which reads every
    coded unit as a full decode does, in 1/64 of the memory. None when the walk cannot tell."""
    fp.seek(2)
    components, multi_scan = 0, False
    for _ in range(_MAX_STEPS):
        head = fp.read(4)
        if len(head) < 4:
            return False
        if head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill bytes
            fp.seek(-3, os.SEEK_CUR)
            continue
        if marker == 0xD9:
            return None  # an end before any scan: not a picture PIL decodes the usual way
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            fp.seek(-2, os.SEEK_CUR)
            continue
        length = int.from_bytes(head[2:4], "big")
        if fp.tell() - 2 + length > size:
            return False
        start = fp.tell()
        if marker in _SOF_MARKERS:  # precision, height, width, then the number of components
            frame = fp.read(6)
            components = frame[5] if len(frame) == 6 else 0
            multi_scan = marker in _PROGRESSIVE_SOF
        if marker == 0xDA:  # start of scan: entropy-coded data, where 0xFF is stuffed and 0xFFD9 is the end
            in_scan = fp.read(1)
            multi_scan = multi_scan or not in_scan or in_scan[0] < components
            data = start + length - 2
            if size - _TAIL > data:  # the usual file: its end marker in the last few KB, read those only
                fp.seek(size - _TAIL)
                if b"\xff\xd9" in fp.read():
                    return True
            fp.seek(data)
            carry = b""
            while True:
                block = fp.read(1 << 20)
                if not block:
                    if multi_scan:
                        return False
                    width, height = im.size
                    im.draft(None, (max(1, width // 8), max(1, height // 8)))
                    fp.seek(0)
                    return _decodes(im, scaled=True)
                if b"\xff\xd9" in carry + block:
                    return True
                carry = block[-1:]
        fp.seek(start + length - 2)
    return None


def _png_complete(fp: IO[bytes], size: int) -> bool | None:
    """Walk the chunks by their lengths: IEND reached means complete (trailing bytes do not matter). A file
    that ends before IEND loads in PIL when its image data is all there (PIL stops reading once the last row is
    decoded: a PNG that lacks only its IEND or the last checksum loads): :func:`_png_rows_complete` tells."""
    fp.seek(8)
    for _ in range(_MAX_STEPS):
        head = fp.read(8)
        if len(head) < 8:
            return _png_rows_complete(fp, size)
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"IEND":
            return True
        if fp.tell() + length + 4 > size:
            return _png_rows_complete(fp, size)
        fp.seek(length + 4, os.SEEK_CUR)
    return None


# Samples per pixel of each PNG colour type (grey, RGB, palette, grey + alpha, RGBA).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7's passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_rows_complete(fp: IO[bytes], size: int) -> bool | None:
    """Whether the image data a cut PNG still holds inflates to every filtered row (a filter byte and the
    packed pixels of each row, per Adam7 pass when interlaced): PIL's decoder reads the IDAT chunks in turn
    and is done at the last row, before it needs another byte. The output is counted in 1 MB pieces and
    dropped, so a file of any size takes time in proportion to its bytes and no image-sized memory. None
    when the header does not say (the caller decodes)."""
    fp.seek(8)
    head = fp.read(25)
    if len(head) < 25 or head[4:8] != b"IHDR":
        return None
    width, height = int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
    depth, colour, interlace = head[16], head[17], head[20]
    if colour not in _PNG_SAMPLES or interlace not in (0, 1):
        return None
    bits = depth * _PNG_SAMPLES[colour]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    needed = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            needed += rows * (1 + -(-columns * bits // 8))
    fp.seek(33)  # after IHDR (its CRC included): walk to the image data
    inflate = zlib.decompressobj()
    produced, in_data = 0, False
    for _ in range(_MAX_STEPS):
        chunk = fp.read(8)
        if len(chunk) < 8:
            return False
        length, kind = int.from_bytes(chunk[:4], "big"), chunk[4:]
        if kind != b"IDAT":
            if in_data:
                return False  # the image data ended before the last row
            fp.seek(length + 4, os.SEEK_CUR)
            continue
        in_data = True
        left = length
        while left > 0:
            piece = fp.read(min(left, 1 << 20))
            if not piece:
                return False
            left -= len(piece)
            try:
                produced += len(inflate.decompress(piece, 1 << 20))
                while inflate.unconsumed_tail and produced < needed:
                    produced += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
            except zlib.error:
                return False
            if produced >= needed:
                return True
        fp.seek(4, os.SEEK_CUR)  # the CRC
    return None


def _gif_complete(fp: IO[bytes], size: int) -> bool | None:
    """Walk the blocks to the end of the first image's data (what a processor loads); complete when every
    data sub-block of it is there, undecided otherwise (the caller decodes)."""
    fp.seek(6)
    screen = fp.read(7)
    if len(screen) < 7:
        return None
    if screen[4] & 0x80:
        fp.seek(3 << ((screen[4] & 7) + 1), os.SEEK_CUR)

    def sub_blocks() -> bool:
        for _ in range(_MAX_STEPS):
            n = fp.read(1)
            if not n:
                return False
            if n[0] == 0:
                return True
            if fp.tell() + n[0] > size:
                return False
            fp.seek(n[0], os.SEEK_CUR)
        return False

    for _ in range(_MAX_STEPS):
        kind = fp.read(1)
        if not kind:
            return None
        if kind == b"!":
            fp.seek(1, os.SEEK_CUR)
            if not sub_blocks():
                return None
        elif kind == b",":
            desc = fp.read(9)
            if len(desc) < 9:
                return None
            if desc[8] & 0x80:
                fp.seek(3 << ((desc[8] & 7) + 1), os.SEEK_CUR)
            fp.seek(1, os.SEEK_CUR)  # LZW minimum code size
            return True if sub_blocks() else None
        else:
            return None
    return None


def _isobmff_complete(fp: IO[bytes], size: int) -> bool:
    """An AVIF (ISO base media file): every top-level box (``ftyp``, ``meta``, ``mdat``, ...) ends inside the file.
    libavif reads the coded frame from ``mdat`` on load, so a file cut anywhere in it raises ("Truncated data").
    Bytes after the last box that do not form a box header are taken as trailing bytes, not a cut box."""
    pos = 0
    for _ in range(_MAX_STEPS):
        if pos >= size:
            return True
        fp.seek(pos)
        head = fp.read(16)
        if len(head) < 8 or not all(0x20 <= c < 0x7F for c in head[4:8]):
            return True  # not a box header: trailing bytes
        length = int.from_bytes(head[:4], "big")
        if length == 0:  # the box runs to the end of the file, whatever its size
            return True
        if length == 1:  # a 64-bit size follows the type
            if len(head) < 16:
                return False
            length = int.from_bytes(head[8:16], "big")
        if length < 8:
            return True
        if pos + length > size:
            return False
        pos += length
    return True


def _raw_bits(rawmode: object) -> int | None:
    """Bits per pixel of a "raw" tile's rawmode; None when unknown."""
    if not isinstance(rawmode, str):
        return None
    bits = _MODE_BITS.get(rawmode) or _RAW_BITS.get(rawmode)
    if bits is None and rawmode and set(rawmode) <= _BAND_LETTERS:
        bits = 8 * len(rawmode)
    return bits


def _tiles_complete(im: Image.Image, size: int) -> bool | None:
    """Whether the byte ranges the decoder will read are in the file: raw tiles (BMP, TIFF, PPM, TGA, SGI) by
    stride x rows, TIFF strips and tiles by their byte counts. None when that cannot be said, and for a plugin
    that decodes in its own ``load()`` (AVIF, ICO, ICNS, ...): its "raw" tile is a stand-in for the pixels its
    codec returns, not a layout of the file."""
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        for offsets_tag, counts_tag in ((273, 279), (324, 325)):
            offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
            if offsets is not None and counts is not None:
                offsets = offsets if isinstance(offsets, tuple) else (offsets,)
                counts = counts if isinstance(counts, tuple) else (counts,)
                return all(int(o) + int(c) <= size for o, c in zip(offsets, counts))
    # TIFF's load() only picks libtiff or the tiles; any other plugin's own load() makes the tile a stand-in
    if type(im).load is not ImageFile.ImageFile.load and im.format != "TIFF":
        return None
    tiles = list(getattr(im, "tile", None) or [])
    if not tiles or any(t[0] != "raw" for t in tiles):
        return None
    for tile in tiles:
        x0, y0, x1, y1 = tile[1]
        args = tile[3] if isinstance(tile[3], tuple) else (tile[3],)
        bits = _raw_bits(args[0] if args else im.mode)
        if bits is None:
            return None
        row = -(-bits * (x1 - x0) // 8)
        stride = args[1] if len(args) > 1 and isinstance(args[1], int) and args[1] > 0 else row
        # the last row needs its pixels, not the padding that rounds a BMP row up to 4 bytes
        if int(tile[2]) + stride * (y1 - y0 - 1) + row > size:
            return False
    return True


def _decodes(im: Image.Image, *, scaled: bool = False) -> bool | None:
    """A real decode, what the training loader will do: True when it loads, False when it stops short. None
    over ``_DECODE_PIXELS`` (no full decode of a huge image only to check it), unless ``scaled`` (a JPEG drafted
    to 1/8 of its size)."""
    if not scaled and im.width * im.height > _DECODE_PIXELS:
        return None
    try:
        im.load()
    except Image.DecompressionBombError:
        return None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error):
        return False
    return True


def _complete(im: Image.Image, fp: IO[bytes]) -> bool:
    """Whether ``Image.open(...).load()`` gets every byte it needs: from the headers where they tell (JPEG,
    PNG, GIF, TIFF, BMP, SGI and other raw layouts, WebP, AVIF), else by decoding. A file that cannot be judged
    within the bound counts as complete (over 16 Mpx, the formats above aside: a cut JPEG 2000, TGA-RLE or
    compressed SGI that large is not caught)."""
    fmt = im.format
    size = _size_of(fp)
    verdict: bool | None
    try:
        if fmt in ("JPEG", "MPO"):
            verdict = _jpeg_complete(fp, size, im)
        elif fmt == "PNG":
            verdict = _png_complete(fp, size)
        elif fmt == "GIF":
            verdict = _gif_complete(fp, size)
        elif fmt == "WEBP":
            fp.seek(4)
            verdict = int.from_bytes(fp.read(4), "little") + 8 <= size
        elif fmt == "AVIF":
            verdict = _isobmff_complete(fp, size)
        else:
            verdict = _tiles_complete(im, size)
    except (OSError, ValueError, TypeError, IndexError):
        verdict = None
    if verdict is None:
        fp.seek(0)
        verdict = _decodes(im)
    return verdict is not False


def _png_chunks_after_pixels(fp: IO[bytes]) -> bool:
    """Whether a PNG has any chunk after its image data besides IEND (or cannot be walked).

    Chunk headers only: 8 bytes read per chunk, the data skipped with a seek. A file that ends before IEND
    has no chunk after the pixels but those the walk met (and decoding a cut file only to look raises, after
    allocating the whole image).
    """
    start = fp.tell()
    try:
        fp.seek(8)  # signature
        seen_idat = False
        for _ in range(_MAX_STEPS):
            head = fp.read(8)
            if len(head) < 8:
                return False
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_idat = True
            elif seen_idat:
                return True
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
        return True
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
            # PIL's warnings about a file (bomb size, corrupt EXIF, truncated TIFF tags) are the data's business:
            # what matters becomes a finding, the rest must not clutter stderr
            warnings.simplefilter("ignore")
            with Image.open(fp) as im:
                width, height = im.size
                fmt = im.format
                orientation = 1
                if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "MPO", "HEIF", "AVIF"):
                    try:
                        orientation = int(_exif(im, fp).get(ORIENTATION_TAG, 1) or 1)
                    except Exception:  # a broken EXIF block: PIL's exif_transpose ignores it too
                        orientation = 1
                complete = not check_integrity or width <= 0 or height <= 0 or _complete(im, fp)
    except Image.DecompressionBombError as e:
        raise ImageProblem("VC105", f"PIL refuses to decode it: {e}") from None
    except UnidentifiedImageError:
        raise ImageProblem("VC102", "not an image PIL can identify (empty, corrupt or unsupported)") from None
    except Exception as e:  # OSError, SyntaxError, struct.error, ...: whatever PIL raises, the file is bad
        raise ImageProblem("VC102", f"corrupt image header: {type(e).__name__}: {str(e)[:200]}") from None
    if width <= 0 or height <= 0:
        raise ImageProblem("VC102", f"header declares an empty image ({width}x{height})")
    if not complete:
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
