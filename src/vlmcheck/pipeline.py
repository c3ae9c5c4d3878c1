"""One pipeline for every counter: rows in chunks, a pool of worker processes, the report, the records.

>>> report = run(Scanner(spec, options, root), open_source("train.jsonl"), output="r.jsonl", workers=4)  # doctest: +SKIP

A counter (:class:`Counter`) counts one chunk of rows into one :class:`~vlmcheck.results.SampleResult` per row,
in order, and says how a worker process builds it again (:class:`Recipe`). The arithmetic scan
(:class:`vlmcheck.scan.Scanner`) and the processor scan (:class:`vlmcheck.exact.ExactScanner`) are the two
counters; everything around them is here, once: reading the source in chunks (its shard, from where an
interrupted scan stopped), the worker pool with a bounded in-flight queue, progress, the
:class:`~vlmcheck.report.ReportBuilder`, and the records written atomically and resumably
(:class:`~vlmcheck.records.RecordWriter`).

:func:`count_chunk` is the one function a worker runs, for a process pool here or any other engine: given the
recipe and the rows, it counts them with the counter that recipe builds, built once per process.
"""

from __future__ import annotations

import itertools
import multiprocessing.context as mpc
import os
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from vlmcheck.errors import DatasetError
from vlmcheck.options import ScanOptions
from vlmcheck.records import RecordWriter
from vlmcheck.report import Report, ReportBuilder
from vlmcheck.results import SampleResult
from vlmcheck.sources import Source, shard_label
from vlmcheck.util import report_target

Rows = list[tuple[int, Any]]  # (row index, row) of one chunk, in order


class Counter(Protocol):
    """What the pipeline needs of a counter."""

    #: rows per task sent to a worker (one tokenizer batch for the arithmetic scan, a few processor calls
    #: for the processor scan)
    chunk_size: int
    options: ScanOptions

    @property
    def model_name(self) -> str: ...

    @property
    def model_type(self) -> str: ...

    @property
    def settings(self) -> Any: ...  # what the report shows of the model's processor settings

    def count_chunk(self, rows: Rows) -> list[SampleResult]:
        """One result per row, in order; a row that cannot be counted is a finding, never an exception."""
        ...

    def recipe(self) -> Recipe:
        """How another process builds this counter again."""
        ...


class Recipe(Protocol):
    """A counter's recipe: picklable, equal for equal counters."""

    def build(self) -> Counter: ...


# -- one chunk, in whatever process runs it -------------------------------------------------------------------
_WORKER: tuple[Recipe, Counter] | None = None


def count_chunk(recipe: Recipe, rows: Rows) -> list[SampleResult]:
    """Count ``rows`` with the counter ``recipe`` builds, built once per process and kept for the next chunk.

    The task a worker process runs.
    """
    global _WORKER
    if _WORKER is None or _WORKER[0] != recipe:
        _WORKER = (recipe, recipe.build())
    return _WORKER[1].count_chunk(rows)


