"""Guards between a collator and the model: span-aware truncation and a collator wrapper.

A vision-language model checks, at forward time, that the number of image placeholder tokens in
``input_ids`` equals the number of features its images produce. Truncating a processed batch with
a plain slice (``input_ids[:, :max_length]``, as TRL's prompt-completion collator does) can cut an
image span in two, and the model then raises "Image features and image tokens do not match". This
module counts, per sample, the placeholders present against the placeholders each image needs,
and repairs what it can at image-span boundaries, keeping ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids`` consistent with the placeholders that remain.

Two layouts are supported:

* Qwen2-VL family (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``): ``pixel_values`` is 2-D
  ``(patches, 1176)`` with all images of the batch concatenated; ``image_grid_thw`` has one row
  ``(t, h, w)`` per image, which needs ``t*h*w // merge_size**2`` placeholders and owns ``t*h*w``
  rows of ``pixel_values``.
* Gemma-3 (``gemma3``): every image needs a fixed 256 ``<image_soft_token>`` placeholders and owns
  one entry ``pixel_values[i]`` of the 4-D ``(images, 3, 896, 896)`` tensor.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vlmcheck.errors import MissingDependencyError, UsageError, VlmcheckError

if TYPE_CHECKING:
    import torch

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc

logger = logging.getLogger("vlmcheck.guards")

Policy = Literal["raise", "drop-images", "truncate"]
POLICIES: tuple[str, ...] = ("raise", "drop-images", "truncate")
IGNORE_INDEX = -100  # transformers' CrossEntropyLoss ignore_index, used by every trainer for masked labels

# Qwen2-VL special tokens: transformers/models/qwen2_vl/processing_qwen2_vl.py and the hub
# tokenizer_config.json of Qwen/Qwen2-VL-7B-Instruct.
QWEN_IMAGE_TOKEN = "<|image_pad|>"
QWEN_VIDEO_TOKEN = "<|video_pad|>"
QWEN_VISION_START = "<|vision_start|>"
QWEN_VISION_END = "<|vision_end|>"
# Qwen2-VL image processor: merge_size 2 (preprocessor_config.json of Qwen/Qwen2-VL-7B-Instruct);
# placeholders per image = grid_thw.prod() // merge_size**2 (processing_qwen2_vl.py).
QWEN_MERGE_SIZE = 2

# Gemma-3: transformers/models/gemma3/processing_gemma3.py (image_seq_length=256, boi/eoi tokens).
GEMMA3_IMAGE_TOKEN = "<image_soft_token>"
GEMMA3_BOI = "<start_of_image>"
GEMMA3_EOI = "<end_of_image>"
GEMMA3_TOKENS_PER_IMAGE = 256

# Keys that hold one value per token and must be cut / masked along with input_ids.
_TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


class SpanMismatchError(VlmcheckError, ValueError):
    """A batch whose image placeholders do not match its images (raised by policy ``"raise"``).

    Subclasses ``ValueError`` so that code catching the model's own mismatch error catches it too.
    ``accounts`` holds the per-sample counts.
    """

    def __init__(self, message: str, accounts: Sequence[SampleAccount] = ()) -> None:
        super().__init__(message)
        self.accounts = list(accounts)


# --------------------------------------------------------------------------- the family layout


@dataclass(frozen=True)
class VisionSpec:
    """How a family lays out image placeholders and pixels.

    Build it from a processor with :func:`vision_spec`; construct it directly for a tokenizer-only
    setup::

        spec = VisionSpec(family="qwen2_vl", image_token_id=151655, video_token_id=151656,
                          start_token_id=151652, end_token_id=151653, pad_token_id=151643)
    """

    family: Literal["qwen2_vl", "gemma3"]
    image_token_id: int
    pad_token_id: int
    video_token_id: int | None = None
    start_token_id: int | None = None
    end_token_id: int | None = None
    merge_size: int = QWEN_MERGE_SIZE
    tokens_per_image: int = GEMMA3_TOKENS_PER_IMAGE

    def image_tokens(self, batch: dict[str, Any]) -> list[int]:
        """Placeholders each image of the batch needs, in batch order."""
        if self.family == "qwen2_vl":
            grid = batch.get("image_grid_thw")
            if grid is None:
                return []
            return [int(n) // self.merge_size**2 for n in grid.prod(dim=-1).tolist()]
        pixels = batch.get("pixel_values")
        return [] if pixels is None else [self.tokens_per_image] * int(pixels.shape[0])

    def image_pixel_rows(self, batch: dict[str, Any]) -> list[int]:
        """Rows of ``pixel_values`` each image owns, in batch order."""
        if self.family == "qwen2_vl":
            grid = batch.get("image_grid_thw")
            return [] if grid is None else [int(n) for n in grid.prod(dim=-1).tolist()]
        pixels = batch.get("pixel_values")
        return [] if pixels is None else [1] * int(pixels.shape[0])


def _token_id(tokenizer: Any, token: str) -> int | None:
    value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == getattr(tokenizer, "unk_token_id", object()):
        return None
    return int(value)


def vision_spec(processor: Any) -> VisionSpec:
    """The :class:`VisionSpec` of a transformers processor (Qwen2/2.5/3-VL or Gemma-3).

    Example::

        spec = vision_spec(processor)
        spec.image_token_id   # 151655 for Qwen2-VL
    """
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UsageError(f"vision_spec needs a processor with a .tokenizer (got {type(processor).__name__})")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    image_processor = getattr(processor, "image_processor", None)
    image_token_id = getattr(processor, "image_token_id", None)
    if getattr(processor, "image_seq_length", None) is not None and getattr(processor, "boi_token", None):
        # The soft token the model counts, from the tokenizer: transformers 5.x's Gemma3Processor sets
        # its own image_token / image_token_id to the chat template's <start_of_image> (boi) instead.
        gemma_image_id = _token_id(tokenizer, getattr(tokenizer, "image_token", None) or GEMMA3_IMAGE_TOKEN)
        if gemma_image_id is None:
            raise UsageError(f"{type(processor).__name__} has no {GEMMA3_IMAGE_TOKEN} token")
        return VisionSpec(
            family="gemma3",
            image_token_id=int(gemma_image_id),
            pad_token_id=int(pad),
            start_token_id=_token_id(tokenizer, processor.boi_token),
            end_token_id=_token_id(tokenizer, getattr(tokenizer, "eoi_token", None) or GEMMA3_EOI),
            tokens_per_image=int(processor.image_seq_length),
        )
    if image_processor is not None and hasattr(image_processor, "merge_size"):
        image_id = image_token_id if image_token_id is not None else _token_id(tokenizer, QWEN_IMAGE_TOKEN)
        if image_id is None:
            raise UsageError(f"{type(processor).__name__} has no image token id")
        video_id = getattr(processor, "video_token_id", None) or _token_id(tokenizer, QWEN_VIDEO_TOKEN)
        return VisionSpec(
            family="qwen2_vl",
            image_token_id=int(image_id),
            pad_token_id=int(pad),
            video_token_id=video_id,
            start_token_id=_token_id(tokenizer, QWEN_VISION_START),
            end_token_id=_token_id(tokenizer, QWEN_VISION_END),
            merge_size=int(image_processor.merge_size),
        )
    raise UsageError(
        f"vlmcheck's guards know the Qwen2-VL and Gemma-3 layouts; {type(processor).__name__} is neither. "
        "Build a VisionSpec(...) by hand if your family uses one of these layouts."
    )


# --------------------------------------------------------------------------- accounting


@dataclass
class ImageAccount:
    """One image of one sample: placeholders needed and present, and where they are."""

    number: int  # 1-based, within the sample
    batch_index: int  # 0-based, within the batch's images (row of image_grid_thw)
    needed: int
    present: int
    start: int | None = None  # first placeholder position, None when none is present
    end: int | None = None  # one past the last placeholder position

    @property
    def status(self) -> Literal["ok", "cut", "missing"]:
        if self.present == self.needed:
            return "ok"
        return "missing" if self.present == 0 else "cut"


@dataclass
class SampleAccount:
    """One sample of a batch: placeholders present against what its images need."""

    index: int
    length: int
    image_tokens: int
    image_features: int
    images: list[ImageAccount] = field(default_factory=list)
    orphan_runs: list[tuple[int, int]] = field(default_factory=list)  # placeholder runs with no image
    supervised: int | None = None  # labels != -100, None without labels

    @property
    def ok(self) -> bool:
        return self.image_tokens == self.image_features and all(i.status == "ok" for i in self.images)

    @property
    def orphan_tokens(self) -> int:
        return sum(end - start for start, end in self.orphan_runs)

    def describe(self, *, max_length: int | None = None) -> str:
        """One line with the numbers, e.g. ``sample 1: 49 image tokens, 64 features (image 1 of 1 cut ...)``."""
        parts = [f"sample {self.index}: {self.image_tokens:,} image tokens, {self.image_features:,} features"]
        details = []
        for image in self.images:
            if image.status == "cut":
                details.append(
                    f"image {image.number} of {len(self.images)} needs {image.needed:,} placeholders, "
                    f"only {image.present:,} are left"
                )
            elif image.status == "missing":
                details.append(
                    f"image {image.number} of {len(self.images)} has none of its {image.needed:,} placeholders"
                )
        if self.orphan_runs:
            details.append(f"{self.orphan_tokens:,} placeholder(s) belong to no image (e.g. generated)")
        if details:
            parts.append(" (" + "; ".join(details) + ")")
        return "".join(parts)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _images_in_example(example: Any) -> int | None:
    if not isinstance(example, dict):
        return None
    if "images" in example:
        images = example["images"]
        return 0 if images is None else len(images)
    if "image" in example:
        return 0 if example["image"] is None else 1
    return None


def account_batch(
    batch: dict[str, Any],
    *,
    spec: VisionSpec,
    images_per_sample: Sequence[int] | None = None,
) -> list[SampleAccount]:
    """Per-sample placeholder accounting of a processed batch (a processor's or collator's output).

    ``images_per_sample`` says how many images each sample brought (the rows of ``image_grid_thw``
    are in sample order). Without it, every run of placeholders is taken to be one image, which
    is right unless whole images were cut away.

    Example::

        accounts = account_batch(processor(images=..., text=..., return_tensors="pt"), spec=vision_spec(processor))
        [a.describe() for a in accounts if not a.ok]
    """
    input_ids = batch["input_ids"]
    if input_ids.dim() == 1:
        raise UsageError("account_batch needs a batch: input_ids of shape (batch, sequence)")
    needed = spec.image_tokens(batch)
    is_image = input_ids == spec.image_token_id
    attention = batch.get("attention_mask")
    labels = batch.get("labels")
    # One transfer each instead of per-row indexing: this runs on every training batch.
    rows = (
        [r.nonzero().flatten().tolist() for r in is_image.cpu()]
        if bool(is_image.any())
        else [[] for _ in range(input_ids.shape[0])]
    )
    lengths = (
        attention.sum(dim=1).tolist() if attention is not None else [input_ids.shape[1]] * input_ids.shape[0]
    )
    supervised = (labels != IGNORE_INDEX).sum(dim=1).tolist() if labels is not None else None
    runs_per_row = [_runs(r) for r in rows]

    if images_per_sample is None:
        images_per_sample = [len(r) for r in runs_per_row]
        if sum(images_per_sample) != len(needed):
            raise SpanMismatchError(
                f"the batch has {len(needed)} image(s) but {sum(images_per_sample)} placeholder run(s), so whole "
                "images were cut away and vlmcheck cannot tell which sample they belong to; pass "
                "images_per_sample=[...] (SpanGuardCollator reads it from the examples' 'images' key)"
            )
    if sum(images_per_sample) != len(needed):
        raise UsageError(
            f"images_per_sample sums to {sum(images_per_sample)} but the batch has {len(needed)} image(s) "
            "(rows of image_grid_thw / pixel_values)"
        )

    accounts: list[SampleAccount] = []
    image_cursor = 0
    for i, runs in enumerate(runs_per_row):
        count = images_per_sample[i]
        images = [
            ImageAccount(
                number=n + 1, batch_index=image_cursor + n, needed=needed[image_cursor + n], present=0
            )
            for n in range(count)
        ]
        image_cursor += count
        orphans: list[tuple[int, int]] = []
        j = 0
        for start, end in runs:
            position = start
            # A run may hold several images when a template puts them back to back.
            while position < end and j < len(images):
                take = min(images[j].needed, end - position)
                images[j].present, images[j].start, images[j].end = take, position, position + take
                position += take
                j += 1
                if take < images[j - 1].needed:
                    break  # a cut image ends its run
            if position < end:
                orphans.append((position, end))
        accounts.append(
            SampleAccount(
                index=i,
                length=int(lengths[i]),
                image_tokens=len(rows[i]),
                image_features=sum(image.needed for image in images),
                images=images,
                orphan_runs=orphans,
                supervised=int(supervised[i]) if supervised is not None else None,
            )
        )
    return accounts


# --------------------------------------------------------------------------- repairs


@dataclass
class Repair:
    """What a guard changed in one sample."""

    sample: int
    action: Literal["drop-images", "truncate"]
    images_dropped: list[int]  # 1-based numbers within the sample
    tokens_masked: int
    message: str


def _sequence_keys(batch: dict[str, Any], batch_size: int, length: int) -> list[str]:
    return [
        key
        for key, value in batch.items()
        if isinstance(value, torch.Tensor) and value.dim() == 2 and tuple(value.shape) == (batch_size, length)
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


def _drop_images(batch: dict[str, Any], dropped: set[int], *, spec: VisionSpec) -> None:
    if not dropped:
        return
    rows = spec.image_pixel_rows(batch)
    keep_images = [i for i in range(len(rows)) if i not in dropped]
    pixels = batch["pixel_values"]
    if spec.family == "qwen2_vl":
        offsets = [0]
        for n in rows:
            offsets.append(offsets[-1] + n)
        keep_rows = [r for i in keep_images for r in range(offsets[i], offsets[i + 1])]
        index = torch.tensor(keep_rows, dtype=torch.long, device=pixels.device)
        batch["pixel_values"] = pixels.index_select(0, index)
        grid = batch["image_grid_thw"]
        batch["image_grid_thw"] = grid.index_select(
            0, torch.tensor(keep_images, dtype=torch.long, device=grid.device)
        )
    else:
        batch["pixel_values"] = pixels.index_select(
            0, torch.tensor(keep_images, dtype=torch.long, device=pixels.device)
        )
    if not keep_images:
        # No image left: a text-only forward. Empty pixel tensors would reach the vision tower.
        for key in ("pixel_values", "image_grid_thw", "image_position_ids"):
            batch.pop(key, None)


def _fix_hint(account: SampleAccount, *, max_length: int | None) -> str:
    cut = next((image for image in account.images if image.status != "ok"), None)
    hints = []
    if cut is not None and cut.status == "cut" and cut.start is not None:
        hints.append(f"raise max_length to at least {cut.start + cut.needed + 1:,} for this sample")
    if cut is not None:
        hints.append("cap the image processor's max_pixels so images need fewer placeholders")
    if account.orphan_runs:
        hints.append("sanitize generated completions (vlmcheck.integrations.rollout.sanitize_completion_ids)")
    hints.append("or wrap the collator in SpanGuardCollator(policy='truncate' or 'drop-images')")
    return "; ".join(hints)


def guard_batch(
    batch: dict[str, Any],
    *,
    spec: VisionSpec,
    policy: Policy = "raise",
    max_length: int | None = None,
    images_per_sample: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[SampleAccount], list[Repair]]:
    """Check a processed batch and apply ``policy`` to samples whose placeholders do not match.

    With ``max_length``, sequences are first cut to ``max_length`` (as a plain slice would), and the
    policy then repairs the image spans the cut went through. The batch keeps its number of samples.
    Returns the (possibly new) batch, the accounts *before* repair, and the repairs made.

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
    accounts = account_batch(batch, spec=spec, images_per_sample=images_per_sample)
    bad = [a for a in accounts if not a.ok]
    repairs: list[Repair] = []
    if bad and policy == "raise":
        lines = "\n".join("  " + a.describe() for a in bad)
        raise SpanMismatchError(
            f"{len(bad)} sample(s) of this batch have image placeholders that do not match their images; "
            f"the model would raise 'Image features and image tokens do not match':\n{lines}\n"
            f"Fix: {_fix_hint(bad[0], max_length=max_length)}.",
            accounts,
        )
    if bad:
        for key in _sequence_keys(batch, batch_size, length):
            batch[key] = batch[key].clone()
        dropped: set[int] = set()
        for account in bad:
            row = account.index
            if policy == "drop-images":
                spans = [(i.start, i.end) for i in account.images if i.status == "cut"]
                spans += account.orphan_runs
                masked = sum(
                    _mask(batch, row, s, e, spec=spec) for s, e in spans if s is not None and e is not None
                )
                gone = [i for i in account.images if i.status != "ok"]
                action = "dropped"
            else:
                first_bad = [i.start for i in account.images if i.status == "cut" and i.start is not None]
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
                gone = [
                    i
                    for i in account.images
                    if i.status != "ok" or (i.start is not None and i.start >= cut_at)
                ]
                action = f"truncated at position {cut_at:,}," if not missing_only else "dropped"
            dropped.update(i.batch_index for i in gone)
            pixel_rows = spec.image_pixel_rows(batch)
            message = (
                f"{account.describe(max_length=max_length)}: {action} "
                f"{len(gone)} image(s) ({sum(pixel_rows[i.batch_index] for i in gone):,} pixel_values rows) "
                f"and masked {masked:,} token(s)"
            )
            repairs.append(
                Repair(
                    sample=row,
                    action="drop-images" if policy == "drop-images" else "truncate",
                    images_dropped=[i.number for i in gone],
                    tokens_masked=masked,
                    message=message,
                )
            )
        _drop_images(batch, dropped, spec=spec)
    return batch, accounts, repairs


