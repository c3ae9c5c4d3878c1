"""Idefics3 (``model_type`` ``idefics3``): HuggingFaceM4/Idefics3-8B-Llama3 and the SmolVLM
checkpoints built on it (SmolVLM-Instruct, SmolVLM-256M/500M-Instruct).

Each image becomes ``image_seq_len`` ``<image>`` tokens per tile: the image is resized so its longest
edge is ``size["longest_edge"]``, then up to a multiple of ``max_image_size["longest_edge"]`` (M) on
both sides, and cut into rows x cols tiles of M x M plus one global image of M x M. The prompt
interleaves the runs with marker text::

    <fake_token_around_image><row_1_col_1><image>*seq ... (one per column) "\\n"   (one line per row)
    "\\n"<fake_token_around_image><global-img><image>*seq<fake_token_around_image>

A single-tile image (rows = cols = 0) is ``<fake_token_around_image><global-img><image>*seq
<fake_token_around_image>``. The markers are text: ``<row_i_col_j>`` and ``<global-img>`` are single
added tokens in SmolVLM-256M/500M but several ordinary tokens in Idefics3-8B-Llama3 and
SmolVLM-Instruct, and the row-ending "\\n" followed by "\\n" merges into one token in their
vocabularies; the engine tokenizes that text with the checkpoint's tokenizer.

Sources (transformers 5.23.0):

- ``models/idefics3/processing_idefics3.py`` ``Idefics3Processor.replace_image_token`` (the prompt
  above; ``image_seq_len`` is a processor argument, class default 169).
- ``models/idefics3/image_processing_pil_idefics3.py`` ``Idefics3ImageProcessorPil`` (the PIL
  backend, used without torchvision): ``_preprocess``, ``resize`` (``get_resize_output_image_size``:
  ``_resize_output_size_rescale_to_max_len`` then ``_resize_output_size_scale_below_upper_bound``),
  ``resize_for_vision_encoder`` and ``split_images``. The torchvision class computes the same sizes.
  ``get_number_of_image_patches`` in the same file is *not* used: it rounds the short side up from
  the step-1 size instead of from ``int(width / aspect_ratio)``, which gives other grids when
  ``longest_edge`` is not a multiple of the tile side (2,230 of 11,481 sizes at 1000 / 300).

The arithmetic below repeats the processor's Python float operations in the same order (true
division of ints, ``int()`` truncation, ``math.ceil``), so the sizes are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    Overrides,
    TiledSlotsLayout,
)

# processing_idefics3.py: Idefics3Processor.__init__ token strings
IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TAG = "<global-img>"
# processing_idefics3.py: Idefics3Processor(image_seq_len=169)
DEFAULT_IMAGE_SEQ_LEN = 169
# image_processing_pil_idefics3.py: Idefics3ImageProcessorPil class defaults
DEFAULT_LONGEST_EDGE = 4 * 364
DEFAULT_MAX_IMAGE_SIZE = 364
# image_processing_pil_idefics3.py: MAX_IMAGE_SIZE, "4k resolution as absolute maximum"
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class Idefics3Settings:
    image_seq_len: int
    do_resize: bool
    # the image processor's ``size``: longest_edge, or a fixed height x width
    longest_edge: int | None
    height: int | None
    width: int | None
    max_image_size: int  # max_image_size["longest_edge"]: the tile side M
    do_image_splitting: bool


def read_settings(preprocessor: dict[str, Any]) -> Idefics3Settings:
    """Checkpoint values over class defaults: preprocessor_config.json for the image processor,
    processor_config.json (``preprocessor["processor_config"]``) for ``image_seq_len``."""
    processor = preprocessor.get("processor_config") or {}
    size = preprocessor.get("size") or {"longest_edge": DEFAULT_LONGEST_EDGE}
    if isinstance(size, int):
        size = {"longest_edge": size}
    tile = preprocessor.get("max_image_size") or {"longest_edge": DEFAULT_MAX_IMAGE_SIZE}
    if isinstance(tile, int):
        tile = {"longest_edge": tile}
    return Idefics3Settings(
        image_seq_len=int(processor.get("image_seq_len") or DEFAULT_IMAGE_SEQ_LEN),
        do_resize=bool(preprocessor.get("do_resize", True)),
        longest_edge=int(size["longest_edge"]) if size.get("longest_edge") else None,
        height=int(size["height"]) if size.get("height") else None,
        width=int(size["width"]) if size.get("width") else None,
        max_image_size=int(tile["longest_edge"]),
        do_image_splitting=bool(preprocessor.get("do_image_splitting", True)),
    )


def _rescale_to_max_len(height: int, width: int, max_len: int, min_len: int = 1) -> tuple[int, int]:
    """``_resize_output_size_rescale_to_max_len``: longest edge to ``max_len``, the other edge made even."""
    aspect_ratio = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    elif height > width:
        height = max_len
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    return max(height, min_len), max(width, min_len)


def _scale_below_upper_bound(height: int, width: int, max_len: int) -> tuple[int, int]:
    """``_resize_output_size_scale_below_upper_bound``: cap the longest edge at ``max_len``."""
    aspect_ratio = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect_ratio)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def _for_vision_encoder(height: int, width: int, tile: int) -> tuple[int, int]:
    """``resize_for_vision_encoder``: both sides up to a multiple of the tile side."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    elif height > width:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


