"""Gemma 3 (``model_type`` ``gemma3``): a fixed run of ``<image_soft_token>`` per image, or per crop
with pan-and-scan.

Sources (transformers 5.23.0):

- ``models/gemma3/processing_gemma3.py`` ``Gemma3Processor``: the chat template writes
  ``<start_of_image>`` (the tokenizer's ``boi_token``, which is also ``processor.image_token``), and
  ``replace_image_token`` turns it into ``full_image_sequence``::

      "\\n\\n" + boi_token + image_token * image_seq_length + eoi_token + "\\n\\n"

  or, when pan-and-scan made ``num_crops`` > 0 crops of the image::

      "Here is the original image " + full_image_sequence + " and here are some crops to help you see better "
      + " ".join([full_image_sequence] * num_crops)

  ``image_seq_length`` is a processor argument (processor_config.json; default 256). The
  processor's ``images_kwargs`` (``do_pan_and_scan`` False, min crop 256, at most 4 crops, ratio 1.2)
  are passed to the image processor on every call and so override preprocessor_config.json: as
  with the real processor, pan-and-scan is on only when the caller asks for it
  (``Overrides(extra={"do_pan_and_scan": True})``, as ``processor(..., do_pan_and_scan=True)``).
- ``models/gemma3/image_processing_pil_gemma3.py`` ``Gemma3ImageProcessorPil.pan_and_scan``: how
  many crops an image of W x H gets (below). Every crop and the original are resized to ``size``
  (896 x 896 on the hub), so each costs ``image_seq_length`` features whatever its size.

The newlines around each image merge with the template's own newlines in the real tokenizer; the
engine tokenizes that text for real, so the merges are exact.
"""

from __future__ import annotations

import math
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
    leading_rows,
    option_flag,
    option_float,
    option_int,
    single_run,
)

# processing_gemma3.py: tokenizer.boi_token (the chat template's image placeholder) and
# tokenizer.image_token / eoi_token (tokenizer_config.json extra_special_tokens of google/gemma-3-*)
BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_soft_token>"
# processing_gemma3.py: Gemma3Processor.__init__(image_seq_length=256)
DEFAULT_IMAGE_SEQ_LENGTH = 256
# processing_gemma3.py: Gemma3Processor.images_kwargs, passed to the image processor on every call
DEFAULT_DO_PAN_AND_SCAN = False
DEFAULT_MIN_CROP_SIZE = 256
DEFAULT_MAX_NUM_CROPS = 4
DEFAULT_MIN_RATIO_TO_ACTIVATE = 1.2
# processing_gemma3.py: Gemma3Processor.replace_image_token, text around pan-and-scan crops
CROPS_INTRO = "Here is the original image "
CROPS_MIDDLE = " and here are some crops to help you see better "
# The Overrides.extra keys this family reads (the processor's call-time image kwargs).
EXTRA_KEYS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
              "pan_and_scan_min_ratio_to_activate")


@dataclass(frozen=True)
class Gemma3Settings:
    image_seq_length: int
    do_pan_and_scan: bool
    min_crop_size: int
    max_num_crops: int
    min_ratio_to_activate: float


