"""The lint catalogue: every configuration problem ``vlmcheck lint`` can report, with a stable code.

Lint codes are ``VL`` + three digits (the dataset scan uses ``VC``): VL0xx reading the config,
VL1xx RL / GRPO sampling, VL2xx lengths and image sizes, VL3xx trainer features that do not work
with vision data, VL4xx distributed training and hardware. Codes never change meaning once
released. docs/lint.md is generated from :data:`LINT_RULES`::

    python -m vlmcheck.lint > docs/lint.md

and tests/lint/test_docs.py fails when the two drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.catalogue import Catalogue, Rule, Severity, register, render_codes


@dataclass(frozen=True)
class LintRule(Rule):
    """One entry of the lint catalogue: a :class:`vlmcheck.catalogue.Rule` plus the frameworks and versions
    the failure happens in."""

    versions: str  # after ``fix`` in the arguments, as a subclass's fields follow its base's

    def paragraphs(self) -> list[str]:
        what, fix = super().paragraphs()
        return [what, f"Versions: {self.versions}", fix]


_RULES = [
    # -- reading the config -------------------------------------------------------------------
    LintRule(
        "VL001", "unknown-option", Severity.INFO, "An option vlmcheck does not know for this framework",
        "Usually a typo or an option of another framework or version (`max_seq_length` in an SFTConfig, "
        "`cutoff_length` in LLaMA-Factory). HfArgumentParser-based launchers raise on unknown flags; "
        "YAML-driven ones may ignore them, so the setting silently does nothing.",
        "Check the spelling against the framework's documentation; remove the option if it belongs to "
        "another framework.",
        "All frameworks.",
    ),
    LintRule(
        "VL002", "bad-value", Severity.WARNING, "An option's value cannot be read as the type it needs",
        "A number written as words, a boolean written as `yes please`, a JSON dict that does not parse. "
        "The framework raises when it parses the argument, or keeps a string where it needs a number.",
        "Write the value as the framework expects it (integers, `true`/`false`, JSON for dict options).",
        "All frameworks.",
    ),
    # -- RL / GRPO ----------------------------------------------------------------------------
    LintRule(
        "VL101", "grpo-single-generation", Severity.ERROR, "GRPO samples only one completion per prompt",
        "GRPO's advantage is the reward minus the mean over the prompt's group, divided by the group's "
        "std. With one completion the std of a group of one is NaN in torch (TRL 0.14, forks of it such "
        "as R1-V): `loss` and `grad_norm` go NaN. verl instead sets mean 0 / std 1 for groups of one, so "
        "the run trains on raw rewards with no baseline: it is no longer GRPO and usually learns nothing.",
        "Sample a group per prompt: `num_generations: 8` (TRL, VLM-R1, ms-swift), "
        "`actor_rollout_ref.rollout.n=5` (verl), `worker.rollout.n: 5` (EasyR1).",
        "TRL 0.14 (silent NaN); TRL 0.15-0.16 and VLM-R1's trainer reject it at trainer init, TRL >= 0.17 "
        "and ms-swift raise; verl (default `actor_rollout_ref.rollout.n=1`!) runs silently; EasyR1 >= 0.3.0 "
        "raises.",
    ),
    LintRule(
        "VL102", "grpo-batch-indivisible", Severity.ERROR, "The batch does not hold whole GRPO groups",
        "Completions are grouped by prompt inside one generation batch, so that batch must be a multiple "
        "of the group size; EasyR1 and verl split the rollout batch into update mini-batches and per-GPU "
        "micro-batches that must divide it.",
        "Change the batch so that it divides: raise `per_device_train_batch_size` or "
        "`gradient_accumulation_steps`, or pick a `num_generations` that divides the generation batch "
        "(the message lists the valid values).",
        "TRL >= 0.18 and ms-swift: `generation_batch_size` (per_device_train_batch_size x processes x "
        "steps_per_generation, which defaults to gradient_accumulation_steps) % num_generations, raised "
        "in GRPOConfig; TRL 0.17: the same with gradient_accumulation_steps; TRL 0.15-0.16 and VLM-R1: "
        "per_device_train_batch_size x processes, raised at trainer init; EasyR1: rollout_batch_size % "
        "global_batch_size; verl: train_batch_size x rollout.n % GPUs.",
    ),
    LintRule(
        "VL103", "grpo-temperature-zero", Severity.ERROR, "GRPO samples at temperature 0",
        "Greedy decoding gives the same completion for every member of a group: all rewards of the group "
        "are equal, the advantage is 0 (reward std 0) and no gradient flows from any prompt.",
        "Sample: `temperature: 1.0` (TRL, ms-swift), `actor_rollout_ref.rollout.temperature=1.0` (verl), "
        "`worker.rollout.temperature: 1.0` (EasyR1).",
        "All GRPO implementations (TRL, ms-swift, verl, EasyR1); VLM-R1's own trainer hard-codes "
        "temperature 1 and ignores the option.",
    ),
    LintRule(
        "VL104", "option-ignored", Severity.INFO, "The framework accepts this option but does not use it",
        "VLM-R1's GRPO trainer sets max_prompt_length to None (warning only) and samples at a fixed "
        "temperature of 1, whatever the script passes: prompts are never truncated, so a long image "
        "prompt runs out of memory instead of being cut.",
        "Drop the option; bound prompt length with `--max_pixels` and the dataset instead.",
        "VLM-R1 (src/open-r1-multimodal/src/open_r1/trainer/grpo_trainer.py).",
    ),
    # -- lengths ------------------------------------------------------------------------------
    LintRule(
        "VL201", "max-length-below-data", Severity.ERROR, "The max length is below what the dataset needs",
        "Measured by a real scan of the dataset (`--data`): samples longer than the limit are cut, often "
        "through an image's placeholder span (\"Image features and image tokens do not match\"), or "
        "dropped (LLaMA-Factory drops nothing but truncates; ms-swift `truncation_strategy=delete` and "
        "EasyR1/verl `filter_overlong_prompts` drop them; verl's default `truncation=error` raises).",
        "Raise the framework's length option (`cutoff_len`, `max_length`, `max_prompt_length`, "
        "`data.max_prompt_length`) to the scan's 100% (or 99.9%) value, or cap the image size.",
        "All frameworks.",
    ),
    LintRule(
        "VL202", "max-pixels-exceeds-length", Severity.WARNING, "One image at the pixel cap is longer than the length",
        "Qwen2-VL / Qwen2.5-VL and GLM-4.1V take one token per 28x28 pixels (14 px patches merged 2x2), "
        "Qwen3-VL one per 32x32: an image at the `max_pixels` cap expands to more tokens than the whole sequence may "
        "hold, so any image that large is cut or its sample dropped. Real images are often smaller: "
        "`--data` checks them.",
        "Lower the pixel cap (`image_max_pixels`, `max_pixels`, `data.max_pixels`, `MAX_PIXELS`) or "
        "raise the length; the message gives both numbers.",
        "Every family with a pixel budget (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, GLM-4.5V) in every "
        "framework.",
    ),
    # -- trainer features vs vision data ------------------------------------------------------
    LintRule(
        "VL301", "vlm-packing", Severity.ERROR, "Packing is on for a vision-language run",
        "Packing concatenates samples into one sequence and cuts it at max_length, which separates image "
        "placeholders from their pixel_values.",
        "Set `packing: false` in the SFTConfig.",
        "TRL >= 0.22 raises \"Packing is not supported for vision datasets\" at SFTTrainer init.",
    ),
    LintRule(
        "VL302", "vlm-padding-free", Severity.ERROR, "Padding-free batching is on for a vision-language run",
        "Padding-free flattens the batch into one sequence with position ids, which TRL's vision "
        "collator does not build.",
        "Set `padding_free: false` in the SFTConfig.",
        "TRL >= 0.22 raises \"Padding-free training is yet not supported for vision datasets\".",
    ),
    LintRule(
        "VL303", "vlm-assistant-only-loss", Severity.WARNING, "assistant_only_loss on a vision-language run",
        "The assistant mask comes from the chat template's {% generation %} markers, which processors' "
        "templates did not support for images until transformers 5.18.",
        "Upgrade to TRL >= 1.16 with transformers >= 5.18, or set `assistant_only_loss: false`.",
        "TRL 0.22 to at least 1.9 raise \"Assistant-only loss is not yet supported for vision-language "
        "models\"; TRL 1.16 accepts it for vision datasets only with transformers >= 5.18.",
    ),
    LintRule(
        "VL304", "vlm-keep-end-truncation", Severity.ERROR, "truncation_mode keep_end on a vision-language run",
        "Image tokens sit in the prompt; cutting from the left removes some of them while pixel_values "
        "keep every image: the model raises on the token/feature mismatch.",
        "Use `truncation_mode: keep_start` (the default), or `max_length: null`.",
        "TRL >= 1.0 raises at SFTTrainer init; `keep_end` is deprecated in TRL 1.16.",
    ),
    LintRule(
        "VL305", "unsloth-collator-no-max-length", Severity.WARNING,
        "Unsloth's vision collator does not truncate where SFTConfig says",
        "Vision datasets skip TRL's preparation (and Unsloth's recipe sets `skip_prepare_dataset`), so "
        "SFTConfig's max_length is never applied: UnslothVisionDataCollator truncates with its own "
        "max_seq_length, else the model's (FastVisionModel.from_pretrained, default 2048), else not at "
        "all. A different SFTConfig max_length is silently ignored: samples are cut at the model's "
        "length (through image spans), or long samples go through whole and run out of memory.",
        "Pass the length to the collator: `UnslothVisionDataCollator(model, tokenizer, "
        "max_seq_length=...)`, equal to SFTConfig's max_length.",
        "unsloth-zoo UnslothVisionDataCollator (max_seq_length argument); unsloth "
        "FastBaseModel.from_pretrained(max_seq_length=2048).",
    ),
    # -- distributed and hardware -------------------------------------------------------------
    LintRule(
        "VL401", "ddp-reentrant-find-unused", Severity.ERROR,
        "DDP + LoRA + reentrant gradient checkpointing with find_unused_parameters",
        "Reentrant checkpointing runs a second backward through each checkpointed block; with DDP's "
        "find_unused_parameters the LoRA weights are reported ready twice: \"Expected to mark a variable "
        "ready only once ... has been marked as ready twice\". Switching bf16 to fp16 does not help.",
        "Use non-reentrant checkpointing (`gradient_checkpointing_kwargs: {\"use_reentrant\": false}`; "
        "LLaMA-Factory `use_reentrant_gc: false`) or `ddp_find_unused_parameters: false`.",
        "transformers < 5 (reentrant is the default), TRL, VLM-R1 (transformers 4.49), LLaMA-Factory "
        "(`use_reentrant_gc` defaults to true), ms-swift with an explicit `use_reentrant: true`.",
    ),
    LintRule(
        "VL402", "bf16-unsupported", Severity.ERROR, "bf16 is asked for on a GPU without bf16",
        "transformers raises \"Your setup doesn't support bf16/gpu\" for bf16 training on pre-Ampere "
        "GPUs (V100, T4); a model loaded in bfloat16 there is emulated, slow, or fails in attention "
        "kernels. Checked only where torch is importable and a GPU is visible.",
        "Use fp16: `fp16: true` and `bf16: false` (`--torch_dtype float16` for model loading).",
        "All frameworks on NVIDIA GPUs older than compute capability 8.0; TRL >= 0.19 configs turn bf16 on "
        "by default (bf16=None becomes `not fp16`).",
    ),
    LintRule(
        "VL403", "gpu-count-mismatch", Severity.WARNING, "The launch asks for more GPUs than this machine has",
        "torchrun / accelerate / deepspeed start one process per GPU asked for; processes without a GPU "
        "fail with \"invalid device ordinal\" or crowd onto one device. Checked only where torch sees "
        "GPUs.",
        "Match `--nproc_per_node` / `--num_processes` / `n_gpus_per_node` / `NPROC_PER_NODE` to the GPUs "
        "you have (or set CUDA_VISIBLE_DEVICES).",
        "All launchers.",
    ),
]

LINT_CODES = register(Catalogue("VL", "lint", "docs/lint.md", tuple(_RULES)))
LINT_RULES: dict[str, LintRule] = {rule.code: rule for rule in _RULES}
LINT_RULES_BY_NAME: dict[str, LintRule] = {rule.name: rule for rule in _RULES}


def render_markdown() -> str:
    """The lint page (docs/lint.md), generated from the catalogue."""
    lines = [
        "# Config lint",
        "",
        "<!-- Generated by `python -m vlmcheck.lint`; do not edit by hand. -->",
        "",
        "`vlmcheck lint CONFIG` reads a training config as you launch it (LLaMA-Factory YAML, TRL / "
        "transformers YAML, JSON or launch command, ms-swift command, EasyR1 and verl YAML or dotted "
        "overrides, VLM-R1 scripts, Unsloth scripts) and reports settings that crash or silently ruin "
        "the run. `--fail-on` picks the severity that makes it exit 1 (default: error).",
        "",
        render_codes(_RULES),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
