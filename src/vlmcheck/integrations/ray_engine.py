"""``scan(..., engine="ray")``: the pipeline's counter (:meth:`vlmcheck.scan.Scanner.count_chunk`) run on Ray Data;
``check(..., engine="ray")``: the framework's judge of each row, the same way (:class:`vlmcheck.checking.CheckRecipe`).

>>> report = vlmcheck.scan("train.parquet", model="ckpt/", max_length=4096, engine="ray")  # doctest: +SKIP

Where the rows come from:

- data files named one by one (Parquet, JSON, JSON Lines, compressed, WebDataset ``.tar``): one Ray read task
  per file, in file order, running vlmcheck's own reader (Ray's ``read_parquet`` would fail the whole scan on a
  file damaged midway, where the local engine ends that file with one VC001 row and goes on);
- a pyarrow Table: ``ray.data.from_arrow``; a list of dicts: ``ray.data.from_items`` (each row pickled, so that a
  row keeps the keys it has: Arrow would give every row every key);
- everything else (folders, globs, ``save_to_disk`` folders, URLs, pandas and ``datasets`` objects), and any
  scan with ``shard`` or ``resume``: one Ray read task runs vlmcheck's own reader (:mod:`vlmcheck.sources`).

Ray's JSON reader is not used: it infers one Arrow schema for all rows (a key one row lacks becomes ``null``) and
fails the whole read on one line that does not parse, where the local engine makes that line a VC001 finding and
goes on. So one JSON or JSON Lines file is read by one task (the analysis is spread over the actors, the reading
is not): fine while one reader keeps ahead of the actors (it parses rows far faster than they count them), not
for a cluster of many nodes, where the data is better given as several files (each its own read task).

A dataset that cannot be read at all (a Parquet file without its footer) raises the local engine's
:class:`~vlmcheck.errors.DatasetError`, not Ray's task error.

``map_batches`` runs a callable class, so each actor loads the tokenizer once; the batches come back in row
order (``preserve_order``) and stream through the same :class:`~vlmcheck.records.RecordWriter` and
:class:`~vlmcheck.report.ReportBuilder` as the local engine's: the records and the summary are the local
engine's, and the driver holds one batch at a time. ``ray.init(address=...)`` connects to a cluster (``address``,
else ``RAY_ADDRESS``, as Ray reads it); without one, Ray starts a local one. The model path and relative image
paths must be readable on every node.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from vlmcheck.errors import MissingDependencyError, UsageError, VlmcheckError
from vlmcheck.pipeline import Counter, Engine
from vlmcheck.results import SampleResult
from vlmcheck.sources import Source


class Rows(Protocol):
    """Where the one read task gets its rows: a :class:`~vlmcheck.sources.Source`, or ``check``'s run."""

    @property
    def shard(self) -> tuple[int, int] | None: ...

    def rows(self, *, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, Any]]: ...


class Judge(Protocol):
    """What an actor runs: a counter's ``count_chunk`` (the scan's) or ``check``'s judge."""

    def count_chunk(self, rows: list[tuple[int, Any]]) -> list[SampleResult]: ...


class Builds(Protocol):
    """How an actor builds its judge, once (a :class:`~vlmcheck.pipeline.Recipe`, or ``check``'s)."""

    def build(self) -> Judge: ...

_ROW = "__vlmcheck_row__"  # a pickled (index, row) pair
_BARE = "__vlmcheck_bare_row__"  # a pickled row without its index (the driver numbers the rows in order)
_RESULT = "__vlmcheck_result__"  # a pickled (SampleResult, whether its id is its index)
_BLOCK = 4 * 1024 * 1024


