"""Values nested deeper than vlmcheck reads.

The JSON and YAML a person writes (a launch config, a Hydra override, a notebook, a summary, a processor option)
nest a few levels. One nested hundreds of levels deep is not one: the parsers raise RecursionError on it (PyYAML
near 490 levels, ``json`` near 990), and so would every recursive walk over what they return. :func:`parse` reads
a text with a parser and refuses such a value, naming where it came from, before anything walks it.

>>> import json
>>> parse(json.loads, "[[1]]", where="x.json")
[[1]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from vlmcheck.errors import UsageError, VlmcheckError

T = TypeVar("T")

# deeper than any config, override, notebook or summary is written, far below where the parsers' recursion stops
DEPTH_LIMIT = 100


def too_deep(value: Any, limit: int = DEPTH_LIMIT) -> bool:
    """Whether ``value`` nests lists, tuples and mappings more than ``limit`` levels deep, or holds itself (a
    YAML alias of its own node). Walked without recursion, each container once (YAML aliases share nodes)."""
    if not isinstance(value, (dict, list, tuple)):
        return False
    heights: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, closing = stack.pop()
        children = list(node.values()) if isinstance(node, dict) else node
        if closing:
            open_ids.discard(id(node))
            height = 1 + max((heights.get(id(c), 0) for c in children), default=0)
            if height > limit:
                return True
            heights[id(node)] = height
            continue
        if id(node) in heights:
            continue
        if id(node) in open_ids:  # an ancestor of itself
            return True
        open_ids.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def nested_message(where: str) -> str:
    return (f"{where} is nested deeper than vlmcheck reads (over {DEPTH_LIMIT} levels of lists and mappings, or "
            "a value that holds itself)")


def parse(load: Callable[[str], T], text: str, *, where: str, error: type[VlmcheckError] = UsageError) -> T:
    """``load(text)``; a value nested deeper than :data:`DEPTH_LIMIT` is ``error`` naming ``where``. The
    parser's own errors (invalid JSON or YAML) are left to the caller."""
    try:
        value = load(text)
    except RecursionError:
        raise error(nested_message(where)) from None
    if too_deep(value):
        raise error(nested_message(where))
    return value
