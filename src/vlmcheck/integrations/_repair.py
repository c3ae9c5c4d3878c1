"""Repairs at span boundaries: :func:`guard_batch` applies a policy to the samples whose spans do not match,
:func:`truncate_batch` cuts a batch without cutting through a span."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.families.base import CroppedBatchLayoutFamily, CrossAttentionLayoutFamily, MediaLayout
from vlmcheck.integrations._accounting import SampleAccount, account_batch
from vlmcheck.integrations._layout import (
    IGNORE_INDEX,
    POLICIES,
    TOKEN_TYPE_KEYS,
    MediaKind,
    Policy,
    SpanMismatchError,
    VisionSpec,
)

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc


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
    for key in TOKEN_TYPE_KEYS:
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
    keep = [i for i in range(len(media.units)) if i not in dropped]
    for key in media.pixel_keys:
        if batch.get(key) is None:
            continue
        if media.items_per_sample is not None:
            batch[key] = _keep_slots(batch[key], media, set(keep), key=key)
        else:
            batch[key] = _keep_rows(batch[key], list(media.units), keep)
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
            batch[key] = _keep_rows(batch[key], [1] * len(media.units), keep)
    if not keep:
        # Nothing of this kind left: a forward without it. Empty pixel tensors would reach the vision tower.
        for key in (*media.pixel_keys, *media.item_keys, *(("image_position_ids",) if kind == "image" else ())):
            batch.pop(key, None)


def _keep_slots(values: torch.Tensor, media: MediaLayout, keep: set[int], *, key: str) -> torch.Tensor:
    """``values`` laid out per sample (slots on the layout's axis for ``key``) without the dropped items' slots:
    each sample's kept slots move up in order, its freed slots become padding (zeros, or the layout's fill for
    ``key``), and the slot axis shrinks to the most slots a sample still fills, as the processor pads a batch."""
    axis = media.slot_axes.get(key, 1)
    moved = values.movedim(axis, 1)
    out = torch.zeros_like(moved)
    fill = media.slot_fill.get(key)
    if fill is not None:
        out[:, :] = torch.tensor(fill, dtype=out.dtype, device=out.device)
    item, width = 0, 0
    for sample, count in enumerate(media.items_per_sample or ()):
        source, target = 0, 0
        for _ in range(count):
            n = int(media.units[item])
            if item in keep:
                out[sample, target : target + n] = moved[sample, source : source + n]
                target += n
            source += n
            item += 1
        width = max(width, target)
    return out[:, : max(width, 1)].movedim(1, axis).contiguous()


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


def fix_hint(account: SampleAccount, *, max_length: int | None, spec: VisionSpec) -> str:
    cut = next((item for item in account.media if item.status != "ok"), None)
    hints = []
    if cut is not None and cut.status == "cut" and cut.start is not None:
        hints.append(f"raise max_length to at least {cut.start + cut.needed + 1:,} for this sample")
    layout = spec.layout
    if cut is not None and cut.kind == "image" and cut.crops and isinstance(layout, CroppedBatchLayoutFamily):
        hints.append(layout.crops_fix.format(n=cut.crops))
    elif cut is not None and cut.kind == "image" and isinstance(layout, CrossAttentionLayoutFamily):
        hints.append(layout.mismatch_fix)
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
        token_keys = spec.media(batch, "image", crops_per_image).token_keys  # Mllama's cross_attention_mask
        for key in [*_sequence_keys(batch, batch_size, length), *(k for k in token_keys if k in batch)]:
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
        elif isinstance(spec.layout, CrossAttentionLayoutFamily):
            what = f"image placeholders that do not match their images; {spec.layout.mismatch_effect}"
        else:
            what = (
                "image placeholders that do not match their images; "
                "the model would raise 'Image features and image tokens do not match'"
            )
        raise SpanMismatchError(
            f"{len(bad)} sample(s) of this batch have {what}:\n{lines}\n"
            f"Fix: {fix_hint(bad[0], max_length=max_length, spec=spec)}.",
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
                units = sum(image_layout.units[i.batch_index] for i in images_gone)
                dropped_text.append(f"{len(images_gone)} image(s) ({units:,} pixel_values {image_layout.unit}s)")
            if videos_gone:
                video_layout = spec.media(batch, "video")
                units = sum(video_layout.units[i.batch_index] for i in videos_gone)
                dropped_text.append(f"{len(videos_gone)} video(s) ({units:,} pixel_values_videos {video_layout.unit}s)")
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
