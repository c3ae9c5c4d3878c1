"""Pixtral and Mistral-3 (Mistral-Small-3.1): one ``[IMG]`` per patch, rows closed by ``[IMG_BREAK]``.

Both are processed by transformers' ``PixtralProcessor`` (``models/auto/processing_auto.py`` maps
``mistral3`` to it; mistral-community/pixtral-12b, a ``llava`` checkpoint with a Pixtral vision tower,
names it in ``processor_config.json``). Sources (transformers 5.23.0):

- ``models/pixtral/processing_pixtral.py``: the image processor is called with
  ``patch_size = self.patch_size * self.spatial_merge_size``; ``replace_image_token`` writes, for the
  processed ``image_sizes`` (height, width), ``height // P`` rows of ``[IMG] * (width // P)`` each
  followed by ``[IMG_BREAK]``, the last ``[IMG_BREAK]`` replaced by ``[IMG_END]``.
- ``models/pixtral/image_processing_pil_pixtral.py`` ``get_resize_output_image_size``: scale by
  ``ratio = max(H / max_h, W / max_w)`` when it is over 1, flooring each side (``int(math.floor(H /
  ratio))``), then round each side *up* to a multiple of P (``(H - 1) // P + 1`` patches).

So an image has ``rows * cols`` features (``[IMG]``, the token the model counts) and ``rows`` marker
tokens. A side that floors to 0 pixels (aspect ratio over the longest edge) makes the processor
raise. Checkpoint values: pixtral-12b patch 16, no merge, ``size.longest_edge`` 1024;
Mistral-Small-3.1-24B-Instruct-2503 patch 14, ``spatial_merge_size`` 2, ``size.longest_edge`` 1540.
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
)

# processing_pixtral.py: PixtralProcessor(image_token="[IMG]", image_break_token="[IMG_BREAK]",
# image_end_token="[IMG_END]"); Tekken ids 10, 12, 13 in Pixtral-12B and Mistral-Small-3.1.
IMAGE_TOKEN = "[IMG]"
IMAGE_BREAK = "[IMG_BREAK]"
IMAGE_END = "[IMG_END]"
# processing_pixtral.py: PixtralProcessor(patch_size=16, spatial_merge_size=1) class defaults.
DEFAULT_PATCH_SIZE = 16
DEFAULT_MERGE_SIZE = 1
# image_processing_pil_pixtral.py: PixtralImageProcessorPil.size = {"longest_edge": 1024}, do_resize = True,
# patch_size = {"height": 16, "width": 16} (what it rounds to when called without the processor's patch_size).
DEFAULT_LONGEST_EDGE = 1024
DEFAULT_IMAGE_PATCH = 16


@dataclass(frozen=True)
class PixtralSettings:
    patch_size: int
    spatial_merge_size: int
    max_height: int
    max_width: int
    do_resize: bool = True
    # the image processor's own patch size (preprocessor_config.json), used when it is called directly
    image_patch_size: int = DEFAULT_IMAGE_PATCH

    @property
    def step(self) -> int:
        """Pixels per token along a side: what the processor passes the image processor as patch_size."""
        return self.patch_size * self.spatial_merge_size


def read_settings(preprocessor: dict[str, Any]) -> PixtralSettings:
    """Processor arguments from processor_config.json, the image processor's from
    preprocessor_config.json, class defaults where a file omits them."""
    processor = preprocessor.get("processor_config") or {}
    size = preprocessor.get("size") or {"longest_edge": DEFAULT_LONGEST_EDGE}
    if isinstance(size, int):
        size = {"longest_edge": size}
    if size.get("longest_edge"):
        max_h = max_w = int(size["longest_edge"])
    else:  # PixtralImageProcessorPil.resize also takes a height x width box
        max_h, max_w = int(size["height"]), int(size["width"])
    image_patch = preprocessor.get("patch_size") or DEFAULT_IMAGE_PATCH
    if isinstance(image_patch, Mapping):  # {"height": 16, "width": 16}
        image_patch = image_patch.get("height") or DEFAULT_IMAGE_PATCH
    return PixtralSettings(
        patch_size=int(processor.get("patch_size") or DEFAULT_PATCH_SIZE),
        spatial_merge_size=int(processor.get("spatial_merge_size") or DEFAULT_MERGE_SIZE),
        max_height=max_h,
        max_width=max_w,
        do_resize=bool(preprocessor.get("do_resize", True)),
        image_patch_size=int(image_patch),
    )


def _scaled(width: int, height: int, s: PixtralSettings) -> tuple[int, int]:
    """(height, width) after the fit into the size box, before rounding up to patches."""
    ratio = max(height / s.max_height, width / s.max_width)
    if ratio > 1:
        height = int(math.floor(height / ratio))
        width = int(math.floor(width / ratio))
    return height, width


def grid(width: int, height: int, s: PixtralSettings) -> tuple[int, int]:
    """(rows, cols) of ``[IMG]`` tokens for a W x H image."""
    p = s.step
    if not s.do_resize:  # replace_image_token floors the unresized size
        return height // p, width // p
    h, w = _scaled(width, height, s)
    return (h - 1) // p + 1, (w - 1) // p + 1


def image_processor_size(width: int, height: int, s: PixtralSettings) -> tuple[int, int]:
    """(height, width) the image processor returns when it is called on its own, with its own patch size (what
    ``image_sizes`` holds when a framework calls ``processor.image_processor`` directly)."""
    if not s.do_resize:
        return height, width
    h, w = _scaled(width, height, s)
    p = s.image_patch_size
    return ((h - 1) // p + 1) * p, ((w - 1) // p + 1) * p


def expand(width: int, height: int, s: PixtralSettings) -> Expansion:
    return expand_grid(*grid(width, height, s))


def expand_grid(rows: int, cols: int) -> Expansion:
    """The processor's text for ``rows`` x ``cols`` patches (``replace_image_token``)."""
    if rows <= 0 or cols <= 0:  # the processor raises (check_image says why); count one placeholder
        return Expansion(IMAGE_TOKEN, (1,))
    text = (IMAGE_TOKEN + IMAGE_BREAK) * (rows - 1) + IMAGE_TOKEN + IMAGE_END
    return Expansion(text, (cols,) * rows)


