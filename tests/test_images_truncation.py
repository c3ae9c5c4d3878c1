"""VC103 (truncated) agrees with what PIL does when a framework opens the image (``Image.open(...).convert("RGB")``,
as LLaMA-Factory and transformers' ``load_image`` call it), for files of every size class, whole and cut.

Above 16 Mpx vlmcheck does not decode to check; JPEG, PNG, GIF, WebP, AVIF and raw layouts (BMP, TIFF, SGI) are
judged from their bytes there: ``large`` runs the same sweep with that bound at 0, so each cut small file is judged
as a huge one would be, and the real 48-Mpx and 20-Mpx files check that no image-sized decode happens. Found by
differential campaign 5 against LLaMA-Factory 0.9.5: a cut 8000x6000 JPEG or 5000x4000 PNG passed; a whole AVIF or
SGI file was called truncated.
"""

from __future__ import annotations

import io
import random
import warnings
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image, ImageFile, features

from builders import noise_image, pil_decodes, vlmcheck_passes
from vlmcheck.data import images
from vlmcheck.data.images import ImageProblem, probe_bytes

AVIF = features.check("avif")


def pil_converts(data: bytes) -> bool:
    """The oracle: what LLaMA-Factory's ``_regularize_images`` does with the file (``convert(\"RGB\")``)."""
    return pil_decodes(data, convert=True)

# (format, save options, mode); each is judged without a full decode at any size
HEADER_JUDGED = [
    ("JPEG", {}, "RGB"), ("JPEG", {"progressive": True}, "RGB"), ("JPEG", {}, "L"), ("JPEG", {}, "CMYK"),
    ("JPEG", {"subsampling": 0}, "RGB"), ("JPEG", {"restart_marker_blocks": 3}, "RGB"),
    ("JPEG", {"progressive": True, "restart_marker_rows": 1}, "L"),
    ("PNG", {}, "RGB"), ("PNG", {}, "RGBA"), ("PNG", {}, "P"), ("PNG", {}, "1"), ("PNG", {}, "I;16"),
    ("PNG", {"compress_level": 0}, "RGB"), ("ADAM7", {}, "RGB"), ("ADAM7", {}, "L"), ("ADAM7", {}, "RGBA"),
    ("WEBP", {}, "RGB"), ("WEBP", {"lossless": True}, "RGBA"),
    ("BMP", {}, "RGB"), ("BMP", {}, "1"), ("BMP", {}, "P"), ("TIFF", {}, "RGB"), ("TIFF", {"compression": "tiff_lzw"}, "RGB"),
    ("SGI", {}, "RGB"), ("SGI", {}, "RGBA"), ("SGI", {}, "L"),
    pytest.param("AVIF", {}, "RGB", marks=pytest.mark.skipif(not AVIF, reason="Pillow without AVIF")),
    pytest.param("AVIF", {"quality": 90}, "RGBA", marks=pytest.mark.skipif(not AVIF, reason="Pillow without AVIF")),
]
# judged by a full decode up to 16 Mpx (and taken as whole above it). GIF: its blocks are walked, but a file cut
# inside its last data block may still load (the LZW codes of every pixel came before the cut), which only decoding
# tells
DECODE_JUDGED = [("GIF", {}, "RGB"), ("GIF", {"interlace": True}, "L"), ("ICO", {}, "RGB"), ("TGA", {"compression": "tga_rle"}, "RGB"), ("PPM", {}, "RGB"), ("PCX", {}, "RGB"),
                 ("QOI", {}, "RGB"), ("JPEG2000", {}, "RGB")]


def adam7_png(im: Image.Image) -> bytes:
    """An interlaced PNG (Pillow writes none): each Adam7 pass's rows, filter 0, in one IDAT chunk."""
    colour, channels = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}[im.mode]
    width, height = im.size
    pixels, raw = im.tobytes(), bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        if x0 >= width:
            continue
        for y in range(y0, height, dy):
            row = pixels[y * width * channels:(y + 1) * width * channels]
            raw += b"\0" + b"".join(row[x * channels:(x + 1) * channels] for x in range(x0, width, dx))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour, 0, 0, 1])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw)))
            + chunk(b"IEND", b""))


def encoded(fmt: str, options: dict[str, object], mode: str, size: tuple[int, int] = (97, 61)) -> bytes:
    if fmt == "ADAM7":
        return adam7_png(Image.effect_noise(size, 64).convert("RGB").convert(mode))
    return noise_image(fmt, options, mode, size)


def cases(data: bytes, seed: str) -> Iterator[tuple[str, bytes]]:
    """The whole file, with trailing bytes, and cut at its last 40 offsets and 40 random ones."""
    rng = random.Random(seed)
    yield "whole", data
    yield "whole + zeros", data + b"\0" * 3000
    yield "whole + noise", data + rng.randbytes(5000)
    for cut in sorted({len(data) - k for k in range(1, 41)} | {rng.randrange(1, len(data)) for _ in range(40)}):
        yield f"cut at {cut} of {len(data)}", data[:cut]


