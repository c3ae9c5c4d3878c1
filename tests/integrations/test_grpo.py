"""The proof on a real RL trainer: TRL GRPOTrainer, tiny random-weight Qwen2-VL, CPU, transformers generate.

Every prompt has one 56x56 image (4 placeholders). One prompt per step, two generations of 4 new
tokens each.
A random-weight policy rarely samples a vision token by itself; ``sequence_bias`` (a real
GenerationConfig option, passed through GRPOConfig.generation_kwargs) pushes it towards them, as a
policy drifting during RL can be pushed.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from vlm_rows import SMALL, image

from vlmcheck.integrations.callbacks import TrainingHealthCallback
from vlmcheck.integrations.guards import SpanMismatchError, explain_vision_mismatch
from vlmcheck.integrations.rollout import bad_words_ids, sanitize_completion_ids, vision_token_ids

pytestmark = pytest.mark.slow

IMAGE_PAD = 151655  # <|image_pad|>, processing_qwen2_vl.py / the Qwen2-VL tokenizer
NEW_TOKENS = 4


def dataset() -> Dataset:
    question = [{"type": "image"}, {"type": "text", "text": "What color is it?"}]
    return Dataset.from_list(
        [
            {"images": [image(SMALL, color)], "prompt": [{"role": "user", "content": question}]}
            for color in ("red", "blue", "green", "white")
        ]
    )


def lure(token_ids: set[int] | list[int]) -> dict[str, Any]:
    return {"sequence_bias": {(token,): 30.0 for token in sorted(token_ids)}}


class Recorder:
    """A reward function that gives every completion 1.0 (no learning signal) and keeps the ids it saw."""

    __name__ = "constant_reward"

    def __init__(self) -> None:
        self.completion_ids: list[list[int]] = []

    def __call__(self, completions: list[Any], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        self.completion_ids.extend(list(ids) for ids in completion_ids)
        return [1.0] * len(completions)

    def tokens(self) -> set[int]:
        return {token for ids in self.completion_ids for token in ids}


def grpo(
    model,
    processor,
    tmp_path,
    *,
    steps: int,
    generation_kwargs: dict[str, Any],
    reward: Recorder,
    callbacks: list[Any] | None = None,
    trainer_class: type[GRPOTrainer] = GRPOTrainer,
) -> GRPOTrainer:
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=NEW_TOKENS,
        max_steps=steps,
        logging_steps=1,
        gradient_checkpointing=False,  # GRPOConfig turns it on; off is faster on CPU and changes nothing here
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        generation_kwargs=generation_kwargs,
    )
    return trainer_class(
        model=model,
        args=args,
        reward_funcs=reward,
        train_dataset=dataset(),
        processing_class=processor,
        callbacks=callbacks,
    )


def test_constant_reward_fires_reward_std_zero_and_bad_words_keep_vision_tokens_out(
    processor, fresh_model, tmp_path, caplog
):
    vision = set(vision_token_ids(processor).values())
    reward = Recorder()
    health = TrainingHealthCallback(patience=2)
    trainer = grpo(
        fresh_model,
        processor,
        tmp_path,
        steps=2,
        generation_kwargs={**lure(vision), "bad_words_ids": bad_words_ids(processor)},
        reward=reward,
        callbacks=[health],
    )
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        trainer.train()
    logs = [log for log in trainer.state.log_history if "reward_std" in log]
    assert [log["reward_std"] for log in logs] == [0.0, 0.0]
    # GRPO's loss is exactly 0 here too (advantages 0): with a reward in the logs that is not loss-zero.
    assert [log["loss"] for log in logs] == [0.0, 0.0]
    assert [(d.step, d.code) for d in health.diagnoses] == [(2, "reward-std-zero")]
    assert "reward_std has been 0 for 2 logged steps" in caplog.text
    # 2 steps x 1 prompt x 2 generations, all of full length: no vision token was sampled and cut short
    assert [len(ids) for ids in reward.completion_ids] == [NEW_TOKENS] * 4
    assert not vision & reward.tokens()


def test_trl_default_suppresses_only_the_image_token(processor, fresh_model, tmp_path):
    """TRL 1.16 passes suppress_tokens=[image_token_id] to generate; the other vision tokens get through."""
    vision = set(vision_token_ids(processor).values())
    reward = Recorder()
    grpo(fresh_model, processor, tmp_path, steps=1, generation_kwargs=lure(vision), reward=reward).train()
    generated = reward.tokens()
    assert IMAGE_PAD not in generated
    assert generated <= vision - {IMAGE_PAD}  # the lure works: every token is a vision token


def test_a_generated_image_pad_breaks_the_log_prob_forward(processor, fresh_model, tmp_path):
    # suppress_tokens=None is what a GRPOConfig.generation_kwargs that sets its own suppress_tokens
    # leaves of TRL's default, and what the vLLM path has without vllm_sampling_kwargs.
    reward = Recorder()
    trainer = grpo(
        fresh_model,
        processor,
        tmp_path,
        steps=1,
        generation_kwargs={"suppress_tokens": None, **lure([IMAGE_PAD])},
        reward=reward,
    )
    with pytest.raises(SpanMismatchError) as info:
        with explain_vision_mismatch(fresh_model, processor=processor):
            trainer.train()
    generated = sum(ids.count(IMAGE_PAD) for ids in reward.completion_ids)
    assert generated > 0
    # The model's own error, at the forward on prompt+completion that computes the loss.
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    assert f"Image features and image tokens do not match, tokens: {8 + generated}, features: 8" in str(cause)
    # vlmcheck names the samples: the prompt's placeholders are the image's, the rest were generated.
    message = str(info.value)
    for account in info.value.accounts:
        assert account.image_features == 4
        assert account.images[0].status == "ok"
        assert account.orphan_tokens == account.image_tokens - 4
    assert "placeholder(s) belong to no image (e.g. generated)" in message
    assert "sanitize generated completions" in message


class SanitizingGRPOTrainer(GRPOTrainer):
    """The recipe in docs/integrations.md: TRL 1.16 has no public hook between generation and the
    log-prob forward, so sanitize where the transformers / vLLM paths return completion ids."""

    replaced = 0

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
        completion_ids, replaced = sanitize_completion_ids(completion_ids, processor=self.processing_class)
        SanitizingGRPOTrainer.replaced += replaced
        return completion_ids, logprobs


def test_sanitizing_completions_lets_the_same_run_train(processor, fresh_model, tmp_path):
    reward = Recorder()
    SanitizingGRPOTrainer.replaced = 0
    trainer = grpo(
        fresh_model,
        processor,
        tmp_path,
        steps=1,
        generation_kwargs={"suppress_tokens": None, **lure([IMAGE_PAD])},
        reward=reward,
        trainer_class=SanitizingGRPOTrainer,
    )
    output = trainer.train()
    assert output.global_step == 1
    assert SanitizingGRPOTrainer.replaced > 0  # the policy did generate <|image_pad|> ...
    assert IMAGE_PAD not in reward.tokens()  # ... and neither the reward nor the forward saw it
    space = processor.tokenizer.encode(" ", add_special_tokens=False)[0]
    assert sum(ids.count(space) for ids in reward.completion_ids) >= SanitizingGRPOTrainer.replaced
