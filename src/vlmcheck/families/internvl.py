"""InternVL (``model_type`` ``internvl``, the transformers-native InternVL3 ``-hf`` checkpoints):
each image becomes ``<img>`` + ``<IMG_CONTEXT>`` x (image_seq_length x tiles) + ``</img>``.

Sources (transformers 5.23.0):

- ``models/internvl/processing_internvl.py`` ``InternVLProcessor``: the chat template writes
  ``<IMG_CONTEXT>`` (``tokenizer.context_image_token``, which is ``processor.image_token``) and
  ``replace_image_token`` returns
  ``f"{start_image_token}{image_token * image_seq_length * num_patches[i]}{end_image_token}"``;
  the class sets ``images_kwargs = {"crop_to_patches": True}``, which ``_merge_kwargs`` passes to
  the image processor on every call, so it wins over ``crop_to_patches: false`` in
  preprocessor_config.json (what the ``-hf`` checkpoints ship).
- ``models/got_ocr2/image_processing_pil_got_ocr2.py`` ``GotOcr2ImageProcessorPil``: with
  ``crop_to_patches`` and ``max_patches > 1``, ``get_optimal_tiled_canvas`` picks the (columns,
  rows) grid among ``min_patches <= c*r <= max_patches`` whose ratio is closest to the image's
  (ties go to the later, larger grid while the image covers more than half of it), and a thumbnail
  tile is added when the grid has more than one tile. ``get_number_of_image_patches`` states the
  same count.
- ``models/internvl/convert_internvl_weights_to_hf.py`` (how the hub ``-hf`` checkpoints were made):
  ``size`` 448 x 448, class defaults ``min_patches`` 1 / ``max_patches`` 12, the chat template
  ``{{ '<IMG_CONTEXT>\\n' }}`` per image, and the special tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmcheck.errors import UsageError
from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    LayoutTokens,
    MediaLayout,
    Overrides,
    layout_family_settings,
    leading_rows,
    option_flag,
    option_int,
    processor_files,
    single_run,
)

# processing_internvl.py: processor.image_token = tokenizer.context_image_token; the converter's
# tokenizer gives "<IMG_CONTEXT>" (id 151667 in the Qwen2.5-based InternVL3 checkpoints).
CONTEXT_TOKEN = "<IMG_CONTEXT>"
# processing_internvl.py: start_image_token / end_image_token wrap every image's run.
START_TOKEN = "<img>"
END_TOKEN = "</img>"
# processing_internvl.py: InternVLProcessor(image_seq_length=256) (448 / 14 = 32 patches a side,
# pixel shuffle 0.5 -> 16 x 16)
DEFAULT_IMAGE_SEQ_LENGTH = 256
# processing_internvl.py: InternVLProcessor.images_kwargs = {"crop_to_patches": True}
DEFAULT_CROP_TO_PATCHES = True
# image_processing_pil_got_ocr2.py: GotOcr2ImageProcessorPil class defaults (the -hf checkpoints set 448)
DEFAULT_SIZE = 384
DEFAULT_MIN_PATCHES = 1
DEFAULT_MAX_PATCHES = 12


@dataclass(frozen=True)
class InternVLSettings:
    image_seq_length: int
    tile_height: int
    tile_width: int
    min_patches: int
    max_patches: int
    crop_to_patches: bool


def read_settings(preprocessor: dict[str, Any], overrides: Overrides) -> InternVLSettings:
    """processor_config.json's ``image_seq_length``; preprocessor_config.json's ``size``,
    ``min_patches``, ``max_patches``. ``crop_to_patches`` is the processor's call-time default
    (True) unless the user passes it (``Overrides.extra``), as ``processor(..., crop_to_patches=False)``
    does; so can ``min_patches``/``max_patches``."""
    processor = preprocessor.get("processor_config") or {}
    size = preprocessor.get("size") or {"height": DEFAULT_SIZE, "width": DEFAULT_SIZE}
    if isinstance(size, int):
        size = {"height": size, "width": size}
    extra = overrides.extra or {}
    return InternVLSettings(
        image_seq_length=int(processor.get("image_seq_length") or DEFAULT_IMAGE_SEQ_LENGTH),
        tile_height=int(size["height"]),
        tile_width=int(size["width"]),
        min_patches=option_int("min_patches",
                               extra.get("min_patches", preprocessor.get("min_patches", DEFAULT_MIN_PATCHES))),
        max_patches=option_int("max_patches",
                               extra.get("max_patches", preprocessor.get("max_patches", DEFAULT_MAX_PATCHES))),
        crop_to_patches=option_flag("crop_to_patches", extra.get("crop_to_patches", DEFAULT_CROP_TO_PATCHES)),
    )


def tile_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """``get_all_supported_aspect_ratios``: (columns, rows) with min <= c*r <= max, by tile count
    (a stable sort, so equal counts keep the columns-major order)."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return sorted(grids, key=lambda g: g[0] * g[1])


