"""PaliGemma / PaliGemma 2 (``model_type`` ``paligemma``): each image is a fixed run of
``image_seq_length`` ``<image>`` tokens, in front of ``<bos>`` + prompt + ``\\n``, and the answer
(``suffix``) + ``<eos>`` after it.

Sources (transformers 5.23.0):

- ``models/paligemma/processing_paligemma.py`` ``PaliGemmaProcessor``: no chat template; the
  processor builds the string itself. ``prepare_inputs_layout`` inserts ``bos_token`` right after
  the last ``<image>`` of the text (or, when the text has none, writes ``<image>`` once per image
  and ``bos_token`` in front of it) and appends ``"\\n"``; ``replace_image_token`` returns
  ``image_token * image_seq_length``; ``suffix`` gets ``eos_token`` appended and is tokenized as the
  ``text_pair``. ``__init__`` sets ``tokenizer.add_bos_token = False``: nothing is added besides
  what that string holds. ``image_seq_length`` is the image processor's attribute (its
  ``preprocessor_config.json``: 256 at 224 px, 1024 at 448 px, 4096 at 896 px).
- ``models/siglip/image_processing_pil_siglip.py``: every image is resized to ``size``, so the count
  never depends on the image's size.

A chat dataset maps onto the processor's training call ``processor(text=prompt, images=images,
suffix=answer)``: the user turn is the prompt (its images where its ``<image>`` tags are, or in
front) and the assistant turn the suffix. :data:`CHAT_TEMPLATE` renders exactly the string that
call tokenizes, and is used when the checkpoint has no chat template of its own (hub PaliGemma
checkpoints have none); other conversation shapes are rejected (VC001), since the processor defines
none. One known difference: the processor tokenizes the suffix apart from the prompt, so an answer
that starts with a newline keeps its ``"\\n"`` apart from the prompt's closing ``"\\n"``, where
tokenizing the whole string merges them into one ``"\\n\\n"`` token (vlmcheck counts one token fewer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    Overrides,
    SameSizeRowsLayout,
    single_run,
)

# processing_paligemma.py: IMAGE_TOKEN = "<image>" (id 257152 in the hub tokenizers)
IMAGE_TOKEN = "<image>"
# SigLIP So400m/14 (config.json vision_config.patch_size), for checkpoints that omit image_seq_length
DEFAULT_PATCH_SIZE = 14

# The string PaliGemmaProcessor builds for processor(text=prompt, images=..., suffix=answer):
# prompt parts in order with <bos> after the last image (in front when it has none), "\n", then
# answer + <eos>. One user turn and at most one assistant turn.
CHAT_TEMPLATE = (
    "{%- if messages | length == 0 or messages | length > 2 or messages[0]['role'] != 'user' "
    "or (messages | length == 2 and messages[1]['role'] != 'assistant') -%}"
    "{{ raise_exception(\"PaliGemma's processor takes one prompt (a user turn) and one suffix "
    "(an assistant turn); this conversation has roles \" + (messages | map(attribute='role') | join(', '))) }}"
    "{%- endif -%}"
    "{%- set prompt = messages[0]['content'] -%}"
    "{%- if prompt is string -%}{%- set prompt = [{'type': 'text', 'text': prompt}] -%}{%- endif -%}"
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for part in prompt -%}{%- if part['type'] == 'image' or 'image' in part -%}"
    "{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- if ns.last < 0 -%}{{ bos_token }}{%- endif -%}"
    "{%- for part in prompt -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}<image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- if loop.index0 == ns.last -%}{{ bos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n' }}"
    "{%- if messages | length == 2 -%}"
    "{%- set answer = messages[1]['content'] -%}"
    "{%- if answer is string -%}{{ answer }}{%- else -%}"
    "{%- for part in answer -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{{ eos_token }}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class PaliGemmaSettings:
    image_seq_length: int


def read_settings(preprocessor: dict[str, Any], config: dict[str, Any]) -> PaliGemmaSettings:
    """``image_seq_length`` of preprocessor_config.json (what the processor reads); else
    config.json's ``num_image_tokens`` (vision_config / text_config, as hub configs hold it); else
    (size / patch size)**2."""
    value = preprocessor.get("image_seq_length")
    for section in (config.get("vision_config") or {}, config.get("text_config") or {}, config):
        if value is None:
            value = section.get("num_image_tokens")
    if value is None:
        size = preprocessor.get("size") or {}
        side = size.get("height") if isinstance(size, dict) else size
        patch = (config.get("vision_config") or {}).get("patch_size") or DEFAULT_PATCH_SIZE
        value = (int(side or 224) // int(patch)) ** 2
    return PaliGemmaSettings(image_seq_length=int(value))


@dataclass(frozen=True)
class PaliGemmaFamily(SameSizeRowsLayout):
    """The batch layout (the collator guards) is :class:`SameSizeRowsLayout`: PaliGemmaProcessor.__call__
    returns pixel_values (images, 3, H, W), one row per image, each preceded in the text by the fixed
    image_seq_length <image>s."""

    name: str = "paligemma"
    title: str = "PaliGemma"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = ("exact for processor(text=prompt, images, suffix=answer): proved against transformers' "
                      "PaliGemmaProcessor (SiglipImageProcessorPil, a Gemma-family vocabulary with PaliGemma's "
                      "special tokens at their real ids) on 100+ images; an answer starting with a newline counts "
                      "one token fewer")
    # preprocessor_config.json: image_seq_length (config.json num_image_tokens as fallback)
    settings_read: tuple[str, ...] = ("image_seq_length", "num_image_tokens")
    # the template for checkpoints without one (hub PaliGemma checkpoints have none)
    chat_template: str = CHAT_TEMPLATE
    # PaliGemmaProcessor sets tokenizer.add_bos_token = False: BOS/EOS are only where the string has them
    adds_special_tokens: bool = False

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides
                 ) -> PaliGemmaSettings:
        return read_settings(preprocessor, config)

    def image_tokens(self, width: int, height: int, settings: PaliGemmaSettings) -> int:
        return settings.image_seq_length

    def expansion(self, settings: PaliGemmaSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: PaliGemmaSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, settings.image_seq_length)

    def check_image(self, width: int, height: int, settings: PaliGemmaSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: PaliGemmaSettings, max_pixels: int) -> None:
        return None  # every image is resized to one fixed size


FAMILY = PaliGemmaFamily()
