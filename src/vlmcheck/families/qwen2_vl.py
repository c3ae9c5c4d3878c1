"""Qwen2-VL: images become ``<|image_pad|>`` tokens, one per 28 x 28 pixels after smart resize.

Sources (transformers 5.x): ``models/qwen2_vl/processing_qwen2_vl.py`` (placeholder expansion),
``models/qwen2_vl/image_processing_pil_qwen2_vl.py`` (``smart_resize`` and the grid),
qwen-vl-utils ``vision_process.py`` (its own resize before the processor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from vlmcheck.families.base import Expansion, ImageIssue, Overrides, single_run

# processing_qwen2_vl.py: the chat template writes <|vision_start|><|image_pad|><|vision_end|>
# and the processor multiplies only <|image_pad|>.
IMAGE_PAD = "<|image_pad|>"
# image_processing_qwen2_vl.py smart_resize: "absolute aspect ratio must be smaller than 200".
MAX_ASPECT_RATIO = 200
# Class defaults of Qwen2VLImageProcessor (checkpoints override them in preprocessor_config.json).
DEFAULT_PATCH_SIZE = 14
DEFAULT_MERGE_SIZE = 2
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
# qwen-vl-utils vision_process.py: IMAGE_MIN_TOKEN_NUM / IMAGE_MAX_TOKEN_NUM (in merged tokens).
UTILS_MIN_TOKENS = 4
UTILS_MAX_TOKENS = 16384


@dataclass(frozen=True)
class QwenVLSettings:
    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    resize: str = "processor"
    # pixel budget applied before the processor ("prescale" / "qwen-vl-utils"); None: not applied
    pre_min_pixels: int | None = None
    pre_max_pixels: int | None = None

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's resize target (transformers 5.x ``image_processing_qwen2_vl.smart_resize``).

    Python's ``round`` (half to even) on purpose: the processor uses it. No minimum-side check:
    transformers >= 4.50 upsamples small images instead of raising.
    """
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def utils_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' own ``smart_resize`` (``vision_process.py``): rounds up to at least one factor
    first, and has no lower guard in the shrinking branch."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def prescale(width: int, height: int, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """LLaMA-Factory ``mm_plugin._preprocess_image`` / EasyR1 ``process_image``: scale the image by
    sqrt(budget / pixels) and truncate to int, before the processor sees it."""
    if max_pixels is not None and width * height > max_pixels:
        f = math.sqrt(max_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    if min_pixels is not None and width * height < min_pixels:
        f = math.sqrt(min_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    return width, height


def read_settings(
    preprocessor: dict[str, Any], overrides: Overrides, *, patch_size: int, merge_size: int,
    min_pixels: int, max_pixels: int,
) -> QwenVLSettings:
    """Checkpoint values over class defaults; ``size`` (5.x) or ``min_pixels``/``max_pixels`` (4.x
    configs, still read by 5.x)."""
    patch = int(preprocessor.get("patch_size", patch_size))
    merge = int(preprocessor.get("merge_size", merge_size))
    size = preprocessor.get("size") or {}
    lo = int(preprocessor.get("min_pixels") or size.get("shortest_edge") or min_pixels)
    hi = int(preprocessor.get("max_pixels") or size.get("longest_edge") or max_pixels)
    settings = QwenVLSettings(patch_size=patch, merge_size=merge, min_pixels=lo, max_pixels=hi,
                              resize=overrides.resize)
    return apply_budget(settings, overrides.min_pixels, overrides.max_pixels)


def apply_budget(settings: QwenVLSettings, min_pixels: int | None, max_pixels: int | None) -> QwenVLSettings:
    if settings.resize == "processor":
        return replace(
            settings,
            min_pixels=min_pixels if min_pixels is not None else settings.min_pixels,
            max_pixels=max_pixels if max_pixels is not None else settings.max_pixels,
        )
    if settings.resize == "qwen-vl-utils":
        f2 = settings.factor**2
        return replace(
            settings,
            pre_min_pixels=min_pixels if min_pixels is not None else UTILS_MIN_TOKENS * f2,
            pre_max_pixels=max_pixels if max_pixels is not None else UTILS_MAX_TOKENS * f2,
        )
    return replace(settings, pre_min_pixels=min_pixels, pre_max_pixels=max_pixels)


def resized(width: int, height: int, s: QwenVLSettings) -> tuple[int, int]:
    """(height, width) the vision encoder sees."""
    if s.resize == "qwen-vl-utils":
        assert s.pre_min_pixels is not None and s.pre_max_pixels is not None
        height, width = utils_smart_resize(height, width, s.factor, s.pre_min_pixels, s.pre_max_pixels)
    elif s.resize == "prescale":
        width, height = prescale(width, height, s.pre_min_pixels, s.pre_max_pixels)
    return smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)


def count_image_tokens(width: int, height: int, s: QwenVLSettings) -> int:
    h, w = resized(width, height, s)
    # grid_t = 1 for an image; the merger folds merge_size**2 patches into one token.
    return (h // s.patch_size) * (w // s.patch_size) // (s.merge_size**2)


def image_issues(width: int, height: int, s: QwenVLSettings) -> list[ImageIssue]:
    issues = []
    if s.resize == "prescale":
        width, height = prescale(width, height, s.pre_min_pixels, s.pre_max_pixels)
    ratio = max(width, height) / max(1, min(width, height))
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
class Qwen2VLFamily:
    name: str = "qwen2_vl"
    title: str = "Qwen2-VL"
    placeholder: str = IMAGE_PAD
    image_token: str = IMAGE_PAD
    exactness: str = "exact: proved against transformers' Qwen2VLProcessor on 200+ images"
    settings_read: tuple[str, ...] = ("patch_size", "merge_size", "min_pixels", "max_pixels", "size")
    patch_size: int = DEFAULT_PATCH_SIZE
    merge_size: int = DEFAULT_MERGE_SIZE
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> QwenVLSettings:
        return read_settings(preprocessor, overrides, patch_size=self.patch_size, merge_size=self.merge_size,
                             min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def image_tokens(self, width: int, height: int, settings: QwenVLSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: QwenVLSettings) -> str:
        return IMAGE_PAD

    def expand(self, width: int, height: int, settings: QwenVLSettings) -> Expansion:
        return single_run(IMAGE_PAD, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: QwenVLSettings) -> list[ImageIssue]:
        return image_issues(width, height, settings)

    def with_max_pixels(self, settings: QwenVLSettings, max_pixels: int) -> QwenVLSettings:
        return apply_budget(settings, None, max_pixels)


FAMILY = Qwen2VLFamily()
