"""LLaVA-NeXT / LLaVA-1.6 (``model_type`` ``llava_next``): anyres tiles, one run of ``<image>`` per image.

Sources (transformers 5.23.0):

- ``models/llava_next/processing_llava_next.py`` ``LlavaNextProcessor.replace_image_token`` and
  ``_get_number_of_features``: the count comes from the image's *original* size
  (``image_sizes``, i.e. the (height, width) of the image as loaded, not the processed tensor) and
  the processed tile size (``pixel_values[0][0]``)::

      best_h, best_w = select_best_resolution([orig_h, orig_w], image_grid_pinpoints)
      scale_h, scale_w = best_h // tile_h, best_w // tile_w
      patches_h, patches_w = tile_h // patch_size, tile_w // patch_size
      unpadded, newlines = _get_unpadded_features(orig_h, orig_w, patches_h, patches_w, scale_h, scale_w)
      n = unpadded + newlines + patches_h * patches_w + num_additional_image_tokens
      if vision_feature_select_strategy == "default": n -= 1
      return "<image>" * n          # row-newline features are <image> tokens too: one run

- ``image_processing_utils.select_best_resolution``: the pinpoint with the largest effective
  resolution, ties broken by the least waste.
- ``models/llava_next/image_processing_pil_llava_next.py`` ``LlavaNextImageProcessorPil``: every
  tile (the base image resized to ``size``, then each crop) goes through resize to ``size`` and
  center crop to ``crop_size``, so the tile is ``crop_size`` with the crop on and ``size``
  (``(shortest_edge, shortest_edge)`` or ``(height, width)``) without it. ``image_sizes`` is
  ``image.shape[-2:]`` of the input image.

``patch_size``, ``vision_feature_select_strategy`` and ``num_additional_image_tokens`` are processor
arguments (``processor_config.json``; class defaults ``None``, ``None``, 0). llava-hf/llava-v1.6-*-hf
set 14, "default" and 1: a 336 x 336 image becomes 1176 tokens, 640 x 480 (W x H) 2340.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    LayoutTokens,
    MediaLayout,
    Overrides,
    layout_family_settings,
    processor_files,
    single_run,
)

# processing_llava_next.py: LlavaNextProcessor(image_token="<image>")
IMAGE_TOKEN = "<image>"
# processing_llava_next.py: num_additional_image_tokens=0 (class default; llava-hf v1.6 checkpoints set 1, the CLS)
DEFAULT_ADDITIONAL_TOKENS = 0
# image_processing_pil_llava_next.py: LlavaNextImageProcessorPil class defaults
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
DEFAULT_SIZE: dict[str, int] = {"shortest_edge": 224}
DEFAULT_CROP: dict[str, int] = {"height": 224, "width": 224}
# the CLIP ViT-L/14-336 of every LLaVA-NeXT checkpoint (config.json vision_config.patch_size)
DEFAULT_PATCH_SIZE = 14


@dataclass(frozen=True)
class LlavaNextSettings:
    patch_size: int
    vision_feature_select_strategy: str | None
    num_additional_image_tokens: int
    # (height, width) pairs, as image_grid_pinpoints lists them
    pinpoints: tuple[tuple[int, int], ...]
    # (height, width) of one processed tile: pixel_values[0][0].shape[-2:]
    tile_height: int
    tile_width: int


def _processor_value(processor: dict[str, Any], config: dict[str, Any], key: str) -> Any:
    """A processor argument from processor_config.json; else config.json's (LlavaNextConfig keeps
    ``vision_feature_select_strategy`` and ``vision_config.patch_size``)."""
    if processor.get(key) is not None:
        return processor[key]
    if config.get(key) is not None:
        return config[key]
    return (config.get("vision_config") or {}).get(key)


def _square(value: Any, default: dict[str, int]) -> dict[str, int]:
    if value is None:
        return dict(default)
    if isinstance(value, int):  # 4.x configs wrote sizes as one int
        return {"height": value, "width": value}
    return dict(value)


def tile_size(preprocessor: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of every processed tile (``_preprocess`` in image_processing_pil_llava_next.py)."""
    size = preprocessor.get("size")
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size or DEFAULT_SIZE)
    if preprocessor.get("do_center_crop", True):
        crop = _square(preprocessor.get("crop_size"), DEFAULT_CROP)
        return int(crop["height"]), int(crop["width"])
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


def read_settings(preprocessor: dict[str, Any], config: dict[str, Any]) -> LlavaNextSettings:
    processor = preprocessor.get("processor_config") or {}
    patch = _processor_value(processor, config, "patch_size")
    strategy = _processor_value(processor, config, "vision_feature_select_strategy")
    extra = processor.get("num_additional_image_tokens", DEFAULT_ADDITIONAL_TOKENS)
    pinpoints = preprocessor.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    tile_h, tile_w = tile_size(preprocessor)
    return LlavaNextSettings(
        patch_size=int(patch or DEFAULT_PATCH_SIZE),
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=int(extra or 0),
        pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
        tile_height=tile_h,
        tile_width=tile_w,
    )


