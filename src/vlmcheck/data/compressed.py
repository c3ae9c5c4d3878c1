"""Open a dataset file for reading, decompressing it on the fly when its name says it is compressed:
``.gz`` (gzip), ``.bz2``, ``.xz`` and ``.zst`` (Zstandard, with the ``zstandard`` package: ``vlmcheck[zstd]``).

The readers parse the stream this returns exactly as they parse the plain file, so a ``.jsonl.gz`` gives the
records of the ``.jsonl`` it was made from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

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
    raw = open(path, "rb")
    try:
        # buffered: the reader alone cannot be iterated by line
        return io.BufferedReader(_ZstdStream(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True),
                                             zstandard.ZstdError))
    except BaseException:
        raw.close()
        raise


class _ZstdStream(io.RawIOBase):
    """zstandard's stream reader, its ZstdError (a damaged or cut-short file) raised as the OSError that gzip,
    bz2 and lzma raise for theirs, so every reader handles a damaged ``.zst`` as it handles a damaged ``.gz``."""

    def __init__(self, reader: Any, error: type[Exception]) -> None:
        self.reader = reader
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.reader.read(len(buffer))
        except self.error as e:
            raise OSError(f"not a valid Zstandard stream ({e})") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.reader.close()
        super().close()
