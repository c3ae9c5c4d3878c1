"""TrainingHealthCallback on real short SFTTrainer runs that go wrong, and on GRPO's logged values."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from transformers import TrainerControl, TrainerState, TrainingArguments
from trl import SFTConfig, SFTTrainer
from vlm_rows import SMALL, prompt_completion_row

from vlmcheck.integrations.callbacks import TrainingHealthCallback


def run(
    model, processor, tmp_path, *, max_length: int, steps: int, callback: TrainingHealthCallback, **config
) -> None:
    dataset = Dataset.from_list([prompt_completion_row(SMALL, "A red square.") for _ in range(2 * steps)])
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_length=max_length,
        per_device_train_batch_size=2,
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        **config,
    )
    SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=[callback]
    ).train()


@pytest.mark.slow
def test_loss_zero_when_max_length_cuts_every_completion(processor, fresh_model, tmp_path, caplog):
    # The prompt (system, image, question, assistant header) is ~30 tokens: max_length 24 keeps the
    # image whole but no completion token, so every label is -100 and TRL's loss is exactly 0.
    health = TrainingHealthCallback(patience=2)
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        run(fresh_model, processor, tmp_path, max_length=24, steps=3, callback=health)
    codes = [d.code for d in health.diagnoses]
    assert codes == ["loss-zero"]
    assert health.diagnoses[0].step == 2
    assert "the loss has been exactly 0 for 2 logged steps" in caplog.text
    assert "labels of every sample are -100" in caplog.text


@pytest.mark.slow
def test_nan_loss_and_grad_norm(processor, fresh_model, tmp_path, caplog):
    with torch.no_grad():
        # non-finite activations, as after an fp16 overflow
        fresh_model.model.language_model.norm.weight[0] = float("nan")
    health = TrainingHealthCallback(stop_on_nan=True)
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        # Trainer's default logging_nan_inf_filter=True logs a NaN loss as the running mean (0 here):
        # only grad_norm shows it then. Off, the NaN loss itself reaches the logs.
        run(
            fresh_model,
            processor,
            tmp_path,
            max_length=128,
            steps=3,
            callback=health,
            logging_nan_inf_filter=False,
        )
    codes = [d.code for d in health.diagnoses]
    assert codes == ["loss-nan", "grad-nan"]  # and training stopped after the first step
    assert health.diagnoses[0].step == 1
    assert "the loss is nan" in caplog.text


@pytest.mark.slow
def test_nan_hidden_by_the_trainers_log_filter_still_fires(processor, fresh_model, tmp_path, caplog):
    with torch.no_grad():
        fresh_model.model.language_model.norm.weight[0] = float("nan")
    health = TrainingHealthCallback(stop_on_nan=True)
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        run(fresh_model, processor, tmp_path, max_length=128, steps=3, callback=health)
    assert [d.code for d in health.diagnoses] == ["grad-nan"]
    assert "logging_nan_inf_filter" in caplog.text


def test_reward_std_zero_in_grpo_logs(tmp_path, caplog):
    health = TrainingHealthCallback(patience=3)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        for step, std in enumerate([0.4, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0], start=1):
            state.global_step = step
            health.on_log(args, state, control, logs={"loss": 0.1, "reward": 0.5, "reward_std": std})
    assert [(d.step, d.code) for d in health.diagnoses] == [(7, "reward-std-zero")]
    assert "reward_std has been 0 for 3 logged steps" in caplog.text


def test_logs_on_the_main_process_only(tmp_path, caplog):
    health = TrainingHealthCallback()
    state = TrainerState(is_world_process_zero=False)
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        health.on_log(
            TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl(), logs={"loss": float("inf")}
        )
    assert [d.code for d in health.diagnoses] == ["loss-nan"]
    assert caplog.text == ""


def test_checks_name_no_cause_trl_rules_out(tmp_path):
    """Current TRL refuses num_generations=1 (and groups of one give a NaN std, not 0, where it was allowed),
    so a reward_std of 0 never comes from it."""
    from trl import GRPOConfig

    from vlmcheck.integrations.callbacks import _CHECKS

    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(output_dir=str(tmp_path), num_generations=1, per_device_train_batch_size=2, use_cpu=True)
    assert "num_generations" not in _CHECKS["reward-std-zero"]
    assert "current TRL refuses num_generations=1" in _CHECKS["loss-nan"]
