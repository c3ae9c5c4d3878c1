"""LLaVA's conversation templates and label arithmetic, modelled on haotian-liu/LLaVA.

Facts from ``llava/conversation.py`` (templates: system text, roles, separators, ``get_prompt``) and
``llava/train/train.py`` (``preprocess_v1``, ``preprocess_llama_2``, ``preprocess_plain``), text-only path
(``has_image=False``: the whole prompt goes through ``tokenizer(...)``). Written from those facts, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmcheck.templates.check import Tok

_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAVA_LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using "
                        "natural language.")


@dataclass(frozen=True)
class Conv:
    """One entry of LLaVA's ``conv_templates``."""

    name: str
    style: str  # "two" | "llama_2" | "plain"  (SeparatorStyle.TWO / LLAMA_2 / PLAIN)
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None


TEMPLATES: dict[str, Conv] = {
    "v1": Conv("v1", "two", _V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    "vicuna_v1": Conv("vicuna_v1", "two", _V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_v1": Conv("llava_v1", "two", _LLAVA_V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_llama_2": Conv("llava_llama_2", "llama_2", _LLAVA_LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>"),
    "plain": Conv("plain", "plain", "", ("", ""), "\n", None),
}


@dataclass
class Rendered:
    """The prompt text and, per assistant turn, the character span LLaVA means to supervise."""

    text: str
    spans: list[tuple[int, int]]


def render(conv: Conv, messages: list[tuple[str, str]]) -> Rendered:
    """``Conversation.get_prompt()`` for user/assistant alternating ``messages``, with supervised spans.

    The supervised span of an assistant turn is its text plus the separator that ends it (``</s>``).
    """
    text = ""
    spans: list[tuple[int, int]] = []
    if conv.style == "two":
        assert conv.sep2 is not None
        text = conv.system + conv.sep
        for i, (_, msg) in enumerate(messages):
            text += conv.roles[i % 2] + ": "
            start = len(text)
            text += msg + (conv.sep if i % 2 == 0 else conv.sep2)
            if i % 2 == 1:
                spans.append((start, len(text)))
    elif conv.style == "llama_2":
        assert conv.sep2 is not None
        for i, (_, msg) in enumerate(messages):
            if i == 0:
                msg = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" + msg
            if i % 2 == 0:
                text += conv.sep + f"[INST] {msg} [/INST]"
            else:
                text += " "
                start = len(text)
                text += msg + " " + conv.sep2
                spans.append((start, len(text)))
        # get_prompt() ends with ret.lstrip(sep): strips the *characters* "<", "s", ">" from the left
        stripped = text.lstrip(conv.sep)
        shift = len(text) - len(stripped)
        text, spans = stripped, [(a - shift, b - shift) for a, b in spans]
    elif conv.style == "plain":
        # preprocess_plain keeps only "<image>" of the first turn, then the answer and sep
        answer = messages[1][1] if len(messages) > 1 else ""
        text = "<image>"
        spans.append((len(text), len(text) + len(answer) + len(conv.sep)))
        text += answer + conv.sep
    else:  # pragma: no cover - TEMPLATES is closed
        raise ValueError(conv.style)
    return Rendered(text, spans)


@dataclass
class LlavaLabels:
    """What LLaVA's preprocess builds: the input ids, the label mask, and its length check."""

    input_ids: list[int]
    supervised: list[bool]
    cur_len: int | None  # the arithmetic's total (None for plain, which has no check)
    total_len: int
    round_lens: list[int]
    warning: str | None


def preprocess(conv: Conv, rendered: Rendered, tok: Tok, *, legacy: bool, legacy_fix: bool = True,
               max_length: int | None = None) -> LlavaLabels:
    """The label mask LLaVA's ``preprocess_*`` builds for ``rendered.text``.

    ``legacy`` is what the framework reads from ``tokenizer.legacy``; ``legacy_fix`` is whether the LLaVA
    version subtracts 1 per round after the first when ``not tokenizer.legacy`` (added in early 2024).
    """
    ids = tok.ids(rendered.text)
    if max_length is not None:
        ids = ids[:max_length]
    total = len(ids)
    sup = [True] * total
    if conv.style == "plain":
        n = len(tok.ids("<image>"))
        for i in range(min(n, total)):
            sup[i] = False
        return LlavaLabels(ids, sup, None, total, [], None)
    assert conv.sep2 is not None
    sep = conv.sep + conv.roles[1] + ": " if conv.style == "two" else "[/INST] "
    cur = 1
    sup[:1] = [False] * min(1, total)
    round_lens: list[int] = []
    for i, rou in enumerate(rendered.text.split(conv.sep2)):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        head = parts[0] + sep
        round_len = len(tok.ids(rou))
        instruction_len = len(tok.ids(head)) - 2
        if conv.style == "two" and legacy_fix and i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        for j in range(cur, min(cur + instruction_len, total)):
            sup[j] = False
        round_lens.append(round_len)
        cur += round_len
    for j in range(cur, total):
        sup[j] = False
    warning = None
    limit = max_length if max_length is not None else tok.model_max_length
    if cur < limit and cur != total:
        sup = [False] * total
        warning = f"WARNING: tokenization mismatch: {cur} vs. {total}. (ignored)"
    return LlavaLabels(ids, sup, cur, total, round_lens, warning)
