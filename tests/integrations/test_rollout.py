"""RL rollout safety on the real tiny Qwen2-VL: a generated <|image_pad|> breaks the log-prob re-feed."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList
from vlm_rows import SMALL, image

from vlmcheck.integrations.rollout import (
    VisionTokenSuppressor,
    bad_words_ids,
    check_rollout,
    sanitize_completion_ids,
    space_token_id,
    vision_token_ids,
    vllm_sampling_kwargs,
)

QWEN_VISION = {"<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"}


def prompt(processor) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return dict(processor(images=[image(SMALL)], text=[text], return_tensors="pt"))


def refeed(model, inputs: dict, completion: torch.Tensor):
    """prompt+completion through the model, as GRPO does for log-probs (completion tokens are text)."""
    ids = torch.cat([inputs["input_ids"], completion], dim=1)
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    return model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=mm,
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
    )


def test_vision_token_ids_are_looked_up(processor):
    found = vision_token_ids(processor)
    assert set(found) == QWEN_VISION
    assert found["<|image_pad|>"] == processor.image_token_id
    assert set(vision_token_ids(processor, placeholders_only=True)) == {"<|image_pad|>", "<|video_pad|>"}
    assert space_token_id(processor) == processor.tokenizer.encode(" ", add_special_tokens=False)[0]
    assert vllm_sampling_kwargs(processor) == {"logit_bias": {i: -100.0 for i in sorted(found.values())}}
    assert bad_words_ids(processor) == [[i] for i in sorted(found.values())]


def test_a_generated_image_pad_breaks_the_refeed_and_sanitizing_fixes_it(processor, fresh_model):
    inputs = prompt(processor)
    tokenizer = processor.tokenizer
    generated = tokenizer.encode(" A red", add_special_tokens=False) + [processor.image_token_id]
    generated += tokenizer.encode(" square.", add_special_tokens=False)
    completion = torch.tensor([generated])
    features = int(inputs["image_grid_thw"].prod()) // 4
    with torch.no_grad(), pytest.raises(ValueError, match=f"tokens: {features + 1}, features: {features}"):
        refeed(fresh_model, inputs, completion)

    full = torch.cat([inputs["input_ids"], completion], dim=1)
    (problem,) = check_rollout(full, image_grid_thw=inputs["image_grid_thw"], processor=processor)
    assert (problem.image_tokens, problem.image_features, problem.orphan_tokens) == (
        features + 1,
        features,
        1,
    )
    assert "1 placeholder(s) belong to no image" in problem.describe()

    clean, replaced = sanitize_completion_ids(completion, processor=processor)
    assert replaced == 1
    assert clean[0, 2] == space_token_id(processor)
    assert sanitize_completion_ids(generated, processor=processor) == (clean[0].tolist(), 1)  # lists too
    assert (
        check_rollout(
            torch.cat([inputs["input_ids"], clean], 1),
            image_grid_thw=inputs["image_grid_thw"],
            processor=processor,
        )
        == []
    )
    with torch.no_grad():
        assert refeed(fresh_model, inputs, clean).logits.shape[1] == full.shape[1]


@pytest.mark.slow
def test_suppression_keeps_vision_tokens_out_of_generate(processor, fresh_model):
    inputs = prompt(processor)
    vision = set(vision_token_ids(processor).values())
    # Push the model towards vision tokens, as a policy drifting during RL can be.
    lure = {"sequence_bias": {(token,): 50.0 for token in vision}, "max_new_tokens": 12, "pad_token_id": 0}
    start = inputs["input_ids"].shape[1]
    with torch.no_grad():
        lured = fresh_model.generate(**inputs, do_sample=False, **lure)
        assert vision & set(lured[0, start:].tolist())  # without suppression it emits them
        suppressor = LogitsProcessorList([VisionTokenSuppressor(processor)])
        for kwargs in ({"logits_processor": suppressor}, {"bad_words_ids": bad_words_ids(processor)}):
            for do_sample in (False, True):
                torch.manual_seed(0)
                out = fresh_model.generate(**inputs, do_sample=do_sample, **lure, **kwargs)
                assert not vision & set(out[0, start:].tolist())
                # the completion re-feeds cleanly
                assert check_rollout(out, image_grid_thw=inputs["image_grid_thw"], processor=processor) == []