def read_settings(preprocessor: dict[str, Any], overrides: Overrides) -> Gemma3Settings:
    """``image_seq_length`` from processor_config.json (the processor ignores preprocessor_config.json's
    copy); pan-and-scan from the user's call-time values, else the processor's defaults."""
    processor = preprocessor.get("processor_config") or {}
    extra = overrides.extra or {}
    unknown = sorted(k for k in extra if k.startswith("pan_and_scan") and k not in EXTRA_KEYS)
    if unknown:
        raise UsageError(f"unknown Gemma-3 pan-and-scan option(s) {unknown}; known: {', '.join(EXTRA_KEYS)}")

    def pick(key: str, default: Any) -> Any:
        value = extra.get(key)
        return default if value is None else value

    settings = Gemma3Settings(
        image_seq_length=int(processor.get("image_seq_length") or DEFAULT_IMAGE_SEQ_LENGTH),
        do_pan_and_scan=option_flag("do_pan_and_scan", pick("do_pan_and_scan", DEFAULT_DO_PAN_AND_SCAN)),
        min_crop_size=option_int("pan_and_scan_min_crop_size",
                                 pick("pan_and_scan_min_crop_size", DEFAULT_MIN_CROP_SIZE)),
        max_num_crops=option_int("pan_and_scan_max_num_crops",
                                 pick("pan_and_scan_max_num_crops", DEFAULT_MAX_NUM_CROPS)),
        min_ratio_to_activate=option_float("pan_and_scan_min_ratio_to_activate",
                                           pick("pan_and_scan_min_ratio_to_activate",
                                                DEFAULT_MIN_RATIO_TO_ACTIVATE)),
    )
    if settings.do_pan_and_scan and (settings.max_num_crops < 1 or settings.min_crop_size < 1):
        raise UsageError("pan_and_scan_max_num_crops and pan_and_scan_min_crop_size must be at least 1 "
                         "(the image processor divides by them)")
    return settings


def num_crops(width: int, height: int, s: Gemma3Settings) -> int:
    """Crops ``Gemma3ImageProcessorPil.pan_and_scan`` cuts from a W x H image (0: none), with its
    float arithmetic and half-up rounding."""
    if not s.do_pan_and_scan:
        return 0
    if width >= height:
        if width / height < s.min_ratio_to_activate:
            return 0
        crops_w = int(math.floor(width / height + 0.5))
        crops_w = min(int(math.floor(width / s.min_crop_size)), crops_w)
        crops_w = min(s.max_num_crops, max(2, crops_w))
        crops_h = 1
    else:
        if height / width < s.min_ratio_to_activate:
            return 0
        crops_h = int(math.floor(height / width + 0.5))
        crops_h = min(int(math.floor(height / s.min_crop_size)), crops_h)
        crops_h = min(s.max_num_crops, max(2, crops_h))
        crops_w = 1
    crop_w = int(math.ceil(width / crops_w))
    crop_h = int(math.ceil(height / crops_h))
    if min(crop_w, crop_h) < s.min_crop_size:
        return 0
    return crops_w * crops_h


def _sequence(token: str) -> str:
    """``Gemma3Processor.full_image_sequence`` with the soft token written once."""
    return f"\n\n{BOI_TOKEN}{token}{EOI_TOKEN}\n\n"


def expand_image(width: int, height: int, s: Gemma3Settings) -> Expansion:
    crops = num_crops(width, height, s)
    one = _sequence(IMAGE_TOKEN)
    if not crops:
        return single_run(one, s.image_seq_length)
    text = CROPS_INTRO + one + CROPS_MIDDLE + " ".join([one] * crops)
    return Expansion(text, (s.image_seq_length,) * (crops + 1))