def image_issues(width: int, height: int, s: PixtralSettings) -> list[ImageIssue]:
    if s.do_resize:
        h, w = _scaled(width, height, s)
        if h > 0 and w > 0:
            return []
        ratio = max(width, height) / min(width, height)
        return [ImageIssue(
            "VC107",
            f"aspect ratio {ratio:.1f} ({width}x{height}): fitting it into {s.max_width}x{s.max_height} "
            "leaves a side of 0 px, and the image processor raises ValueError",
            {"width": width, "height": height, "aspect_ratio": round(ratio, 2),
             "limit": max(s.max_height, s.max_width)},
        )]
    rows, cols = grid(width, height, s)
    if rows > 0 and cols > 0:
        return []
    return [ImageIssue(
        "VC107",
        f"{width}x{height} without resize is under one {s.step} px patch on a side; "
        "PixtralProcessor raises IndexError",
        {"width": width, "height": height, "min_side": s.step},
    )]


@dataclass(frozen=True)
class PixtralFamily:
    name: str = "pixtral"
    title: str = "Pixtral"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (IMAGE_TOKEN, IMAGE_BREAK, IMAGE_END)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = (
        "exact: proved against transformers' PixtralProcessor (PixtralImageProcessorPil, the real Tekken "
        "vocabulary mistral-common ships, pixtral-12b's processor files) on 100+ images"
    )
    # processor_config.json: patch_size, spatial_merge_size; preprocessor_config.json: size, do_resize
    settings_read: tuple[str, ...] = ("patch_size", "spatial_merge_size", "size", "do_resize")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides
                 ) -> PixtralSettings:
        return read_settings(preprocessor)

    def image_tokens(self, width: int, height: int, settings: PixtralSettings) -> int:
        return expand(width, height, settings).features

    def expansion(self, settings: PixtralSettings) -> str:
        return IMAGE_TOKEN

    def expand(self, width: int, height: int, settings: PixtralSettings) -> Expansion:
        return expand(width, height, settings)

    def check_image(self, width: int, height: int, settings: PixtralSettings) -> list[ImageIssue]:
        return image_issues(width, height, settings)

    def with_max_pixels(self, settings: PixtralSettings, max_pixels: int) -> None:
        return None  # the size knob is a longest edge, not a pixel budget

    # -- the batch layout (the collator guards) --------------------------------------------------
    # PixtralProcessor.__call__: pixel_values (images, 3, H, W), one row per image, and image_sizes, each
    # image's resized (height, width); its [IMG]s come one run per row of patches, split by [IMG_BREAK]
    # and closed by [IMG_END]. The model counts only [IMG].
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        sizes = batch.get("image_sizes")
        hw = [] if sizes is None else [(int(h), int(w)) for h, w in sizes.tolist()]
        runs = [expand(w, h, layout_family_settings(self, settings)).runs for h, w in hw]
        return MediaLayout(runs, [1] * len(hw), ("pixel_values",), ("image_sizes",))


FAMILIES = (
    PixtralFamily(),
    PixtralFamily(
        name="mistral3",
        title="Mistral-3 (Mistral-Small-3.1)",
        exactness=(
            "exact: proved against transformers' PixtralProcessor (PixtralImageProcessorPil, the real Tekken "
            "vocabulary mistral-common ships, Mistral-Small-3.1's processor files: patch 14, spatial merge 2) "
            "on 100+ images"
        ),
    ),
)