@pytest.fixture
def decodes() -> Iterator[list[tuple[int, int]]]:
    """The sizes of every image PIL decodes while the test runs."""
    seen: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        seen.append(self.size)
        return load(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", spy)
        yield seen


@pytest.mark.parametrize("large", [False, True], ids=["small", "as-if-large"])
@pytest.mark.parametrize("fmt, options, mode", HEADER_JUDGED + DECODE_JUDGED, ids=lambda x: str(x))
def test_whole_and_cut_files_agree_with_pil(fmt: str, options: dict[str, object], mode: str, large: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if large and (fmt, options, mode) in DECODE_JUDGED:
        pytest.skip("judged by decoding, which a file this large would not get")
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    data = encoded(fmt, options, mode)
    expected = {name: pil_converts(case) for name, case in cases(data, f"{fmt}{options}{mode}")}
    assert expected["whole"] and not all(expected.values())
    if large:
        monkeypatch.setattr(images, "_DECODE_PIXELS", 0)
    got = {name: vlmcheck_passes(case) for name, case in cases(data, f"{fmt}{options}{mode}")}
    wrong = {name: ("PIL opens" if expected[name] else "PIL raises") for name in got if got[name] != expected[name]}
    assert not wrong, (fmt, options, mode, wrong)


@pytest.mark.parametrize("fmt, options, mode", HEADER_JUDGED + DECODE_JUDGED, ids=lambda x: str(x))
def test_a_whole_file_is_never_called_truncated_without_a_decode(fmt: str, options: dict[str, object], mode: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin whose tile is a stand-in for what its codec returns (AVIF, ICO, ...) is not read as a raw layout."""
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    data = encoded(fmt, options, mode)
    assert pil_converts(data)
    monkeypatch.setattr(images, "_DECODE_PIXELS", 0)
    assert vlmcheck_passes(data)


def test_the_repro_avif_and_sgi_pass() -> None:
    """Campaign 5, class C: Pillow's AVIF tile is ('raw', (0, 0, w, h), 0, 'RGB') and an SGI tile is one plane
    ('R', 'G' or 'B'); read as the image's RGB layout they asked for more bytes than the file holds."""
    sgi = encoded("SGI", {}, "RGB", (170, 130))
    assert probe_bytes(sgi).size() == (170, 130)
    with pytest.raises(ImageProblem) as e:
        probe_bytes(sgi[:-1])
    assert e.value.code == "VC103"
    if AVIF:
        avif = encoded("AVIF", {}, "RGB", (240, 160))
        assert probe_bytes(avif).size() == (240, 160)
        with pytest.raises(ImageProblem) as e:
            probe_bytes(avif[:-10])
        assert e.value.code == "VC103" and not pil_converts(avif[:-10])


class StandIn(ImageFile.ImageFile):
    """A plugin that decodes in its own ``load()`` and gives a "raw" tile only as a stand-in, as Pillow's AVIF
    plugin does: ``STANDIN`` and a width and height; its pixels are whatever its codec returns (here: grey)."""

    format = "STANDIN"

    def _open(self) -> None:
        assert self.fp is not None
        head = self.fp.read(11)
        self._size = int.from_bytes(head[7:9], "big"), int.from_bytes(head[9:11], "big")
        self._mode = "RGB"
        self.tile = [ImageFile._Tile("raw", (0, 0, *self.size), 0, "RGB")]

    def load(self) -> object:
        if self.tile:
            self.im = Image.core.fill("RGB", self.size, (128, 128, 128))
            self.tile = []
        return Image.Image.load(self)


def test_a_plugin_whose_tile_is_a_stand_in_is_not_read_as_a_raw_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "ID", [*Image.ID, "STANDIN"])
    monkeypatch.setitem(Image.OPEN, "STANDIN", (StandIn, lambda prefix: prefix[:7] == b"STANDIN"))
    data = b"STANDIN" + (300).to_bytes(2, "big") + (200).to_bytes(2, "big")
    assert pil_converts(data)  # 11 bytes, though its tile reads as 300 x 200 x 3 bytes of RGB
    assert probe_bytes(data).size() == (300, 200)


def big(fmt: str, size: tuple[int, int], **options: object) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size[0] // 16, size[1] // 16), 64).convert("RGB").resize(size).save(out, format=fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_cut_8000x6000_jpeg_is_caught_without_a_full_decode(options: dict[str, object],
                                                              decodes: list[tuple[int, int]]) -> None:
    """Campaign 5, class B: above 16 Mpx the file used to count as whole once its end marker was missing. A
    single-scan JPEG is now decoded at 1/8 scale (every coded unit read, 1/64 of the pixels); a progressive one
    needs its end marker (libjpeg reads a multi-scan file to it before the first row), so it is not decoded."""
    data = big("JPEG", (8000, 6000), **options)
    for cut in (len(data) * 2 // 3, len(data) - 2, len(data) - 40):
        with pytest.raises(ImageProblem) as e:
            probe_bytes(data[:cut])
        assert e.value.code == "VC103", cut
        assert all(w * h <= 1000 * 750 for w, h in decodes), decodes
        if options:
            assert decodes == [], decodes
    assert bool(decodes) != bool(options)  # the baseline file was decoded, at 1/8
    decodes.clear()
    assert probe_bytes(data).size() == (8000, 6000) and probe_bytes(data + b"\0" * 100).size() == (8000, 6000)
    assert decodes == []  # a whole file: its headers only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cut in (len(data) * 2 // 3, len(data) - 2):  # the oracle, on the real thing
            with Image.open(io.BytesIO(data[:cut])) as im, pytest.raises(OSError, match="truncated"):
                im.load()


def test_a_cut_4200x4000_png_is_caught_without_a_decode(decodes: list[tuple[int, int]]) -> None:
    """The image data is inflated in pieces and counted against the rows the header declares; nothing is decoded
    (the EXIF look-up used to load the whole cut image too)."""
    data = big("PNG", (4200, 4000), compress_level=1)  # 16.8 Mpx
    iend = data.rindex(b"IEND") - 4
    # 2/3; the image data's end (adler32, the last deflate bytes); its checksum; IEND
    cuts = [len(data) * 2 // 3, iend - 12, iend - 8, iend - 4, iend]
    passes = [vlmcheck_passes(data[:cut]) for cut in cuts]
    assert decodes == [], decodes
    assert passes == [pil_converts(data[:cut]) for cut in cuts]
    assert passes[0] is False and passes[-2] is True
