"""Span-aware truncation and the collator guard on real Qwen2-VL processor output."""

from __future__ import annotations

import logging

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
from vlm_rows import BIG, SMALL, image, messages_row, prompt_completion_row

from vlmcheck.integrations.guards import (
    SpanGuardCollator,
    SpanMismatchError,
    VisionSpec,
    account_batch,
    guard_batch,
    truncate_batch,
    vision_spec,
)


def consistent(batch: dict, spec: VisionSpec) -> None:
    """What the model checks, per sample and for the whole batch."""
    grid = batch.get("image_grid_thw")
    needed = [] if grid is None else (grid.prod(-1) // spec.merge_size**2).tolist()
    placeholders = int((batch["input_ids"] == spec.image_token_id).sum())
    assert placeholders == sum(needed)
    rows = 0 if grid is None else int(grid.prod(-1).sum())
    assert (batch["pixel_values"].shape[0] if "pixel_values" in batch else 0) == rows
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == spec.image_token_id)
    assert all(a.ok for a in account_batch(batch, spec=spec))


def test_vision_spec_of_the_real_processor(processor):
    spec = vision_spec(processor)
    assert spec.family == "qwen2_vl"
    assert spec.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert spec.start_token_id == processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert spec.merge_size == 2
    assert spec.pad_token_id == processor.tokenizer.pad_token_id


def test_account_matches_the_processor(processor):
    spec = vision_spec(processor)
    batch = DataCollatorForVisionLanguageModeling(processor)(
        [messages_row([SMALL, BIG], "Two."), messages_row([SMALL], "One.")]
    )
    accounts = account_batch(batch, spec=spec)
    assert [a.image_features for a in accounts] == [4 + 64, 4]
    assert [a.image_tokens for a in accounts] == [4 + 64, 4]
    assert all(a.ok for a in accounts)


@pytest.mark.parametrize("max_length", [20, 30, 45, 60, 100])
def test_truncate_never_cuts_a_span_and_never_exceeds_max_length(processor, fresh_model, max_length):
    spec = vision_spec(processor)
    # Sample 0: two images (4 + 64 placeholders); sample 1: one small image.
    examples = [
        messages_row([SMALL, BIG], "A small and a big red square."),
        messages_row([SMALL], "A red square."),
    ]
    full = DataCollatorForVisionLanguageModeling(processor)(examples)
    cut, repairs = truncate_batch(full, max_length=max_length, spec=spec, images_per_sample=[2, 1])
    assert cut["input_ids"].shape[1] <= max_length
    assert int(cut["attention_mask"].sum(1).max()) <= max_length
    consistent(cut, spec)
    for repair in repairs:
        assert repair.action == "truncate" and repair.images_dropped
    with torch.no_grad():
        fresh_model(**cut)  # the real model accepts every cut


def test_truncate_reports_what_was_dropped(processor):
    spec = vision_spec(processor)
    full = DataCollatorForVisionLanguageModeling(processor)([messages_row([SMALL, BIG], "Two squares.")])
    start_big = int(
        (full["input_ids"][0] == spec.image_token_id).nonzero()[4]
    )  # first placeholder of image 2
    cut, repairs = truncate_batch(full, max_length=start_big + 10, spec=spec)
    assert len(repairs) == 1
    (repair,) = repairs
    assert repair.images_dropped == [2]
    assert "image 2 of 2 needs 64 placeholders, only 10 are left" in repair.message
    assert "256 pixel_values rows" in repair.message
    # the cut is at the <|vision_start|> of image 2: image 1 and its markers stay
    assert cut["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int(cut["attention_mask"][0].sum()) == start_big - 1
    assert int(cut["input_ids"][0, start_big - 2]) == spec.end_token_id  # image 1's <|vision_end|>
    assert "labels" not in full or bool((cut["labels"][0, start_big - 1 :] == -100).all())


def test_guard_with_max_length_and_a_processor_call(processor, fresh_model):
    """The guard owns truncation: the wrapped collator (a processor call here) does not truncate."""
    spec = vision_spec(processor)

    def collate(examples):
        texts = [processor.apply_chat_template(e["messages"]) for e in examples]
        batch = processor(
            images=[e["images"] for e in examples], text=texts, padding=True, return_tensors="pt"
        )
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)

    examples = [messages_row([BIG], "A big red square."), messages_row([SMALL], "A small one.")]
    for policy in ("drop-images", "truncate"):
        guard = SpanGuardCollator(collate, processor=processor, policy=policy, max_length=40)
        batch = guard([dict(e) for e in examples])
        assert batch["input_ids"].shape[1] == 40
        consistent(batch, spec)
        assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
        fresh_model(**batch).logits.sum().backward()


def test_raise_names_the_sample_the_numbers_and_the_fix(processor):
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=64)
    guard = SpanGuardCollator(inner, processor=processor)  # policy "raise" is the default
    examples = [prompt_completion_row(SMALL, "Red."), prompt_completion_row(BIG, "A big red square.")]
    with pytest.raises(SpanMismatchError) as info:
        guard(examples)
    message = str(info.value)
    assert "sample 1: 49 image tokens, 64 features" in message
    assert "image 1 of 1 needs 64 placeholders, only 49 are left" in message
    assert "Fix: raise max_length to at least 80" in message
    assert "policy='truncate' or 'drop-images'" in message
    assert [a.ok for a in guard.last_accounts] == [True, False]


