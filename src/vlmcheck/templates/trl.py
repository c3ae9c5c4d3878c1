"""TRL's ``assistant_only_loss=True`` route (TRL 1.16, transformers 5.x), modelled from their source.

Facts (``trl/trainer/sft_trainer.py``, ``trl/chat_template_utils.py``, transformers'
``PreTrainedTokenizerBase.apply_chat_template`` and ``utils/chat_template_utils.py``):

1. At ``SFTTrainer`` init, a chat template without ``{% generation %}`` markers is swapped for TRL's training
   variant when it is byte-identical to one TRL ships (``trl/chat_templates/<name>.jinja`` ->
   ``<name>_training.jinja``); otherwise ``get_training_chat_template`` raises ValueError ("The chat template is
   not training-compatible ...").
2. Each conversation is rendered once; the generation blocks' character ranges are recorded while rendering; the
   text is tokenized with ``add_special_tokens=False``. For each block, ``char_to_token(start)`` and
   ``char_to_token(end - 1)`` bound the masked tokens; a block whose start has no token stops the loop, one whose
   end has no token runs to the end of the sequence.
3. A sample with no assistant token raises RuntimeError ("You're using `assistant_only_loss=True`, but at least
   one example has no assistant tokens ...") and stops the run.
4. ``labels`` = ``input_ids`` where the mask is 1, else -100; then truncation to ``max_length``
   (``keep_start``: the first ``max_length`` tokens) and, since TRL 1.x, samples left with no label are dropped
   ("Dropping fully masked examples"): silently, they train on nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vlmcheck.chat import raise_exception, strftime_now, tojson
from vlmcheck.frameworks.trl import has_generation_markers, shipped_training_templates
from vlmcheck.templates.pieces import dicts
from vlmcheck.tokenizer import Tok


@dataclass
class TrainingTemplate:
    """The template TRL trains with, or why there is none."""

    template: str | None
    source: str  # "own markers" | "trl:<name>_training.jinja" | why none


def training_template(template: str) -> TrainingTemplate:
    """What ``SFTTrainer(assistant_only_loss=True)`` does with ``template`` at init (fact 1 above), from the
    framework module (:mod:`vlmcheck.frameworks.trl`); without TRL installed the swap cannot be checked and the
    answer says so."""
    if has_generation_markers(template):
        return TrainingTemplate(template, "own markers")
    shipped = shipped_training_templates()
    if shipped is None:
        return TrainingTemplate(None, "the chat template has no {% generation %} markers, and TRL is not installed "
                                      "here to tell whether it ships a training variant of it")
    if template in shipped:
        name, text = shipped[template]
        return TrainingTemplate(text, f"trl:{name}")
    return TrainingTemplate(None, "the chat template has no {% generation %} markers and is not one TRL ships a "
                                  "training variant of")


class _Tracker(Extension):
    """``{% generation %}`` that records the character range of its output, as transformers' AssistantTracker
    does: the start is the length of everything the template has yielded so far."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self.blocks: list[str] | None = None
        self.indices: list[tuple[int, int]] | None = None

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_track", []), [], [], body).set_lineno(lineno)

    def _track(self, caller: Any) -> str:
        rv = str(caller())
        if self.blocks is not None and self.indices is not None:
            start = len("".join(self.blocks))
            self.indices.append((start, start + len(rv)))
        return rv

    @contextmanager
    def tracking(self, blocks: list[str], indices: list[tuple[int, int]]) -> Iterator[None]:
        self.blocks, self.indices = blocks, indices
        try:
            yield
        finally:
            self.blocks = self.indices = None


@lru_cache(maxsize=16)
def _compile(template: str) -> tuple[jinja2.Template, _Tracker]:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Tracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    tracker = next(e for e in env.extensions.values() if isinstance(e, _Tracker))
    return env.from_string(template), tracker


def render_with_generation(template: str, messages: list[tuple[str, str]],
                           special: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character ranges of its ``{% generation %}`` blocks."""
    compiled, tracker = _compile(template)
    blocks: list[str] = []
    indices: list[tuple[int, int]] = []
    with tracker.tracking(blocks, indices):
        for block in compiled.generate(messages=dicts(messages), tools=None, documents=None,
                                       add_generation_prompt=False, **special):
            blocks.append(block)
    return "".join(blocks), indices


@dataclass
class TrlLabels:
    text: str
    input_ids: list[int]
    supervised: list[bool]
    blocks: list[tuple[int, int]]


def assistant_mask(template: str, messages: list[tuple[str, str]], tok: Tok) -> TrlLabels:
    """``apply_chat_template(..., return_assistant_tokens_mask=True)`` on a tokenizer (fact 2 above)."""
    text, blocks = render_with_generation(template, messages, tok.special_map())
    enc = tok.encode(text, add_special_tokens=False)
    n = len(enc.ids)
    mask = [False] * n
    for start_char, end_char in blocks:
        start = enc.char_to_token(start_char)
        end = enc.char_to_token(end_char - 1)
        if start is None:
            break
        for t in range(start, end + 1 if end else n):
            mask[t] = True
    return TrlLabels(text, list(enc.ids), mask, blocks)