def resized(width: int, height: int, s: Idefics3Settings) -> tuple[int, int]:
    """(height, width) after ``do_resize`` and, with splitting, ``resize_for_vision_encoder``."""
    if s.do_resize:
        if s.longest_edge:
            height, width = _rescale_to_max_len(height, width, s.longest_edge)
            height, width = _scale_below_upper_bound(height, width, MAX_IMAGE_SIZE)
        elif s.height and s.width:
            height, width = s.height, s.width
    if s.do_image_splitting:
        height, width = _for_vision_encoder(height, width, s.max_image_size)
    return height, width


def grid(width: int, height: int, s: Idefics3Settings) -> tuple[int, int]:
    """(rows, cols) of tiles; (0, 0) for a single global image."""
    if not s.do_image_splitting:  # the image is resized to one M x M tile
        return 0, 0
    h, w = resized(width, height, s)
    m = s.max_image_size
    if h > m or w > m:  # split_images
        return (h - m) // m + 1, (w - m) // m + 1
    return 0, 0


def single_image_text() -> str:
    return f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TAG}{IMAGE_TOKEN}{FAKE_IMAGE_TOKEN}"


def expand(width: int, height: int, s: Idefics3Settings) -> Expansion:
    """The prompt of ``replace_image_token``, with ``<image>`` written once per tile."""
    rows, cols = grid(width, height, s)
    if rows == 0 and cols == 0:
        return Expansion(single_image_text(), (s.image_seq_len,))
    text = ""
    for r in range(rows):
        for c in range(cols):
            text += f"{FAKE_IMAGE_TOKEN}<row_{r + 1}_col_{c + 1}>{IMAGE_TOKEN}"
        text += "\n"
    text += "\n" + single_image_text()
    return Expansion(text, (s.image_seq_len,) * (rows * cols + 1))


def count_image_tokens(width: int, height: int, s: Idefics3Settings) -> int:
    rows, cols = grid(width, height, s)
    return s.image_seq_len * (rows * cols + 1)


@dataclass(frozen=True)
class Idefics3Family(TiledSlotsLayout):
    """The batch layout (the collator guards) is :class:`TiledSlotsLayout`: Idefics3Processor.__call__ returns
    pixel_values (samples, max tiles, 3, M, M), each sample's tiles first and all-zero padding after
    (pixel_attention_mask likewise), and keeps no grid, so the guards work each image's tiles out from its size."""

    name: str = "idefics3"
    title: str = "Idefics3 / SmolVLM"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    # (<global-img> and <row_i_col_j> are ordinary text in Idefics3-8B-Llama3's and SmolVLM-Instruct's vocabularies.)
    vision_tokens: tuple[str, ...] = (FAKE_IMAGE_TOKEN, IMAGE_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = (
        "exact: proved against transformers' Idefics3Processor (Idefics3ImageProcessorPil) on 110+ images with "
        "Idefics3-8B-Llama3 (real Llama-3 vocabulary), SmolVLM-Instruct and SmolVLM-256M-Instruct files (a "
        "StarCoder2 BPE stand-in for SmolLM2 holding SmolVLM's special tokens at their real ids)"
    )
    # preprocessor_config.json: size, max_image_size, do_resize, do_image_splitting;
    # processor_config.json: image_seq_len
    settings_read: tuple[str, ...] = ("size", "max_image_size", "do_resize", "do_image_splitting",
                                      "image_seq_len")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any],
                 overrides: Overrides) -> Idefics3Settings:
        return read_settings(preprocessor)

    def image_tokens(self, width: int, height: int, settings: Idefics3Settings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: Idefics3Settings) -> str:
        return single_image_text()

    def expand(self, width: int, height: int, settings: Idefics3Settings) -> Expansion:
        return expand(width, height, settings)

    def check_image(self, width: int, height: int, settings: Idefics3Settings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: Idefics3Settings, max_pixels: int) -> None:
        return None


FAMILY = Idefics3Family()
