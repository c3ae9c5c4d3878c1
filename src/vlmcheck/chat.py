"""Render a conversation with a checkpoint's chat template the way transformers'
``apply_chat_template`` does (same Jinja environment, filters, globals and variables), without
importing transformers.

>>> render_chat("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}",
...             [{"role": "user", "content": "hi"}])
'user: hi\\n'
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text in some templates
    (transformers' ``return_assistant_tokens_mask``); rendering emits the body. While spans are tracked
    (:func:`render_chat_with_generation_spans`), each block's span is recorded as transformers' AssistantTracker
    records it: from the length of everything the template has yielded so far. Inside a macro, a ``{% set %}``
    block or a filter that is not where the text lands, and transformers masks where the tracker says."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        body = str(caller())
        tracking = _TRACKING.get()
        if tracking is not None:
            tracking.spans.append((tracking.yielded, tracking.yielded + len(body)))
        return body


class _Tracking:
    """One render's generation spans, and how many characters the template has yielded so far."""

    def __init__(self) -> None:
        self.yielded = 0
        self.spans: list[tuple[int, int]] = []


_TRACKING: ContextVar[_Tracking | None] = ContextVar("generation_tracking", default=None)


def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers overrides jinja's tojson: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


# A rendered conversation longer than this, or a render slower than this, is the template running away
# (`'x' * 10**9`, nested `range` loops): an error of that sample, never a hang or an exhausted machine.
MAX_RENDER_CHARS = 64 << 20
MAX_RENDER_SECONDS = 10.0


class RenderLimit(jinja2.exceptions.TemplateError):
    """The template's output or running time passed the bound (:data:`MAX_RENDER_CHARS`,
    :data:`MAX_RENDER_SECONDS`)."""


_deadline = threading.local()


def _check_deadline() -> None:
    until = getattr(_deadline, "until", None)
    if until is not None and time.monotonic() > until:
        raise RenderLimit(f"rendering takes over {MAX_RENDER_SECONDS:g} s")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus bounds on what one render may build: ``*`` and ``**`` that would make a string,
    list or number past :data:`MAX_RENDER_CHARS` raise, and ``range`` checks the clock as it goes."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if len(left) + len(right) > MAX_RENDER_CHARS:
                raise RenderLimit(f"the template builds a value of {len(left) + len(right):,} items")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                    raise RenderLimit(f"the template builds a value of {len(seq) * n:,} items")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 4096:
            raise RenderLimit(f"the template raises a number to the power {right}")
        return super().call_binop(context, operator, left, right)


def _bounded_join(items: Any) -> str:
    """Jinja's ``~`` (``str_join``), refusing a result past :data:`MAX_RENDER_CHARS`."""
    parts = [str(x) for x in items]
    if sum(map(len, parts)) > MAX_RENDER_CHARS:
        raise RenderLimit("the template builds a string past the bound with ~")
    return "".join(parts)


def _bounded_center(value: Any, width: int = 80) -> str:
    if isinstance(width, int) and width > MAX_RENDER_CHARS:
        raise RenderLimit(f"the template pads a string to {width:,} characters")
    return str(value).center(width)


def _bounded_range(*args: int) -> Iterator[int]:
    from jinja2.sandbox import safe_range

    for k, value in enumerate(safe_range(*args)):
        if not k & 255:
            _check_deadline()
        yield value


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """Compile once per template string (compiling costs far more than rendering)."""
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.globals["range"] = _bounded_range
    env.filters["center"] = _bounded_center
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    compiled = env.from_string(template)
    # `~` compiles to jinja2.runtime.str_join, looked up in the template module's globals: bound it there
    compiled.root_render_func.__globals__["str_join"] = _bounded_join
    return compiled


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    special_tokens: dict[str, Any] | None = None,
    add_generation_prompt: bool = False,
    tools: list[Any] | None = None,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` as ``apply_chat_template(..., tokenize=False)`` would.

    ``special_tokens`` is the tokenizer's special-tokens map (``bos_token``, ``eos_token``, ...),
    which transformers passes to every template.
    """
    variables: dict[str, Any] = dict(special_tokens or {})
    variables.update(template_kwargs)
    compiled = compile_template(template)
    context = dict(messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt,
                   **variables)
    tracking = _TRACKING.get()
    with _time_bound():
        pieces: list[str] = []
        size = 0
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise RenderLimit(f"the rendered text passes {MAX_RENDER_CHARS:,} characters")
            pieces.append(piece)
            if tracking is not None:
                tracking.yielded = size
            _check_deadline()
        return "".join(pieces)


class _time_bound:
    """Bound one render's time: ``range`` and every output piece check a deadline, and on the main thread of
    a POSIX process a timer interrupts even a loop that does neither (the previous handler is put back)."""

    def __enter__(self) -> None:
        self.outer = getattr(_deadline, "until", None)
        _deadline.until = time.monotonic() + MAX_RENDER_SECONDS
        self.timer = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
                      and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
        if self.timer:
            def expire(_signum: int, _frame: Any) -> None:
                raise RenderLimit(f"rendering takes over {MAX_RENDER_SECONDS:g} s")

            self.previous = signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, MAX_RENDER_SECONDS + 1)

    def __exit__(self, *exc: Any) -> None:
        if self.timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        _deadline.until = self.outer


def render_chat_with_generation_spans(
    template: str,
    messages: list[dict[str, Any]],
    *,
    special_tokens: dict[str, Any] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """:func:`render_chat`, and the character spans of its ``{% generation %}`` blocks (what
    ``return_assistant_tokens_mask=True`` masks).

    >>> render_chat_with_generation_spans("a{% generation %}b{% endgeneration %}c", [])
    ('abc', [(1, 2)])
    """
    tracking = _Tracking()
    token = _TRACKING.set(tracking)
    try:
        text = render_chat(template, messages, special_tokens=special_tokens,
                           add_generation_prompt=add_generation_prompt, **template_kwargs)
    finally:
        _TRACKING.reset(token)
    return text, tracking.spans
