"""Datasets and images at fsspec URLs (``s3://``, ``gs://``, ``az://``, ``hf://``, ...), read through fsspec's own
filesystems (``pip install 'vlmcheck[s3]'``; gcsfs, adlfs, huggingface_hub for the others).

An image is read as a local one is, from its header: the file is opened with a small block size, so a probe
costs a ranged read of the first block (and one of the last, for the end-of-file check) whatever the object's
size. The exception is a PNG without an eXIf chunk before its pixels: its chunk headers are walked to the end
(an eXIf chunk after the pixels still rotates it), in large blocks. A dataset file is fetched whole, one at a time, to a temporary folder, because every row of it is read.
Credentials and endpoints are the filesystem's own (``AWS_*`` variables, ``~/.aws``, ...). ``http(s)://`` is not
handled here: vlmcheck does not download web URLs.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmcheck.data.images import ImageInfo, ImageProblem, probe_stream
from vlmcheck.errors import DatasetError, MissingDependencyError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive
_LOCAL_OR_WEB = {"file", "http", "https", "data"}
_BLOCK = 1 << 16  # a header (and EXIF) fits: one ranged read per probe
_PNG_BLOCK = 1 << 23
_PNG = b"\x89PNG\r\n\x1a\n"


def is_url(value: Any) -> bool:
    """Whether ``value`` is an fsspec URL vlmcheck reads remotely (not a local path, ``file://`` or the web)."""
    if not isinstance(value, str):
        return False
    match = _URL.match(value)
    return match is not None and match.group(1).lower() not in _LOCAL_OR_WEB


def join(root: str, relative: str) -> str:
    """A relative image path under a remote dataset's folder (``root``, a URL) as a URL."""
    return root.rstrip("/") + "/" + (relative[2:] if relative.startswith("./") else relative)


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path in it."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise MissingDependencyError("fsspec", "s3", f"reading {url}") from None
    try:
        return url_to_fs(url)
    except ImportError as e:  # fsspec knows the protocol but its package (s3fs, gcsfs, ...) is missing
        raise MissingDependencyError(str(e.name or "its filesystem package"), "s3", f"reading {url} ({e})") from None
    except ValueError as e:
        raise DatasetError(f"{url}: {e}") from None


def folder_of(url: str) -> str:
    """The URL of the folder holding ``url``."""
    return url.rsplit("/", 1)[0] + "/"


def expand(url: str, *, is_data: Any) -> tuple[list[str], str]:
    """The dataset files one URL names (a file, a folder or a glob), in name order, and their folder's URL."""
    fs, path = filesystem(url)
    protocol = url[: url.index("://") + 3]
    try:
        if any(c in path for c in "*?["):
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
            base = path
            while any(c in base for c in "*?["):
                base = base.rsplit("/", 1)[0]
            root = protocol + base + "/"
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if is_data(p[len(path):].lstrip("/")))
            root = protocol + path.rstrip("/") + "/"
        elif fs.exists(path):
            found, root = [path], folder_of(url)
        else:
            raise DatasetError(f"dataset not found: {url}")
    except (OSError, PermissionError) as e:
        raise DatasetError(f"cannot list {url}: {e}") from None
    if not found:
        raise DatasetError(f"no dataset file at {url}")
    return [protocol + p if not p.startswith(protocol) else p for p in found], root


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[Path]:
    """The dataset file at ``url``, fetched to a temporary folder under its own name (its suffixes say its format),
    removed afterwards."""
    fs, path = filesystem(url)
    with tempfile.TemporaryDirectory(prefix="vlmcheck-remote-") as folder:
        local = Path(folder) / path.rsplit("/", 1)[-1]
        try:
            fs.get_file(path, str(local))
        except FileNotFoundError:
            raise DatasetError(f"dataset not found: {url}") from None
        except OSError as e:
            raise DatasetError(f"cannot read {url}: {e}") from None
        yield local


def probe_url(url: str, *, check_integrity: bool = True) -> ImageInfo:
    """An image's size from its header at ``url``: ranged reads of one small block (and the tail)."""
    try:
        fs, path = filesystem(url)
    except (MissingDependencyError, DatasetError) as e:
        raise ImageProblem("VC101", str(e)) from None
    try:
        with fs.open(path, "rb", block_size=_BLOCK) as fp:
            if fp.read(8) != _PNG:
                fp.seek(0)
                return probe_stream(fp, check_integrity=check_integrity)
        # A PNG without an eXIf chunk before its pixels has its chunk headers walked to find one after them
        # (where Pillow's getexif looks by decoding): one header per IDAT chunk, spread over the whole file, so
        # it is read in large blocks rather than one small ranged read per chunk.
        with fs.open(path, "rb", block_size=_PNG_BLOCK) as fp:
            return probe_stream(fp, check_integrity=check_integrity)
    except FileNotFoundError:
        raise ImageProblem("VC101", f"file not found: {url}") from None
    except IsADirectoryError:
        raise ImageProblem("VC102", f"a folder, not an image: {url}") from None
    except PermissionError as e:
        raise ImageProblem("VC102", f"permission denied: {url} ({e})") from None
    except OSError as e:
        raise ImageProblem("VC101", f"cannot read {url}: {e}") from None
