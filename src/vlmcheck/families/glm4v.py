"""GLM-4.1V (and GLM-4.5V): ``<|image|>`` tokens, one per 28 x 28 pixels after GLM's smart resize.

Sources (transformers 5.23.0):

- ``models/glm4v/processing_glm4v.py`` ``Glm4vProcessor.replace_image_token``:
  ``image_grid_thw[i].prod() // merge_size**2`` copies of ``<|image|>``; the chat template writes
  ``<|begin_of_image|><|image|><|end_of_image|>`` and only ``<|image|>`` is multiplied.
  ``models/auto/processing_auto.py`` gives ``glm4v_moe`` (GLM-4.5V) the same processor.
- ``models/glm4v/image_processing_pil_glm4v.py``: ``smart_resize(num_frames=temporal_patch_size, ...)``
  with ``factor = patch_size * merge_size`` and ``size["shortest_edge"]`` / ``size["longest_edge"]`` as
  min/max pixels. Unlike Qwen2-VL's, it first scales an image with a side under ``factor`` up to
  ``factor`` (``int(h * scale)``), raises past an aspect ratio of 200, and compares the *two-frame*
  volume ``t_bar * h_bar * w_bar`` (t_bar = 2) with the limits, so a still image gets half the
  pixel budget the numbers say. The grid is (1, h / patch, w / patch).

Checkpoint values (THUDM/GLM-4.1V-9B-Thinking ``preprocessor_config.json``): patch 14, merge 2,
temporal patch 2, size {shortest_edge 12544, longest_edge 9633792}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmcheck.errors import UsageError
from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    LayoutTokens,
    MediaLayout,
    Overrides,
    grid_rows,
    single_run,
)

# processing_glm4v.py: image_token "<|image|>" (when the tokenizer names none)
IMAGE_TOKEN = "<|image|>"
# The chat template of zai-org/GLM-4.1V-9B-Thinking wraps each image in these two added tokens.
BEGIN_IMAGE = "<|begin_of_image|>"
END_IMAGE = "<|end_of_image|>"
# image_processing_pil_glm4v.py smart_resize: "absolute aspect ratio must be smaller than 200"
MAX_ASPECT_RATIO = 200
# image_processing_pil_glm4v.py Glm4vImageProcessorPil class defaults (checkpoints override them)
DEFAULT_PATCH_SIZE = 14
DEFAULT_MERGE_SIZE = 2
DEFAULT_TEMPORAL_PATCH_SIZE = 2
DEFAULT_MIN_PIXELS = 112 * 112
DEFAULT_MAX_PIXELS = 28 * 28 * 15000


@dataclass(frozen=True)
class Glm4vSettings:
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int  # size["shortest_edge"]
    max_pixels: int  # size["longest_edge"]
    resize: str = "processor"
    pre_min_pixels: int | None = None  # LLaMA-Factory-style scaling before the processor
    pre_max_pixels: int | None = None

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(num_frames: int, height: int, width: int, *, temporal_factor: int, factor: int,
                 min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """GLM-4V's resize target (image_processing_pil_glm4v.smart_resize); the caller has checked
    ``aspect_ratio`` (the processor raises past 200). Python's ``round`` (half to even), as upstream."""
    height, width = _upscaled(height, width, factor)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _upscaled(height: int, width: int, factor: int) -> tuple[int, int]:
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    return height, width


def aspect_ratio(width: int, height: int, factor: int) -> float:
    """The ratio smart_resize checks: after the small-side upscale."""
    h, w = _upscaled(height, width, factor)
    return max(h, w) / min(h, w)


