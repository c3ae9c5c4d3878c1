"""The fixture cache lock (tests/cache_lock.py) that lets the tests run in several processes: a builder runs alone
across processes and threads, and a builder called from inside another does not wait for itself."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cache_lock import cache_lock, serialized

HERE = Path(__file__).parent


def test_a_nested_builder_does_not_wait_for_the_lock_its_caller_holds(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMCHECK_CACHE", str(tmp_path))

    @serialized
    def inner() -> str:
        return "built"

    @serialized
    def outer() -> str:
        return inner()

    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(outer()))
    worker.start()
    worker.join(30)
    assert done == ["built"]


def test_two_threads_build_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMCHECK_CACHE", str(tmp_path))
    inside: list[int] = []
    overlaps: list[int] = []

    @serialized
    def build() -> None:
        inside.append(1)
        if len(inside) > 1:
            overlaps.append(len(inside))
        time.sleep(0.2)
        inside.pop()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == []


def test_another_process_waits_while_the_lock_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMCHECK_CACHE", str(tmp_path))
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('busy')\n"
             "else:\n    print('free')")
    lock_file = str(tmp_path / ".build.lock")
    with cache_lock():
        held = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, timeout=60)
    after = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, timeout=60)
    assert (held.stdout.strip(), after.stdout.strip()) == ("busy", "free")
