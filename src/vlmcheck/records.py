"""A scan's per-sample records: where they are written, how an interrupted scan resumes, and what a report
gives back from them (``Report.records()``, ``to_pandas()``, ``indices()``, ``keep()``).

With ``output``, the records go to a hidden temporary file renamed to ``OUTPUT`` when the scan finishes, so
``OUTPUT`` appears whole or not at all, and a scan that stops early leaves nothing. With ``resume=True`` the scan
is resumable: the records go to ``OUTPUT.partial`` and a snapshot of the report so far (``OUTPUT.partial.json``:
its exact counts and histograms, see :mod:`vlmcheck.merging`) is saved every few seconds and when the scan stops
early; both stay after an interruption, and the same call again cuts the records back to the last snapshot and
scans on from the row after it. Without ``output`` the records are spooled to a temporary file that goes away
with the report.

>>> report = vlmcheck.scan(ds, model="Qwen/Qwen2-VL-2B-Instruct", max_length=2048)  # doctest: +SKIP
>>> good = report.keep(ds)  # the rows with no error, as a datasets.Dataset again  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vlmcheck.catalogue import Severity
from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.util import AtomicOutput, atomic_write_text, output_target

if TYPE_CHECKING:
    from vlmcheck.report import Report, ReportBuilder
    from vlmcheck.results import SampleResult

_SNAPSHOT_SECONDS = 5.0


class RecordStore:
    """The per-sample records of one report, on disk (one JSON object per line)."""

    def __init__(self, path: Path, *, temporary: bool) -> None:
        self.path = path
        self.temporary = temporary
        if temporary:
            weakref.finalize(self, _unlink, str(path))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as fp:
            for line in fp:
                if line.strip():
                    yield json.loads(line)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where a scan writes its records until it finishes."""
    return Path(f"{os.fspath(output)}.partial")


def snapshot_path(output: str | os.PathLike[str]) -> Path:
    """The report so far of an unfinished scan, which ``resume`` starts from."""
    return Path(f"{os.fspath(output)}.partial.json")


