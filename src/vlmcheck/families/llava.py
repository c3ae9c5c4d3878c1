"""LLaVA-1.5 (``model_type`` ``llava``): each image becomes a fixed run of ``<image>`` tokens.

Sources (transformers 5.23.0):

- ``models/llava/processing_llava.py`` ``LlavaProcessor.replace_image_token``: the count is taken
  from the *processed* ``pixel_values`` (height, width)::

      num_image_tokens = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
      if self.vision_feature_select_strategy == "default":
          num_image_tokens -= 1
      return self.image_token * num_image_tokens

  ``patch_size``, ``vision_feature_select_strategy`` and ``num_additional_image_tokens`` are
  processor arguments (the checkpoint's ``processor_config.json``), class default
  ``num_additional_image_tokens=0``.
- ``models/clip/image_processing_pil_clip.py`` ``CLIPImageProcessorPil`` (llava-hf checkpoints name
  ``CLIPImageProcessor``): resize so the shortest edge is ``size["shortest_edge"]``, then center
  crop to ``crop_size`` (padding when the image is smaller), so with ``do_center_crop`` the output is
  always ``crop_size``: llava-1.5-7b-hf gives (336 // 14)**2 + 1 - 1 = 576 tokens for every image.
  Without the crop the output follows ``image_transforms.get_resize_output_image_size``.

The header is still read for every image: a missing or unreadable image is a finding.
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

# processing_llava.py: LlavaProcessor(image_token="<image>")
IMAGE_TOKEN = "<image>"
# processing_llava.py: num_additional_image_tokens=0 (class default; llava-hf checkpoints set 1, the CLS token)
DEFAULT_ADDITIONAL_TOKENS = 0
# image_processing_pil_clip.py: CLIPImageProcessorPil.size / crop_size / do_center_crop class defaults
DEFAULT_SHORTEST_EDGE = 224
DEFAULT_CROP = 224


@dataclass(frozen=True)
class LlavaSettings:
    patch_size: int
    vision_feature_select_strategy: str | None
    num_additional_image_tokens: int
    do_center_crop: bool
    crop_height: int
    crop_width: int
    # the image processor's ``size``: shortest_edge, or a fixed height x width
    shortest_edge: int | None
    height: int | None
    width: int | None


def _processor_value(processor: dict[str, Any], config: dict[str, Any], key: str) -> Any:
    """A processor argument from processor_config.json; else config.json's (where LlavaConfig
    keeps ``vision_feature_select_strategy`` and ``vision_config.patch_size``)."""
    if processor.get(key) is not None:
        return processor[key]
    if config.get(key) is not None:
        return config[key]
    vision = config.get("vision_config") or {}
    return vision.get(key)


def read_settings(preprocessor: dict[str, Any], config: dict[str, Any]) -> LlavaSettings:
    processor = preprocessor.get("processor_config") or {}
    patch = _processor_value(processor, config, "patch_size")
    strategy = _processor_value(processor, config, "vision_feature_select_strategy")
    extra = processor.get("num_additional_image_tokens", DEFAULT_ADDITIONAL_TOKENS)
    size = preprocessor.get("size") or {"shortest_edge": DEFAULT_SHORTEST_EDGE}
    crop = preprocessor.get("crop_size") or {"height": DEFAULT_CROP, "width": DEFAULT_CROP}
    if isinstance(crop, int):  # 4.x configs wrote crop_size as one int
        crop = {"height": crop, "width": crop}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    return LlavaSettings(
        patch_size=int(patch or 14),  # the CLIP ViT-L/14 of every LLaVA-1.5 checkpoint
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=int(extra or 0),
        do_center_crop=bool(preprocessor.get("do_center_crop", True)),
        crop_height=int(crop["height"]),
        crop_width=int(crop["width"]),
        shortest_edge=int(size["shortest_edge"]) if size.get("shortest_edge") else None,
        height=int(size["height"]) if size.get("height") else None,
        width=int(size["width"]) if size.get("width") else None,
    )


def processed_size(width: int, height: int, s: LlavaSettings) -> tuple[int, int]:
    """(height, width) of ``pixel_values`` for one image."""
    if s.do_center_crop:
        return s.crop_height, s.crop_width
    if s.height and s.width:
        return s.height, s.width
    assert s.shortest_edge is not None
    # image_transforms.get_resize_output_image_size(default_to_square=False), no max_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = s.shortest_edge, int(s.shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


# CLIPImageProcessor resizes the shortest edge to size["shortest_edge"] *before* the center crop, keeping the
# aspect ratio with no cap on the long side: a 1x100,000 banner becomes 336x33,600,000 px first. Measured with
# transformers' CLIPImageProcessorPil (5.6, the LLaMA-Factory 0.9.5 stack) on one image: the peak memory is about
# 0.35 GB + 9.6 bytes per resized pixel (188M px: 2.1 GB, 564M px: 5.7 GB, 2.26G px: 21.9 GB). A resize needing
# more than 16 GiB in one data-loader process is judged out of memory; below that it runs (slowly) on a training
# machine, and the 336x336 crop that follows is all the model sees.
RESIZE_BYTES_PER_PIXEL = 9.6
RESIZE_MEMORY_LIMIT = 16 * 2**30
RESIZE_PIXEL_LIMIT = int(RESIZE_MEMORY_LIMIT / RESIZE_BYTES_PER_PIXEL)


def image_issues(width: int, height: int, s: LlavaSettings) -> list[ImageIssue]:
    """The resize before the crop must fit in memory (see ``RESIZE_PIXEL_LIMIT``)."""
    if not s.shortest_edge or (s.height and s.width):
        return []
    short, long = min(width, height), max(width, height)
    new_long = int(s.shortest_edge * long / short)
    if s.shortest_edge * new_long <= RESIZE_PIXEL_LIMIT:
        return []
    w, h = (s.shortest_edge, new_long) if width <= height else (new_long, s.shortest_edge)
    gib = w * h * RESIZE_BYTES_PER_PIXEL / 2**30
    return [ImageIssue("VC107", f"the processor first resizes it ({width}x{height}) to {w:,}x{h:,} px (shortest "
                                f"edge {s.shortest_edge}), {w * h:,} pixels, about {gib:,.0f} GiB: out of memory "
                                "before the crop",
                       {"width": width, "height": height, "resized": [w, h]})]


def count_image_tokens(width: int, height: int, s: LlavaSettings) -> int:
    h, w = processed_size(width, height, s)
    n = (h // s.patch_size) * (w // s.patch_size) + s.num_additional_image_tokens
    if s.vision_feature_select_strategy == "default":  # the CLS feature is dropped
        n -= 1
    return n


@dataclass(frozen=True)
class LlavaFamily(SameSizeRowsLayout):
    """The batch layout (the collator guards) is :class:`SameSizeRowsLayout`: LlavaProcessor.__call__ returns
    pixel_values (images, 3, H, W), one row per image, every image of a batch the same H x W."""

    name: str = "llava"
    title: str = "LLaVA-1.5"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = ("exact: proved against transformers' LlavaProcessor (CLIPImageProcessorPil, Llama-2 "
                      "tokenizer) on 100+ images, and the VC201 crash against LlavaForConditionalGeneration")
    # processor_config.json (config.json as fallback): patch_size, vision_feature_select_strategy,
    # num_additional_image_tokens; preprocessor_config.json: crop_size, do_center_crop, size
    settings_read: tuple[str, ...] = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens",
                                      "crop_size", "do_center_crop", "size")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> LlavaSettings:
        return read_settings(preprocessor, config)

    def image_tokens(self, width: int, height: int, settings: LlavaSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: LlavaSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: LlavaSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: LlavaSettings) -> list[ImageIssue]:
        return image_issues(width, height, settings)

    def with_max_pixels(self, settings: LlavaSettings, max_pixels: int) -> None:
        return None


FAMILY = LlavaFamily()
