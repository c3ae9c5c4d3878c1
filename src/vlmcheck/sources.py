"""Where a scan's rows come from: the data as users keep it.

- a file: ``.json`` / ``.jsonl`` / ``.parquet``, JSON and JSON Lines also compressed (``.gz``, ``.bz2``, ``.xz``,
  ``.zst``), a WebDataset ``.tar`` shard, or a ``save_to_disk`` folder;
- several of them: a list of paths, a glob (``data/train-*.parquet``), a folder of data files;
- an object in memory: a ``datasets.Dataset`` / ``IterableDataset`` (or a ``DatasetDict`` and its ``split``), a list
  of dicts, a pandas ``DataFrame`` or a pyarrow ``Table``. Image columns are read as stored: ``{"bytes", "path"}``
  structs (a ``datasets`` Image column is read from its Arrow storage, never decoded) or PIL images (their size is
  the object's own).

>>> source = open_source("data/train-*.jsonl.gz")  # doctest: +SKIP
>>> next(source.rows())  # doctest: +SKIP
(0, {'messages': [...], 'images': ['img/0.jpg']})

Every source yields ``(index, row)``, the index counting rows across all of its files in order, so a record says
the same index whether the data is one file or many, compressed or not. ``shard=(i, n)`` keeps rows whose index
is ``i`` modulo ``n``: a deterministic slice that needs no row count, so shards of a stream still merge exactly.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.data import remote
from vlmcheck.data.compressed import compression
from vlmcheck.data.readers import BadRow, count_rows, iter_rows
from vlmcheck.data.remote import is_url
from vlmcheck.errors import DatasetError, UsageError

# what a folder or glob picks up as data; compressed JSON and WebDataset shards are read too
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".tar")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
_BATCH = 512


@dataclass
class Source:
    """The rows of one dataset argument, with what the scan needs around them."""

    name: str  # how the report names the dataset
    # the default image root (relative image paths start here): a folder, an fsspec URL, or None: no one folder
    root: Path | str | None
    inputs: list[Path]  # the local files read: never written over
    _rows: Callable[[], Iterator[Any]] = field(repr=False)
    _count: Callable[[], int | None] = field(repr=False, default=lambda: None)
    shard: tuple[int, int] | None = None
    size: int | None = None  # the object's length, when it has one (``report.keep`` checks it)

    def rows(self, *, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, row)`` of this shard, from row ``start`` on and below ``limit``."""
        i, n = self.shard or (0, 1)
        for index, row in enumerate(self._rows()):
            if limit is not None and index >= limit:
                return
            if index >= start and index % n == i:
                yield index, row

    def chunks(self, size: int, *, start: int = 0, limit: int | None = None) -> Iterator[list[tuple[int, Any]]]:
        chunk: list[tuple[int, Any]] = []
        for item in self.rows(start=start, limit=limit):
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def count(self, *, limit: int | None = None) -> int | None:
        """Rows this source (its shard) yields, when cheap to know (for the progress bar)."""
        total = self.size if self.size is not None else self._count()
        if total is None:
            return None
        if limit is not None:
            total = min(total, limit)
        i, n = self.shard or (0, 1)
        return max(0, math.ceil((total - i) / n))

    def check_output(self, output: str | os.PathLike[str]) -> None:
        """vlmcheck never writes over its input."""
        target = os.path.realpath(output)
        for file in self.inputs:
            if os.path.realpath(file) == target:
                raise UsageError(f"output {output} is the dataset itself ({file}); vlmcheck never writes over its input")


