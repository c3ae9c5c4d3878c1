"""Small shared helpers: the one way vlmcheck writes an output file.

Every writer (``--output`` records, ``--json`` summaries, repair's manifest) goes through
:class:`AtomicOutput`: ``-`` is standard output; anything else appears whole or not at all (a temporary
file in the same folder, renamed on commit, removed on any error, Ctrl-C or SIGTERM), with the
permissions the umask gives a new file; and an output that is a symlink, a device or a FIFO is refused,
unless it is this process's standard output, which is written through. A resumable output (a scan's
records with ``resume``) is staged in a named file instead, which an unfinished writer leaves for the next
run to go on from (``keep()``).

>>> with AtomicOutput("summary.json") as out:  # doctest: +SKIP
...     out.write('{"ok": true}\\n')
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from vlmcheck.errors import UsageError

STDOUT = "-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (mkstemp's is 0600)."""
    return 0o666 & ~_umask()


def honour_umask(path: str | os.PathLike[str] | int, *, folder: bool = False) -> None:
    """Give a file made by ``mkstemp`` (or a folder made by ``mkdtemp``, 0700) the mode a plain create
    would: 0666 (0777 for a folder) less the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _is_stdout(path: str) -> bool:
    """Whether ``path`` names this process's standard output (``/dev/stdout``, ``/proc/self/fd/1``, a
    symlink to the terminal or pipe fd 1 is)."""
    try:
        target, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (target.st_dev, target.st_ino) == (out.st_dev, out.st_ino)


def output_target(path: str | os.PathLike[str]) -> str | None:
    """Check where an output may go: None for standard output (``-``, or a link or device that is it),
    else the path as a string. A symlink, a device, a FIFO or a folder is a :class:`UsageError`: replacing
    one would break a link the user made or hang on a pipe."""
    text = os.fspath(path)
    if text == STDOUT:
        return None
    if not text.strip():  # '' resolves to the working folder, which a rename over it cannot replace
        raise UsageError("the output path is empty: name a file, or '-' for standard output")
    if text.endswith(("/", os.sep)):
        raise UsageError(f"the output {text} names a folder: name a file in it")
    if os.path.islink(text) or (os.path.exists(text) and not os.path.isfile(text)):
        if _is_stdout(text):
            return None
        if os.path.isdir(text):
            raise UsageError(f"the output {text} is a folder: name a file")
        what = "a symlink" if os.path.islink(text) else "not a regular file (a device, FIFO or socket)"
        raise UsageError(f"the output {text} is {what}; vlmcheck replaces outputs whole and will not replace "
                         "that: name a regular file, or '-' for standard output")
    return text


# what an existing file must begin with for a report output to replace it: vlmcheck replaces only its own outputs
# (records, JSON reports, HTML pages), never a file it did not write (a dataset, an image, a config)
_OWN_OUTPUTS = (b'{"index": ', b'{\n  "summary": ', b'{\n  "config": ', b'{\n  "frameworks": ',
                b'{\n  "dataset": ', b'[\n  {\n    "model_type": ')


def report_target(path: str | os.PathLike[str]) -> str | None:
    """:func:`output_target` for a report (``--output`` records, ``--json``, ``--html``): an existing file there
    must be one vlmcheck wrote (or empty), else a :class:`UsageError` names what it holds."""
    target = output_target(path)
    if target is None or not os.path.isfile(target):
        return target
    try:
        with open(target, "rb") as fp:
            head = fp.read(4096)
    except OSError as e:
        raise UsageError(f"the output {target} cannot be read to see what it holds ({e.strerror}): name another "
                         "file") from None
    if not head.strip():
        return target
    if head.startswith(_OWN_OUTPUTS) or (head[:15].lower() == b"<!doctype html>" and b"<title>vlmcheck" in head):
        return target
    raise UsageError(f"the output {target} exists and is not a vlmcheck output (it holds {_holds(head)}); "
                     "vlmcheck never writes over a file it did not write: name another file, or delete it first")


def _holds(head: bytes) -> str:
    """What a file's first bytes say it is, for a message."""
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or (
            head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "an image"
    if head.startswith((b"PAR1", b"ARROW1", b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ", b"PK")):
        return "a data file or an archive"
    if head.lstrip()[:1] in (b"[", b"{"):
        return "JSON data"
    return "text vlmcheck did not write"


class AtomicOutput:
    """A text or binary output that appears complete or not at all (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, binary: bool = False, staging: Path | None = None,
                 append: bool = False) -> None:
        """``staging``: the named file to write before the rename, instead of a hidden temporary one
        (``append``: go on from what it holds)."""
        target = output_target(path)
        self.binary = binary
        self.staged = staging is not None  # a named staging file: its caller decides whether it stays
        self.done = False
        self.tmp: Path | None = None
        self.path: Path | None = None
        if target is None:
            self.fp: IO[Any] = sys.stdout.buffer if binary else sys.stdout
            return
        self.path = Path(target)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = ("a" if append else "w") + ("b" if binary else "")
        if staging is not None:  # a plain create: the mode the umask gives
            self.tmp = staging
            self.fp = open(staging, mode, encoding=None if binary else "utf-8")
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        try:
            honour_umask(fd)
            self.fp = os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise

    @property
    def is_stdout(self) -> bool:
        return self.tmp is None

    def write(self, data: Any) -> None:
        self.fp.write(data)

    def commit(self) -> None:
        try:
            self.fp.flush()
            if self.tmp is None or self.path is None:
                self.done = True
                return
            os.fsync(self.fp.fileno())
            self.fp.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            if not self.staged:  # the hidden temporary file never outlives a failed commit (EBUSY, EXDEV, ...)
                self.discard()
            raise
        self.done = True

    def discard(self) -> None:
        if self.done or self.tmp is None:
            return
        try:
            if not self.fp.closed:
                self.fp.close()
        except OSError:  # a write that failed (a full disk) fails again as the file closes: it goes all the same
            pass
        self.tmp.unlink(missing_ok=True)

    def keep(self) -> None:
        """Leave the output unpublished but its staged file in place (a resumable writer that stopped early)."""
        if not self.fp.closed and self.tmp is not None:
            self.fp.close()
        self.done = True

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.discard()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` (``-``: standard output) so that readers see the old file or the whole new
    one."""
    with AtomicOutput(path) as out:
        out.write(text)
