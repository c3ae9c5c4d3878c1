"""The collator wrapper, :class:`SpanGuardCollator`, and the Gemma 3 pan-and-scan crops it works out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlmcheck.errors import UsageError
from vlmcheck.families import gemma3 as gemma3_family
from vlmcheck.families.base import CroppedBatchLayoutFamily
from vlmcheck.integrations._accounting import SampleAccount, images_in_example, videos_in_example
from vlmcheck.integrations._layout import (
    IGNORE_INDEX,
    POLICIES,
    Policy,
    SpanMismatchError,
    VisionSpec,
    vision_spec,
)
from vlmcheck.integrations._repair import Repair, guard_batch

logger = logging.getLogger("vlmcheck.guards")


# --------------------------------------------------------------------------- the collator


class SpanGuardCollator:
    """Wraps any collator ``(examples) -> batch`` and checks each batch before the model sees it.

    Every sample's image and video placeholders must match the features its images and videos
    produce. Policies: ``"raise"`` (default) raises :class:`SpanMismatchError` naming the sample,
    the numbers and the fix; ``"drop-media"`` (alias ``"drop-images"``) drops cut images and
    videos with their pixels and masks orphan placeholders; ``"truncate"`` cuts the sample at the
    start of the first broken span. The batch keeps its samples and output keys, so every rank
    still runs the same number of forward passes. Repairs are counted in :attr:`stats` and logged
    on the ``vlmcheck.guards`` logger.

    ``max_length``: give it here (and not to the wrapped collator) to let the guard truncate.
    Images (videos) per sample are read from each example's ``images``/``image`` (``videos``/
    ``video``) key, or from ``images_per_sample`` (``videos_per_sample``) callables.

    Gemma 3 pan-and-scan: the crops of every image are worked out from the examples' images (their
    sizes) with the processor's pan-and-scan settings, ``processor.images_kwargs`` updated with
    ``processor_options`` (the call-time options the wrapped collator gives the processor, e.g.
    ``{"do_pan_and_scan": True}``); see :func:`gemma3_crops`. An image and its crops are one item:
    checked, dropped and truncated together.

    Example::

        collator = SpanGuardCollator(trainer_collator, processor=processor, policy="drop-media")
        batch = collator(examples)
        collator.stats   # {'batches': 1, 'samples': 2, 'repaired_samples': 1, ...}
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        *,
        processor: Any = None,
        spec: VisionSpec | None = None,
        policy: Policy = "raise",
        max_length: int | None = None,
        images_per_sample: Callable[[dict[str, Any]], int] | None = None,
        videos_per_sample: Callable[[dict[str, Any]], int] | None = None,
        processor_options: Mapping[str, Any] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise UsageError(f"unknown policy {policy!r}; use one of: {', '.join(POLICIES)}")
        if spec is None:
            if processor is None:
                raise UsageError("SpanGuardCollator needs processor= or spec=")
            spec = vision_spec(processor)
        self.collator = collator
        self.spec = spec
        self.processor = processor
        self.processor_options = dict(processor_options or {})
        self.policy = policy
        self.max_length = max_length
        self._images_per_sample = images_per_sample
        self._videos_per_sample = videos_per_sample
        self.stats: dict[str, int] = {
            "batches": 0,
            "samples": 0,
            "repaired_samples": 0,
            "dropped_images": 0,
            "dropped_videos": 0,
            "masked_tokens": 0,
            "unsupervised_samples": 0,
        }
        self.repairs: list[Repair] = []  # the most recent 1,000
        self._told_pan_and_scan = False
        self.last_accounts: list[SampleAccount] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        counts = _counts(examples, self._images_per_sample, images_in_example)
        video_counts = _counts(examples, self._videos_per_sample, videos_in_example)
        sizes = _image_sizes(examples) if self.spec.crops_from_sizes else None  # before the collator pops keys
        batch = self.collator(examples)
        number = self.stats["batches"]
        crops = self._crops(sizes, batch)
        try:
            out, accounts, repairs = guard_batch(
                batch,
                spec=self.spec,
                policy=self.policy,
                max_length=self.max_length,
                images_per_sample=counts,
                videos_per_sample=video_counts,
                crops_per_image=crops,
            )
        except SpanMismatchError as error:
            self.last_accounts = error.accounts
            raise SpanMismatchError(
                f"SpanGuardCollator, batch {number}: {error}", error.accounts, code=error.code
            ) from None
        self.last_accounts = accounts
        self.stats["batches"] += 1
        self.stats["samples"] += len(accounts)
        for repair in repairs:
            self.stats["repaired_samples"] += 1
            self.stats["dropped_images"] += len(repair.images_dropped)
            self.stats["dropped_videos"] += len(repair.videos_dropped)
            self.stats["masked_tokens"] += repair.tokens_masked
            logger.warning("SpanGuardCollator (policy %r), batch %d, %s", self.policy, number, repair.message)
        self.repairs = (self.repairs + repairs)[-1000:]
        if "labels" in out:
            after = (out["labels"] != IGNORE_INDEX).sum(dim=1).tolist()
            empty = [i for i, n in enumerate(after) if n == 0]
            self.stats["unsupervised_samples"] += len(empty)
            if empty and len(empty) == len(after):
                message = (
                    f"SpanGuardCollator, batch {number}: no sample has a supervised label (all labels are "
                    f"{IGNORE_INDEX}); this step's loss will be 0. Usual causes: max_length cuts every completion, "
                    "or the completion/assistant mask matched nothing."
                )
                if self.policy == "raise":
                    raise SpanMismatchError(message, accounts, code="VR103")
                logger.warning(message)
            elif empty:
                logger.info(
                    "SpanGuardCollator, batch %d: sample(s) %s have no supervised label", number, empty
                )
        return out

    def _crops(self, sizes: list[tuple[int, int]] | None, batch: dict[str, Any]) -> list[int] | None:
        """Each image's crops (Gemma 3 pan-and-scan, InternVL tiles), from the examples' image sizes and the
        processor's settings; None when the layout has none, the sizes are unknown, or the batch carries
        num_crops."""
        layout = self.spec.layout
        if sizes is None or batch.get("num_crops") is not None or not isinstance(layout, CroppedBatchLayoutFamily):
            return None
        if self.processor is None:
            raise UsageError(f"SpanGuardCollator needs processor= to work out the {layout.title} crops of each image")
        settings = layout.crop_settings(self.processor, self.processor_options, settings=self.spec.settings)
        crops = layout.layout_crops(sizes, settings)
        pixels = batch.get("pixel_values")
        rows = 0 if pixels is None else int(pixels.shape[0])
        if rows > sum(1 + c for c in crops) and layout.crops_on:
            # More pixel rows than the settings give: the wrapped collator turned cropping on at call time. With
            # the processor's own crop limits the rows add up, or it is a usage error.
            options = {**self.processor_options, **layout.crops_on}
            guess = layout.layout_crops(sizes, layout.crop_settings(self.processor, options, settings=self.spec.settings))
            if sum(1 + c for c in guess) == rows:
                if not self._told_pan_and_scan:
                    logger.info(
                        "SpanGuardCollator: %d pixel_values rows for %d images: cropping is on in the wrapped "
                        "collator; counting crops with %s (say so with processor_options=)",
                        rows,
                        len(sizes),
                        ", ".join(f"{k}={v}" for k, v in layout.crops_on.items()),
                    )
                    self._told_pan_and_scan = True
                return guess
        return crops

    def summary(self) -> str:
        """One line of counters, for the end of a run."""
        return ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in self.stats.items())