def parse_shard(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (or ``(I, N)``): shard I of N, counted from 0, as ``Dataset.shard(num_shards=N, index=I)``."""
    if value is None:
        return None
    if isinstance(value, str):
        head, sep, tail = value.partition("/")
        try:
            if not sep:
                raise ValueError
            shard = (int(head), int(tail))
        except ValueError:
            raise UsageError(f"shard must be I/N (shard I of N, counted from 0), not {value!r}") from None
    else:
        shard = (int(value[0]), int(value[1]))
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"shard {i}/{n}: I must be in 0..{max(n - 1, 0)} (shards count from 0) and N at least 1")
    return shard


def open_source(dataset: Any, *, split: str | None = None, shard: str | tuple[int, int] | None = None) -> Source:
    """The rows of ``dataset``: a path, a glob, a list of paths, or an object (see the module docstring).

    Raises :class:`DatasetError` when nothing can be read and :class:`UsageError` for an object of a type it
    does not take.
    """
    source = _objects(dataset, split) if _is_object(dataset) else _files(dataset, split)
    source.shard = parse_shard(shard)
    return source


# -- files -----------------------------------------------------------------------------------------------------
def _is_object(dataset: Any) -> bool:
    if isinstance(dataset, (str, os.PathLike)):
        return False
    if isinstance(dataset, (list, tuple)) and dataset and all(isinstance(d, (str, os.PathLike)) for d in dataset):
        return False
    return True


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.endswith(DATA_SUFFIXES) and not name.startswith(".")


def _is_saved_folder(folder: Path) -> bool:
    """A ``save_to_disk`` folder (Arrow files), which the folder reader takes whole."""
    return any((folder / name).is_file() for name in ("dataset_dict.json", "state.json")) or any(folder.glob("*.arrow"))


def _expand(raw: str | os.PathLike[str], split: str | None) -> tuple[list[Path | str], Path | str]:
    """The files one argument names, in order, and the folder its relative image paths start from (URLs for an
    fsspec URL)."""
    text = os.fspath(raw)
    if is_url(text):
        urls, root = remote.expand(text, is_data=lambda rel: _is_data_file(Path(rel)))
        return list(urls), root
    if glob.has_magic(text):
        matched = sorted(Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not matched:
            raise DatasetError(f"no file matches {text}")
        base = Path(text)
        while glob.has_magic(str(base)):
            base = base.parent
        return list(matched), base
    path = Path(text)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if not path.is_dir():
        return [path], path.parent
    if _is_saved_folder(path):
        return [path], path
    found = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p.relative_to(path)))
    if split is not None:  # the Hub's layouts: train/xxx.parquet or train-00000-of-00004.parquet
        found = [p for p in found if split in p.relative_to(path).parts[:-1]
                 or p.name.startswith((f"{split}-", f"{split}."))]
    if not found:
        raise DatasetError(f"{path} holds no dataset file ({', '.join(DATA_SUFFIXES)}, optionally compressed)"
                           + (f" for split {split!r}" if split else ""))
    return list(found), path


def _files(dataset: str | os.PathLike[str] | list[Any] | tuple[Any, ...], split: str | None) -> Source:
    args = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    files: list[Path | str] = []
    roots: list[Path | str] = []
    for arg in args:
        found, folder = _expand(arg, split)
        files += found
        roots.append(folder)
    # files in different folders have no one folder their relative image paths start from
    root = roots[0] if len({r if isinstance(r, str) else os.path.realpath(r) for r in roots}) == 1 else None
    name = ", ".join(os.fspath(a) for a in args)

    def rows() -> Iterator[Any]:
        for file in files:
            yield from _file_rows(file, split)

    def count() -> int | None:
        total = 0
        for file in files:
            n = None if isinstance(file, str) or _is_tar(file) else count_rows(file, split=split)
            if n is None:
                return None
            total += n
        return total

    local = [f for f in files if isinstance(f, Path)]
    return Source(name=name, root=root, inputs=local, _rows=rows, _count=count)


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def _file_rows(path: Path | str, split: str | None) -> Iterator[Any]:
    if isinstance(path, str):  # an fsspec URL: fetched whole (every row is read), one file at a time
        with remote.local_copy(path) as local:
            yield from _file_rows(local, split)
        return
    if _is_tar(path):
        yield from webdataset_rows(path)
        return
    if compression(path) is None:
        yield from iter_rows(path, split=split)
        return
    try:  # a compressed file cut short or damaged fails in the middle of the stream: a finding, the scan goes on
        yield from iter_rows(path, split=split)
    except (OSError, EOFError, ValueError) as e:  # gzip/bz2/lzma/zstd errors are these
        yield BadRow(f"{path} is damaged past this point ({type(e).__name__}: {e}); the rest is unreadable")


def webdataset_rows(path: Path) -> Iterator[Any]:
    """Samples of a WebDataset tar shard: the members that share a key (the name up to its first dot) are one
    sample, and its ``.json`` member is the row. The sample's images become the row's ``images`` as
    ``{"bytes", "path"}`` structs: those the row names (``"0001.jpg"`` or the extension ``"jpg"``), else every
    image member in name order."""
    try:
        tar = tarfile.open(path, "r|*")  # a stream: members in the order written, as WebDataset reads them
    except (OSError, tarfile.TarError) as e:
        raise DatasetError(f"{path} is not a readable tar file: {e}") from None

    def sample(key: str, members: dict[str, bytes]) -> Any:
        where = f"sample {key!r} of {path.name}"
        raw = members.get("json")
        if raw is None:
            return BadRow(f"{where} has no .json member (it has {', '.join(sorted(members)) or 'none'})")
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            return BadRow(f"{where}: its .json member is not valid JSON ({e})")
        if not isinstance(row, dict):
            return row
        images = {ext: data for ext, data in members.items() if ext.rsplit(".", 1)[-1].lower() in _IMAGE_EXTENSIONS}
        named = row.get("images", row.get("image"))
        if named is None and images:
            row["images"] = [{"bytes": images[ext], "path": f"{key}.{ext}"} for ext in sorted(images)]
        elif isinstance(named, (str, list)):
            def member(name: Any) -> Any:
                ext = name[len(key) + 1:] if isinstance(name, str) and name.startswith(f"{key}.") else name
                return {"bytes": images[ext], "path": f"{key}.{ext}"} if isinstance(ext, str) and ext in images else name

            row["images" if "images" in row else "image"] = (
                [member(n) for n in named] if isinstance(named, list) else member(named))
        return row

    with tar:
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name.rsplit("/", 1)[-1]
                folder = info.name[: len(info.name) - len(name)]
                stem, dot, ext = name.partition(".")
                if not dot or stem.startswith("__"):  # WebDataset's own files (__key__ etc.)
                    continue
                this = folder + stem
                if key is not None and this != key:
                    yield sample(key.rsplit("/", 1)[-1], members)
                    members = {}
                key = this
                handle = tar.extractfile(info)
                members[ext.lower()] = handle.read() if handle is not None else b""
        except (OSError, tarfile.TarError, EOFError) as e:
            yield BadRow(f"{path} is damaged past this point ({type(e).__name__}: {e}); the rest is unreadable")
            return
        if key is not None:
            yield sample(key.rsplit("/", 1)[-1], members)


# -- objects ---------------------------------------------------------------------------------------------------
def _kind(obj: Any) -> str:
    module = type(obj).__module__.split(".", 1)[0]
    return f"{module}.{type(obj).__name__}"


def _objects(obj: Any, split: str | None) -> Source:
    kind = _kind(obj)
    if kind in ("datasets.DatasetDict", "datasets.IterableDatasetDict"):
        names = list(obj)
        chosen = split or ("train" if "train" in names else None)
        if chosen not in names:
            raise UsageError(f"the {type(obj).__name__} has splits {names}; pick one with split=")
        obj, kind = obj[chosen], _kind(obj[chosen])
    elif split is not None:
        raise UsageError("split= picks a split of a DatasetDict or a save_to_disk folder; this is a "
                         f"{type(obj).__name__}")
    size: int | None = None
    rows: Callable[[], Iterator[Any]]
    if kind == "datasets.Dataset":
        size = len(obj)
        rows = _datasets_rows(obj)
    elif kind == "datasets.IterableDataset":
        rows = _iterable_rows(obj)
    elif kind in ("pyarrow.Table", "pyarrow.RecordBatch"):
        size = obj.num_rows
        rows = _arrow_rows(obj)
    elif kind == "pandas.DataFrame":
        size = len(obj)
        rows = _pandas_rows(obj)
    elif isinstance(obj, (list, tuple)):
        size = len(obj)
        items = obj

        def rows() -> Iterator[Any]:
            return iter(items)
    else:
        raise UsageError(f"cannot scan a {type(obj).__module__}.{type(obj).__name__}: pass a path, a glob, a list of "
                         "paths, a datasets.Dataset / IterableDataset / DatasetDict, a list of dicts, a pandas "
                         "DataFrame or a pyarrow Table")
    name = f"<{type(obj).__name__}" + (f" of {size:,} rows>" if size is not None else ">")
    return Source(name=name, root=Path.cwd(), inputs=[], _rows=rows, size=size)


def _datasets_rows(ds: Any) -> Callable[[], Iterator[Any]]:
    # The Arrow view keeps an Image column as its stored {bytes, path} structs (no decode, no re-encode) and
    # honours select/shuffle/filter (the indices mapping).
    table = ds.with_format("arrow")

    def rows() -> Iterator[Any]:
        for start in range(0, len(table), _BATCH):
            yield from table[start:start + _BATCH].to_pylist()

    return rows


def _iterable_rows(ds: Any) -> Callable[[], Iterator[Any]]:
    def rows() -> Iterator[Any]:
        for batch in ds.with_format("arrow").iter(batch_size=_BATCH):
            yield from batch.to_pylist()

    return rows


def _arrow_rows(table: Any) -> Callable[[], Iterator[Any]]:
    def rows() -> Iterator[Any]:
        batches = table.to_batches(max_chunksize=_BATCH) if hasattr(table, "to_batches") else [table]
        for batch in batches:
            yield from batch.to_pylist()

    return rows


def _pandas_rows(df: Any) -> Callable[[], Iterator[Any]]:
    columns = [str(c) for c in df.columns]

    def rows() -> Iterator[Any]:
        for values in df.itertuples(index=False, name=None):
            # a cell pandas fills for a key the row lacks (NaN / None / NaT) is an absent key
            yield {c: _plain(v) for c, v in zip(columns, values) if not _missing(v)}

    return rows


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NaTType", "NAType")


def _plain(value: Any) -> Any:
    """A pandas cell as the JSON value it stands for: numpy arrays (Parquet list columns) as lists, numpy scalars
    as Python numbers; PIL images and bytes stay as they are."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    module = type(value).__module__
    if module == "numpy":
        if getattr(value, "ndim", None):
            return [_plain(v) for v in value]
        return value.item() if hasattr(value, "item") else value
    return value



def shard_label(shard: tuple[int, int] | None) -> str | None:
    """``"I/N"``, as summaries name a shard."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"