def select_best_resolution(height: int, width: int,
                           pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """image_processing_utils.select_best_resolution: (height, width) of the chosen pinpoint. Ties
    (even at zero effective pixels, for a 1-pixel-wide strip) go to the least waste, so there is
    always one."""
    best = pinpoints[0]
    max_effective = 0
    min_wasted = float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = (w * h) - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best = effective, wasted, (h, w)
    return best


def unpadded_grid(height: int, width: int, current_h: int, current_w: int, *,
                  rounded: bool = True) -> tuple[int, int]:
    """(rows, columns) of a ``current_h`` x ``current_w`` feature grid once the padding rows or columns are
    dropped. transformers' ``_get_unpadded_features`` rounds the scaled side to 7 digits before ``int()``;
    LLaVA-NeXT's own ``unpad_image`` (llava/model/llava_arch.py) does not (``rounded=False``), so where the
    product lands just under an odd integer (an 88 x 55 image on the 336 px pinpoints) it keeps one row or
    column more. Float arithmetic in their order."""
    if width / height > current_w / current_h:
        scaled = height * (current_w / width)
        new_h = int(round(scaled, 7)) if rounded else int(scaled)
        current_h -= ((current_h - new_h) // 2) * 2
    else:
        scaled = width * (current_h / height)
        new_w = int(round(scaled, 7)) if rounded else int(scaled)
        current_w -= ((current_w - new_w) // 2) * 2
    return current_h, current_w


def unpadded_features(height: int, width: int, patches_h: int, patches_w: int,
                      scale_h: int, scale_w: int) -> tuple[int, int]:
    """``LlavaNextProcessor._get_unpadded_features``: (features, newline features) of the crop grid
    once the padding rows or columns are dropped."""
    current_h, current_w = unpadded_grid(height, width, patches_h * scale_h, patches_w * scale_w)
    return current_h * current_w, current_h


def max_patches_grid(rows: int, columns: int, *, max_num_patches: int, patches: int) -> tuple[int, int]:
    """The ``anyres_max_N`` downscale of an unpadded grid (LLaVA-NeXT's llava_arch.py, as transformers'
    LlavaOnevisionProcessor): over 1.1 times the area of N tiles of ``patches`` x ``patches``, both sides are
    divided by that ratio's square root."""
    times = math.sqrt(rows * columns / (max_num_patches * patches**2))
    if times > 1.1:
        return int(rows // times), int(columns // times)
    return rows, columns


def count_image_tokens(width: int, height: int, s: LlavaNextSettings) -> int:
    best_h, best_w = select_best_resolution(height, width, s.pinpoints)
    scale_h, scale_w = best_h // s.tile_height, best_w // s.tile_width
    patches_h, patches_w = s.tile_height // s.patch_size, s.tile_width // s.patch_size
    unpadded, newlines = unpadded_features(height, width, patches_h, patches_w, scale_h, scale_w)
    n = unpadded + newlines + patches_h * patches_w + s.num_additional_image_tokens
    if s.vision_feature_select_strategy == "default":  # the model drops the CLS feature
        n -= 1
    return n


@dataclass(frozen=True)
class LlavaNextFamily:
    name: str = "llava_next"
    title: str = "LLaVA-NeXT (1.6)"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = ("exact: proved against transformers' LlavaNextProcessor (LlavaNextImageProcessorPil, "
                      "llava-hf/llava-v1.6-vicuna-7b-hf's processor files, Llama-2 tokenizer) on 230+ images, and the "
                      "VC201 crash against LlavaNextForConditionalGeneration")
    # processor_config.json (config.json as fallback): patch_size, vision_feature_select_strategy,
    # num_additional_image_tokens; preprocessor_config.json: image_grid_pinpoints, crop_size, do_center_crop, size
    settings_read: tuple[str, ...] = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens",
                                      "image_grid_pinpoints", "crop_size", "do_center_crop", "size")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any],
                 overrides: Overrides) -> LlavaNextSettings:
        return read_settings(preprocessor, config)

    def image_tokens(self, width: int, height: int, settings: LlavaNextSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: LlavaNextSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: LlavaNextSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: LlavaNextSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: LlavaNextSettings, max_pixels: int) -> None:
        return None

    # -- the batch layout (the collator guards) --------------------------------------------------
    # LlavaNextProcessor.__call__: pixel_values (images, patches, 3, H, W), one row per image, and
    # image_sizes, each image's original (height, width), from which its <image> count follows.
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        sizes = batch.get("image_sizes")
        hw = [] if sizes is None else [(int(h), int(w)) for h, w in sizes.tolist()]
        runs = [(count_image_tokens(w, h, layout_family_settings(self, settings)),) for h, w in hw]
        return MediaLayout(runs, [1] * len(hw), ("pixel_values",), ("image_sizes",))


FAMILY = LlavaNextFamily()
