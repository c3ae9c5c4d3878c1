"""LLaVA-OneVision (``model_type`` ``llava_onevision``): anyres_max_9 tiles for a sample's only image,
the base image alone in multi-image samples.

Sources (transformers 5.23.0):

- ``models/llava_onevision/processing_llava_onevision.py`` ``LlavaOnevisionProcessor``:

  ``replace_image_token``: an image whose sample holds more than one image (``batch_num_images``,
  see below) gets ``num_image_tokens + 1`` (the base features plus one ``image_newline``); a
  sample's only image gets ``_get_number_of_features`` from its *original* (height, width)
  (``image_sizes``) and the processed tile size (``pixel_values[0][0]``)::

      best_h, best_w = select_best_resolution([orig_h, orig_w], image_grid_pinpoints)
      scale_h, scale_w = best_h // tile_h, best_w // tile_w
      patches = int(math.sqrt(num_image_tokens))                       # 27 for SigLIP 384/14
      current_h, current_w = patches * scale_h, patches * scale_w       # then unpadded as LLaVA-NeXT
      unpadded, newlines = current_h * current_w, current_h
      max_num_patches = int(vision_aspect_ratio.strip("anyres_max_"))  # noqa: B005  # 9
      ratio = math.sqrt(current_h * current_w / (max_num_patches * patches**2))
      if ratio > 1.1:                                                   # downscaled grid
          unpadded = int(current_h // ratio) * int(current_w // ratio); newlines = int(current_h // ratio)
      n = unpadded + newlines + num_image_tokens
  and either count drops 1 when ``vision_feature_select_strategy == "default"`` (hub: "full").
  ``replace_video_token``: ``frames * ceil(int(sqrt(num_image_tokens)) / 2) ** 2 + 1`` ``<video>``.

- ``models/llava_onevision/image_processing_pil_llava_onevision.py``: ``preprocess`` sets
  ``batch_num_images`` to each sample's image count when images come nested per sample
  (``[[a, b], [c]]``: what ``apply_chat_template(tokenize=True)`` and TRL's collators pass) and to
  ones for a flat list (``images=[a, b]``); only images of 1-image samples are tiled. Every tile is
  resized to ``size`` (hub: 384 x 384), so the tile is ``size``, or ``crop_size`` with
  ``do_center_crop``.

The multi-image rule needs the sample's image count, which the engine passes to
``sample_settings``. ``Overrides(extra={"images_nested": False})`` models the flat call instead,
where every image is tiled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    LayoutTokens,
    MediaLayout,
    Overrides,
    layout_family_settings,
    option_flag,
    processor_files,
    single_run,
)

# processing_llava_onevision.py: LlavaOnevisionProcessor(image_token="<image>", video_token="<video>")
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# processing_llava_onevision.py: vision_aspect_ratio="anyres_max_9" (class default)
DEFAULT_ASPECT_RATIO = "anyres_max_9"
# image_processing_pil_llava_onevision.py: LlavaOnevisionImageProcessorPil class defaults; the
# pinpoints are every (384 i, 384 j) for i, j in 1..6
DEFAULT_SIZE: dict[str, int] = {"height": 384, "width": 384}
DEFAULT_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


@dataclass(frozen=True)
class OnevisionSettings:
    num_image_tokens: int
    vision_feature_select_strategy: str | None
    vision_aspect_ratio: str
    # (height, width) pairs, as image_grid_pinpoints lists them
    pinpoints: tuple[tuple[int, int], ...]
    # (height, width) of one processed tile: pixel_values[0][0].shape[-2:]
    tile_height: int
    tile_width: int
    # images passed nested per sample (TRL, apply_chat_template): multi-image samples are not tiled
    images_nested: bool = True
    # images in the sample being counted (set per sample by sample_settings)
    sample_images: int = 1

    @property
    def multi_image(self) -> bool:
        return self.images_nested and self.sample_images != 1


def _processor_value(processor: dict[str, Any], config: dict[str, Any], key: str) -> Any:
    """A processor argument from processor_config.json; else config.json's (LlavaOnevisionConfig
    keeps ``vision_feature_select_strategy``), as the llava family does."""
    if processor.get(key) is not None:
        return processor[key]
    return config.get(key)


def tile_size(preprocessor: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of every processed tile (``_preprocess`` in image_processing_pil_llava_onevision.py)."""
    if preprocessor.get("do_center_crop") and preprocessor.get("crop_size"):
        crop = preprocessor["crop_size"]
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
        return int(crop["height"]), int(crop["width"])
    size = preprocessor.get("size") or DEFAULT_SIZE
    size = {"height": size, "width": size} if isinstance(size, int) else size
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


