"""SmolVLM2 (``model_type`` ``smolvlm``): HuggingFaceTB/SmolVLM2-2.2B-Instruct, -500M/-256M-Video-Instruct.

Images are counted as Idefics3 counts them (SmolVLM-Instruct and SmolVLM-256M/500M-Instruct are
``model_type`` ``idefics3``, see ``idefics3.py``): the image is resized so its longest edge is
``size["longest_edge"]``, then up to a multiple of ``max_image_size["longest_edge"]`` (M) on both
sides, and cut into rows x cols tiles of M x M plus one global image, each ``image_seq_len``
``<image>`` tokens::

    <fake_token_around_image><row_1_col_1><image>*seq ... (one per column) "\\n"   (one line per row)
    "\\n"<fake_token_around_image><global-img><image>*seq<fake_token_around_image>

and a single-tile image is ``<fake_token_around_image><global-img><image>*seq<fake_token_around_image>``.
The code is repeated here rather than imported: upstream keeps its own generated copy
(``image_processing_pil_smolvlm.py`` is generated from ``modular_smolvlm.py``), and SmolVLMProcessor
is a different class (it reads its token strings from the tokenizer, and adds video prompts).

Sources (transformers 5.23.0):

- ``models/smolvlm/processing_smolvlm.py``: ``SmolVLMProcessor.replace_image_token`` ->
  ``get_image_prompt_string`` / ``_prompt_split_image`` / ``_prompt_single_image``; ``image_seq_len``
  is a processor argument, class default 169. Videos (``<video>``) are not counted here.
- ``models/smolvlm/image_processing_pil_smolvlm.py`` ``SmolVLMImageProcessorPil`` (PIL backend, used
  without torchvision): ``_preprocess``, ``resize`` (``_resize_output_size_rescale_to_max_len`` then
  ``_resize_output_size_scale_below_upper_bound``), ``resize_for_vision_encoder``, ``split_images``.
  ``get_number_of_image_patches`` is not used: it gives other grids when ``longest_edge`` is not a
  multiple of the tile side (see ``idefics3.py``).

The arithmetic repeats the processor's Python float operations in the same order, so the sizes are
bit-identical.
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

# processing_smolvlm.py: SmolVLMProcessor.__init__ defaults (getattr(tokenizer, ..., default))
IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
# processing_smolvlm.py: SmolVLMProcessor(image_seq_len=169)
DEFAULT_IMAGE_SEQ_LEN = 169
# image_processing_pil_smolvlm.py: SmolVLMImageProcessorPil class defaults
DEFAULT_LONGEST_EDGE = 4 * 364
DEFAULT_MAX_IMAGE_SIZE = 364
# image_processing_pil_smolvlm.py: MAX_IMAGE_SIZE, "4k resolution as absolute maximum"
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class SmolVLMSettings:
    image_seq_len: int
    do_resize: bool
    # the image processor's ``size``: longest_edge, or a fixed height x width
    longest_edge: int | None
    height: int | None
    width: int | None
    max_image_size: int  # max_image_size["longest_edge"]: the tile side M
    do_image_splitting: bool


def read_settings(preprocessor: dict[str, Any]) -> SmolVLMSettings:
    """Checkpoint values over class defaults: preprocessor_config.json for the image processor,
    processor_config.json (``preprocessor["processor_config"]``) for ``image_seq_len``."""
    processor = preprocessor.get("processor_config") or {}
    size = preprocessor.get("size") or {"longest_edge": DEFAULT_LONGEST_EDGE}
    if isinstance(size, int):
        size = {"longest_edge": size}
    tile = preprocessor.get("max_image_size") or {"longest_edge": DEFAULT_MAX_IMAGE_SIZE}
    if isinstance(tile, int):
        tile = {"longest_edge": tile}
    return SmolVLMSettings(
        image_seq_len=int(processor.get("image_seq_len") or DEFAULT_IMAGE_SEQ_LEN),
        do_resize=bool(preprocessor.get("do_resize", True)),
        longest_edge=int(size["longest_edge"]) if size.get("longest_edge") else None,
        height=int(size["height"]) if size.get("height") else None,
        width=int(size["width"]) if size.get("width") else None,
        max_image_size=int(tile["longest_edge"]),
        do_image_splitting=bool(preprocessor.get("do_image_splitting", True)),
    )


def resized(width: int, height: int, s: SmolVLMSettings) -> tuple[int, int]:
    """(height, width) after ``do_resize`` and, with splitting, ``resize_for_vision_encoder``."""
    if s.do_resize:
        if s.longest_edge:
            # _resize_output_size_rescale_to_max_len: longest edge to L, the other edge made even
            aspect_ratio = width / height
            if width >= height:
                width = s.longest_edge
                height = int(width / aspect_ratio)
                if height % 2 != 0:
                    height += 1
            elif height > width:
                height = s.longest_edge
                width = int(height * aspect_ratio)
                if width % 2 != 0:
                    width += 1
            height, width = max(height, 1), max(width, 1)
            # _resize_output_size_scale_below_upper_bound: longest edge at most MAX_IMAGE_SIZE
            aspect_ratio = width / height
            if width >= height and width > MAX_IMAGE_SIZE:
                width = MAX_IMAGE_SIZE
                height = int(width / aspect_ratio)
            elif height > width and height > MAX_IMAGE_SIZE:
                height = MAX_IMAGE_SIZE
                width = int(height * aspect_ratio)
            height, width = max(height, 1), max(width, 1)
        elif s.height and s.width:
            height, width = s.height, s.width
    if s.do_image_splitting:
        # resize_for_vision_encoder: both sides up to a multiple of the tile side M
        m = s.max_image_size
        aspect_ratio = width / height
        if width >= height:
            width = math.ceil(width / m) * m
            height = int(width / aspect_ratio)
            height = math.ceil(height / m) * m
        elif height > width:
            height = math.ceil(height / m) * m
            width = int(height * aspect_ratio)
            width = math.ceil(width / m) * m
    return height, width


def grid(width: int, height: int, s: SmolVLMSettings) -> tuple[int, int]:
    """(rows, cols) of tiles; (0, 0) for a single global image."""
    if not s.do_image_splitting:  # the image is resized to one M x M tile
        return 0, 0
    h, w = resized(width, height, s)
    m = s.max_image_size
    if h > m or w > m:  # split_images
        return (h - m) // m + 1, (w - m) // m + 1
    return 0, 0


def single_image_text() -> str:
    """``_prompt_single_image`` with ``<image>`` once."""
    return f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{IMAGE_TOKEN}{FAKE_IMAGE_TOKEN}"


def expand(width: int, height: int, s: SmolVLMSettings) -> Expansion:
    """``get_image_prompt_string``, with ``<image>`` written once per tile."""
    rows, cols = grid(width, height, s)
    if rows == 0 and cols == 0:
        return Expansion(single_image_text(), (s.image_seq_len,))
    text = ""
    for r in range(rows):  # _prompt_split_image
        for c in range(cols):
            text += f"{FAKE_IMAGE_TOKEN}<row_{r + 1}_col_{c + 1}>{IMAGE_TOKEN}"
        text += "\n"
    text += "\n" + single_image_text()
    return Expansion(text, (s.image_seq_len,) * (rows * cols + 1))


def count_image_tokens(width: int, height: int, s: SmolVLMSettings) -> int:
    rows, cols = grid(width, height, s)
    return s.image_seq_len * (rows * cols + 1)


@dataclass(frozen=True)
class SmolVLMFamily(TiledSlotsLayout):
    """The batch layout (the collator guards) is :class:`TiledSlotsLayout`: SmolVLMProcessor.__call__ returns
    pixel_values (samples, max tiles, 3, M, M), each sample's tiles first and all-zero padding after
    (pixel_attention_mask likewise), and keeps no grid, so the guards work each image's tiles out from its size."""

    name: str = "smolvlm"
    title: str = "SmolVLM2"
    placeholder: str = IMAGE_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN, IMAGE_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = (
        "exact for images: proved against transformers' SmolVLMProcessor (SmolVLMImageProcessorPil) on 110+ "
        "images with SmolVLM2-2.2B-Instruct's files (a StarCoder2 BPE stand-in for SmolLM2 holding SmolVLM's "
        "special tokens at their real ids); videos are not counted"
    )
    # preprocessor_config.json: size, max_image_size, do_resize, do_image_splitting;
    # processor_config.json: image_seq_len
    settings_read: tuple[str, ...] = ("size", "max_image_size", "do_resize", "do_image_splitting",
                                      "image_seq_len")

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any],
                 overrides: Overrides) -> SmolVLMSettings:
        return read_settings(preprocessor)

    def image_tokens(self, width: int, height: int, settings: SmolVLMSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: SmolVLMSettings) -> str:
        return single_image_text()

    def expand(self, width: int, height: int, settings: SmolVLMSettings) -> Expansion:
        return expand(width, height, settings)

    def check_image(self, width: int, height: int, settings: SmolVLMSettings) -> list[ImageIssue]:
        return []

    def with_max_pixels(self, settings: SmolVLMSettings, max_pixels: int) -> None:
        return None


FAMILY = SmolVLMFamily()