AUTO_MIN_ROWS = 4096
"""``workers=None`` counts a dataset of fewer rows in this process: starting a pool and handing rows to it costs
more than a second core saves on them (docs/performance.md, issue 17)."""


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_workers(chunks: Iterator[Rows], *, chunk_size: int) -> tuple[int, Iterator[Rows]]:
    """How many processes ``workers=None`` uses on ``chunks``, and the same chunks: one for fewer than
    :data:`AUTO_MIN_ROWS` rows (the first rows are read to know), else one per core, and no more than there are
    chunks to share."""
    n = cores()
    if n <= 1:
        return 1, chunks
    first: Rows = []
    read: list[Rows] = []
    for chunk in chunks:
        read.append(chunk)
        first += chunk
        if len(first) >= AUTO_MIN_ROWS:
            break
    rows = len(first)
    rest = itertools.chain(read, chunks)
    if rows < AUTO_MIN_ROWS:
        return 1, rest
    return min(n, max(2, rows // max(1, chunk_size))), rest


def _start_worker(cwd: str, environ: dict[str, str]) -> None:
    """A pool worker's start: the caller's working folder and environment as they are now (the fork server that
    starts workers keeps those of when it was started), and one tokenizer thread: each worker is one core's share,
    so the tokenizers library's own threads would contend with the other workers (unless the user chose
    otherwise)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pool_context(counter: Counter) -> Any:
    """Where worker processes come from. Not a fork of this process: it may hold threads (the tokenizers
    library's, Ray's, PyTorch's, a notebook's) whose locks a forked child would inherit held, and hang on. A fork
    server (a clean process that imported vlmcheck and the counter's module once) forks the workers instead, and
    each builds its counter from the recipe (Windows spawns them). Neither runs the caller's main script again:
    a script that calls ``scan`` at its top level, without a ``__main__`` guard, must not be re-run by its own
    workers (:func:`_without_main`)."""
    if os.name == "nt":
        return _SpawnContext()
    ctx = _ForkServerContext()
    ctx.set_forkserver_preload(["vlmcheck.pipeline", type(counter).__module__])
    return ctx


def _without_main(start: Callable[[Any], Any], process: Any) -> Any:
    # a start method re-imports __main__ in the child when it has a file or a module name; for the time of the
    # start it is a bare module (workers run vlmcheck's own functions, never the caller's)
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        return start(process)
    finally:
        sys.modules["__main__"] = main


if sys.platform != "win32":  # no fork server there
    class _ForkServerProcess(mpc.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _without_main(mpc.ForkServerProcess._Popen, process_obj)

    class _ForkServerContext(mpc.ForkServerContext):
        Process = _ForkServerProcess


class _SpawnProcess(mpc.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _without_main(mpc.SpawnProcess._Popen, process_obj)


class _SpawnContext(mpc.SpawnContext):
    Process = _SpawnProcess


def count_all(counter: Counter, chunks: Iterator[Rows], *, workers: int | None = 1) -> Iterator[SampleResult]:
    """Every chunk's results, in order: in this process, or on ``workers`` processes (None: as many as
    :func:`auto_workers` picks)."""
    if workers is None:
        workers, chunks = auto_workers(chunks, chunk_size=counter.chunk_size)
    if workers <= 1:
        for chunk in chunks:
            yield from counter.count_chunk(chunk)
        return
    recipe = counter.recipe()
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(counter), initializer=_start_worker,
                               initargs=(os.getcwd(), dict(os.environ)))
    # Bounded in-flight queue: mapping over the chunks would read the whole dataset ahead of the workers.
    inflight: deque[tuple[Rows, Future[list[SampleResult]] | None]] = deque()
    broken = False

    def done() -> list[SampleResult]:
        nonlocal broken
        chunk, pending = inflight.popleft()
        if pending is not None:
            try:
                return pending.result()
            except BrokenProcessPool:
                # a worker died (killed, out of memory): the pool cannot be trusted with more, and no chunk is
                # lost or waited on forever: this one and the rest are counted here
                broken = True
            except Exception:
                pass  # a chunk that cannot travel to a worker or back (a row nested too deeply to pickle)
        return counter.count_chunk(chunk)  # this process counts it, where every row error is a finding

    def submit(chunk: Rows) -> Future[list[SampleResult]] | None:
        nonlocal broken
        if not broken:
            try:
                return pool.submit(count_chunk, recipe, chunk)
            except BrokenProcessPool:
                broken = True  # the pool saw a worker die before any result of ours did: count here from now
        return None

    finished = False
    try:
        for chunk in chunks:
            inflight.append((chunk, submit(chunk)))
            if len(inflight) >= 4 * workers:
                yield from done()
        while inflight:
            yield from done()
        finished = True
    finally:
        if not finished:  # Ctrl-C, SIGTERM, an error, or the caller stopped reading: nothing more is wanted
            _stop_workers(pool)
        pool.shutdown(wait=finished, cancel_futures=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now: a chunk they are counting (or a worker still starting) would otherwise hold
    the exit until it is done, as the interpreter joins the pool before it exits."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()

Engine = Callable[[Counter, int, int | None], Iterator[SampleResult]]
"""An engine other than this machine's processes: ``engine(counter, start, limit)`` gives every row's result from
row ``start`` (below ``limit``), in row order (:mod:`vlmcheck.integrations.ray_engine`)."""


# -- a whole scan ---------------------------------------------------------------------------------------------
def run(counter: Counter, source: Source, *, output: str | os.PathLike[str] | None = None, resume: bool = False,
        workers: int | None = 1, limit: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        engine: Engine | None = None) -> Report:
    """Count every row of ``source`` (below ``limit``) with ``counter``, on ``workers`` processes (None: picked
    for the data and the machine, :func:`auto_workers`) or on ``engine``; with ``output``, write one record per
    row, atomically (and resumably with ``resume``); return the report."""
    if output is not None:
        source.check_output(output)
        report_target(output)  # a symlink, a device or a file vlmcheck did not write: refused before the scan
    total = source.count(limit=limit) if progress else None
    options = counter.options
    builder = ReportBuilder(dataset=source.name, model=counter.model_name, model_type=counter.model_type,
                            options=options, settings=counter.settings)
    identity = {"dataset": source.name, "model": counter.model_name, "options": options.identity,
                "settings": repr(counter.settings), "shard": shard_label(source.shard), "limit": limit}
    writer = RecordWriter(output, builder, resume=resume, identity=identity)
    started = time.perf_counter()
    results: Iterator[SampleResult]
    if engine is not None:  # another engine counts the same rows with the same counter, results in row order
        results = engine(counter, writer.start, limit)
        if writer.start == 0:
            results = nonempty(results, source.name)
    else:
        chunks = source.chunks(counter.chunk_size, start=writer.start, limit=limit)
        if writer.start == 0:
            chunks = nonempty(chunks, source.name)
        results = count_all(counter, chunks, workers=workers)

    def tick(results: Iterator[SampleResult]) -> Iterator[SampleResult]:
        for result in results:
            yield result
            if progress is not None:
                progress(builder.scanned, total)

    try:
        writer.write(tick(results), started=started)
    finally:
        close = getattr(results, "close", None)
        if close is not None:  # stopped anywhere (Ctrl-C in the writer too): count_all ends its workers now
            close()
    report = builder.build(seconds=writer.seconds(time.perf_counter()))
    if source.shard is not None:
        report.summary["shard"] = shard_label(source.shard)
    return report


def write_records(results: Iterator[SampleResult], builder: ReportBuilder,
                  output: str | os.PathLike[str] | None) -> None:
    """Feed every result to the report and, with ``output``, to a JSON Lines file that appears whole or not at
    all; the report keeps the records (:mod:`vlmcheck.records`)."""
    RecordWriter(output, builder).write(results, started=time.perf_counter())


def nonempty(rows: Iterator[Any], path: os.PathLike[str] | str) -> Iterator[Any]:
    """``rows``, or a :class:`DatasetError` when there is none: an empty dataset is not a clean one."""
    first = next(rows, _NOTHING)
    if first is _NOTHING:
        raise DatasetError(f"{path} holds no rows: there is nothing to check (an empty file, array or split)")
    return itertools.chain([first], rows)


_NOTHING = object()