def _counts(
    examples: list[dict[str, Any]],
    given: Callable[[dict[str, Any]], int] | None,
    read: Callable[[Any], int | None],
) -> list[int] | None:
    if given is not None:
        return [given(e) for e in examples]
    found = [read(e) for e in examples]
    return None if any(c is None for c in found) else [int(c) for c in found if c is not None]


# --------------------------------------------------------------------------- Gemma 3 pan-and-scan


def gemma3_settings(
    processor: Any, options: Mapping[str, Any] | None = None, *, spec: VisionSpec | None = None
) -> gemma3_family.Gemma3Settings:
    """The pan-and-scan settings a ``Gemma3Processor`` call uses: its ``images_kwargs`` (the class
    defaults, or an instance's own dict), updated with ``options`` (the call's keyword arguments).
    The image processor's attributes do not count: ``images_kwargs`` always overrides them
    (``ProcessorMixin._merge_kwargs``).

    Example::

        settings = gemma3_settings(processor, {"do_pan_and_scan": True})
        settings.max_num_crops   # 4
    """
    return gemma3_family.FAMILY.crop_settings(processor, options or {}, settings=spec.settings if spec else {})


def gemma3_crops(
    sizes: Sequence[tuple[int, int]], *, settings: gemma3_family.Gemma3Settings
) -> list[int]:
    """Pan-and-scan crops of each ``(width, height)`` image, with ``Gemma3ImageProcessorPil.pan_and_scan``'s
    arithmetic (vlmcheck's Gemma 3 family); pass the result as ``crops_per_image``.

    Example::

        gemma3_crops([(900, 300), (320, 240)], settings=gemma3_settings(processor, {"do_pan_and_scan": True}))
        # [3, 0]
    """
    return gemma3_family.FAMILY.layout_crops(sizes, settings)


def _image_size(image: Any) -> tuple[int, int] | None:
    """(width, height) of a PIL image, an array / tensor (channels first or last), or a local path (header only)."""
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL
        return int(size[0]), int(size[1])
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) in (2, 3):
        dims = [int(d) for d in shape]
        if len(dims) == 3:
            # the channel axis is the small one (1, 3 or 4), first or last, as transformers infers it
            dims = dims[1:] if dims[0] in (1, 3, 4) and dims[2] not in (1, 3, 4) else dims[:2]
        return dims[1], dims[0]
    if isinstance(image, str) and "://" not in image:
        try:
            from PIL import Image

            with Image.open(image) as opened:
                return int(opened.size[0]), int(opened.size[1])
        except (ImportError, OSError):
            return None
    return None


def _image_sizes(examples: list[dict[str, Any]]) -> list[tuple[int, int]] | None:
    """The sizes of every example's images, in batch order; None if one is unknown."""
    sizes: list[tuple[int, int]] = []
    for example in examples:
        if not isinstance(example, dict):
            return None
        images = example.get("images", [example["image"]] if example.get("image") is not None else [])
        for image in images or []:
            size = _image_size(image)
            if size is None:
                return None
            sizes.append(size)
    return sizes
