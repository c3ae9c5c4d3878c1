"""Per-sample accounting of a processed batch: placeholders present against what each image and video needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.integrations._layout import (
    IGNORE_INDEX,
    TOKEN_TYPE_KEYS,
    MediaKind,
    SpanMismatchError,
    VisionSpec,
)
from vlmcheck.integrations.spans import counts_by_prefix, counts_from_runs, runs_of, typed_positions

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc


# --------------------------------------------------------------------------- accounting


@dataclass
class ImageAccount:
    """One image (or video) of one sample: placeholders needed and present, and where they are."""

    number: int  # 1-based, within the sample and kind
    batch_index: int  # 0-based, within the batch's images (row of image_grid_thw) or videos
    needed: int
    present: int
    start: int | None = None  # first placeholder position, None when none is present
    end: int | None = None  # one past the last placeholder position
    kind: MediaKind = "image"
    crops: int = 0  # Gemma 3 pan-and-scan crops: the image fills 1 + crops runs and pixel_values rows

    @property
    def status(self) -> Literal["ok", "cut", "missing"]:
        if self.present == self.needed:
            return "ok"
        return "missing" if self.present == 0 else "cut"


@dataclass
class SampleAccount:
    """One sample of a batch: placeholders present against what its images and videos need."""

    index: int
    length: int
    image_tokens: int
    image_features: int
    images: list[ImageAccount] = field(default_factory=list)
    orphan_runs: list[tuple[int, int]] = field(default_factory=list)  # placeholder runs with no image/video
    supervised: int | None = None  # labels != -100, None without labels
    video_tokens: int = 0
    video_features: int = 0
    videos: list[ImageAccount] = field(default_factory=list)

    @property
    def media(self) -> list[ImageAccount]:
        """The sample's images, then its videos."""
        return self.images + self.videos

    @property
    def ok(self) -> bool:
        return (
            self.image_tokens == self.image_features
            and self.video_tokens == self.video_features
            and all(m.status == "ok" for m in self.media)
        )

    @property
    def orphan_tokens(self) -> int:
        return sum(end - start for start, end in self.orphan_runs)

    def describe(self, *, max_length: int | None = None) -> str:
        """One line with the numbers, e.g. ``sample 1: 49 image tokens, 64 features (image 1 of 1 cut ...)``."""
        parts = [f"sample {self.index}: {self.image_tokens:,} image tokens, {self.image_features:,} features"]
        has_video = bool(self.videos) or self.video_tokens > 0
        if has_video:
            parts.append(f", {self.video_tokens:,} video tokens, {self.video_features:,} video features")
        details = []
        for kind, items in (("image", self.images), ("video", self.videos)):
            for item in items:
                crops = f" (original + {item.crops} crops)" if item.crops else ""
                if item.status == "cut":
                    details.append(
                        f"{kind} {item.number} of {len(items)}{crops} needs {item.needed:,} placeholders, "
                        f"only {item.present:,} are left"
                    )
                elif item.status == "missing":
                    details.append(
                        f"{kind} {item.number} of {len(items)}{crops} has none of its {item.needed:,} placeholders"
                    )
        if self.orphan_runs:
            owner = "no image or video" if has_video else "no image"
            details.append(f"{self.orphan_tokens:,} placeholder(s) belong to {owner} (e.g. generated)")
        if details:
            parts.append(" (" + "; ".join(details) + ")")
        return "".join(parts)


def _type_ids(batch: dict[str, Any], input_ids: torch.Tensor) -> torch.Tensor | None:
    for key in TOKEN_TYPE_KEYS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
            return value
    return None


def _place(
    runs: list[tuple[int, int]], items: list[ImageAccount], chunks: list[list[int]]
) -> list[tuple[int, int]]:
    """Fill ``items`` (one sample's images or videos, in order) from its placeholder runs; returns the
    parts of runs that belong to no item."""
    flat = [(k, size) for k, sizes in enumerate(chunks) for size in sizes]
    orphans: list[tuple[int, int]] = []
    j = 0
    for start, end in runs:
        position = start
        # A run may hold several images when a template puts them back to back.
        while position < end and j < len(flat):
            k, size = flat[j]
            take = min(size, end - position)
            item = items[k]
            if item.start is None:
                item.start = position
            item.present += take
            item.end = position + take
            position += take
            j += 1
            if take < size:  # a cut image ends its run, and the rest of that item is missing
                while j < len(flat) and flat[j][0] == k:
                    j += 1
                break
        if position < end:
            orphans.append((position, end))
    return orphans


def images_in_example(example: Any) -> int | None:
    if not isinstance(example, dict):
        return None
    if "images" in example:
        images = example["images"]
        return 0 if images is None else len(images)
    if "image" in example:
        return 0 if example["image"] is None else 1
    return None


def videos_in_example(example: Any) -> int | None:
    if not isinstance(example, dict):
        return None
    if "videos" in example:
        videos = example["videos"]
        return 0 if videos is None else len(videos)
    if "video" in example:
        return 0 if example["video"] is None else 1
    return None