@dataclass(frozen=True)
class Gemma3Family:
    name: str = "gemma3"
    title: str = "Gemma 3"
    # Overrides.extra keys (scan --processor-option KEY=VALUE): Gemma3Processor call-time options
    options: tuple[str, ...] = EXTRA_KEYS
    placeholder: str = BOI_TOKEN
    image_token: str = IMAGE_TOKEN
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_TOKEN,)
    exactness: str = ("exact: proved against transformers' Gemma3Processor (Gemma3ImageProcessorPil, real Gemma 3 "
                      "vocabulary) on 100+ images with and without pan-and-scan, and the VC201 crash against "
                      "Gemma3ForConditionalGeneration")
    # processor_config.json: image_seq_length; Overrides.extra: the pan-and-scan call-time kwargs
    settings_read: tuple[str, ...] = ("image_seq_length",) + EXTRA_KEYS

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> Gemma3Settings:
        return read_settings(preprocessor, overrides)

    def image_tokens(self, width: int, height: int, settings: Gemma3Settings) -> int:
        return expand_image(width, height, settings).features

    def expansion(self, settings: Gemma3Settings) -> str:
        return _sequence(IMAGE_TOKEN)

    def expand(self, width: int, height: int, settings: Gemma3Settings) -> Expansion:
        return expand_image(width, height, settings)

    def check_image(self, width: int, height: int, settings: Gemma3Settings) -> list[ImageIssue]:
        # every image (and crop) is resized to size["height"] x size["width"]; no size is rejected
        return []

    def with_max_pixels(self, settings: Gemma3Settings, max_pixels: int) -> None:
        return None

    # -- the batch layout (the collator guards) --------------------------------------------------
    # Gemma3Processor.__call__: pixel_values (images, 3, 896, 896); every image needs image_seq_length
    # <image_soft_token>s between <start_of_image> and <end_of_image>. With pan-and-scan an image with c
    # crops owns 1 + c consecutive rows (the original, then its crops) and fills 1 + c such runs. The
    # processor drops num_crops from its output, so the crops come from the caller (worked out from the
    # examples' image sizes with num_crops above) or from a num_crops the batch carries.
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        seq = getattr(processor, "image_seq_length", None)
        return {"tokens_per_image": int(seq or DEFAULT_IMAGE_SEQ_LENGTH)}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        found = batch_crops(batch, crops)
        seq = int(settings.get("tokens_per_image") or DEFAULT_IMAGE_SEQ_LENGTH)
        return MediaLayout([(seq,) * (1 + c) for c in found], [1 + c for c in found], ("pixel_values",),
                           ("num_crops",), crops=found)

    crops_on: Mapping[str, Any] = field(default_factory=lambda: {"do_pan_and_scan": True})
    crops_fix: str = ("or give this image fewer pan-and-scan crops (it has {n}: lower pan_and_scan_max_num_crops, "
                      "raise pan_and_scan_min_crop_size, or do_pan_and_scan=False)")

    def crop_settings(self, processor: Any, options: Mapping[str, Any], *, settings: Mapping[str, Any]
                      ) -> Gemma3Settings:
        """The processor's ``images_kwargs`` (the class defaults, or an instance's own dict) updated with the
        call's ``options``; the image processor's attributes do not count, ``images_kwargs`` always overrides
        them (``ProcessorMixin._merge_kwargs``)."""
        merged = {**(getattr(processor, "images_kwargs", None) or {}), **options}
        extra = {k: merged[k] for k in EXTRA_KEYS if merged.get(k) is not None}
        seq = settings.get("tokens_per_image") or getattr(processor, "image_seq_length", None)
        return read_settings({"processor_config": {"image_seq_length": seq}}, Overrides(extra=extra))

    def layout_crops(self, sizes: Sequence[tuple[int, int]], settings: Gemma3Settings) -> list[int]:
        return [num_crops(int(w), int(h), settings) for w, h in sizes]


def _flat(values: Any) -> list[int]:
    """``num_crops`` as one value per image, whether flat, nested per sample, or a tensor."""
    if hasattr(values, "flatten") and hasattr(values, "tolist"):
        return [int(v) for v in values.flatten().tolist()]
    out: list[int] = []
    for value in values:
        out.extend(_flat(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else [int(value)])
    return out


def batch_crops(batch: Mapping[str, Any], crops: Sequence[int] | None = None) -> list[int]:
    """Pan-and-scan crops of each image of a processed batch: ``crops``, else a ``num_crops`` the batch carries
    (the image processor's own output has it; Gemma3Processor drops it), else none. Every image owns
    ``1 + crops`` rows of ``pixel_values``; a total that differs is a usage error."""
    rows = leading_rows(batch)
    source = "crops_per_image"
    if crops is None and batch.get("num_crops") is not None:
        crops, source = _flat(batch["num_crops"]), "the batch's num_crops"
    if crops is None:
        return [0] * rows
    found = [int(c) for c in crops]
    if sum(1 + c for c in found) != rows:
        raise UsageError(
            f"{source} gives {len(found)} image(s) with {sum(found)} pan-and-scan crop(s), "
            f"{sum(1 + c for c in found)} pixel_values rows, but the batch has {rows}; give the pan-and-scan "
            "options the processor was called with (SpanGuardCollator(processor_options={'do_pan_and_scan': "
            "True, ...}))"
        )
    return found


FAMILY = Gemma3Family()
