"""Open a media file named by a dataset, safely: whatever the path holds, the answer is an open
regular file or a :class:`FileProblem`, never a hang or a traceback.

A dataset names its files itself, so a path can hold a NUL byte, a lone surrogate, a 300-character
name, a component that is a file (``a.png/x.png``), a symlink loop, or name a FIFO or a device that
blocks forever when opened for reading. The path is checked and ``stat``-ed first; only a regular file
is opened, with ``O_NONBLOCK`` so that one swapped for a FIFO between the two calls still cannot block.

A file vlmcheck reads whole (a launch config, a chat template, a summary, a checkpoint's JSON) is read the same
way by :func:`read_text`, and refused above :data:`TEXT_LIMIT` before it is read: a 20 GB "config" is not one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from vlmcheck.data.nesting import parse
from vlmcheck.errors import UsageError, VlmcheckError


class FileProblem(Exception):
    """Why a named file cannot be read: ``missing`` (nothing usable at the path) or ``unreadable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}


def check_path_text(raw: str) -> None:
    """A path string the file system can be asked about at all."""
    if "\x00" in raw:
        raise FileProblem("missing", f"the path {raw[:80]!r} holds a NUL byte, which no file name can")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise FileProblem("missing", f"the path {raw[:80]!r} is not valid Unicode (a lone surrogate)") from None


def open_regular(path: Path) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (symlinks followed); anything else is a FileProblem."""
    check_path_text(str(path))
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in _MISSING or isinstance(e, FileNotFoundError):
            reason = {errno.ENOENT: "file not found", errno.ELOOP: "a symbolic link loop"}.get(
                e.errno or 0, (e.strerror or "cannot be resolved").lower())
            raise FileProblem("missing", f"{reason}: {path}") from None
        raise FileProblem("unreadable", f"{(e.strerror or str(e)).lower()}: {path}") from None
    except ValueError as e:  # embedded NUL on some platforms
        raise FileProblem("missing", f"{e}: {path!s:.200}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileProblem("unreadable", f"a folder, not a file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem("unreadable", f"not a regular file (a FIFO, socket or device), never opened: {path}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except PermissionError:
        raise FileProblem("unreadable", f"permission denied: {path}") from None
    except OSError as e:
        raise FileProblem("unreadable", f"{(e.strerror or str(e)).lower()}: {path}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
            raise FileProblem("unreadable", f"not a regular file, never read: {path}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a file a run could read (None when it is one): for messages that name a config's or a
    dataset's file, where a FIFO or device would block the read forever and must not be called missing, and a
    symbolic link that leads back to itself is said to be one."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else "not found"
    except ValueError:
        return "not found"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    return None


# A config, chat template, summary or processor file a person or a framework writes is kilobytes; this bounds what
# is read whole (and parsed: a 300 MB YAML takes minutes), so that a wrong or sparse file is refused, not loaded.
TEXT_LIMIT = 64 << 20


def read_text(path: Path, *, limit: int = TEXT_LIMIT, errors: str = "strict") -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, with universal newlines (as
    ``Path.read_text``); anything else is a :class:`FileProblem` (a FIFO or a device is never opened, a larger file
    never read). A file that is not UTF-8 raises UnicodeDecodeError unless ``errors`` says otherwise."""
    with open_regular(path) as fp:
        size = os.fstat(fp.fileno()).st_size
        data = fp.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        size = max(size, len(data))
        raise FileProblem("unreadable", f"{path} is {size:,} bytes, over the {limit >> 20} MiB vlmcheck reads "
                                        "of a file it reads whole")
    return data.decode("utf-8", errors).replace("\r\n", "\n").replace("\r", "\n")


def read_parsed(path: Path, load: Callable[[str], Any], *, what: str,
                error: type[VlmcheckError] = UsageError) -> Any:
    """``load`` of a file read whole (a YAML or JSON file a config names): :func:`read_text`'s bounds (a regular
    file of at most :data:`TEXT_LIMIT`; a FIFO or a device never opened) and nested no deeper than vlmcheck reads
    (:func:`vlmcheck.data.nesting.parse`). Anything else is ``error`` saying ``what`` the file is and why; the
    parser's own errors (invalid YAML or JSON) are left to the caller.

    >>> import json
    >>> read_parsed(Path("no/such.json"), json.loads, what="the dataset list")
    Traceback (most recent call last):
    ...
    vlmcheck.errors.UsageError: cannot read the dataset list: file not found: no/such.json
    """
    try:
        text = read_text(path)
    except FileProblem as e:
        raise error(f"cannot read {what}: {e.message}") from None
    except UnicodeDecodeError as e:
        raise error(f"cannot read {what}: {path} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e}") from None
    return parse(load, text, where=str(path), error=error)