def tiled_canvas(width: int, height: int, s: InternVLSettings) -> tuple[int, int]:
    """``get_optimal_tiled_canvas``: the (columns, rows) grid, with the processor's float arithmetic
    and tie rule (a later grid with the same ratio error wins while area > half its tile area)."""
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for grid in tile_grids(s.min_patches, s.max_patches):
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and area > 0.5 * s.tile_height * s.tile_width * grid[0] * grid[1]:
            best = grid
    return best


def count_patches(width: int, height: int, s: InternVLSettings) -> int:
    """``GotOcr2ImageProcessorPil``: tiles plus a thumbnail when there is more than one tile."""
    if not (s.crop_to_patches and s.max_patches > 1):
        return 1
    columns, rows = tiled_canvas(width, height, s)
    return 1 if columns * rows == 1 else columns * rows + 1


def count_image_tokens(width: int, height: int, s: InternVLSettings) -> int:
    return s.image_seq_length * count_patches(width, height, s)


@dataclass(frozen=True)
class InternVLFamily:
    name: str = "internvl"
    title: str = "InternVL3 (-hf)"
    # Overrides.extra keys (scan --processor-option KEY=VALUE): InternVLProcessor call-time options
    options: tuple[str, ...] = ("crop_to_patches", "min_patches", "max_patches")
    placeholder: str = CONTEXT_TOKEN
    image_token: str = CONTEXT_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (START_TOKEN, END_TOKEN, CONTEXT_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (CONTEXT_TOKEN,)
    exactness: str = ("exact: proved against transformers' InternVLProcessor (GotOcr2ImageProcessorPil, real "
                      "Qwen2.5 vocabulary with InternVL's special tokens at their real ids) on 100+ images")
    # processor_config.json: image_seq_length; preprocessor_config.json: size, min_patches, max_patches
    settings_read: tuple[str, ...] = ("image_seq_length", "size", "min_patches", "max_patches")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides
                 ) -> InternVLSettings:
        return read_settings(preprocessor, overrides)

    def image_tokens(self, width: int, height: int, settings: InternVLSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: InternVLSettings) -> str:
        return f"{START_TOKEN}{CONTEXT_TOKEN}{END_TOKEN}"

    def expand(self, width: int, height: int, settings: InternVLSettings) -> Expansion:
        return single_run(f"{START_TOKEN}{CONTEXT_TOKEN}{END_TOKEN}", count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: InternVLSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: InternVLSettings, max_pixels: int) -> None:
        return None  # the budget is max_patches (tiles), not pixels

    # -- the batch layout (the collator guards) --------------------------------------------------
    # InternVLProcessor.__call__: pixel_values (tiles, 3, 448, 448) of every image concatenated; an image of
    # count_patches tiles owns that many rows and needs image_seq_length x tiles <IMG_CONTEXT>s in one run
    # between <img> and </img>. The processor pops num_patches from its output, so the tiles come from the
    # caller as crops (tiles - 1 per image; SpanGuardCollator works them out from the examples' images).
    layout_tokens: LayoutTokens = LayoutTokens(CONTEXT_TOKEN, START_TOKEN, END_TOKEN)
    crops_on: Mapping[str, Any] = field(default_factory=dict)  # crop_to_patches is the processor's default
    crops_fix: str = "or give this image fewer tiles (it has {n} besides the first: lower max_patches)"

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def crop_settings(self, processor: Any, options: Mapping[str, Any], *, settings: Mapping[str, Any]
                      ) -> InternVLSettings:
        """The processor's ``images_kwargs`` updated with the call's ``options``, over its files' settings."""
        merged = {**(getattr(processor, "images_kwargs", None) or {}), **options}
        extra = {k: merged[k] for k in self.options if merged.get(k) is not None}
        return read_settings(processor_files(processor), Overrides(extra=extra))

    def layout_crops(self, sizes: Sequence[tuple[int, int]], settings: InternVLSettings) -> list[int]:
        return [count_patches(int(w), int(h), settings) - 1 for w, h in sizes]

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        rows = leading_rows(batch)
        if crops is None:
            if rows == 0:
                return MediaLayout([], [])
            raise UsageError(
                "an InternVL batch does not say how many tiles each image has (the processor pops num_patches): "
                "pass crops_per_image=[tiles - 1 for each image] (SpanGuardCollator works them out from the "
                "examples' images)"
            )
        found = [int(c) for c in crops]
        if sum(1 + c for c in found) != rows:
            raise UsageError(f"crops_per_image gives {sum(1 + c for c in found)} tiles, but the batch has {rows} "
                             "pixel_values rows; give the options the processor was called with (processor_options=)")
        seq = layout_family_settings(self, settings).image_seq_length
        return MediaLayout([(seq * (1 + c),) for c in found], [1 + c for c in found], crops=found)


FAMILY = InternVLFamily()