def ray() -> Any:
    """The ``ray`` module with Ray Data, or the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("ray[data]", "ray", "engine='ray' (--engine ray)") from None
    return ray


class _Analyzer:
    """One Ray actor: the counter built once from its recipe, as a local worker process builds it."""

    def __init__(self, *, recipe: Builds) -> None:
        self.counter = recipe.build()
        # Rows read by a Ray reader do not know their index: the driver numbers them in order. This mark stands
        # where the scan writes the index as the id of a row without one, so the driver can write the index there.
        self.mark = f"\x00vlmcheck-row-{uuid.uuid4().hex}:"

    def __call__(self, batch: Any) -> dict[str, list[bytes]]:
        if _ROW in batch.column_names:
            items = [pickle.loads(cell) for cell in batch.column(_ROW).to_pylist()]
            results = self.counter.count_chunk(items)
            return {_RESULT: [pickle.dumps((r, False)) for r in results]}
        if _BARE in batch.column_names:
            rows = [pickle.loads(cell) for cell in batch.column(_BARE).to_pylist()]
        else:
            rows = batch.to_pylist()
        positions = [_Position(k, self.mark) for k in range(len(rows))]
        results = self.counter.count_chunk(list(zip(positions, rows)))
        out = []
        for position, result in zip(positions, results):
            numbered = result.id == str(position)
            result.index = int(position)
            out.append(pickle.dumps((result, numbered)))
        return {_RESULT: out}


class _Position(int):
    """A row's place in its batch; its ``str`` is a mark no row id holds (see :class:`_Analyzer`)."""

    mark: str

    def __new__(cls, value: int, mark: str) -> _Position:
        position = super().__new__(cls, value)
        position.mark = mark
        return position

    def __str__(self) -> str:
        return f"{self.mark}{int(self)}"


def _read_source(batch: Any, *, source: Rows, start: int, limit: int | None, size: int) -> Iterator[Any]:
    """The Ray read task of the sources Ray has no reader for: vlmcheck's own reader, rows with their index."""
    import pyarrow as pa

    chunk: list[bytes] = []
    for item in source.rows(start=start, limit=limit):
        chunk.append(pickle.dumps(item))
        if len(chunk) == size:
            yield pa.table({_ROW: pa.array(chunk, pa.binary())})
            chunk = []
    if chunk:
        yield pa.table({_ROW: pa.array(chunk, pa.binary())})


def _read_file(batch: Any, *, size: int) -> Iterator[Any]:
    """The Ray read task of one data file: vlmcheck's own reader, so a Parquet file damaged midway ends with the
    one VC001 row the local engine gives (Ray's reader would fail the whole scan); rows without their index."""
    import pyarrow as pa

    from vlmcheck.sources import open_source

    (path,) = batch.column("file").to_pylist()
    chunk: list[bytes] = []
    for _, row in open_source(Path(path)).rows():
        chunk.append(pickle.dumps(row))
        if len(chunk) == size:
            yield pa.table({_BARE: pa.array(chunk, pa.binary())})
            chunk = []
    if chunk:
        yield pa.table({_BARE: pa.array(chunk, pa.binary())})


def _dataset(dataset: Any, source: Rows, *, start: int, limit: int | None, chunk: int) -> tuple[Any, bool]:
    """The Ray Dataset of the rows, and whether its rows carry their index (else they are numbered in order)."""
    rd = ray().data
    direct = source.shard is None and start == 0
    files = [str(dataset)] if isinstance(dataset, (str, os.PathLike)) else dataset
    if direct and isinstance(files, list) and files and all(
            isinstance(f, (str, os.PathLike)) and Path(f).is_file() for f in files):
        # one read task per file, in file order, each running vlmcheck's reader (see _read_file)
        # num_cpus=0, as the read task below: the actors hold the CPUs, and a read must never wait for one
        ds = rd.from_items([{"file": str(f)} for f in files], override_num_blocks=len(files)).map_batches(
            _read_file, batch_size=1, batch_format="pyarrow", num_cpus=0, fn_kwargs={"size": chunk})
        return (ds.limit(limit) if limit is not None else ds), False
    kind = f"{type(dataset).__module__.split('.')[0]}.{type(dataset).__name__}"
    if direct and kind == "pyarrow.Table":
        ds = rd.from_arrow(dataset)
        return (ds.limit(limit) if limit is not None else ds), False
    if isinstance(dataset, (list, tuple)) and not all(isinstance(d, (str, os.PathLike)) for d in dataset):
        items = [{_ROW: pickle.dumps(item)} for item in source.rows(start=start, limit=limit)]
        return rd.from_items(items), True
    # one read task: vlmcheck's reader over the whole source, its rows in order
    # num_cpus=0: the actors hold the CPUs, and the reader must not wait for one nor be fused into an actor
    ds = rd.from_items([{"source": 0}]).map_batches(
        _read_source, batch_size=1, batch_format="pyarrow", num_cpus=0,
        fn_kwargs={"source": source, "start": start, "limit": limit, "size": chunk})
    return ds, True


