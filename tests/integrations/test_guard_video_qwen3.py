"""Qwen3-VL videos in the span guard: one placeholder run per temporal patch, proved on a tiny real
Qwen3VLForConditionalGeneration.

Qwen3VLProcessor.replace_video_token (processing_qwen3_vl.py) replaces each ``<|video_pad|>`` of the
rendered chat by, per temporal patch, ``<{t:.1f} seconds><|vision_start|>`` + ``<|video_pad|>`` x
``h*w // merge_size**2`` + ``<|vision_end|>``; the template's own markers around it stay. Without
torchvision the video processor cannot run, so that text is built here by the same rule; the rest
(tokenizer, chat template, ``create_mm_token_type_ids``) is the real Qwen3-VL processor's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch

from realparts import qwen_processor
from vlmcheck.integrations.guards import (
    SpanMismatchError,
    VisionSpec,
    account_batch,
    guard_batch,
    vision_spec,
)

pytestmark = pytest.mark.slow  # builds its own tiny model

# Qwen3-VL hub preprocessor_config.json / Qwen3VLVideoProcessor: patch 16, temporal patch 2, merge 2.
PATCH, TEMPORAL, MERGE = 16, 2, 2
GRID = (3, 4, 4)  # 6 frames of 64x64: 3 temporal patches of 4 placeholders each


@cache
def tiny_qwen3_vl_model() -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
            "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": TEMPORAL,
            "deepstack_visual_indexes": [1], "num_position_embeddings": 64,
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )  # fmt: skip
    return Qwen3VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def processor3() -> Any:
    return qwen_processor("qwen3_vl")


def video_batch(processor: Any, answers: list[str], *, before: list[str] | None = None) -> dict[str, Any]:
    """One video per sample (after the text ``before[i]``), grid GRID, timestamps as Qwen3VLProcessor writes them."""
    t, h, w = GRID
    frames = "".join(
        f"<{0.5 + 2 * i:.1f} seconds><|vision_start|>"
        + "<|video_pad|>" * (h * w // MERGE**2)
        + "<|vision_end|>"
        for i in range(t)
    )
    texts = []
    for answer, lead in zip(answers, before or [""] * len(answers)):
        content = [{"type": "text", "text": lead}] if lead else []
        content += [{"type": "video"}, {"type": "text", "text": "What happens?"}]
        messages = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        texts.append(processor.apply_chat_template(messages).replace("<|video_pad|>", frames))
    text = processor.tokenizer(texts, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "mm_token_type_ids": torch.tensor(processor.create_mm_token_type_ids(text["input_ids"].tolist())),
        "pixel_values_videos": torch.randn(
            len(answers) * t * h * w, 3 * TEMPORAL * PATCH * PATCH, generator=generator
        ),
        "video_grid_thw": torch.tensor([GRID] * len(answers)),
    }


def sliced(batch: dict[str, Any], max_length: int) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    return {k: v[:, :max_length] if k in keys else v for k, v in batch.items()}


def test_the_spec_knows_frame_runs(processor3):
    spec = vision_spec(processor3)
    assert spec.video_frame_runs and spec.video_token_id == 151656
    assert not vision_spec(qwen_processor("qwen2_vl")).video_frame_runs


def test_whole_videos_account_and_run(processor3):
    spec = vision_spec(processor3)
    batch = video_batch(processor3, ["A red square.", "Red."])
    accounts = account_batch(batch, spec=spec)
    assert [(a.video_tokens, a.video_features, a.ok) for a in accounts] == [(12, 12, True), (12, 12, True)]
    pads = (batch["input_ids"][0] == spec.video_token_id).nonzero().flatten().tolist()
    video = accounts[0].videos[0]
    assert (video.start, video.end) == (pads[0], pads[-1] + 1)  # three runs, timestamps between them
    assert len(pads) == 12 < video.end - video.start
    with torch.no_grad():
        tiny_qwen3_vl_model()(**batch)


@pytest.mark.parametrize("policy", ["raise", "drop-media", "truncate"])
def test_a_cut_between_frames(processor3, policy):
    spec = vision_spec(processor3)
    model = tiny_qwen3_vl_model()
    full = video_batch(processor3, ["A red square.", "Red."])
    pads = (full["input_ids"][0] == spec.video_token_id).nonzero().flatten().tolist()
    max_length = pads[5] + 1  # frame 1 whole, 2 of frame 2's 4 placeholders
    with pytest.raises(
        ValueError, match="Video features and video tokens do not match, tokens: 12, features: 24"
    ):
        with torch.no_grad():
            model(**sliced(full, max_length))
    if policy == "raise":
        with pytest.raises(SpanMismatchError) as info:
            guard_batch(full, spec=spec, max_length=max_length)
        assert "sample 0: 0 image tokens, 0 features, 6 video tokens, 12 video features" in str(info.value)
        assert "video 1 of 1 needs 12 placeholders, only 6 are left" in str(info.value)
        return
    batch, accounts, repairs = guard_batch(full, spec=spec, policy=policy, max_length=max_length)  # type: ignore[arg-type]
    assert [r.videos_dropped for r in repairs] == [[1], [1]]
    assert "pixel_values_videos" not in batch and "video_grid_thw" not in batch
    assert not bool((batch["input_ids"] == spec.video_token_id).any())
    assert not bool(batch["mm_token_type_ids"].any())
    if policy == "truncate":  # at the first frame's <|vision_start|>; the timestamp before it is text
        assert int(batch["attention_mask"][0].sum()) == pads[0] - 1
    with torch.no_grad():
        model(**batch)


def test_a_cut_video_next_to_a_whole_one(processor3):
    """Only the cut video goes; the whole one keeps its frames, pixels and grid row."""
    spec: VisionSpec = vision_spec(processor3)
    lead = "Here is a short clip of coloured squares on a plain background, one after the other. " * 4
    full = video_batch(processor3, ["A red square.", "Red."], before=[lead, ""])
    pads = (full["input_ids"][0] == spec.video_token_id).nonzero().flatten().tolist()
    max_length = pads[5] + 1  # sample 0: frame 1 whole, 2 of frame 2's 4 placeholders
    assert int(full["attention_mask"][1].sum()) <= max_length  # sample 1 fits whole
    batch, _, repairs = guard_batch(full, spec=spec, policy="truncate", max_length=max_length)
    assert [(r.sample, r.videos_dropped) for r in repairs] == [(0, [1])]
    assert batch["video_grid_thw"].tolist() == [list(GRID)]
    rows = GRID[0] * GRID[1] * GRID[2]
    assert torch.equal(batch["pixel_values_videos"], full["pixel_values_videos"][rows:])
    assert all(a.ok for a in account_batch(batch, spec=spec))
    with torch.no_grad():
        tiny_qwen3_vl_model()(**batch)