def _num_image_tokens(processor: dict[str, Any], config: dict[str, Any]) -> int:
    if processor.get("num_image_tokens") is not None:
        return int(processor["num_image_tokens"])
    # processor_config.json missing: the vision tower's patch grid (SigLIP 384 / 14 -> 27 * 27 = 729)
    vision = config.get("vision_config") or {}
    return (int(vision.get("image_size", 384)) // int(vision.get("patch_size", 14))) ** 2


def read_settings(preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> OnevisionSettings:
    processor = preprocessor.get("processor_config") or {}
    strategy = _processor_value(processor, config, "vision_feature_select_strategy")
    # the processor's own argument or its class default; config.json's value is the model's, which
    # the processor never reads
    aspect = processor.get("vision_aspect_ratio") or DEFAULT_ASPECT_RATIO
    pinpoints = preprocessor.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    tile_h, tile_w = tile_size(preprocessor)
    return OnevisionSettings(
        num_image_tokens=_num_image_tokens(processor, config),
        vision_feature_select_strategy=strategy,
        vision_aspect_ratio=str(aspect),
        pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
        tile_height=tile_h,
        tile_width=tile_w,
        images_nested=option_flag("images_nested", overrides.extra.get("images_nested", True)),
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


def unpadded_features(height: int, width: int, patches: int, scale_h: int, scale_w: int,
                      vision_aspect_ratio: str) -> tuple[int, int]:
    """``LlavaOnevisionProcessor._get_unpadded_features``: (features, newline features), in the
    processor's float arithmetic and order."""
    current_h = patches * scale_h
    current_w = patches * scale_w
    if width / height > current_w / current_h:
        new_h = int(round(height * (current_w / width), 7))
        current_h -= ((current_h - new_h) // 2) * 2
    else:
        new_w = int(round(width * (current_h / height), 7))
        current_w -= ((current_w - new_w) // 2) * 2
    unpadded, newlines = current_h * current_w, current_h
    # str.strip removes characters, not a prefix: "anyres_max_9" -> "9", as upstream does
    max_num_patches = int(vision_aspect_ratio.strip("anyres_max_"))  # noqa: B005
    ratio = math.sqrt(current_h * current_w / (max_num_patches * patches**2))
    if ratio > 1.1:
        unpadded = int(current_h // ratio) * int(current_w // ratio)
        newlines = int(current_h // ratio)
    return unpadded, newlines


def count_image_tokens(width: int, height: int, s: OnevisionSettings) -> int:
    if s.multi_image:
        n = s.num_image_tokens + 1  # base features + image_newline
    else:
        best_h, best_w = select_best_resolution(height, width, s.pinpoints)
        scale_h, scale_w = best_h // s.tile_height, best_w // s.tile_width
        patches = int(math.sqrt(s.num_image_tokens))
        unpadded, newlines = unpadded_features(height, width, patches, scale_h, scale_w, s.vision_aspect_ratio)
        n = unpadded + newlines + s.num_image_tokens
    if s.vision_feature_select_strategy == "default":
        n -= 1
    return n


def video_tokens(frames: int, s: OnevisionSettings) -> int:
    """``<video>`` tokens for a clip of ``frames`` sampled frames (``replace_video_token``): each frame's
    patch grid is 2x2-pooled (rounding up), plus one newline for the whole clip."""
    side = int(math.sqrt(s.num_image_tokens))
    pooled = math.ceil(side / 2)
    return frames * pooled * pooled + 1


@dataclass(frozen=True)
class LlavaOnevisionFamily:
    name: str = "llava_onevision"
    title: str = "LLaVA-OneVision"
    # Overrides.extra keys (scan --processor-option KEY=VALUE): images_nested=false models processor(images=[a, b])
    options: tuple[str, ...] = ("images_nested",)
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN, VIDEO_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN, VIDEO_TOKEN)
    exactness: str = ("exact for images: proved against transformers' LlavaOnevisionProcessor (PIL image "
                      "processor, llava-hf/llava-onevision-qwen2-7b-ov-hf's processor files, Qwen2 tokenizer with "
                      "<image>/<video> at 151646/151647) on 190+ images, single- and multi-image, and the VC201 "
                      "crash against LlavaOnevisionForConditionalGeneration; video (video_tokens) is checked "
                      "against the published formula only, by hand, not the processor")
    # processor_config.json: num_image_tokens, vision_feature_select_strategy (config.json as fallback for
    # both), vision_aspect_ratio; preprocessor_config.json: image_grid_pinpoints, size, crop_size, do_center_crop
    settings_read: tuple[str, ...] = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio",
                                      "image_grid_pinpoints", "size", "crop_size", "do_center_crop")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any],
                 overrides: Overrides) -> OnevisionSettings:
        return read_settings(preprocessor, config, overrides)

    def sample_settings(self, settings: OnevisionSettings, *, images: int) -> OnevisionSettings:
        """The settings for a sample holding ``images`` images (the processor's ``batch_num_images``)."""
        return replace(settings, sample_images=images)

    def image_tokens(self, width: int, height: int, settings: OnevisionSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: OnevisionSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: OnevisionSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: OnevisionSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: OnevisionSettings, max_pixels: int) -> None:
        return None

    # -- the batch layout (the collator guards) --------------------------------------------------
    # LlavaOnevisionProcessor.__call__: pixel_values (images, patches, 3, H, W), one row per image,
    # image_sizes (original height, width) and batch_num_images (images per sample: a sample with several
    # keeps only each image's base features).
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        sizes = batch.get("image_sizes")
        hw = [] if sizes is None else [(int(h), int(w)) for h, w in sizes.tolist()]
        per_sample = batch.get("batch_num_images")
        counts = [len(hw)] if per_sample is None else [int(n) for n in per_sample.tolist()]
        base = layout_family_settings(self, settings)
        images = [n for n in counts for _ in range(n)]  # each image's sample's image count
        runs = [(count_image_tokens(w, h, self.sample_settings(base, images=n)),) for (h, w), n in zip(hw, images)]
        return MediaLayout(runs, [1] * len(hw), ("pixel_values",), ("image_sizes",),
                           sample_keys=("batch_num_images",))


FAMILY = LlavaOnevisionFamily()
