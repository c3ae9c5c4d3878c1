"""Videos in the span guard, proved on the real tiny Qwen2-VL.

Without torchvision the Qwen2-VL video processor cannot be built, so video batches are made here
the way Qwen2VLProcessor makes them: the chat template renders ``<|vision_start|><|video_pad|>
<|vision_end|>``, each ``<|video_pad|>`` becomes ``video_grid_thw[i].prod() // merge_size**2``
placeholders (``replace_video_token``, processing_qwen2_vl.py), ``pixel_values_videos`` has one
row of ``3 * temporal_patch_size * patch_size**2`` values per patch (Qwen2VLVideoProcessor,
``PatchEmbed`` in modeling_qwen2_vl.py), and ``mm_token_type_ids`` comes from the processor's own
``create_mm_token_type_ids``. Images go through the real image processor. The builder gives the
processor's exact output for image-only samples (first test).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import torch
from vlm_rows import BIG, SMALL, image

from vlmcheck.integrations.guards import (
    SpanGuardCollator,
    SpanMismatchError,
    VisionSpec,
    account_batch,
    explain_vision_mismatch,
    guard_batch,
    truncate_batch,
    vision_spec,
)
from vlmcheck.integrations.rollout import check_rollout, sanitize_completion_ids

# Qwen2-VL hub preprocessor_config.json / Qwen2VLVideoProcessor defaults.
PATCH = 14
TEMPORAL = 2
MERGE = 2
ROW = 3 * TEMPORAL * PATCH * PATCH  # 1176 values per pixel_values_videos row


class Video:
    """``frames`` frames of ``size`` x ``size``: grid (frames // 2, size // 14, size // 14)."""

    def __init__(self, frames: int, size: int, seed: int = 0) -> None:
        self.grid = [frames // TEMPORAL, size // PATCH, size // PATCH]
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(self.rows, ROW, generator=generator)

    @property
    def rows(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def tokens(self) -> int:
        return self.rows // MERGE**2


# 4 frames of 56x56: grid (2, 4, 4), 32 rows, 8 placeholders. 4 frames of 112x112: (2, 8, 8), 128 rows, 32.
SHORT, LONG = (4, 56), (4, 112)


def sample(*media: Any, answer: str = "A red square moves.") -> dict[str, Any]:
    """``media``: image sizes (int) and Video objects, in order."""
    content: list[dict[str, Any]] = [
        {"type": "image"} if isinstance(m, int) else {"type": "video"} for m in media
    ]
    content.append({"type": "text", "text": "What happens?"})
    return {
        "images": [image(m) for m in media if isinstance(m, int)],
        "videos": [m for m in media if isinstance(m, Video)],
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }


def collate(processor, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """What Qwen2VLProcessor(images=..., videos=..., text=...) returns, plus labels."""
    images = [im for e in examples for im in e["images"]]
    videos = [v for e in examples for v in e["videos"]]
    out: dict[str, Any] = {}
    image_tokens: list[int] = []
    if images:
        out.update(processor.image_processor(images=images, return_tensors="pt"))
        image_tokens = (out["image_grid_thw"].prod(-1) // MERGE**2).tolist()
    if videos:
        out["pixel_values_videos"] = torch.cat([v.pixels for v in videos])
        out["video_grid_thw"] = torch.tensor([v.grid for v in videos])
    counts = {"<|image_pad|>": iter(image_tokens), "<|video_pad|>": iter(v.tokens for v in videos)}
    texts = [
        re.sub(
            r"<\|image_pad\|>|<\|video_pad\|>",
            lambda m: m.group(0) * next(counts[m.group(0)]),
            processor.apply_chat_template(e["messages"]),
        )
        for e in examples
    ]
    text = processor.tokenizer(texts, padding=True, return_tensors="pt")
    out["input_ids"], out["attention_mask"] = text["input_ids"], text["attention_mask"]
    out["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(text["input_ids"].tolist()))
    out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
    return out


def consistent(batch: dict[str, Any], spec: VisionSpec) -> None:
    """What the model checks, for images and videos alike, plus the M-RoPE token types."""
    for pad, grid_key, pixel_key, kind in (
        (spec.image_token_id, "image_grid_thw", "pixel_values", 1),
        (spec.video_token_id, "video_grid_thw", "pixel_values_videos", 2),
    ):
        grid = batch.get(grid_key)
        needed = 0 if grid is None else int(grid.prod(-1).sum()) // MERGE**2
        assert int((batch["input_ids"] == pad).sum()) == needed
        rows = 0 if grid is None else int(grid.prod(-1).sum())
        assert (batch[pixel_key].shape[0] if pixel_key in batch else 0) == rows
        assert torch.equal(batch["mm_token_type_ids"] == kind, batch["input_ids"] == pad)
    assert all(a.ok for a in account_batch(batch, spec=spec))


def test_the_builder_gives_the_processors_output_for_images(processor):
    examples = [sample(SMALL, BIG), sample(SMALL, answer="Red.")]
    ours = collate(processor, examples)
    texts = [processor.apply_chat_template(e["messages"]) for e in examples]
    theirs = processor(images=[e["images"] for e in examples], text=texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], theirs[key]), key


def test_a_whole_video_batch_runs_the_real_model_and_accounts(processor, fresh_model):
    spec = vision_spec(processor)
    assert spec.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert not spec.video_frame_runs
    batch = collate(processor, [sample(SMALL, Video(*LONG)), sample(Video(*SHORT), BIG)])
    consistent(batch, spec)
    accounts = account_batch(batch, spec=spec)
    assert [(a.image_features, a.video_features) for a in accounts] == [(4, 32), (64, 8)]
    assert [(a.image_tokens, a.video_tokens) for a in accounts] == [(4, 32), (64, 8)]
    fresh_model(**batch).loss.backward()


def cut_inside_the_video(batch: dict[str, Any], spec: VisionSpec, *, row: int, keep: int) -> int:
    """A max_length that keeps ``keep`` placeholders of the first video in ``row``."""
    first = int((batch["input_ids"][row] == spec.video_token_id).nonzero()[0])
    return first + keep


def test_a_cut_video_raises_the_models_error_and_the_guard_names_it(processor, fresh_model):
    spec = vision_spec(processor)
    full = collate(processor, [sample(SMALL, Video(*LONG))])
    max_length = cut_inside_the_video(full, spec, row=0, keep=11)
    cut = {
        k: v[:, :max_length] if k in ("input_ids", "attention_mask", "mm_token_type_ids", "labels") else v
        for k, v in full.items()
    }
    with pytest.raises(
        ValueError, match="Video features and video tokens do not match, tokens: 11, features: 32"
    ):
        fresh_model(**cut)

    with pytest.raises(SpanMismatchError) as explained:
        with explain_vision_mismatch(fresh_model, processor=processor):
            fresh_model(**cut)
    assert "Video features and video tokens do not match, tokens: 11, features: 32" in str(explained.value)
    assert "samples [0] of the failing batch are involved" in str(explained.value)
    assert "video 1 of 1 needs 32 placeholders, only 11 are left" in str(explained.value)

    with pytest.raises(SpanMismatchError) as info:
        guard_batch(full, spec=spec, max_length=max_length)
    message = str(info.value)
    assert "sample 0: 4 image tokens, 4 features, 11 video tokens, 32 video features" in message
    assert "video 1 of 1 needs 32 placeholders, only 11 are left" in message
    assert "'Video features and video tokens do not match'" in message
    assert f"raise max_length to at least {max_length - 11 + 32 + 1}" in message
    assert "sample fewer frames" in message and "policy='truncate' or 'drop-media'" in message


@pytest.mark.parametrize("policy", ["drop-media", "drop-images", "truncate"])
def test_policies_repair_a_cut_video_and_the_real_forward_runs(processor, fresh_model, policy):
    spec = vision_spec(processor)
    # sample 0: a big image, then a long video the cut goes through; sample 1 is short and whole.
    examples = [sample(BIG, Video(*LONG, seed=1)), sample(Video(*SHORT, seed=2), SMALL, answer="Red.")]
    full = collate(processor, examples)
    max_length = cut_inside_the_video(full, spec, row=0, keep=11)
    assert full["attention_mask"][1].sum() <= max_length  # sample 1 fits whole
    batch, accounts, repairs = guard_batch(full, spec=spec, policy=policy, max_length=max_length)  # type: ignore[arg-type]
    consistent(batch, spec)
    assert [a.ok for a in accounts] == [False, True]
    (repair,) = repairs
    assert (repair.sample, repair.action, repair.images_dropped, repair.videos_dropped) == (
        0,
        policy,
        [],
        [1],
    )
    assert "sample 0: 64 image tokens, 64 features, 11 video tokens, 32 video features" in repair.message
    assert "1 video(s) (128 pixel_values_videos rows) and masked" in repair.message
    # sample 1's video and both images stay, with their own pixels
    assert batch["video_grid_thw"].tolist() == [Video(*SHORT).grid]
    assert torch.equal(batch["pixel_values_videos"], examples[1]["videos"][0].pixels)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 4, 4]]
    if policy == "truncate":
        # cut at the video's <|vision_start|>: sample 0 keeps its image and the text before the video
        first = int((full["input_ids"][0] == spec.video_token_id).nonzero()[0])
        assert int(batch["attention_mask"][0].sum()) == first - 1
        assert int(batch["input_ids"][0, first - 2]) == spec.end_token_id  # the image's <|vision_end|>
    else:
        assert int(batch["attention_mask"][0].sum()) == max_length - 11  # the text stays, the 11 are masked
    fresh_model(**batch).loss.backward()


def test_all_videos_dropped_leave_an_image_batch(processor, fresh_model):
    spec = vision_spec(processor)
    full = collate(processor, [sample(SMALL, Video(*LONG))])
    max_length = cut_inside_the_video(full, spec, row=0, keep=3)
    batch, _, repairs = guard_batch(full, spec=spec, policy="drop-media", max_length=max_length)
    assert "pixel_values_videos" not in batch and "video_grid_thw" not in batch
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    consistent(batch, spec)
    fresh_model(**batch)


def test_the_collator_reads_video_counts_from_the_examples(processor, fresh_model, caplog):
    """A cut that removes a whole video: runs alone cannot say whose it was; the examples can."""
    spec = vision_spec(processor)
    examples = [
        sample(Video(*SHORT, seed=3), Video(*LONG, seed=4), answer="Two clips."),
        sample(Video(*SHORT, seed=5), answer="One."),
    ]
    full = collate(processor, examples)
    second = (full["input_ids"][0] == spec.video_token_id).nonzero().flatten()[8]  # first of video 2
    max_length = int(second) - 1  # right before video 2's <|vision_start|>: none of its placeholders left
    with pytest.raises(SpanMismatchError, match="3 video\\(s\\) but 2 placeholder run"):
        account_batch(
            {
                k: v[:, :max_length] if v.dim() == 2 and k.endswith(("ids", "mask", "labels")) else v
                for k, v in full.items()
            },
            spec=spec,
        )
    guard = SpanGuardCollator(
        lambda e: collate(processor, e), processor=processor, policy="truncate", max_length=max_length
    )
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        batch = guard(examples)
    consistent(batch, spec)
    assert guard.stats["dropped_videos"] == 1 and guard.stats["dropped_images"] == 0
    assert "video 2 of 2 has none of its 32 placeholders" in caplog.text
    assert batch["video_grid_thw"].tolist() == [Video(*SHORT).grid, Video(*SHORT).grid]
    assert "dropped videos: 1" in guard.summary()
    fresh_model(**batch).loss.backward()


def test_second_per_grid_ts_follows_the_videos(processor):
    """Qwen2.5-VL adds one second_per_grid_ts value per video (processing_qwen2_5_vl.py)."""
    spec = vision_spec(processor)
    full = collate(processor, [sample(BIG, Video(*LONG)), sample(Video(*SHORT), answer="Red.")])
    full["second_per_grid_ts"] = [1.0, 0.5]
    max_length = cut_inside_the_video(full, spec, row=0, keep=5)
    batch, _ = truncate_batch(full, max_length=max_length, spec=spec)
    assert batch["second_per_grid_ts"] == [0.5]
    full["second_per_grid_ts"] = torch.tensor([1.0, 0.5])
    batch, _ = truncate_batch(full, max_length=max_length, spec=spec)
    assert batch["second_per_grid_ts"].tolist() == [0.5]


def test_check_rollout_tells_a_generated_video_run_by_its_token_type(processor, fresh_model):
    """A completion with as many generated <|video_pad|> as a prompt's video needs, re-fed as GRPO does
    (prompt's mm_token_type_ids, zeros for the completion)."""
    spec = vision_spec(processor)
    prompt = collate(processor, [sample(Video(*SHORT, seed=6)), sample(Video(*SHORT, seed=7), answer="Red.")])
    completion = torch.tensor([[220] + [spec.video_token_id] * Video(*SHORT).tokens + [220], [220] * 10])
    ids = torch.cat([prompt["input_ids"], completion], 1)
    types = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion)], 1)
    mask = torch.cat([prompt["attention_mask"], torch.ones_like(completion)], 1)
    refeed = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": types,
        "pixel_values_videos": prompt["pixel_values_videos"],
        "video_grid_thw": prompt["video_grid_thw"],
    }
    with pytest.raises(
        ValueError, match="Video features and video tokens do not match, tokens: 24, features: 16"
    ):
        fresh_model(**refeed)

    grid = prompt["video_grid_thw"]
    (problem,) = check_rollout(ids, video_grid_thw=grid, mm_token_type_ids=types, processor=processor)
    assert (problem.index, problem.video_tokens, problem.video_features, problem.orphan_tokens) == (
        0,
        16,
        8,
        8,
    )
    assert problem.videos[0].status == "ok"
    # Without the types, runs are matched to videos by length: this run is as long as a video, so the
    # blame lands on the wrong sample. The model's totals are wrong either way.
    assert [p.index for p in check_rollout(ids, video_grid_thw=grid, processor=processor)] == [1]

    clean, replaced = sanitize_completion_ids(completion, processor=processor)
    assert replaced == 8
    ids = torch.cat([prompt["input_ids"], clean], 1)
    assert check_rollout(ids, video_grid_thw=grid, mm_token_type_ids=types, processor=processor) == []
    fresh_model(**{**refeed, "input_ids": ids})
