"""The proof on a real trainer: TRL SFTTrainer, tiny random-weight Qwen2-VL, CPU.

One sample's image does not fit under max_length=64 (64 placeholders after a ~15-token prefix).
TRL's prompt-completion collator slices input_ids to max_length and keeps the image's pixels.
"""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
from vlm_rows import BIG, SMALL, prompt_completion_row

from vlmcheck.integrations.guards import SpanGuardCollator, SpanMismatchError, explain_vision_mismatch

pytestmark = pytest.mark.slow

MAX_LENGTH = 64


def dataset() -> Dataset:
    return Dataset.from_list(
        [
            prompt_completion_row(SMALL, "A red square."),
            prompt_completion_row(BIG, "A big red square."),
            prompt_completion_row(SMALL, "Red."),
            prompt_completion_row(SMALL, "A square."),
        ]
    )


def trainer(model, processor, tmp_path, collator=None) -> SFTTrainer:
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_length=MAX_LENGTH,
        per_device_train_batch_size=2,
        max_steps=2,  # the whole dataset: the big sample is always in one of the batches
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset(), processing_class=processor, data_collator=collator
    )


def test_without_the_guard_the_run_raises_the_real_error(processor, fresh_model, tmp_path):
    with pytest.raises(ValueError) as info:
        trainer(fresh_model, processor, tmp_path).train()
    # TRL re-raises the model's error with its own advice; the model's is the cause.
    assert "Image features and image tokens do not match, tokens: " in str(info.value.__cause__)
    assert "features: 68" in str(info.value.__cause__)  # 4 (small) + 64 (big) in the failing batch


def test_explain_vision_mismatch_names_the_samples(processor, fresh_model, tmp_path):
    with pytest.raises(SpanMismatchError) as info:
        with explain_vision_mismatch(fresh_model, processor=processor):
            trainer(fresh_model, processor, tmp_path).train()
    message = str(info.value)
    assert "Image features and image tokens do not match" in message
    bad = [a for a in info.value.accounts if not a.ok]
    assert len(bad) == 1 and bad[0].image_features == 64 and bad[0].image_tokens == 49
    assert f"samples [{bad[0].index}] of the failing batch are involved" in message
    assert "image 1 of 1 needs 64 placeholders, only 49 are left" in message


@pytest.mark.parametrize("policy", ["drop-images", "truncate"])
def test_with_the_guard_the_run_completes_and_logs_the_repair(
    processor, fresh_model, tmp_path, caplog, policy
):
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=MAX_LENGTH, completion_only_loss=True)
    guard = SpanGuardCollator(inner, processor=processor, policy=policy)
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        output = trainer(fresh_model, processor, tmp_path, collator=guard).train()
    assert output.global_step == 2
    assert guard.stats["batches"] == 2 and guard.stats["samples"] == 4
    assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
    repairs = [r for r in caplog.records if r.name == "vlmcheck.guards"]
    assert len(repairs) == 1
    assert f"policy '{policy}'" in repairs[0].getMessage()
    assert "49 image tokens, 64 features" in repairs[0].getMessage()
    assert "1 image(s) (256 pixel_values rows)" in repairs[0].getMessage()


def test_with_the_raise_policy_the_error_comes_before_the_model(processor, fresh_model, tmp_path):
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=MAX_LENGTH, completion_only_loss=True)
    guard = SpanGuardCollator(inner, processor=processor)
    with pytest.raises(SpanMismatchError, match=r"sample \d: 49 image tokens, 64 features") as info:
        trainer(fresh_model, processor, tmp_path, collator=guard).train()
    assert "Fix: raise max_length to at least 80" in str(info.value)
