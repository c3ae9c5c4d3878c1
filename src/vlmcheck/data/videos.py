"""Video metadata from container headers: frame count, frame rate, duration and the frame size the
loaders hand to a video processor, without decoding a frame.

What the Qwen video processors and qwen-vl-utils sample depends only on the total frame count and the
average frame rate, and what they resize on the (display) frame size. All three are in the headers:

- MP4 / MOV (ISO BMFF): ``moov/trak`` with handler ``vide``; frames from ``stts`` (or the ``trun``
  boxes of a fragmented file), the average rate as ffmpeg computes it (``mdhd`` timescale x frames /
  the sum of ``stts`` sample durations), the size from the ``stsd`` sample entry, and the rotation from
  the ``tkhd`` (x ``mvhd``) display matrix. ``mdat`` is skipped with a seek, so ``moov`` may be at the
  end; 64-bit box sizes are read.
- AVI: the ``avih``/``strh``/``strf`` headers (and ``dmlh`` for OpenDML files over 1 GB).
- WebM / Matroska: not read (their frame count is not in the header); a finding says so. Nor an image file
  given as a video (FFmpeg demuxes a GIF's or PNG's frames): a finding says so.

A 90-degree display matrix swaps width and height: torchcodec (transformers' and qwen-vl-utils'
default decoder) rotates frames by it; decord and PyAV's ``to_ndarray`` do not (``size(apply_rotation=False)``).
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from vlmcheck.data.files import FileProblem, open_regular

# Boxes a file may start with (ISO/IEC 14496-12, QuickTime): anything else is not ISO BMFF.
_BMFF_FIRST = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"sidx", b"moof", b"uuid"}
_MAX_HEADER_BOX = 512 * 1024 * 1024  # a moov/moof larger than this is corrupt, not a long video


@dataclass(frozen=True)
class VideoInfo:
    """One video stream as its container declares it."""

    width: int  # coded frame size (what a decoder outputs before applying the display matrix)
    height: int
    frames: int  # total frame count
    fps: float | None  # average frame rate: frames / duration, as ffmpeg's avg_frame_rate
    duration: float | None  # seconds
    rotation: int = 0  # display rotation in degrees, counter-clockwise (ffmpeg/PyAV ``frame.rotation``)
    container: str = "mp4"
    # the frame count the container's index declares, as ffmpeg's ``nb_frames`` (PyAV ``stream.frames``): 0 for a
    # fragmented MP4, whose samples are listed only in its moof boxes; None: the same as ``frames``
    indexed_frames: int | None = None

    @property
    def declared_frames(self) -> int:
        """What PyAV's ``stream.frames`` reports (LLaMA-Factory samples frames by it)."""
        return self.frames if self.indexed_frames is None else self.indexed_frames

    def size(self, *, apply_rotation: bool = True) -> tuple[int, int]:
        """(width, height) of the frames a loader returns: rotated by the display matrix (torchcodec)
        or as coded (decord, PyAV)."""
        if apply_rotation and self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


class VideoProblem(Exception):
    """Why a video cannot be counted: a finding code and a message."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def probe_video_path(path: Path) -> VideoInfo:
    try:
        fp = open_regular(path)
    except FileProblem as p:
        raise VideoProblem("VC111" if p.kind == "missing" else "VC112", p.message) from None
    try:
        with fp:
            return probe_video_stream(fp)
    except OSError as e:
        raise VideoProblem("VC112", f"read error: {e}") from None


def probe_video_bytes(data: bytes) -> VideoInfo:
    return probe_video_stream(io.BytesIO(data))


def probe_video_stream(fp: IO[bytes]) -> VideoInfo:
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(0)
    head = fp.read(12)
    if size == 0:
        raise VideoProblem("VC112", "empty file")
    try:
        if len(head) >= 8 and head[4:8] in _BMFF_FIRST:
            return _read_bmff(fp, size)
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            return _read_avi(fp, size)
    except struct.error:  # a header box shorter than its fields
        raise VideoProblem("VC112", "corrupt video header (a box shorter than its fields)") from None
    if head[:4] == b"\x1a\x45\xdf\xa3":
        raise VideoProblem("VC114", "WebM/Matroska: the frame count is not in its header, so vlmcheck cannot count "
                                    "this video without decoding it", container="matroska")
    fp.seek(0)
    image = _image_format(fp)
    if image is not None:  # FFmpeg (PyAV, decord) demuxes image files as videos of their frames
        raise VideoProblem("VC114", f"a {image} image given as a video: FFmpeg opens it as a video of its frames, "
                                    "which vlmcheck does not count", container="image")
    raise VideoProblem("VC112", "not a video vlmcheck can read (MP4, MOV or AVI): unknown file signature")


def _image_format(fp: IO[bytes]) -> str | None:
    """The image format PIL reads in the file's header (an animated GIF, a PNG), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fp) as im:
            return str(im.format)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        return None


