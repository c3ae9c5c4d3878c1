"""Render a conversation with a checkpoint's chat template the way transformers'
``apply_chat_template`` does (same Jinja environment, filters, globals and variables), without
importing transformers.

>>> render_chat("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}",
...             [{"role": "user", "content": "hi"}])
'user: hi\\n'
"""

from __future__ import annotations

import json
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
    (transformers' ``return_assistant_tokens_mask``); rendering just emits the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        body = str(caller())
        return f"{_GEN_OPEN}{body}{_GEN_CLOSE}" if _MARK_GENERATION.get() else body


# While set, generation blocks are wrapped in these private-use characters so their spans can be found
# (transformers' AssistantTracker records the same spans while rendering).
_GEN_OPEN, _GEN_CLOSE = "\U000F0000", "\U000F0001"
_MARK_GENERATION: ContextVar[bool] = ContextVar("mark_generation", default=False)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers overrides jinja's tojson: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """Compile once per template string (compiling costs far more than rendering)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
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
    return compile_template(template).render(
        messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt,
        **variables,
    )


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
    token = _MARK_GENERATION.set(True)
    try:
        marked = render_chat(template, messages, special_tokens=special_tokens,
                             add_generation_prompt=add_generation_prompt, **template_kwargs)
    finally:
        _MARK_GENERATION.reset(token)
    text: list[str] = []
    spans: list[tuple[int, int]] = []
    at = 0
    start = 0
    for char in marked:
        if char == _GEN_OPEN:
            start = at
        elif char == _GEN_CLOSE:
            spans.append((start, at))
        else:
            text.append(char)
            at += 1
    return "".join(text), spans
