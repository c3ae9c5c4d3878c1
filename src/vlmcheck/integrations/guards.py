"""Guards between a collator and the model: span-aware truncation and a collator wrapper.

A vision-language model checks, at forward time, that the number of image placeholder tokens in
``input_ids`` equals the number of features its images produce. Truncating a processed batch with
a plain slice (``input_ids[:, :max_length]``, as TRL's prompt-completion collator does) can cut an
image span in two, and the model then raises "Image features and image tokens do not match". This
module counts, per sample, the placeholders present against the placeholders each image needs,
and repairs what it can at image-span boundaries, keeping ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids`` consistent with the placeholders that remain. Videos are counted and repaired
the same way ("Video features and video tokens do not match").

Every family that scan counts declares its batch layout in its own module
(:class:`vlmcheck.families.base.BatchLayoutFamily`): which token the model counts against image (video)
features, which marker opens a span, and where each image of a processed batch sits: the placeholder runs
it fills and the ``pixel_values`` rows it owns, read from the batch's own metadata (``image_grid_thw`` for
the Qwen VL families and GLM-4V, ``image_sizes`` for LLaVA-NeXT, LLaVA-OneVision and Pixtral, the fixed
per-image count of LLaVA, PaliGemma and Gemma 3). :func:`vision_spec` finds the family of a processor in the
registry; this module holds no family's tokens or numbers. Gemma 3 pan-and-scan: an image with ``c`` crops
owns ``1 + c`` rows and fills ``1 + c`` runs; the processor drops ``num_crops`` from its output, so the crops
are given as ``crops_per_image`` (the collator works them out from the examples' images).

Example::

    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    from vlmcheck.integrations.guards import SpanGuardCollator

    inner = DataCollatorForVisionLanguageModeling(processor)          # no max_length here
    collator = SpanGuardCollator(inner, processor=processor, policy="truncate", max_length=2048)
    trainer = SFTTrainer(..., data_collator=collator)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vlmcheck.errors import MissingDependencyError, UsageError, VlmcheckError
from vlmcheck.families import gemma3 as gemma3_family
from vlmcheck.families import get_family, known_families
from vlmcheck.families.base import (
    BatchLayoutFamily,
    CroppedBatchLayoutFamily,
    MediaLayout,
    Overrides,
    VideoBatchLayoutFamily,
)
from vlmcheck.integrations.spans import (
    counts_by_prefix,
    counts_from_runs,
    runs_of,
    typed_positions,
)

if TYPE_CHECKING:
    import torch

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc

logger = logging.getLogger("vlmcheck.guards")

# "drop-media" drops cut images and cut videos; "drop-images" is its original name and stays an alias.
Policy = Literal["raise", "drop-media", "drop-images", "truncate"]
POLICIES: tuple[str, ...] = ("raise", "drop-media", "drop-images", "truncate")
MediaKind = Literal["image", "video"]
IGNORE_INDEX = -100  # transformers' CrossEntropyLoss ignore_index, used by every trainer for masked labels

# Keys that hold one value per token and must be cut / masked along with input_ids.
_TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


class SpanMismatchError(VlmcheckError, ValueError):
    """A batch whose image (video) placeholders do not match its images (videos) (policy ``"raise"``).

    Subclasses ``ValueError`` so that code catching the model's own mismatch error catches it too.
    ``accounts`` holds the per-sample counts; ``code`` is its runtime catalogue code (``VR101``
    span-mismatch, ``VR103`` batch-unsupervised; ``vlmcheck explain VR101``).
    """

    def __init__(self, message: str, accounts: Sequence[SampleAccount] = (), *, code: str = "VR101") -> None:
        super().__init__(message)
        self.accounts = list(accounts)
        self.code = code


# --------------------------------------------------------------------------- the family layout


@dataclass(frozen=True)
class VisionSpec:
    """How a batch of one model family lays out image and video placeholders and pixels.

    ``family`` is a registered ``model_type`` whose module declares the batch layout
    (:class:`vlmcheck.families.base.BatchLayoutFamily`): which tokens are placeholders and how many
    each image of a batch needs. ``settings`` is what that layout reads from the processor
    (``family.layout_settings(processor)``). Build it from a processor with :func:`vision_spec`;
    construct it directly for a tokenizer-only setup::

        spec = VisionSpec(family="qwen2_vl", image_token_id=151655, video_token_id=151656,
                          start_token_id=151652, end_token_id=151653, pad_token_id=151643,
                          settings={"merge_size": 2})
    """

    family: str
    image_token_id: int
    pad_token_id: int
    video_token_id: int | None = None
    start_token_id: int | None = None
    end_token_id: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> BatchLayoutFamily:
        """The family module's batch layout (a usage error when the family declares none)."""
        return batch_layout_family(self.family)

    @property
    def merge_size(self) -> int | None:
        """The Qwen-style merge size the layout read from the processor, if any."""
        value = self.settings.get("merge_size")
        return None if value is None else int(value)

    @property
    def tokens_per_image(self) -> int | None:
        value = self.settings.get("tokens_per_image")
        return None if value is None else int(value)

    @property
    def video_frame_runs(self) -> bool:
        """Whether every temporal patch of a video is its own placeholder run (Qwen3-VL), as the layout says
        for a video of two temporal patches."""
        probe = {"video_grid_thw": torch.tensor([[2, 2, 2]])}
        runs = self.media(probe, "video").runs
        return bool(runs) and len(runs[0]) > 1

    @property
    def crops_from_sizes(self) -> bool:
        """Whether each image's pixel rows depend on crops worked out from its size (Gemma 3 pan-and-scan)."""
        return isinstance(self.layout, CroppedBatchLayoutFamily)

    def media(self, batch: Mapping[str, Any], kind: MediaKind, crops: Sequence[int] | None = None) -> MediaLayout:
        """Where the batch's images (videos) sit: their placeholder runs and pixel rows, in batch order."""
        if kind == "image":
            return self.layout.image_layout(batch, self.settings, crops=crops)
        layout = self.layout
        if isinstance(layout, VideoBatchLayoutFamily):
            return layout.video_layout(batch, self.settings)
        return MediaLayout([], [], ())

    def image_tokens(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Placeholders each image of the batch needs, in batch order (Gemma 3: ``crops`` per image)."""
        return self.media(batch, "image", crops).features

    def image_pixel_rows(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Rows of ``pixel_values`` each image owns, in batch order (Gemma 3: ``crops`` per image)."""
        return list(self.media(batch, "image", crops).rows)

    def image_crops(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Gemma 3 pan-and-scan crops of each image, in batch order (zeros for other families)."""
        media = self.media(batch, "image", crops)
        return media.crops if media.crops is not None else [0] * len(media.runs)

    def video_tokens(self, batch: dict[str, Any]) -> list[int]:
        """Placeholders each video of the batch needs, in batch order."""
        return self.media(batch, "video").features

    def video_pixel_rows(self, batch: dict[str, Any]) -> list[int]:
        """Rows of ``pixel_values_videos`` each video owns, in batch order."""
        return list(self.media(batch, "video").rows)

    def chunks(self, batch: dict[str, Any], kind: MediaKind, crops: Sequence[int] | None = None) -> list[list[int]]:
        """Per image (video): the placeholder runs it fills, as lengths."""
        return [list(runs) for runs in self.media(batch, kind, crops).runs]


def batch_layout_family(model_type: str) -> BatchLayoutFamily:
    """The registered family of ``model_type``, which must declare a batch layout."""
    family = get_family(model_type)
    if not isinstance(family, BatchLayoutFamily):
        raise UsageError(
            f"the {family.title} family ({model_type}) declares no batch layout (layout_tokens, layout_settings, "
            "image_layout: vlmcheck.families.base.BatchLayoutFamily), so the guards cannot check its batches"
        )
    return family


def _token_id(tokenizer: Any, token: str | None) -> int | None:
    if token is None:
        return None
    value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == getattr(tokenizer, "unk_token_id", object()):
        return None
    return int(value)


def processor_model_type(processor: Any) -> str:
    """The registered ``model_type`` whose transformers processor class ``processor`` is (or subclasses)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    by_class: dict[str, str] = {}
    for model_type in known_families():
        name = PROCESSOR_MAPPING_NAMES.get(model_type)
        if isinstance(name, str):
            by_class.setdefault(name, model_type)
    for cls in type(processor).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    raise UsageError(
        f"{type(processor).__name__} is not the processor of a family vlmcheck knows "
        f"({', '.join(known_families())}); pass model_type= or build a VisionSpec(...) by hand"
    )


def vision_spec(processor: Any, *, model_type: str | None = None) -> VisionSpec:
    """The :class:`VisionSpec` of a transformers processor of any registered family that declares a batch
    layout; ``model_type`` when the processor's class does not say (a custom subclass).

    Example::

        spec = vision_spec(processor)
        spec.image_token_id   # 151655 for Qwen2-VL
    """
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UsageError(f"vision_spec needs a processor with a .tokenizer (got {type(processor).__name__})")
    name = model_type or processor_model_type(processor)
    family = batch_layout_family(name)
    tokens = family.layout_tokens
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    image_id = _token_id(tokenizer, tokens.image)
    if image_id is None:
        raise UsageError(f"{type(processor).__name__}'s tokenizer has no {tokens.image} token")
    return VisionSpec(
        family=name,
        image_token_id=image_id,
        pad_token_id=int(pad),
        video_token_id=_token_id(tokenizer, tokens.video),
        start_token_id=_token_id(tokenizer, tokens.start),
        end_token_id=_token_id(tokenizer, tokens.end),
        settings=family.layout_settings(processor),
    )


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
    for key in _TOKEN_TYPE_KEYS:
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


def _images_in_example(example: Any) -> int | None:
    if not isinstance(example, dict):
        return None
    if "images" in example:
        images = example["images"]
        return 0 if images is None else len(images)
    if "image" in example:
        return 0 if example["image"] is None else 1
    return None


def _videos_in_example(example: Any) -> int | None:
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
        chunks = spec.chunks(batch, kind, crops_per_image if kind == "image" else None)
        marked, stray = typed_positions(input_ids, token_id, types)
        rows = [sorted(m + s) for m, s in zip(marked, stray)]
        runs_per_row = [runs_of(r) for r in marked]
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
                    crops=len(c) - 1 if kind == "image" and spec.crops_from_sizes else 0,
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


# --------------------------------------------------------------------------- repairs


@dataclass
class Repair:
    """What a guard changed in one sample."""

    sample: int
    action: Literal["drop-media", "drop-images", "truncate"]  # the policy that made it
    images_dropped: list[int]  # 1-based numbers within the sample
    tokens_masked: int
    message: str
    videos_dropped: list[int] = field(default_factory=list)  # 1-based numbers within the sample
    code: str = "VR102"  # span-repaired, in the runtime catalogue


def _sequence_keys(batch: dict[str, Any], batch_size: int, length: int) -> list[str]:
    # Pixels are never per token, even when their shape happens to be (batch, length): Qwen's 2-D
    # pixel_values is (patches, 1176) and a batch can have as many patch rows as samples.
    return [
        key
        for key, value in batch.items()
        if isinstance(value, torch.Tensor)
        and value.dim() == 2
        and tuple(value.shape) == (batch_size, length)
        and not key.startswith("pixel_values")
    ]


def _mask(batch: dict[str, Any], row: int, start: int, end: int, *, spec: VisionSpec) -> int:
    """Turn positions [start, end) of a row into padding; returns how many were real tokens."""
    if end <= start:
        return 0
    attention = batch.get("attention_mask")
    real = int(attention[row, start:end].sum()) if attention is not None else end - start
    batch["input_ids"][row, start:end] = spec.pad_token_id
    if attention is not None:
        attention[row, start:end] = 0
    if "labels" in batch and isinstance(batch["labels"], torch.Tensor):
        batch["labels"][row, start:end] = IGNORE_INDEX
    for key in _TOKEN_TYPE_KEYS:
        if isinstance(batch.get(key), torch.Tensor):
            batch[key][row, start:end] = 0
    for key in ("completion_mask", "assistant_masks"):
        if isinstance(batch.get(key), torch.Tensor):
            batch[key][row, start:end] = 0
    return real


def _keep_rows(values: Any, rows: list[int], keep: list[int]) -> Any:
    """``values`` without the rows of dropped items (item i owns ``rows[i]`` consecutive rows)."""
    offsets = [0]
    for n in rows:
        offsets.append(offsets[-1] + n)
    index = [r for i in keep for r in range(offsets[i], offsets[i + 1])]
    if isinstance(values, torch.Tensor):
        return values.index_select(0, torch.tensor(index, dtype=torch.long, device=values.device))
    return [values[r] for r in index]  # a list, e.g. second_per_grid_ts before tensor conversion


def _drop_media(
    batch: dict[str, Any], dropped: set[int], *, spec: VisionSpec, kind: MediaKind, crops: Sequence[int] | None = None
) -> None:
    """Remove the dropped images (videos) from the batch: their rows of the layout's pixel keys (Gemma 3: an
    image's original and its crops go together) and their row of each per-item key."""
    if not dropped:
        return
    media = spec.media(batch, kind, crops)
    keep = [i for i in range(len(media.rows)) if i not in dropped]
    for key in media.pixel_keys:
        if batch.get(key) is not None:
            batch[key] = _keep_rows(batch[key], list(media.rows), keep)
    for key in media.sample_keys:  # one item count per sample: take the dropped items off their samples' counts
        if batch.get(key) is not None:
            counts, first = [], 0
            for n in batch[key].tolist():
                counts.append(int(n) - sum(1 for i in range(first, first + int(n)) if i in dropped))
                first += int(n)
            batch[key] = torch.tensor(counts, dtype=batch[key].dtype, device=batch[key].device)
    for key in media.item_keys:
        if batch.get(key) is None:
            continue
        if key == "num_crops":  # flat, nested per sample, or a tensor
            batch[key] = _keep_num_crops(batch[key], set(keep))
        else:
            batch[key] = _keep_rows(batch[key], [1] * len(media.rows), keep)
    if not keep:
        # Nothing of this kind left: a forward without it. Empty pixel tensors would reach the vision tower.
        for key in (*media.pixel_keys, *media.item_keys, *(("image_position_ids",) if kind == "image" else ())):
            batch.pop(key, None)


def _keep_num_crops(values: Any, keep: set[int]) -> Any:
    """``num_crops`` (flat, nested per sample, or a tensor) without the dropped images' values."""
    if isinstance(values, torch.Tensor):
        flat = values.flatten()
        index = torch.tensor(sorted(keep), dtype=torch.long, device=values.device)
        return flat.index_select(0, index)
    counter = iter(range(sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in values)))
    if values and isinstance(values[0], (list, tuple)):
        return [[c for c in sample if next(counter) in keep] for sample in values]
    return [c for c in values if next(counter) in keep]


def _fix_hint(account: SampleAccount, *, max_length: int | None) -> str:
    cut = next((item for item in account.media if item.status != "ok"), None)
    hints = []
    if cut is not None and cut.status == "cut" and cut.start is not None:
        hints.append(f"raise max_length to at least {cut.start + cut.needed + 1:,} for this sample")
    if cut is not None and cut.kind == "image" and cut.crops:
        hints.append(
            f"or give this image fewer pan-and-scan crops (it has {cut.crops}: lower pan_and_scan_max_num_crops, "
            "raise pan_and_scan_min_crop_size, or do_pan_and_scan=False)"
        )
    elif cut is not None and cut.kind == "image":
        hints.append("cap the image processor's max_pixels so images need fewer placeholders")
    elif cut is not None:
        hints.append("cap the video processor's max_pixels or sample fewer frames (fps, max_frames)")
    if account.orphan_runs:
        hints.append(
            "keep vision tokens out of generation (vlmcheck.integrations.rollout.bad_words_ids, "
            "vllm_sampling_kwargs) and sanitize generated completions (sanitize_completion_ids)"
        )
    if cut is None:  # stray placeholders only: in RL, the re-fed completions; no collator is involved
        hints.append("in a collated batch, SpanGuardCollator(policy='drop-images') masks them")
    else:
        drop = "drop-media" if cut.kind == "video" else "drop-images"
        hints.append(f"or wrap the collator in SpanGuardCollator(policy='truncate' or '{drop}')")
    return "; ".join(hints)


def _video_trouble(accounts: Sequence[SampleAccount]) -> bool:
    return any(
        a.video_tokens != a.video_features or any(v.status != "ok" for v in a.videos) for a in accounts
    )


def guard_batch(
    batch: dict[str, Any],
    *,
    spec: VisionSpec,
    policy: Policy = "raise",
    max_length: int | None = None,
    images_per_sample: Sequence[int] | None = None,
    videos_per_sample: Sequence[int] | None = None,
    crops_per_image: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[SampleAccount], list[Repair]]:
    """Check a processed batch and apply ``policy`` to samples whose placeholders do not match.

    With ``max_length``, sequences are first cut to ``max_length`` (as a plain slice would), and the
    policy then repairs the image and video spans the cut went through. The batch keeps its number
    of samples. Returns the (possibly new) batch, the accounts *before* repair, and the repairs made.
    ``crops_per_image``: Gemma 3 pan-and-scan crops per image (:func:`gemma3_crops`); an image and its
    crops are checked, dropped and truncated as one.

    Example::

        batch, accounts, repairs = guard_batch(processor(...), spec=vision_spec(processor),
                                               policy="truncate", max_length=1024)
    """
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; use one of: {', '.join(POLICIES)}")
    batch = dict(batch)  # keep the caller's mapping; the tensors we edit are cloned below
    input_ids = batch["input_ids"]
    batch_size, length = input_ids.shape
    if max_length is not None and length > max_length:
        for key in _sequence_keys(batch, batch_size, length):
            batch[key] = batch[key][:, :max_length]
        length = max_length
    accounts = account_batch(
        batch,
        spec=spec,
        images_per_sample=images_per_sample,
        videos_per_sample=videos_per_sample,
        crops_per_image=crops_per_image,
    )
    bad = [a for a in accounts if not a.ok]
    repairs: list[Repair] = []
    if bad and policy == "raise":
        lines = "\n".join("  " + a.describe() for a in bad)
        if _video_trouble(bad):
            what = (
                "image/video placeholders that do not match their images/videos; the model would raise "
                "'Video features and video tokens do not match' (or its image twin)"
            )
        else:
            what = (
                "image placeholders that do not match their images; "
                "the model would raise 'Image features and image tokens do not match'"
            )
        raise SpanMismatchError(
            f"{len(bad)} sample(s) of this batch have {what}:\n{lines}\n"
            f"Fix: {_fix_hint(bad[0], max_length=max_length)}.",
            accounts,
        )
    if bad:
        image_layout = spec.media(batch, "image", crops_per_image)
        for key in _sequence_keys(batch, batch_size, length):
            batch[key] = batch[key].clone()
        dropped: dict[str, set[int]] = {"image": set(), "video": set()}
        for account in bad:
            row = account.index
            media = account.media
            if policy != "truncate":
                spans = [(i.start, i.end) for i in media if i.status == "cut"]
                spans += account.orphan_runs
                masked = sum(
                    _mask(batch, row, s, e, spec=spec) for s, e in spans if s is not None and e is not None
                )
                gone = [i for i in media if i.status != "ok"]
                action = "dropped"
            else:
                first_bad = [i.start for i in media if i.status == "cut" and i.start is not None]
                first_bad += [s for s, _ in account.orphan_runs]
                missing_only = not first_bad
                cut_at = min(first_bad) if first_bad else length
                ids_row = batch["input_ids"][row]
                if (
                    cut_at > 0
                    and spec.start_token_id is not None
                    and int(ids_row[cut_at - 1]) == spec.start_token_id
                ):
                    cut_at -= 1  # take the span's opening marker with it
                masked = 0 if missing_only else _mask(batch, row, cut_at, length, spec=spec)
                gone = [i for i in media if i.status != "ok" or (i.start is not None and i.start >= cut_at)]
                action = f"truncated at position {cut_at:,}," if not missing_only else "dropped"
            if any(i.kind == "image" for i in gone) and image_layout.sample_keys:
                # the features of each image depend on how many the sample has: the rest go too
                for item in account.images:
                    if item not in gone:
                        if item.start is not None and item.end is not None:
                            masked += _mask(batch, row, item.start, item.end, spec=spec)
                        gone.append(item)
            images_gone = [i for i in gone if i.kind == "image"]
            videos_gone = [i for i in gone if i.kind == "video"]
            for item in gone:
                dropped[item.kind].add(item.batch_index)
            dropped_text = []
            if images_gone or not videos_gone:
                pixel_rows = spec.image_pixel_rows(batch, crops_per_image)
                rows = sum(pixel_rows[i.batch_index] for i in images_gone)
                dropped_text.append(f"{len(images_gone)} image(s) ({rows:,} pixel_values rows)")
            if videos_gone:
                video_rows = spec.video_pixel_rows(batch)
                rows = sum(video_rows[i.batch_index] for i in videos_gone)
                dropped_text.append(f"{len(videos_gone)} video(s) ({rows:,} pixel_values_videos rows)")
            message = (
                f"{account.describe(max_length=max_length)}: {action} {' and '.join(dropped_text)} "
                f"and masked {masked:,} token(s)"
            )
            repairs.append(
                Repair(
                    sample=row,
                    action=policy,  # type: ignore[arg-type]  # "raise" never gets here
                    images_dropped=[i.number for i in images_gone],
                    tokens_masked=masked,
                    message=message,
                    videos_dropped=[i.number for i in videos_gone],
                )
            )
        _drop_media(batch, dropped["image"], spec=spec, kind="image", crops=crops_per_image)
        _drop_media(batch, dropped["video"], spec=spec, kind="video")
    return batch, accounts, repairs


def truncate_batch(
    batch: dict[str, Any],
    *,
    max_length: int,
    spec: VisionSpec,
    images_per_sample: Sequence[int] | None = None,
    videos_per_sample: Sequence[int] | None = None,
    crops_per_image: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[Repair]]:
    """Cut a processed sample or batch to ``max_length`` without cutting through an image or video span.

    A sample whose cut falls inside an image (video) loses it (its placeholders, its opening
    marker, its ``pixel_values`` / ``pixel_values_videos`` rows and grid row) and everything after
    it; the returned repairs say what was dropped. Give it the processor output made *without*
    ``truncation=True``.

    Example::

        full = processor(images=[image], text=[text], return_tensors="pt")
        cut, repairs = truncate_batch(full, max_length=2048, spec=vision_spec(processor))
        assert cut["input_ids"].shape[1] <= 2048
    """
    out, _, repairs = guard_batch(
        batch,
        spec=spec,
        policy="truncate",
        max_length=max_length,
        images_per_sample=images_per_sample,
        videos_per_sample=videos_per_sample,
        crops_per_image=crops_per_image,
    )
    return out, repairs


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
        counts = _counts(examples, self._images_per_sample, _images_in_example)
        video_counts = _counts(examples, self._videos_per_sample, _videos_in_example)
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
        """Gemma 3: each image's pan-and-scan crops, from the examples' image sizes and the processor's
        settings; None when not Gemma 3, when the sizes are unknown, or when the batch carries num_crops."""
        if sizes is None or batch.get("num_crops") is not None:
            return None
        settings = gemma3_settings(self.processor, self.processor_options, spec=self.spec)
        crops = gemma3_crops(sizes, settings=settings)
        pixels = batch.get("pixel_values")
        rows = 0 if pixels is None else int(pixels.shape[0])
        if rows > sum(1 + c for c in crops) and not settings.do_pan_and_scan:
            # More pixel rows than images and no pan-and-scan in the settings: the wrapped collator turned it
            # on at call time. With the processor's own crop limits the rows add up, or it is a usage error.
            on = gemma3_settings(self.processor, {**self.processor_options, "do_pan_and_scan": True}, spec=self.spec)
            guess = gemma3_crops(sizes, settings=on)
            if sum(1 + c for c in guess) == rows:
                if not self._told_pan_and_scan:
                    logger.info(
                        "SpanGuardCollator: %d pixel_values rows for %d images: pan-and-scan is on in the wrapped "
                        "collator; counting crops with do_pan_and_scan=True (say so with processor_options=)",
                        rows,
                        len(sizes),
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
    merged = {**(getattr(processor, "images_kwargs", None) or {}), **(options or {})}
    extra = {k: merged[k] for k in gemma3_family.EXTRA_KEYS if merged.get(k) is not None}
    seq = spec.tokens_per_image if spec is not None else getattr(processor, "image_seq_length", None)
    return gemma3_family.read_settings({"processor_config": {"image_seq_length": seq}}, Overrides(extra=extra))


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


# --------------------------------------------------------------------------- when the model raises anyway

_MISMATCH_MARKERS = ("features and image tokens do not match", "features and video tokens do not match")


def _mismatch_message(error: BaseException) -> str | None:
    """The model's own mismatch message, also when a trainer re-raised it with its own words."""
    seen: BaseException | None = error
    while seen is not None:
        if any(marker in str(seen) for marker in _MISMATCH_MARKERS):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def explain_vision_mismatch(
    model: Any, *, processor: Any = None, spec: VisionSpec | None = None
) -> Iterator[None]:
    """Re-raise the model's "Image features and image tokens do not match" with the samples involved.

    A forward pre-hook keeps a reference to the inputs of the model's latest call (no copy), so
    this works with dataloader workers, gradient accumulation, and RL re-feeds alike.

    Example::

        with explain_vision_mismatch(model, processor=processor):
            trainer.train()
        # SpanMismatchError: ... sample 3: 2,047 image tokens, 2,048 features ...
    """
    if spec is None:
        if processor is None:
            raise UsageError("explain_vision_mismatch needs processor= or spec=")
        spec = vision_spec(processor)
    latest: dict[str, Any] = {}

    def remember(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            latest.clear()
            latest.update(
                {
                    k: kwargs.get(k)
                    for k in (
                        "attention_mask",
                        "labels",
                        "image_grid_thw",
                        "image_sizes",
                        "batch_num_images",
                        "pixel_values",
                        "video_grid_thw",
                        *_TOKEN_TYPE_KEYS,
                    )
                }
            )
            latest["input_ids"] = ids

    handle = model.register_forward_pre_hook(remember, with_kwargs=True)
    try:
        yield
    except Exception as error:
        original = _mismatch_message(error)
        if original is None or "input_ids" not in latest:
            raise
        batch = {k: v for k, v in latest.items() if v is not None}
        try:
            accounts = account_batch(batch, spec=spec)
        except SpanMismatchError as unknown:
            raise SpanMismatchError(f"{original}\nvlmcheck: {unknown}") from error
        lines = "\n".join("  " + a.describe() for a in accounts)
        bad = [a.index for a in accounts if not a.ok]
        raise SpanMismatchError(
            f"{original}\nvlmcheck: samples {bad} of the failing batch are involved. Per sample:\n{lines}\n"
            f"Fix: {_fix_hint(next(a for a in accounts if not a.ok), max_length=None) if bad else 'see above'}.",
            accounts,
        ) from error
    finally:
        handle.remove()