class RecordWriter:
    """Feeds results to the report builder and their records to ``output`` (or a spool), resumably."""

    def __init__(self, output: str | os.PathLike[str] | None, builder: ReportBuilder, *, resume: bool = False,
                 identity: dict[str, Any] | None = None) -> None:
        self.builder = builder
        self.identity = identity or {}
        # ``-`` (or a path that is standard output): the records go there as they come, and a spool keeps them
        # for the report
        self.echo = sys.stdout if output is not None and output_target(output) is None else None
        if self.echo is not None:
            if resume:
                raise UsageError("resume needs an output file; standard output cannot be resumed")
            output = None
        self.output = Path(output) if output is not None else None
        self.resumable = resume and self.output is not None
        self.start = 0  # the first row index still to scan
        self.seconds_before = 0.0
        self.last_saved = time.monotonic()
        self.written = 0
        self.finished = False
        self.sink: AtomicOutput | None = None  # the output, published whole when the scan finishes
        if self.output is None:
            fd, tmp = tempfile.mkstemp(prefix="vlmcheck-records-", suffix=".jsonl")
            self.path = Path(tmp)
            self.fp: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
            self.store = RecordStore(self.path, temporary=True)
            return
        self.snapshot = snapshot_path(self.output)
        self.store = RecordStore(self.output, temporary=False)
        if not resume:  # a hidden file, gone if the scan stops early
            self.sink = AtomicOutput(self.output)
        else:  # OUTPUT.partial, kept when the scan stops early
            output_target(self.snapshot)  # OUTPUT.partial.json: a name the file system takes, or said now
            partial = partial_path(self.output)
            going_on = partial.is_file() and self.snapshot.is_file()
            if going_on:
                self._resume(partial)
            self.sink = AtomicOutput(self.output, staging=partial, append=going_on)
        self.fp = self.sink.fp

    def _resume(self, partial: Path) -> None:
        from vlmcheck.merging import absorb

        try:
            state = json.loads(self.snapshot.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot resume from {self.snapshot}: {e}; remove it to start over") from None
        theirs = state.get("identity", {})
        changed = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
        if changed:
            raise UsageError(f"{partial} was written by a scan with other settings ({', '.join(changed)} differ); "
                             "rerun with those settings, or without resume to start over")
        size = int(state["bytes"])
        with open(partial, "r+b") as raw:  # records written after the snapshot are scanned again
            raw.truncate(size)
        absorb(self.builder, state["report"])
        self.start = int(state["next_index"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self.written = self.builder.scanned

    def write(self, results: Iterable[SampleResult], *, started: float) -> None:
        self.started = started
        self.builder.store = self.store  # the report it builds reads its records back
        next_index = self.start
        try:
            for result in results:
                self.builder.add(result)
                line = json.dumps(result.to_record(), ensure_ascii=False) + "\n"
                self.fp.write(line)
                if self.echo is not None:
                    self.echo.write(line)
                self.written += 1
                next_index = result.index + 1
                if self.resumable and time.monotonic() - self.last_saved > _SNAPSHOT_SECONDS:
                    self._save(next_index)
            self._finish()
        finally:
            if not self.finished:
                self._abandon(next_index)

    def seconds(self, now: float) -> float:
        """Seconds scanned, counting the runs this one resumes."""
        return self.seconds_before + now - self.started

    def _save(self, next_index: int) -> None:
        assert self.output is not None
        self.fp.flush()
        os.fsync(self.fp.fileno())
        snapshot = self.builder.build(seconds=self.seconds(time.perf_counter()))
        state = {"identity": self.identity, "bytes": self.fp.tell(), "next_index": next_index,
                 "seconds": self.seconds(time.perf_counter()), "report": snapshot.to_dict()}
        atomic_write_text(self.snapshot, json.dumps(state, ensure_ascii=False) + "\n")
        self.last_saved = time.monotonic()

    def _finish(self) -> None:
        if self.sink is None:  # the spool: the report reads it back
            self.fp.flush()
            self.fp.close()
        else:
            self.sink.commit()
            if self.resumable:
                self.snapshot.unlink(missing_ok=True)
        self.finished = True

    def _abandon(self, next_index: int) -> None:
        """The scan stopped early: keep what it wrote to resume from, unless it wrote nothing."""
        if self.sink is None:
            self.fp.close()
            self.path.unlink(missing_ok=True)
            return
        if not self.resumable or not self.written:
            self.sink.discard()
            if self.resumable:
                self.snapshot.unlink(missing_ok=True)
            return
        try:
            self._save(next_index)
        except Exception:  # the scan's own error is the one to report; the last snapshot still stands
            pass
        finally:
            self.sink.keep()


# -- what a report gives back ------------------------------------------------------------------------------------
def records(report: Report) -> Iterator[dict[str, Any]]:
    store = report.store
    if store is None:
        raise UsageError("this report keeps no per-sample records (merged from summaries, or an exact=True scan); "
                         "scan with output= and read that file")
    return iter(store)


def _severity(value: str | Severity) -> Severity:
    return value if isinstance(value, Severity) else Severity.parse(value)


def indices(report: Report, *, fail_on: str | Severity = Severity.ERROR) -> list[int]:
    """Row indices of the samples without a finding at or above ``fail_on``, in order."""
    from vlmcheck.findings import CATALOGUE

    level = _severity(fail_on)
    return [r["index"] for r in records(report)
            if not any(CATALOGUE[code].severity >= level for code in r["findings"])]


def to_pandas(report: Report) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependencyError("pandas", "pandas", "Report.to_pandas()") from None
    rows = list(records(report))
    columns = ["index", "id", "tokens", "image_tokens", "supervised_tokens", "findings"]
    extra = sorted({k for r in rows for k in r} - set(columns))
    frame = pd.DataFrame.from_records(rows, columns=columns + extra)
    for column in ("index", "tokens", "supervised_tokens"):  # whole numbers, <NA> where a sample has none
        frame[column] = frame[column].astype("Int64")
    return frame


def keep(report: Report, data: Any, *, fail_on: str | Severity = Severity.ERROR) -> Any:
    """The rows of ``data`` (the object that was scanned) without a finding at or above ``fail_on``, as the
    same kind of object: a ``datasets.Dataset`` / ``IterableDataset``, a list, a pandas DataFrame or a pyarrow
    Table."""
    kind = f"{type(data).__module__.split('.', 1)[0]}.{type(data).__name__}"
    size = None if kind == "datasets.IterableDataset" else _length(data, kind)
    scanned = report.summary["samples"]
    if report.summary.get("shard") or (size is not None and scanned != size):
        raise UsageError(f"the report covers {scanned:,} of the rows, not all {size if size is not None else ''} "
                         "of this object (a shard, a limit, or another object): keep() needs a scan of the whole "
                         "object")
    good = indices(report, fail_on=fail_on)
    if kind == "datasets.Dataset":
        return data.select(good)
    if kind == "datasets.IterableDataset":
        # IterableDataset.filter decodes every row it tests, so one unreadable image (the reason a row goes)
        # would end the iteration: the rows are passed on as stored, and decode as the user's features say
        import datasets

        return datasets.IterableDataset.from_generator(
            _stored_rows, features=data.features, gen_kwargs={"data": data, "wanted": frozenset(good)})
    if kind == "pandas.DataFrame":
        return data.iloc[good]
    if kind in ("pyarrow.Table", "pyarrow.RecordBatch"):
        return data.take(good)
    if isinstance(data, tuple):
        return tuple(data[i] for i in good)
    if isinstance(data, list):
        return [data[i] for i in good]
    raise UsageError(f"keep() takes the object that was scanned (a datasets.Dataset, a list, a DataFrame or a "
                     f"pyarrow Table), not a {type(data).__name__}; for files, use report.indices() or "
                     "vlmcheck.repair")


def _stored_rows(data: Any, wanted: frozenset[int]) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(data.decode(False)):
        if i in wanted:
            yield row


def _length(data: Any, kind: str) -> int | None:
    if kind in ("pyarrow.Table", "pyarrow.RecordBatch"):
        return int(data.num_rows)
    try:
        return len(data)
    except TypeError:
        return None