def account_batch(
    batch: dict[str, Any],
    *,
    spec: VisionSpec,
    images_per_sample: Sequence[int] | None = None,
    videos_per_sample: Sequence[int] | None = None,
    crops_per_image: Sequence[int] | None = None,
) -> list[SampleAccount]:
    """Per-sample placeholder accounting of a processed batch (a processor's or collator's output).

    ``images_per_sample`` (``videos_per_sample``) says how many images (videos) each sample brought
    (the rows of ``image_grid_thw`` / ``video_grid_thw`` are in sample order). ``crops_per_image``:
    Gemma 3's pan-and-scan crops of each image of the batch, in order (see :func:`gemma3_crops`). Without it, every run
    of placeholders is taken to be one image (one video frame group), which is right unless whole
    images were cut away; with more runs than images, the extra placeholders are taken as stray
    (generated) ones.

    Example::

        accounts = account_batch(processor(images=..., text=..., return_tensors="pt"), spec=vision_spec(processor))
        [a.describe() for a in accounts if not a.ok]
    """
    input_ids = batch["input_ids"]
    if input_ids.dim() == 1:
        raise UsageError("account_batch needs a batch: input_ids of shape (batch, sequence)")
    attention = batch.get("attention_mask")
    labels = batch.get("labels")
    lengths = (
        attention.sum(dim=1).tolist() if attention is not None else [input_ids.shape[1]] * input_ids.shape[0]
    )
    supervised = (labels != IGNORE_INDEX).sum(dim=1).tolist() if labels is not None else None

    sides: dict[str, tuple[list[list[int]], list[list[ImageAccount]], list[list[tuple[int, int]]]]] = {}
    kinds: tuple[tuple[MediaKind, int | None, Sequence[int] | None], ...] = (
        ("image", spec.image_token_id, images_per_sample),
        ("video", spec.video_token_id, videos_per_sample),
    )
    types = _type_ids(batch, input_ids)
    for kind, token_id, per_sample in kinds:
        media = spec.media(batch, kind, crops_per_image if kind == "image" else None)
        chunks = [list(runs) for runs in media.runs]
        item_crops = list(media.crops) if media.crops is not None else [0] * len(chunks)
        marked, stray = typed_positions(input_ids, token_id, types)
        rows = [sorted(m + s) for m, s in zip(marked, stray)]
        runs_per_row = [runs_of(r) for r in marked]
        if per_sample is None and media.items_per_sample is not None:
            per_sample = list(media.items_per_sample)  # pixels laid out per sample say it themselves
        if per_sample is None:
            if sum(len(r) for r in runs_per_row) > sum(len(c) for c in chunks):
                per_sample = counts_by_prefix(runs_per_row, chunks)
            else:
                per_sample = counts_from_runs(runs_per_row, chunks)
                if per_sample is None:
                    found = sum(len(r) for r in runs_per_row)
                    raise SpanMismatchError(
                        f"the batch has {len(chunks)} {kind}(s) but {found} placeholder run(s), so whole "
                        f"{kind}s were cut away and vlmcheck cannot tell which sample they belong to; pass "
                        f"{kind}s_per_sample=[...] (SpanGuardCollator reads it from the examples' '{kind}s' key)"
                    )
        if sum(per_sample) != len(chunks):
            source = "image_grid_thw / pixel_values" if kind == "image" else "video_grid_thw"
            hint = ""
            if kind == "image" and spec.crops_from_sizes and sum(per_sample) < len(chunks):
                hint = (
                    "; Gemma 3 pan-and-scan adds a pixel_values row per crop: give the options the processor was "
                    "called with (SpanGuardCollator(processor_options={'do_pan_and_scan': True, ...})) or "
                    "crops_per_image=[...]"
                )
            raise UsageError(
                f"{kind}s_per_sample sums to {sum(per_sample)} but the batch has {len(chunks)} {kind}(s) "
                f"(rows of {source}){hint}"
            )
        items_per_row: list[list[ImageAccount]] = []
        orphans_per_row: list[list[tuple[int, int]]] = []
        cursor = 0
        for runs, count, strays in zip(runs_per_row, per_sample, stray):
            mine = chunks[cursor : cursor + count]
            items = [
                ImageAccount(
                    number=n + 1,
                    batch_index=cursor + n,
                    needed=sum(c),
                    present=0,
                    kind=kind,
                    crops=item_crops[cursor + n],
                )
                for n, c in enumerate(mine)
            ]
            cursor += count
            orphans_per_row.append(sorted(_place(runs, items, mine) + runs_of(strays)))
            items_per_row.append(items)
        sides[kind] = (rows, items_per_row, orphans_per_row)

    image_rows, images, image_orphans = sides["image"]
    video_rows, videos, video_orphans = sides["video"]
    return [
        SampleAccount(
            index=i,
            length=int(lengths[i]),
            image_tokens=len(image_rows[i]),
            image_features=sum(image.needed for image in images[i]),
            images=images[i],
            orphan_runs=sorted(image_orphans[i] + video_orphans[i]),
            supervised=int(supervised[i]) if supervised is not None else None,
            video_tokens=len(video_rows[i]),
            video_features=sum(video.needed for video in videos[i]),
            videos=videos[i],
        )
        for i in range(input_ids.shape[0])
    ]
