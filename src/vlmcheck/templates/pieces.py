"""A conversation rendered with a chat template, cut into the pieces each turn adds.

The pieces come from rendering growing prefixes of the conversation (as transformers' ``apply_chat_template``
renders them): the text an assistant turn adds after the generation prompt is that turn's own text (the answer
and its end-of-turn marker), everything else is prompt. Located by characters, never by token arithmetic.

>>> t = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}" \\
...     "{% if add_generation_prompt %}<assistant>{% endif %}"
>>> render_pieces(t, [("user", "Hi"), ("assistant", "Hello")], {}).pieces
[('<user>Hi</s>', False), ('<assistant>', False), ('Hello</s>', True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmcheck.chat import render_chat
from vlmcheck.errors import UsageError


class TemplateRaises(Exception):
    """The chat template raises while rendering a conversation (``raise_exception``, a type error, a bound of the
    sandbox): ``apply_chat_template`` raises the same, and the run stops."""


def describe(error: BaseException) -> str:
    """What a template's error says, for a message."""
    if isinstance(error, RecursionError):
        return "RecursionError"
    return f"{type(error).__name__}: {str(error)[:200]}"


def render(template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """:func:`vlmcheck.chat.render_chat`; whatever the template raises is :class:`TemplateRaises`."""
    try:
        return render_chat(template, messages, **kwargs)
    except Exception as e:  # the template's own code runs here: any error is the template's
        raise TemplateRaises(describe(e)) from None


@dataclass
class Pieces:
    """The rendered text, as consecutive (text, is-assistant-turn) pieces."""

    text: str
    pieces: list[tuple[str, bool]]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Character spans of the assistant turns."""
        out, pos = [], 0
        for piece, sup in self.pieces:
            if sup:
                out.append((pos, pos + len(piece)))
            pos += len(piece)
        return out

    def pairs(self) -> list[tuple[str, str]]:
        """(prompt, answer) pairs as LLaMA-Factory's ``encode_multiturn`` builds them: everything since the
        previous answer (system, user turn, generation prompt) is one prompt; text after the last answer is
        dropped (LLaMA-Factory drops samples that do not end with an answer)."""
        out, prompt = [], ""
        for piece, sup in self.pieces:
            if sup:
                out.append((prompt, piece))
                prompt = ""
            else:
                prompt += piece
        return out


def dicts(messages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"role": r, "content": c} for r, c in messages]


def render_pieces(template: str, messages: list[tuple[str, str]], special: dict[str, Any]) -> Pieces:
    """Render ``messages`` and cut the text into the pieces each turn adds (see the module docstring)."""
    rows = dicts(messages)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, (role, _) in enumerate(messages):
        if role == "assistant":
            prompt = render(template, rows[:k], special_tokens=special, add_generation_prompt=True)
            if prompt.startswith(done) and len(prompt) > len(done):
                pieces.append((prompt[len(done):], False))
                done = prompt
        full = render(template, rows[: k + 1], special_tokens=special)
        if not full.startswith(done):
            raise UsageError("the chat template does not render conversations as growing prefixes")
        pieces.append((full[len(done):], role == "assistant"))
        done = full
    return Pieces(done, pieces)


def generation_prompt(template: str, messages: list[tuple[str, str]], special: dict[str, Any]) -> str:
    """The text ``add_generation_prompt=True`` adds after ``messages`` (e.g. ``"<|im_start|>assistant\\n"``)."""
    rows = dicts(messages)
    with_prompt = render(template, rows, special_tokens=special, add_generation_prompt=True)
    without = render(template, rows, special_tokens=special)
    return with_prompt[len(without):] if with_prompt.startswith(without) else ""


def user_header(template: str, special: dict[str, Any]) -> str:
    """The text a template writes before a user message that follows an answer (``"<|im_start|>user\\n"``),
    found by rendering a probe conversation."""
    probe = "\u2060vlmcheck-user-probe\u2060"
    msgs = [("user", "a"), ("assistant", "b"), ("user", probe)]
    before = render(template, dicts(msgs[:2]), special_tokens=special)
    full = render(template, dicts(msgs), special_tokens=special)
    at = full.find(probe)
    if not full.startswith(before) or at < len(before):
        raise UsageError("cannot find the user header of this chat template; pass instruction_part")
    return full[len(before):at]
