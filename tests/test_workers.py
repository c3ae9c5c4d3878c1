"""``workers=N`` uses N processes and gives exactly the single-process result, in order; the default (None) picks
one process for small data and one per core otherwise, each pool worker tokenizing on one thread."""

from __future__ import annotations

import json

import pytest

from vlmcheck import scan
from vlmcheck.demo.run import DATA


def test_two_workers_match_one(tmp_path, qwen2_vl_checkpoint):
    rows = DATA.read_text().splitlines() * 20  # > several chunks, so both workers get work
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    r1 = scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=one, image_root=DATA.parent)
    r2 = scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=two, workers=2,
              image_root=DATA.parent)
    assert one.read_text() == two.read_text()
    assert len(one.read_text().splitlines()) == len(rows)
    s1, s2 = dict(r1.summary), dict(r2.summary)
    for key in ("seconds", "samples_per_second"):
        s1.pop(key), s2.pop(key)
    assert s1 == s2
    assert json.loads(one.read_text().splitlines()[0])["tokens"] > 0


def test_auto_workers_counts_small_data_here_and_large_data_on_every_core(monkeypatch) -> None:
    from vlmcheck import pipeline

    chunks = [[(i, {"row": i}) for i in range(k, k + 100)] for k in range(0, 1000, 100)]
    monkeypatch.setattr(pipeline, "AUTO_MIN_ROWS", 1001)
    workers, again = pipeline.auto_workers(iter(chunks), chunk_size=100)
    assert workers == 1 and list(again) == chunks  # read to the end to know: every chunk still there, in order
    monkeypatch.setattr(pipeline, "AUTO_MIN_ROWS", 300)
    monkeypatch.setattr(pipeline, "cores", lambda: 4)
    workers, again = pipeline.auto_workers(iter(chunks), chunk_size=100)
    assert workers == 3 and list(again) == chunks  # no more workers than the chunks read so far
    monkeypatch.setattr(pipeline, "AUTO_MIN_ROWS", 500)
    assert pipeline.auto_workers(iter(chunks), chunk_size=100)[0] == 4
    monkeypatch.setattr(pipeline, "cores", lambda: 1)
    assert pipeline.auto_workers(iter(chunks), chunk_size=100)[0] == 1


def test_default_workers_give_the_one_process_records(tmp_path, qwen2_vl_checkpoint, monkeypatch) -> None:
    from vlmcheck import pipeline

    monkeypatch.setattr(pipeline, "AUTO_MIN_ROWS", 600)  # the demo rows x 60 pass it: a pool, if cores allow
    used: list[int] = []
    real = pipeline.auto_workers

    def spy(chunks, *, chunk_size):
        workers, chunks = real(chunks, chunk_size=chunk_size)
        used.append(workers)
        return workers, chunks

    monkeypatch.setattr(pipeline, "auto_workers", spy)
    rows = DATA.read_text().splitlines() * 60
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    one, auto = tmp_path / "one.jsonl", tmp_path / "auto.jsonl"
    scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=one, image_root=DATA.parent, workers=1)
    scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=auto, image_root=DATA.parent)
    assert used == [min(pipeline.cores(), 2)]  # len(rows) // 512 chunks
    assert one.read_text() == auto.read_text()


class _Environ:
    """A counter that answers each row with its process's tokenizer settings (what the pool worker sees)."""

    chunk_size = 1
    options = None
    model_name = model_type = "environ"
    settings = None

    def count_chunk(self, rows):
        import os

        return [(os.getpid(), os.environ.get("RAYON_RS_NUM_CPUS"), os.environ.get("TOKENIZERS_PARALLELISM"))
                for _ in rows]

    def recipe(self):
        return self

    def build(self):
        return self


def test_each_pool_worker_tokenizes_on_one_thread(monkeypatch) -> None:
    import os

    from vlmcheck.pipeline import count_all

    monkeypatch.delenv("RAYON_RS_NUM_CPUS", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    seen = list(count_all(_Environ(), iter([[(i, None)] for i in range(8)]), workers=2))
    assert {s[1:] for s in seen} == {("1", "false")} and os.getpid() not in {s[0] for s in seen}
    assert "RAYON_RS_NUM_CPUS" not in os.environ  # this process keeps the library's own threads
    monkeypatch.setenv("RAYON_RS_NUM_CPUS", "3")  # a user's own choice stands
    seen = list(count_all(_Environ(), iter([[(i, None)] for i in range(4)]), workers=2))
    assert {s[1] for s in seen} == {"3"}


_HELD = __import__("threading").Lock()


class _Locking(_Environ):
    """A counter whose rows take a lock this module holds while the pool runs (as a thread of the caller's may
    hold the tokenizers library's, a logger's or an allocator's lock at the moment workers are made)."""

    def count_chunk(self, rows):
        got = _HELD.acquire(timeout=5)
        if got:
            _HELD.release()
        return ["free" if got else "held" for _ in rows]


def test_workers_do_not_inherit_a_lock_held_in_this_process() -> None:
    # a forked worker starts with a copy of every lock this process holds, held, and with none of the threads
    # that would release them: it hangs on the first one it takes. Workers come from a clean fork server.
    from vlmcheck.pipeline import count_all

    with _HELD:
        seen = list(count_all(_Locking(), iter([[(i, None)] for i in range(4)]), workers=2))
    assert seen == ["free"] * 4


class _Dying(_Environ):
    """A counter whose worker process dies (killed, out of memory) on the chunk holding row 5."""

    def __init__(self) -> None:
        import os

        self.parent = os.getpid()

    def count_chunk(self, rows):
        import os

        if os.getpid() != self.parent and any(index == 5 for index, _ in rows):
            os._exit(9)
        return [index for index, _ in rows]


def test_a_worker_that_dies_loses_no_row_and_hangs_nothing() -> None:
    import threading

    from vlmcheck.pipeline import count_all

    out: list = []
    runner = threading.Thread(target=lambda: out.extend(count_all(_Dying(), iter([[(i, None)] for i in range(12)]),
                                                                  workers=2)), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the scan waited for a chunk of a dead worker"
    assert out == list(range(12))


def test_a_pool_broken_before_the_next_submit_loses_no_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pool learns of a dead worker on its own thread, before any result is asked for: the next submit raises,
    # and that chunk and the rest are counted here (the pool's own exception, raised as it raises it)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from vlmcheck.pipeline import count_all

    submit, calls = ProcessPoolExecutor.submit, []

    def breaking(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise BrokenProcessPool("A child process terminated abruptly")
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", breaking)
    out = list(count_all(_Dying(), iter([[(i, None)] for i in range(6, 12)]), workers=2))
    assert out == list(range(6, 12)) and len(calls) == 2


def test_a_script_without_a_main_guard_is_not_run_again_by_its_workers(tmp_path, qwen2_vl_checkpoint) -> None:
    # the workers are not forks of the script; they must not import it as their __main__ either (the script
    # would launch itself once per worker, and its scan again from there)
    import subprocess
    import sys

    rows = DATA.read_text().splitlines() * 20
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    runs = tmp_path / "runs.txt"
    script = tmp_path / "train_check.py"
    script.write_text(
        "import vlmcheck\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"report = vlmcheck.scan({str(data)!r}, model={str(qwen2_vl_checkpoint)!r}, max_length=4096,\n"
        f"                       image_root={str(DATA.parent)!r}, workers=2)\n"
        "print(report.summary['samples'])\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(rows))]
    assert runs.read_text() == "run\n"