def truncate_batch(
    batch: dict[str, Any],
    *,
    max_length: int,
    spec: VisionSpec,
    images_per_sample: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[Repair]]:
    """Cut a processed sample or batch to ``max_length`` without cutting through an image span.

    A sample whose cut falls inside an image loses that image (its placeholders, its opening
    marker, its ``pixel_values`` rows and ``image_grid_thw`` row) and everything after it; the
    returned repairs say what was dropped. Give it the processor output made *without*
    ``truncation=True``.

    Example::

        full = processor(images=[image], text=[text], return_tensors="pt")
        cut, repairs = truncate_batch(full, max_length=2048, spec=vision_spec(processor))
        assert cut["input_ids"].shape[1] <= 2048
    """
    out, _, repairs = guard_batch(
        batch, spec=spec, policy="truncate", max_length=max_length, images_per_sample=images_per_sample
    )
    return out, repairs


# --------------------------------------------------------------------------- the collator


class SpanGuardCollator:
    """Wraps any collator ``(examples) -> batch`` and checks each batch before the model sees it.

    Every sample's image placeholders must match the features its images produce. Policies:
    ``"raise"`` (default) raises :class:`SpanMismatchError` naming the sample, the numbers and the
    fix; ``"drop-images"`` drops cut images and their pixels and masks orphan placeholders;
    ``"truncate"`` cuts the sample at the start of the first broken image span. The batch keeps
    its samples and output keys, so every rank still runs the same number of forward passes.
    Repairs are counted in :attr:`stats` and logged on the ``vlmcheck.guards`` logger.

    ``max_length``: give it here (and not to the wrapped collator) to let the guard truncate.

    Example::

        collator = SpanGuardCollator(trainer_collator, processor=processor, policy="drop-images")
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
    ) -> None:
        if policy not in POLICIES:
            raise UsageError(f"unknown policy {policy!r}; use one of: {', '.join(POLICIES)}")
        if spec is None:
            if processor is None:
                raise UsageError("SpanGuardCollator needs processor= or spec=")
            spec = vision_spec(processor)
        self.collator = collator
        self.spec = spec
        self.policy = policy
        self.max_length = max_length
        self._images_per_sample = images_per_sample
        self.stats: dict[str, int] = {
            "batches": 0,
            "samples": 0,
            "repaired_samples": 0,
            "dropped_images": 0,
            "masked_tokens": 0,
            "unsupervised_samples": 0,
        }
        self.repairs: list[Repair] = []  # the most recent 1,000
        self.last_accounts: list[SampleAccount] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        counts: list[int] | None = None
        if self._images_per_sample is not None:
            counts = [self._images_per_sample(e) for e in examples]
        else:
            found = [_images_in_example(e) for e in examples]
            counts = None if any(c is None for c in found) else [int(c) for c in found]  # type: ignore[arg-type]
        batch = self.collator(examples)
        number = self.stats["batches"]
        try:
            out, accounts, repairs = guard_batch(
                batch,
                spec=self.spec,
                policy=self.policy,
                max_length=self.max_length,
                images_per_sample=counts,
            )
        except SpanMismatchError as error:
            self.last_accounts = error.accounts
            raise SpanMismatchError(f"SpanGuardCollator, batch {number}: {error}", error.accounts) from None
        self.last_accounts = accounts
        self.stats["batches"] += 1
        self.stats["samples"] += len(accounts)
        for repair in repairs:
            self.stats["repaired_samples"] += 1
            self.stats["dropped_images"] += len(repair.images_dropped)
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
                    raise SpanMismatchError(message, accounts)
                logger.warning(message)
            elif empty:
                logger.info(
                    "SpanGuardCollator, batch %d: sample(s) %s have no supervised label", number, empty
                )
        return out

    def summary(self) -> str:
        """One line of counters, for the end of a run."""
        return ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in self.stats.items())


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
                {k: kwargs.get(k) for k in ("attention_mask", "labels", "image_grid_thw", "pixel_values")}
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
