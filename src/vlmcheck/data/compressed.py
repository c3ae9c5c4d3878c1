"""Open a dataset file for reading, decompressing it on the fly when its name says it is compressed:
``.gz`` (gzip), ``.bz2``, ``.xz`` and ``.zst`` (Zstandard, with the ``zstandard`` package: ``vlmcheck[zstd]``).

The readers parse the stream this returns exactly as they parse the plain file, so a ``.jsonl.gz`` gives the
records of the ``.jsonl`` it was made from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

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
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    except BaseException:
        raw.close()
        raise