def ray_engine(dataset: Any, source: Source, *, address: str | None = None) -> Engine:
    """The pipeline's engine (:data:`vlmcheck.pipeline.Engine`) for ``dataset`` on Ray: see :func:`ray_results`."""

    def engine(counter: Counter, start: int, limit: int | None) -> Iterator[SampleResult]:
        return ray_results(dataset, source, counter.recipe(), start=start, limit=limit, address=address,
                           chunk=counter.chunk_size)

    return engine


def ray_results(dataset: Any, source: Rows, recipe: Builds, *, start: int = 0, limit: int | None = None,
                address: str | None = None, chunk: int = 512) -> Iterator[SampleResult]:
    """Every row's :class:`SampleResult`, in row order, counted on Ray actors by what ``recipe`` builds (once per
    actor): a counter's recipe (the scan), or ``check``'s (:class:`vlmcheck.checking.CheckRecipe`).

    ``dataset`` is the user's argument (its Ray reader is chosen from it; None: ``source`` is read by one task)
    and ``source`` the same rows as vlmcheck reads them; ``start`` is where a resumed scan goes on from. Connects (or starts Ray) now; the rows
    are read and analyzed as the results are taken.
    """
    ray_ = ray()
    if not ray_.is_initialized():
        # address=None: Ray reads RAY_ADDRESS, else starts a local cluster
        try:
            ray_.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        except ConnectionError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {e}; "
                             "start one (ray start --head) or leave out the address for a local one") from None
    ds, indexed = _dataset(dataset, source, start=start, limit=limit, chunk=chunk)
    analyzed = ds.map_batches(
        _Analyzer, batch_size=chunk, batch_format="pyarrow",
        compute=ray_.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(ray_.cluster_resources().get("CPU", 1)))),
        fn_constructor_kwargs={"recipe": recipe})
    # this dataset's own context (a copy of the global one): the user's DataContext stays as it was
    analyzed.context.execution_options.preserve_order = True  # the results come back in row order
    analyzed.context.enable_progress_bars = False  # standard error is the CLI's; stdout may carry --json -
    # a block goes to one actor whole: blocks of a few MB (not Ray's default hundred) spread the rows over the actors
    analyzed.context.target_max_block_size = min(analyzed.context.target_max_block_size or _BLOCK, _BLOCK)
    return _numbered(analyzed, indexed=indexed, start=start)


def _numbered(analyzed: Any, *, indexed: bool, start: int) -> Iterator[SampleResult]:
    index = start
    for batch in _batches(analyzed):
        for cell in batch.column(_RESULT).to_pylist():
            result, numbered = pickle.loads(cell)
            if not indexed:  # rows a Ray reader read: their index is their place in the stream
                result.index = index
                if numbered:
                    result.id = str(index)
            index += 1
            yield result


def _batches(analyzed: Any) -> Iterator[Any]:
    """The analyzed batches; an error of vlmcheck's raised in a Ray task (a dataset that cannot be read at all)
    raised here as itself, as the local engine raises it, not wrapped in Ray's task error."""
    try:
        yield from analyzed.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as e:
        cause: BaseException | None = e
        seen = 0
        while cause is not None and seen < 20:
            # Ray's task error is a subclass of the error it wraps, made on the fly: vlmcheck's own class is the one
            if isinstance(cause, VlmcheckError) and type(cause).__module__.startswith("vlmcheck"):
                raise cause from None
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) else cause.__cause__
            seen += 1
        raise
