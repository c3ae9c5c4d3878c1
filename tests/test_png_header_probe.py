"""PNG orientation is read without decoding pixels, and equals what a full ``load()`` reports.

Pillow's ``PngImageFile.getexif`` decodes the whole image unless an eXIf chunk precedes the pixel
data; the probe skips that decode when no chunk follows the pixel data (nothing a decode could add).
"""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image, PngImagePlugin

from vlmcheck.data.images import probe_bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        n = int.from_bytes(png[pos:pos + 4], "big")
        out.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _png(extra_after_idat: list[tuple[bytes, bytes]] = (), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 200)).save(buf, "PNG", **save)
    chunks = _chunks(buf.getvalue())
    body = [c for c in chunks if c[0] != b"IEND"]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(k, d) for k, d in [*body, *extra_after_idat, (b"IEND", b"")])


def _exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _loaded_orientation(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return int(im.getexif().get(0x0112, 1) or 1)


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'

CASES = {
    "plain": _png(),
    "exif before pixels": _png(exif=_exif_bytes(6)),
    "exif after pixels": _png([(b"eXIf", _exif_bytes(6)[len(b"Exif\x00\x00"):])]),
    "xmp after pixels": _png([(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP)]),
    "text after pixels": _png([(b"tEXt", b"Comment\x00hello")]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_orientation_equals_a_full_load(name: str) -> None:
    data = CASES[name]
    info = probe_bytes(data)
    assert (info.width, info.height) == (300, 200)
    assert info.orientation == _loaded_orientation(data)


def test_after_pixel_metadata_is_seen() -> None:
    assert probe_bytes(CASES["exif after pixels"]).orientation == 6
    assert probe_bytes(CASES["xmp after pixels"]).orientation == 8


def test_plain_png_is_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = []
    load = PngImagePlugin.PngImageFile.load

    def counting_load(self: PngImagePlugin.PngImageFile):  # type: ignore[no-untyped-def]
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", counting_load)
    assert probe_bytes(CASES["plain"]).orientation == 1
    assert probe_bytes(CASES["exif before pixels"]).orientation == 6
    assert decoded == []
    assert probe_bytes(CASES["exif after pixels"]).orientation == 6  # falls back to Pillow's own path
    assert decoded == [(300, 200)]


def test_truncated_png_still_reports_truncation() -> None:
    from vlmcheck.data.images import ImageProblem

    data = _png()
    with pytest.raises(ImageProblem) as e:
        probe_bytes(data[: len(data) - 30])
    assert e.value.code == "VC103"
