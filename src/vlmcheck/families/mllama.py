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
- The batch layout (the collator guards): ``MllamaProcessor.__call__`` returns ``pixel_values``
  ``[sample, image, tile, 3, 560, 560]``, ``aspect_ratio_ids`` ``[sample, image]`` (0: a padding image),
  ``aspect_ratio_mask`` ``[sample, image, tile]`` (``build_aspect_ratio_mask``: a padding image keeps its
  first tile on) and ``cross_attention_mask`` ``[sample, token, image, tile]``
  (``get_cross_attention_token_mask``: the text from an image's ``<|image|>`` on attends that image). So an
  image's span in the text is its one ``<|image|>`` and its features are the slot of ``pixel_values``; a
  cut cannot go through an image, only before its token. What transformers does with such a cut:
  ``ProcessorMixin._check_special_mm_tokens`` raises ``ValueError("Mismatch in `image` token count between
  text and `input_ids`...")`` when the processor itself truncates (TRL's vision collator with
  ``max_length``); after a plain slice of the batch ``MllamaModel.forward`` raises nothing: it cuts
  ``cross_attention_mask`` to the tokens, encodes every tile, and no token attends the cut image. An image
  taken out of ``pixel_values`` but left in ``cross_attention_mask`` breaks the cross-attention
  (a size mismatch), so a repair drops it from all four keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmcheck.families.base import Expansion, ImageIssue, LayoutTokens, MediaLayout, Overrides, single_run

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

    # -- the batch layout (the collator guards) --------------------------------------------------
    # One <|image|> per image, in the order of the sample's pixel_values slots (see the module docstring).
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN)
    mismatch_effect: str = (
        "transformers' MllamaProcessor raises 'Mismatch in `image` token count between text and `input_ids`' "
        "when it truncates such a sample itself; after a plain slice the model raises nothing: it encodes the "
        "image and no token attends it"
    )
    mismatch_fix: str = (
        "raise max_length so that each image's <|image|> token fits (an image is one token at any size: "
        "fewer pixels change nothing)"
    )

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        return {}  # the batch says everything: images per sample in aspect_ratio_ids

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        pixels = batch.get("pixel_values")
        if pixels is None:
            return MediaLayout([], [])
        ratios = batch.get("aspect_ratio_ids")
        if ratios is not None:  # 0 is a padding image (convert_aspect_ratios_to_ids)
            per_sample = [sum(1 for r in row if int(r) != 0) for row in ratios.tolist()]
        else:  # a padding image's pixels are all zero (pack_images); a real one is normalized, never all zero
            per_sample = [int(n) for n in (pixels.flatten(2) != 0).any(-1).sum(-1).tolist()]
        images = sum(per_sample)
        tiles = int(pixels.shape[2])
        return MediaLayout(
            [(1,)] * images,
            [1] * images,
            pixel_keys=("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"),
            items_per_sample=per_sample,
            slot_axes={"cross_attention_mask": 2},
            slot_fill={"aspect_ratio_mask": [1] + [0] * (tiles - 1)},
            token_keys=("cross_attention_mask",),
            unit="image slot",
        )


FAMILY = MllamaFamily()


def attended_images(ids: Sequence[int], image_token_id: int) -> list[frozenset[int]]:
    """The images each position of ``ids`` cross-attends, as ``get_cross_attention_token_mask`` (processing_mllama.py)
    spans them: from an image's ``<|image|>`` to the next one (the last: to the end); a run of consecutive
    ``<|image|>`` all attend from their place to where the run's last one stops."""
    places = [i for i, token in enumerate(ids) if token == image_token_id]
    spans = [[a, b] for a, b in zip(places, places[1:])] + ([[places[-1], len(ids)]] if places else [])
    end = len(ids)
    for span in reversed(spans):
        if span[0] == span[1] - 1:
            span[1] = end
        end = span[1]
    rows: list[set[int]] = [set() for _ in ids]
    for k, (start, stop) in enumerate(spans):
        for i in range(start, min(stop, len(ids))):
            rows[i].add(k)
    return [frozenset(r) for r in rows]
