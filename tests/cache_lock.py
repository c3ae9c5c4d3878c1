"""One lock for the fixtures built into ``$VLMCHECK_CACHE`` (checkpoint folders, vocabularies assembled from
registry packages): the tests run in several processes (pytest-xdist), and two of them must not build, or clear, the
same folder at once. ``serialized`` builders take an exclusive ``flock`` on ``$VLMCHECK_CACHE/.build.lock`` for the
call; a builder called from inside another (a checkpoint needing its vocabulary) already holds it. The depth is kept
per thread (a second thread waits for the lock like another process). A builder must not start a Python process that
calls a builder itself: the child would wait for the lock its parent holds."""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_depth = threading.local()  # how deep this thread is inside the lock


def cache_root() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


@contextmanager
def cache_lock() -> Iterator[None]:
    held = getattr(_depth, "n", 0)
    if held:
        _depth.n = held + 1
        try:
            yield
        finally:
            _depth.n = held
        return
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _depth.n = 1
        try:
            yield
        finally:
            _depth.n = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def serialized(build: F) -> F:
    """``build`` run under the cache lock (a few microseconds when its folder is there already)."""

    @functools.wraps(build)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with cache_lock():
            return build(*args, **kwargs)

    return locked  # type: ignore[return-value]
