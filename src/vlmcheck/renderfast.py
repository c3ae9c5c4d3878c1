"""Chat templates met often, rendered by Python written out for them instead of Jinja, byte for byte the same.

Rendering through the sandboxed Jinja environment (:mod:`vlmcheck.chat`) costs about 140 us per sample, a
seventh of a scan. A template is recognised by its exact text (its SHA-256); the written-out render takes
only conversations of the plain shapes it was written for (string roles, string content or a list of dicts
with string text) and answers None for anything else, which Jinja then renders. As a guard beyond the tests,
:class:`FastRender` renders its first conversations both ways and stops using the written-out render for
good at the first difference. ``VLMCHECK_FAST_RENDER=0`` turns it off. ``tests/test_renderfast.py``
compares the two on the benchmark's conversations and on odd shapes, and whole scans' records.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, TypeGuard

from vlmcheck.chat import MAX_RENDER_CHARS, render_chat

Render = Callable[[list[Any]], "str | None"]
_CHECKED = 64  # conversations rendered both ways before the written-out render is trusted alone


def _text(value: Any) -> TypeGuard[str]:
    return type(value) is str  # exactly str: a subclass could render otherwise


def _qwen2_vl(messages: list[Any]) -> str | None:
    """The processor chat template of Qwen2-VL and Qwen2.5-VL (``demo.checkpoints.QWEN2_VL_CHAT_TEMPLATE``),
    without a generation prompt and without ``add_vision_id``, as the scan renders it."""
    out: list[str] = []
    for i, message in enumerate(messages):
        if type(message) is not dict or not _text(message.get("role")):
            return None
        role = message["role"]
        if i == 0 and role != "system":
            out.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        out.append(f"<|im_start|>{role}\n")
        content = message.get("content")
        if _text(content):
            out.append(content)
        elif type(content) is list:
            for part in content:
                if type(part) is not dict:
                    return None
                kind = part.get("type")
                if kind is not None and not _text(kind):
                    return None
                if kind == "image" or "image" in part or "image_url" in part:
                    out.append("<|vision_start|><|image_pad|><|vision_end|>")
                elif kind == "video" or "video" in part:
                    out.append("<|vision_start|><|video_pad|><|vision_end|>")
                elif "text" in part:
                    if not _text(part["text"]):
                        return None
                    out.append(part["text"])
        else:
            return None
        out.append("<|im_end|>\n")
    return "".join(out)


# SHA-256 of a template's text -> its written-out render
_WRITTEN_OUT: dict[str, Render] = {
    "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb": _qwen2_vl,
}


def written_out(template: str | None) -> Render | None:
    """The written-out render of ``template``, or None where there is none."""
    if template is None:
        return None
    return _WRITTEN_OUT.get(hashlib.sha256(template.encode("utf-8", "surrogatepass")).hexdigest())


class FastRender:
    """``render(messages)``: the written-out render of ``template`` where it takes the conversation, else None
    (the caller renders with Jinja). The first conversations are rendered with Jinja too and compared.

    >>> from vlmcheck.demo.checkpoints import QWEN2_VL_CHAT_TEMPLATE
    >>> fast = FastRender(QWEN2_VL_CHAT_TEMPLATE, special_tokens={})
    >>> fast.render([{"role": "user", "content": "Hi"}])
    '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n'
    """

    def __init__(self, template: str | None, *, special_tokens: dict[str, Any]) -> None:
        off = os.environ.get("VLMCHECK_FAST_RENDER", "1").strip().lower() in ("0", "false", "no", "off")
        self.template = template
        self.special_tokens = special_tokens
        self.written: Render | None = None if off else written_out(template)
        self.checked = 0

    def render(self, messages: list[Any]) -> str | None:
        written = self.written
        if written is None:
            return None
        text = written(messages)
        if text is None or len(text) > MAX_RENDER_CHARS:
            return None  # Jinja renders it (and says what is wrong with it)
        if self.checked < _CHECKED:
            assert self.template is not None
            try:
                same = render_chat(self.template, messages, special_tokens=self.special_tokens) == text
            except Exception:
                same = False
            if not same:
                self.written = None
                return None
            self.checked += 1
        return text
