"""Render a conversation with a checkpoint's chat template the way transformers'
``apply_chat_template`` does (same Jinja environment, filters, globals and variables), without
importing transformers.

>>> render_chat("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}",
...             [{"role": "user", "content": "hi"}])
'user: hi\\n'
"""

from __future__ import annotations

import json
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