# -- ISO BMFF (MP4, MOV, M4V, 3GP) ---------------------------------------------------------------------
def _children(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in ``buf[start:end]``."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise VideoProblem("VC112", f"box {kind.decode('latin-1')!r} is cut inside its header")
            size = struct.unpack_from(">Q", buf, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise VideoProblem("VC112", f"corrupt {kind.decode('latin-1')!r} box (declares {size} bytes)")
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _find(buf: bytes, start: int, end: int, *path: bytes) -> tuple[int, int] | None:
    for kind, s, e in _children(buf, start, end):
        if kind == path[0]:
            return (s, e) if len(path) == 1 else _find(buf, s, e, *path[1:])
    return None


def _matrix(buf: bytes, at: int) -> list[float]:
    """A 3x3 display matrix, a b u / c d v / x y w: 16.16 fixed point except u, v, w (2.30)."""
    raw = struct.unpack_from(">9i", buf, at)
    return [v / (1 << 30 if i % 3 == 2 else 1 << 16) for i, v in enumerate(raw)]


def _rotation(m: list[float]) -> int:
    """ffmpeg's ``av_display_rotation_get``, rounded to a multiple of 90 as torchcodec does."""
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return 0
    degrees = -math.degrees(math.atan2(m[1] / s1, m[0] / s0))
    return int(round(degrees / 90)) * 90 % 360


def _mul(a: list[float], b: list[float]) -> list[float]:
    return [sum(a[i * 3 + k] * b[k * 3 + j] for k in range(3)) for i in range(3) for j in range(3)]


def _read_bmff(fp: IO[bytes], size: int) -> VideoInfo:
    pos = 0
    moov: bytes | None = None
    moofs: list[bytes] = []
    cut: tuple[bytes, int] | None = None  # a box that declares more bytes than the file has
    while pos + 8 <= size:
        fp.seek(pos)
        head = fp.read(16)
        box_size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if box_size == 1:
            if len(head) < 16:
                cut = (kind, 16)
                break
            box_size, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < header:
            raise VideoProblem("VC112", f"corrupt {kind.decode('latin-1')!r} box at byte {pos:,}")
        if pos + box_size > size:
            cut = (kind, pos + box_size - size)
        if kind in (b"moov", b"moof") and cut is None:
            if box_size > _MAX_HEADER_BOX:
                raise VideoProblem("VC112", f"{kind.decode()} box of {box_size:,} bytes: corrupt header")
            fp.seek(pos + header)
            payload = fp.read(box_size - header)
            if kind == b"moov":
                moov = payload
            else:
                moofs.append(payload)
        if cut is not None:
            break
        pos += box_size
    if moov is None:
        if cut is not None or pos < size:
            raise VideoProblem("VC113", "the file ends before its moov box (a cut download, or a recording that "
                                        "was never finalized)")
        raise VideoProblem("VC112", "no moov box: not a playable MP4/MOV")
    if cut is not None:
        kind, missing = cut
        raise VideoProblem("VC113", f"the file ends {missing:,} bytes before its {kind.decode('latin-1')!r} box does "
                                    "(a cut download or copy)", missing_bytes=missing)
    return _parse_moov(moov, moofs)


def _parse_moov(moov: bytes, moofs: list[bytes]) -> VideoInfo:
    end = len(moov)
    movie_matrix = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    mvhd = _find(moov, 0, end, b"mvhd")
    if mvhd is not None:
        s, _ = mvhd
        version = moov[s]
        at = s + 4 + (28 if version == 1 else 16)  # past creation/modification/timescale/duration
        movie_matrix = _matrix(moov, at + 4 + 2 + 10)  # past rate, volume, reserved
    trex: dict[int, int] = {}  # track id -> default sample duration (fragmented files)
    mvex = _find(moov, 0, end, b"mvex")
    if mvex is not None:
        for kind, s, _e in _children(moov, *mvex):
            if kind == b"trex":
                track_id, _, duration = struct.unpack_from(">III", moov, s + 4)
                trex[track_id] = duration
    for kind, s, e in _children(moov, 0, end):
        if kind != b"trak":
            continue
        hdlr = _find(moov, s, e, b"mdia", b"hdlr")
        if hdlr is None or moov[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
            continue
        return _video_trak(moov, s, e, movie_matrix, trex, moofs)
    raise VideoProblem("VC112", "no video track (an audio-only file?)")


def _video_trak(buf: bytes, start: int, end: int, movie_matrix: list[float], trex: dict[int, int],
                moofs: list[bytes]) -> VideoInfo:
    tkhd = _find(buf, start, end, b"tkhd")
    mdhd = _find(buf, start, end, b"mdia", b"mdhd")
    stbl = _find(buf, start, end, b"mdia", b"minf", b"stbl")
    if tkhd is None or mdhd is None or stbl is None:
        raise VideoProblem("VC112", "the video track lacks its tkhd/mdhd/stbl headers")
    s = tkhd[0]
    v1 = buf[s] == 1
    track_id = struct.unpack_from(">I", buf, s + 4 + (16 if v1 else 8))[0]
    at = s + 4 + (32 if v1 else 20) + 8 + 8  # past times, id, duration, reserved, layer..volume, reserved
    rotation = _rotation(_mul(_matrix(buf, at), movie_matrix))
    tk_width, tk_height = struct.unpack_from(">II", buf, at + 36)
    s = mdhd[0]
    if buf[s] == 1:
        timescale, media_duration = struct.unpack_from(">IQ", buf, s + 4 + 16)
    else:
        timescale, media_duration = struct.unpack_from(">II", buf, s + 4 + 8)
    width = height = 0
    frames = durations = 0
    for kind, s, _e in _children(buf, *stbl):
        if kind == b"stsd" and struct.unpack_from(">I", buf, s + 4)[0] > 0:
            entry = s + 8
            width, height = struct.unpack_from(">HH", buf, entry + 8 + 24)
        elif kind == b"stts":
            (count,) = struct.unpack_from(">I", buf, s + 4)
            for i in range(count):
                n, delta = struct.unpack_from(">II", buf, s + 8 + 8 * i)
                frames += n
                durations += n * delta
    indexed = frames
    default_duration = trex.get(track_id, 0)
    for moof in moofs:
        f, d = _fragment_samples(moof, track_id, default_duration)
        frames += f
        durations += d
    if not width or not height:
        width, height = tk_width >> 16, tk_height >> 16
    if not width or not height:
        raise VideoProblem("VC112", "the video track declares no frame size")
    if frames <= 0:
        raise VideoProblem("VC112", "the video track has no frames")
    fps = float(Fraction(timescale * frames, durations)) if timescale and durations else None
    seconds = durations if durations else media_duration
    duration = seconds / timescale if timescale and seconds else None
    return VideoInfo(width=width, height=height, frames=frames, fps=fps, duration=duration,
                     rotation=rotation, container="mp4", indexed_frames=None if indexed == frames else indexed)


def _fragment_samples(moof: bytes, track_id: int, trex_duration: int) -> tuple[int, int]:
    """(samples, summed durations) of ``track_id`` in one ``moof``."""
    frames = durations = 0
    for kind, s, e in _children(moof, 0, len(moof)):
        if kind != b"traf":
            continue
        default = trex_duration
        ours = False
        for child, cs, _ce in _children(moof, s, e):
            if child == b"tfhd":
                flags = int.from_bytes(moof[cs + 1:cs + 4], "big")
                ours = struct.unpack_from(">I", moof, cs + 4)[0] == track_id
                at = cs + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                if flags & 0x08:
                    default = struct.unpack_from(">I", moof, at)[0]
            elif child == b"trun" and ours:
                flags = int.from_bytes(moof[cs + 1:cs + 4], "big")
                (count,) = struct.unpack_from(">I", moof, cs + 4)
                at = cs + 8 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
                stride = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                frames += count
                if flags & 0x100:
                    durations += sum(struct.unpack_from(">I", moof, at + i * stride)[0] for i in range(count))
                else:
                    durations += count * default
    return frames, durations


# -- AVI ----------------------------------------------------------------------------------------------
def _read_avi(fp: IO[bytes], size: int) -> VideoInfo:
    fp.seek(4)
    (riff_size,) = struct.unpack("<I", fp.read(4))
    if riff_size + 8 > size:
        raise VideoProblem("VC113", f"the file ends {riff_size + 8 - size:,} bytes before its RIFF chunk does "
                                    "(a cut download or copy)", missing_bytes=riff_size + 8 - size)
    fp.seek(12)
    head = fp.read(12)
    if head[:4] != b"LIST" or head[8:12] != b"hdrl":
        raise VideoProblem("VC112", "AVI without its hdrl header list")
    hdrl_size = struct.unpack_from("<I", head, 4)[0] - 4
    if hdrl_size > _MAX_HEADER_BOX:
        raise VideoProblem("VC112", "corrupt AVI header list")
    hdrl = fp.read(hdrl_size)
    if len(hdrl) < hdrl_size:
        raise VideoProblem("VC113", "the file ends inside its AVI header")
    total_frames = width = height = 0
    rate = scale = length = 0
    odml_frames = 0
    for kind, s, e in _riff_chunks(hdrl, 0, len(hdrl)):
        if kind == b"avih" and e - s >= 40:
            total_frames = struct.unpack_from("<I", hdrl, s + 16)[0]
            width, height = struct.unpack_from("<II", hdrl, s + 32)
        elif kind == b"LIST" and hdrl[s:s + 4] == b"strl" and not rate:
            strh = strf = None
            for sub, ss, se in _riff_chunks(hdrl, s + 4, e):
                if sub == b"strh":
                    strh = (ss, se)
                elif sub == b"strf":
                    strf = (ss, se)
            if strh is not None and hdrl[strh[0]:strh[0] + 4] == b"vids":
                scale, rate, _start, length = struct.unpack_from("<IIII", hdrl, strh[0] + 20)
                if strf is not None and strf[1] - strf[0] >= 12:
                    w, h = struct.unpack_from("<ii", hdrl, strf[0] + 4)
                    width, height = w or width, abs(h) or height
        elif kind == b"LIST" and hdrl[s:s + 4] == b"odml":
            for sub, ss, _se in _riff_chunks(hdrl, s + 4, e):
                if sub == b"dmlh":
                    odml_frames = struct.unpack_from("<I", hdrl, ss)[0]
    if not rate:
        raise VideoProblem("VC112", "AVI without a video stream header")
    frames = max(length, odml_frames) or total_frames
    if not width or not height or frames <= 0:
        raise VideoProblem("VC112", "the AVI video stream declares no frames or no frame size")
    fps = float(Fraction(rate, scale)) if scale else None
    duration = frames * scale / rate if rate else None
    return VideoInfo(width=width, height=height, frames=frames, fps=fps, duration=duration, container="avi")


def _riff_chunks(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    out = []
    pos = start
    while pos + 8 <= end:
        kind, size = struct.unpack_from("<4sI", buf, pos)
        if pos + 8 + size > end:
            raise VideoProblem("VC112", f"corrupt AVI chunk {kind.decode('latin-1')!r}")
        out.append((kind, pos + 8, pos + 8 + size))
        pos += 8 + size + (size & 1)
    return out