def prescale(width: int, height: int, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """LLaMA-Factory ``mm_plugin._preprocess_image``: scale by sqrt(budget / pixels), truncate to int."""
    if max_pixels is not None and width * height > max_pixels:
        f = math.sqrt(max_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    if min_pixels is not None and width * height < min_pixels:
        f = math.sqrt(min_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    return width, height


def read_settings(preprocessor: dict[str, Any], overrides: Overrides) -> Glm4vSettings:
    size = preprocessor.get("size") or {}
    settings = Glm4vSettings(
        patch_size=int(preprocessor.get("patch_size") or DEFAULT_PATCH_SIZE),
        merge_size=int(preprocessor.get("merge_size") or DEFAULT_MERGE_SIZE),
        temporal_patch_size=int(preprocessor.get("temporal_patch_size") or DEFAULT_TEMPORAL_PATCH_SIZE),
        min_pixels=int(size.get("shortest_edge") or DEFAULT_MIN_PIXELS),
        max_pixels=int(size.get("longest_edge") or DEFAULT_MAX_PIXELS),
        resize=overrides.resize,
    )
    if overrides.resize == "qwen-vl-utils":
        raise UsageError("resize='qwen-vl-utils' is qwen-vl-utils' own resize for Qwen-VL models; GLM-4V "
                         "images go to the processor as they are (resize='processor') or pre-scaled ('prescale')")
    return apply_budget(settings, overrides.min_pixels, overrides.max_pixels)


def apply_budget(s: Glm4vSettings, min_pixels: int | None, max_pixels: int | None) -> Glm4vSettings:
    """``processor``: the budget is the image processor's ``size`` (shortest_edge/longest_edge);
    ``prescale``: the image is scaled to it first."""
    if s.resize == "processor":
        return replace(s, min_pixels=min_pixels if min_pixels is not None else s.min_pixels,
                       max_pixels=max_pixels if max_pixels is not None else s.max_pixels)
    return replace(s, pre_min_pixels=min_pixels, pre_max_pixels=max_pixels)


def _seen(width: int, height: int, s: Glm4vSettings) -> tuple[int, int]:
    if s.resize == "prescale":
        return prescale(width, height, s.pre_min_pixels, s.pre_max_pixels)
    return width, height


def count_image_tokens(width: int, height: int, s: Glm4vSettings) -> int:
    width, height = _seen(width, height, s)
    h, w = smart_resize(s.temporal_patch_size, height, width, temporal_factor=s.temporal_patch_size,
                        factor=s.factor, min_pixels=s.min_pixels, max_pixels=s.max_pixels)
    # image_grid_thw = (1, h / patch, w / patch); the merger folds merge_size**2 patches into one token
    return (h // s.patch_size) * (w // s.patch_size) // (s.merge_size**2)


def image_issues(width: int, height: int, s: Glm4vSettings) -> list[ImageIssue]:
    width, height = _seen(width, height, s)
    issues = []
    ratio = aspect_ratio(width, height, s.factor)
    if ratio > MAX_ASPECT_RATIO:
        issues.append(ImageIssue(
            "VC107",
            f"aspect ratio {ratio:.1f} is over the processor's limit of {MAX_ASPECT_RATIO} ({width}x{height})",
            {"width": width, "height": height, "aspect_ratio": round(ratio, 2), "limit": MAX_ASPECT_RATIO},
        ))
    if min(width, height) < s.factor:
        issues.append(ImageIssue(
            "VC106",
            f"{width}x{height} is below {s.factor} px on a side; the processor upsamples it",
            {"width": width, "height": height, "min_side": s.factor},
        ))
    return issues


@dataclass(frozen=True)
class Glm4vFamily:
    name: str = "glm4v"
    title: str = "GLM-4.1V"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (BEGIN_IMAGE, END_IMAGE, IMAGE_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = (
        "exact: proved against transformers' Glm4vProcessor (Glm4vImageProcessorPil, no video processor, "
        "GLM-4.1V-9B-Thinking's processor files; a real BPE with GLM-4.1V's special tokens at their real ids, "
        "no package ships GLM-4's own) on 100+ images"
    )
    settings_read: tuple[str, ...] = ("patch_size", "merge_size", "temporal_patch_size", "size")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides
                 ) -> Glm4vSettings:
        return read_settings(preprocessor, overrides)

    def image_tokens(self, width: int, height: int, settings: Glm4vSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: Glm4vSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: Glm4vSettings) -> Expansion:
        return single_run(IMAGE_TOKEN, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: Glm4vSettings) -> list[ImageIssue]:
        return image_issues(width, height, settings)

    def with_max_pixels(self, settings: Glm4vSettings, max_pixels: int) -> Glm4vSettings:
        return apply_budget(settings, None, max_pixels)

    # -- the pixel budget (config lint) ----------------------------------------------------------
    token_side: int = DEFAULT_PATCH_SIZE * DEFAULT_MERGE_SIZE
    # <|begin_of_image|> and <|end_of_image|> around each image's tokens (the chat template)
    image_wrap_tokens: int = 2

    # -- the batch layout (the collator guards) --------------------------------------------------
    # Glm4vProcessor.__call__: pixel_values (patches, C*T*P*P) of every image concatenated, image_grid_thw one
    # (t, h, w) row per image, which owns t*h*w rows and needs t*h*w // merge_size**2 <|image|> tokens.
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN, BEGIN_IMAGE, END_IMAGE)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        merge = getattr(getattr(processor, "image_processor", None), "merge_size", None)
        return {"merge_size": int(merge or DEFAULT_MERGE_SIZE)}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        rows = grid_rows(batch, "image_grid_thw")
        merge = int(settings.get("merge_size") or DEFAULT_MERGE_SIZE) ** 2
        return MediaLayout([(n // merge,) for n in rows], rows, ("pixel_values",), ("image_grid_thw",))


FAMILIES = (
    Glm4vFamily(),
    # GLM-4.5V: model_type glm4v_moe, the same Glm4vProcessor and image processor
    Glm4vFamily(
        name="glm4v_moe",
        title="GLM-4.5V",
        exactness=(
            "exact: GLM-4.1V's processor (Glm4vProcessor, the same class transformers builds for glm4v_moe), "
            "proved on 100+ images with GLM-4.1V-9B-Thinking's processor files"
        ),
    ),
)
