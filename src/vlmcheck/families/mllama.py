"""Llama 3.2 Vision (``model_type`` ``mllama``): one ``<|image|>`` token per image, whatever its size.

Sources (transformers 5.23.0):

- ``models/mllama/processing_mllama.py`` ``MllamaProcessor``: ``replace_image_token`` returns
  ``self.image_token`` unchanged (one token); the image reaches the language model through
  cross-attention, so its tiles never become text tokens. ``build_string_from_input`` adds
  ``bos_token`` only when the text has none (after any leading ``<|image|>``); the chat template of
  the hub checkpoints writes it, and ``apply_chat_template(tokenize=True)`` then tokenizes without
  special tokens, as vlmcheck does for text that starts with BOS. ``validate_inputs`` requires as
  many ``<|image|>`` in the text as images.
- ``models/mllama/image_processing_pil_mllama.py`` ``MllamaImageProcessorPil``: the image is fitted
  to a canvas of at most ``max_image_tiles`` (4 on the hub) tiles of ``size`` (560); every size is
  accepted (``get_image_size_fit_to_canvas`` keeps each side at least 1 px), the tiles only shape
  ``pixel_values``, ``aspect_ratio_ids`` and ``cross_attention_mask``. So no image is rejected and
  no pixel budget changes the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmcheck.families.base import Expansion, ImageIssue, Overrides, single_run

# processing_mllama.py: self.image_token = "<|image|>" (id 128256 in the Llama 3.2 Vision tokenizer,
# config.json image_token_index)
IMAGE_TOKEN = "<|image|>"
# image_processing_pil_mllama.py: MllamaImageProcessorPil.max_image_tiles (hub preprocessor_config.json: 4)
DEFAULT_MAX_IMAGE_TILES = 4


@dataclass(frozen=True)
class MllamaSettings:
    max_image_tiles: int  # shapes pixel_values only; kept to show what the checkpoint holds


@dataclass(frozen=True)
class MllamaFamily:
    name: str = "mllama"
    title: str = "Llama 3.2 Vision (Mllama)"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = ("exact: one <|image|> per image (cross-attention); proved against transformers' "
                      "MllamaProcessor (MllamaImageProcessorPil, the real Llama 3 BPE with Llama 3.2 Vision's "
                      "special tokens at their real ids) on 100+ images")
    # preprocessor_config.json: max_image_tiles (does not change the text)
    settings_read: tuple[str, ...] = ("max_image_tiles",)

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides
                 ) -> MllamaSettings:
        return MllamaSettings(max_image_tiles=int(preprocessor.get("max_image_tiles") or DEFAULT_MAX_IMAGE_TILES))

    def image_tokens(self, width: int, height: int, settings: MllamaSettings) -> int:
        return 1

    def expansion(self, settings: MllamaSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: MllamaSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, 1)

    def check_image(self, width: int, height: int, settings: MllamaSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: MllamaSettings, max_pixels: int) -> None:
        return None  # an image is one token at any size


FAMILY = MllamaFamily()
