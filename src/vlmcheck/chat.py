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
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text in some templates
    (transformers' ``return_assistant_tokens_mask``); rendering just emits the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers overrides jinja's tojson: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
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

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                    raise RenderLimit(f"the template builds a value of {len(seq) * n:,} items")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 4096:
            raise RenderLimit(f"the template raises a number to the power {right}")
        return super().call_binop(context, operator, left, right)


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
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


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
    with _time_bound():
        pieces: list[str] = []
        size = 0
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise RenderLimit(f"the rendered text passes {MAX_RENDER_CHARS:,} characters")
            pieces.append(piece)
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
