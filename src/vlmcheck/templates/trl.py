"""TRL's ``assistant_only_loss=True`` route (TRL 1.16, transformers 5.x) as ``vlmcheck template`` runs it: the
facts are :mod:`vlmcheck.frameworks.trl`'s (the training template, the tokenizer's mask); this module puts them
together for a conversation.

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

from dataclasses import dataclass

from vlmcheck.chat import render_chat_with_generation_spans
from vlmcheck.frameworks.trl import TrainingTemplate, find_training_template, tokenizer_assistant_mask
from vlmcheck.templates.pieces import TemplateRaises, describe, dicts
from vlmcheck.tokenizer import Tok

__all__ = ["TrainingTemplate", "TrlLabels", "assistant_mask", "training_template"]

# which template TRL trains with (fact 1) is the framework module's; ``vlmcheck template`` reads it from there
training_template = find_training_template


@dataclass
class TrlLabels:
    text: str
    input_ids: list[int]
    supervised: list[bool]
    blocks: list[tuple[int, int]]


def assistant_mask(template: str, messages: list[tuple[str, str]], tok: Tok) -> TrlLabels:
    """``apply_chat_template(..., return_assistant_tokens_mask=True)`` on a tokenizer (fact 2 above): the
    rendering and its generation spans from :mod:`vlmcheck.chat`, the tokens they mask from the framework module
    (:func:`vlmcheck.frameworks.trl.tokenizer_assistant_mask`)."""
    try:
        text, blocks = render_chat_with_generation_spans(template, dicts(messages),
                                                         special_tokens=tok.special_map())
    except Exception as e:  # the template's own code runs here: any error is the template's
        raise TemplateRaises(describe(e)) from None
    enc = tok.encode(text, add_special_tokens=False)
    mask = tokenizer_assistant_mask(blocks, char_to_token=enc.char_to_token, length=len(enc.ids))
    return TrlLabels(text, list(enc.ids), mask, blocks)
