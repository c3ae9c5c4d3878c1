"""Open a dataset file for reading, decompressing it on the fly when its name says it is compressed:
``.gz`` (gzip), ``.bz2``, ``.xz`` and ``.zst`` (Zstandard, with the ``zstandard`` package: ``vlmcheck[zstd]``).

The readers parse the stream this returns exactly as they parse the plain file, so a ``.jsonl.gz`` gives the
records of the ``.jsonl`` it was made from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, cast

from vlmcheck.errors import MissingDependencyError

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def compression(path: str | os.PathLike[str]) -> str | None:
    """The compression suffix of ``path`` (``".gz"``), or None for a plain file."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def data_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix that says what the data is, under any compression suffix: ``.jsonl`` for ``x.jsonl.gz``."""
    p = Path(path)
    if compression(p):
        p = p.with_suffix("")
    return p.suffix.lower()


def open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """``open(path, "rb")``, decompressing by suffix."""
    kind = compression(path)
    if kind is None:
        return open(path, "rb")
    if kind == ".gz":
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == ".bz2":
        import bz2

        return bz2.open(path, "rb")  # type: ignore[return-value]
    if kind == ".xz":
        import lzma

        return lzma.open(path, "rb")  # type: ignore[return-value]
    try:
        import zstandard
    except ImportError:
        raise MissingDependencyError("zstandard", "zstd", f"reading {Path(path).name} (Zstandard)") from None
    raw = _Frames(open(path, "rb"))
    try:
        # every frame, as `zstd -d` and gzip's members; buffered: the reader alone cannot be iterated by line
        reader = zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, raw), read_across_frames=True,
                                                            closefd=True)  # it only calls read() and close()
        return io.BufferedReader(_ZstdStream(reader, zstandard.ZstdError, raw))
    except BaseException:
        raw.close()
        raise


class _ZstdStream(io.RawIOBase):
    """zstandard's stream reader, its ZstdError (a damaged file) raised as the OSError that gzip, bz2 and lzma raise
    for theirs, and a file cut short inside a frame as the EOFError they raise (zstandard's reader just ends there),
    so every reader handles a damaged ``.zst`` as it handles a damaged ``.gz``."""

    def __init__(self, reader: Any, error: type[Exception], frames: _Frames) -> None:
        self.reader = reader
        self.error = error
        self.frames = frames

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.reader.read(len(buffer))
        except self.error as e:
            raise OSError(f"not a valid Zstandard stream ({e})") from None
        if not data and not self.frames.whole():
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.reader.close()
        super().close()


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # 0x184D2A50 to 0x184D2A5F: a skippable frame (RFC 8878 3.1.2)


class _Frames:
    """The compressed file as the decompressor reads it, its frames followed on the way (RFC 8878: a frame header,
    blocks each with a 3-byte header, an optional checksum; skippable frames), so that at its end :meth:`whole` can
    tell a file that ends between frames from one cut short inside a frame. Only sizes are read; what the blocks
    hold is the decompressor's to judge."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.state: str | None = "magic"  # None: not a layout followed here (the decompressor raises on it)
        self.want = 4  # bytes of the next header
        self.head = b""
        self.skip = 0  # bytes to pass over (a block's content, a checksum, a skippable frame's data)
        self.checksum = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._feed(data)
        return data

    def close(self) -> None:
        self.raw.close()

    def whole(self) -> bool:
        return self.state is None or (self.state == "magic" and not self.head and not self.skip)

    def _feed(self, data: bytes) -> None:
        at = 0
        while at < len(data) and self.state is not None:
            if self.skip:
                step = min(self.skip, len(data) - at)
                self.skip -= step
                at += step
                continue
            take = self.want - len(self.head)
            self.head += data[at:at + take]
            at += take
            if len(self.head) == self.want:
                head, self.head = self.head, b""
                self._header(head)

    def _header(self, head: bytes) -> None:
        value = int.from_bytes(head, "little")
        if self.state == "magic":
            if value == _ZSTD_MAGIC:
                self.state, self.want = "descriptor", 1
            elif value & 0xFFFFFFF0 == _SKIPPABLE:
                self.state, self.want = "skippable", 4
            else:
                self.state = None
        elif self.state == "descriptor":  # then the window descriptor, dictionary id and content size
            single = bool(value & 0x20)
            self.checksum = bool(value & 0x04)
            self.skip = (0 if single else 1) + (0, 1, 2, 4)[value & 3] + ((1 if single else 0), 2, 4, 8)[value >> 6]
            self.state, self.want = "block", 3
        elif self.state == "block":
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            self.skip = 1 if kind == 1 else size  # an RLE block holds one byte
            if last:
                self.skip += 4 if self.checksum else 0
                self.state, self.want = "magic", 4
        else:  # a skippable frame's size
            self.skip = value
            self.state, self.want = "magic", 4
