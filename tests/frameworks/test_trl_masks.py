"""Which tokens TRL's ``assistant_only_loss`` trains: one home (``vlmcheck.frameworks.trl``), two routes, each
proved against the transformers code it models, run for real.

- the spans: transformers' own ``render_jinja_template(return_assistant_tokens_mask=True)`` (its AssistantTracker)
  on every training template the installed TRL ships and on templates whose ``{% generation %}`` sits in a macro,
  a ``{% set %}`` block or a filter, where the tracker's span is not where the text lands;
- the tokenizer route (``vlmcheck template``): the real tokenizer's ``apply_chat_template``'s ``assistant_masks``;
- the processor route (``vlmcheck check``'s TRL runs): ``ProcessorMixin._adjust_assistant_masks_indices`` on the
  real tokenizer's offsets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trl
from transformers import AutoTokenizer
from transformers.processing_utils import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from vlmcheck.chat import render_chat_with_generation_spans
from vlmcheck.frameworks.trl import processor_assistant_mask, tokenizer_assistant_mask
from vlmcheck.tokenizer import Tok

SHIPPED = sorted((Path(trl.__file__).parent / "chat_templates").glob("*_training.jinja"))
CONVERSATION = [{"role": "user", "content": "What is in the picture?"}, {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Grey, with white paws."}]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
# {% generation %} where Jinja buffers the output: the tracker counts only what was yielded before the buffer
BUFFERED = {
    "macro": "{% macro answer(m) %}<a>{% generation %}{{ m }}<end>{% endgeneration %}{% endmacro %}"
             "{% for m in messages %}[{{ m.role }}]{% if m.role == 'assistant' %}{{ answer(m.content) }}"
             "{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "set": "{% for m in messages %}{% set turn %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
           "{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endset %}..{{ turn }}"
           "{% endfor %}",
    "filter": "{% for m in messages %}--{% filter upper %}<{{ m.role }}>{% if m.role == 'assistant' %}"
              "{% generation %}{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
              "{% endfilter %}{% endfor %}",
    "plain": "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
             "<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
}
TEMPLATES = {**{p.name: p.read_text(encoding="utf-8") for p in SHIPPED}, **BUFFERED}


def transformers_spans(template: str) -> tuple[str, list[tuple[int, int]]]:
    texts, spans = render_jinja_template([CONVERSATION], chat_template=template, return_assistant_tokens_mask=True,
                                         **SPECIAL)
    return texts[0], [tuple(s) for s in spans[0]]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_generation_spans_are_the_assistant_trackers(name: str) -> None:
    try:
        expected = transformers_spans(TEMPLATES[name])
    except Exception as e:  # a template that needs other rows (typed parts) is no case for these rows
        pytest.skip(f"transformers cannot render these rows with {name}: {e}")
    assert render_chat_with_generation_spans(TEMPLATES[name], CONVERSATION, special_tokens=SPECIAL) == expected


@pytest.fixture(scope="module")
def qwen() -> tuple[Tok, Any]:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    folder = qwen_checkpoint("qwen2_vl")
    return Tok.load(folder), AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("name", ["macro", "set", "filter", "plain", "qwen2_5_vl_training.jinja"])
def test_both_routes_mask_what_transformers_masks(qwen: tuple[Tok, Any], name: str) -> None:
    tok, hf = qwen
    template = TEMPLATES[name]
    special = tok.special_map()
    text, spans = render_chat_with_generation_spans(template, CONVERSATION, special_tokens=special)
    encoding = tok.encode(text, add_special_tokens=False)
    real = hf.apply_chat_template(CONVERSATION, chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    assert list(encoding.ids) == real["input_ids"]
    ours = tokenizer_assistant_mask(spans, char_to_token=encoding.char_to_token, length=len(encoding.ids))
    assert ours == [bool(x) for x in real["assistant_masks"]]
    processed = {"input_ids": [list(encoding.ids)], "offset_mapping": [list(encoding.offsets)]}
    # the processor's own code (self is unused): no image placeholders here, so no replacement offsets
    adjusted = ProcessorMixin._adjust_assistant_masks_indices(None, processed, [spans])  # type: ignore[arg-type]
    assert processor_assistant_mask(spans, encoding.offsets) == [bool(x) for x in adjusted["assistant_masks"][0]]
    assert any(ours)