def test_policies_repair_log_and_count(processor, caplog):
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=64, completion_only_loss=True)
    examples = [prompt_completion_row(SMALL, "Red."), prompt_completion_row(BIG, "A big red square.")]
    spec = vision_spec(processor)
    for policy in ("drop-images", "truncate"):
        guard = SpanGuardCollator(inner, processor=processor, policy=policy)
        with caplog.at_level(logging.WARNING, logger="vlmcheck"):
            batch = guard([dict(e) for e in examples])
        consistent(batch, spec)
        assert batch["input_ids"].shape[0] == 2  # never fewer samples
        assert set(batch) == {
            "input_ids",
            "attention_mask",
            "mm_token_type_ids",
            "pixel_values",
            "image_grid_thw",
            "labels",
        }
        assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
        assert guard.stats["unsupervised_samples"] == 1  # the cut sample lost its completion to max_length
        assert f"(policy '{policy}'), batch 0, sample 1: 49 image tokens, 64 features" in caplog.text
        assert "1 image(s) (256 pixel_values rows)" in caplog.text
        caplog.clear()


def test_drop_images_masks_a_stray_placeholder_and_keeps_the_text(processor, fresh_model):
    spec = vision_spec(processor)
    batch = dict(DataCollatorForVisionLanguageModeling(processor)([messages_row([SMALL], "A red square.")]))
    position = int(batch["attention_mask"][0].sum()) - 3
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][0, position] = spec.image_token_id  # e.g. a generated <|image_pad|>
    with pytest.raises(ValueError, match="tokens: 5, features: 4"):
        fresh_model(**batch)
    fixed, accounts, repairs = guard_batch(batch, spec=spec, policy="drop-images", images_per_sample=[1])
    assert accounts[0].orphan_runs == [(position, position + 1)]
    assert repairs[0].images_dropped == [] and repairs[0].tokens_masked == 1
    assert fixed["image_grid_thw"].tolist() == [[1, 4, 4]]  # the real image stays
    assert int(fixed["attention_mask"][0].sum()) == int(batch["attention_mask"][0].sum()) - 1
    fresh_model(**fixed)


def test_all_images_dropped_gives_a_text_only_batch(processor, fresh_model):
    spec = vision_spec(processor)
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=30)
    guard = SpanGuardCollator(inner, spec=spec, policy="drop-images")
    batch = guard([prompt_completion_row(BIG, "A."), prompt_completion_row(BIG, "B.")])
    assert "pixel_values" not in batch and "image_grid_thw" not in batch
    assert batch["input_ids"].shape[0] == 2
    assert not bool((batch["input_ids"] == spec.image_token_id).any())
    fresh_model(**batch)


def test_gemma3_layout():
    """Gemma-3: 256 soft tokens per image, pixel_values (images, 3, 896, 896)."""
    spec = VisionSpec(
        family="gemma3", image_token_id=262144, pad_token_id=0, start_token_id=255999, end_token_id=256000
    )
    text = [2, 10, 11]
    span = [255999] + [262144] * 256 + [256000]
    row0 = text + span + [12, 13] + span + [14]
    row1 = text + span + [15]
    length = max(len(row0), len(row1))
    ids = torch.tensor([row0 + [0] * (length - len(row0)), row1 + [0] * (length - len(row1))])
    attention = (torch.arange(length)[None] < torch.tensor([[len(row0)], [len(row1)]])).long()
    batch = {
        "input_ids": ids,
        "attention_mask": attention,
        "token_type_ids": (ids == 262144).long(),
        "pixel_values": torch.arange(3, dtype=torch.float)[:, None, None, None].expand(3, 3, 2, 2).clone(),
        "labels": ids.masked_fill(attention == 0, -100),
    }
    assert all(a.ok for a in account_batch(batch, spec=spec, images_per_sample=[2, 1]))
    max_length = len(text) + len(span) + 2 + 100  # inside sample 0's second image
    cut, repairs = truncate_batch(batch, max_length=max_length, spec=spec, images_per_sample=[2, 1])
    assert repairs[0].sample == 0 and repairs[0].images_dropped == [2]
    assert cut["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 2.0]  # image 1 of sample 0 and sample 1's image
    assert int((cut["input_ids"] == 262144).sum()) == 2 * 256
    assert int(cut["token_type_ids"].sum()) == 2 * 256
    assert int(cut["attention_mask"][0].sum()) == len(text) + len(span) + 2


def test_unknown_policy_is_a_usage_error(processor):
    from vlmcheck.errors import UsageError

    with pytest.raises(UsageError, match="unknown policy 'skip'"):
        SpanGuardCollator(lambda e: {}, processor=processor, policy="skip")  # type: ignore[arg-type]


def test_truncation_leaves_pixel_values_alone_when_their_shape_looks_like_a_sequence(processor, fresh_model):
    """16 samples padded to 1,176 tokens, one 56x56 image (16 patch rows of 1,176 values): pixel_values has
    the shape (batch, length) of a token tensor, but it is not one and must not be cut."""
    spec = vision_spec(processor)
    texts = ["<|vision_start|><|image_pad|><|vision_end|>Describe it."] + ["Hello."] * 15
    full = processor(
        text=texts, images=[image(SMALL)], padding="max_length", max_length=1176, return_tensors="pt"
    )
    assert tuple(full["pixel_values"].shape) == tuple(full["input_ids"].shape) == (16, 1176)
    cut, accounts, repairs = guard_batch(
        full, spec=spec, policy="truncate", max_length=64, images_per_sample=[1] + [0] * 15
    )
    assert cut["input_ids"].shape == (16, 64) and not repairs and all(a.ok for a in accounts)
    assert torch.equal(cut["pixel_values"], full["pixel_values"])
    with torch.no_grad():
        fresh_model(**cut)
