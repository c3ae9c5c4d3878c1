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


# the bytes of one folder entry's name (NAME_MAX on Linux and macOS file systems; NTFS and FAT allow 255 characters)
NAME_MAX = 255


def hidden_prefix(path: Path, tag: str = "") -> str:
    """The prefix of a temporary file or folder made beside ``path`` with ``mkstemp`` / ``mkdtemp`` (8 random
    characters and ``.tmp`` follow): hidden, and named after ``path`` so that a leftover says whose it was, cut
    short where ``path``'s name is long so that the temporary name fits in a folder entry whenever ``path``'s own
    name does (a legal 250-byte output name must not fail on its temporary file's).

    >>> hidden_prefix(Path("out/report.html"))
    '.report.html.'
    >>> len(hidden_prefix(Path("x" * 250 + ".json")) + "12345678.tmp")
    255
    """
    room = NAME_MAX - len(".") - len(tag.encode()) - len(".") - 8 - len(".tmp")
    name = path.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}.{tag}"


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
    name = os.path.basename(text)
    if len(os.fsencode(name)) > NAME_MAX:  # the file system refuses it (ENAMETOOLONG): said now, not after the run
        raise UsageError(f"the output name {name[:30]}...{name[-30:]} is {len(os.fsencode(name))} bytes, longer "
                         f"than a file name can be ({NAME_MAX} bytes): name the output shorter")
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


def make_folders(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True, exist_ok=True)``; returns the folders it made, deepest first, for
    :func:`remove_made` to take away again when nothing was written into them (an interrupted run)."""
    missing: list[Path] = []
    here = folder
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_made(folders: list[Path]) -> None:
    """Remove the folders :func:`make_folders` made, deepest first, each only while it is empty: never one that
    holds anything, whoever put it there."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it and the folders above it stay
            return


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
        self.made: list[Path] = []  # the folders it made for the output
        if target is None:
            self.fp: IO[Any] = sys.stdout.buffer if binary else sys.stdout
            return
        self.path = Path(target)
        self.made = make_folders(self.path.parent)  # removed again if the output never appears in them
        mode = ("a" if append else "w") + ("b" if binary else "")
        if staging is not None:  # a plain create: the mode the umask gives
            self.tmp = staging
            self.fp = open(staging, mode, encoding=None if binary else "utf-8")
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=hidden_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        except BaseException:
            remove_made(self.made)
            raise
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
        remove_made(self.made)

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
