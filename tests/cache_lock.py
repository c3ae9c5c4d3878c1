"""One lock for the fixtures built into ``$VLMCHECK_CACHE`` (checkpoint folders, vocabularies assembled from
registry packages): the tests run in several processes (pytest-xdist), and two of them must not build, or clear, the
same folder at once. ``serialized`` builders take an exclusive ``flock`` on ``$VLMCHECK_CACHE/.build.lock`` for the
call; a builder called from inside another (a checkpoint needing its vocabulary) already holds it."""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_held = 0  # how deep this process is inside the lock


def cache_root() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


@contextmanager
def cache_lock() -> Iterator[None]:
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def serialized(build: F) -> F:
    """``build`` run under the cache lock (a few microseconds when its folder is there already)."""

    @functools.wraps(build)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with cache_lock():
            return build(*args, **kwargs)

    return locked  # type: ignore[return-value]
