"""The runtime catalogue (VR codes): what the collator guards and the training callback report while a run
trains. Imports nothing heavy, so ``vlmcheck explain VR101`` works without torch or transformers.

VR0xx: :class:`~vlmcheck.integrations.callbacks.TrainingHealthCallback` (its diagnoses keep the short name,
``loss-zero``, as ``code``; ``Diagnosis.finding`` carries the catalogue code); VR1xx: the collator guards
(:mod:`vlmcheck.integrations.guards`). The section in docs/findings.md is generated from :data:`RUNTIME_CODES`.
"""

from __future__ import annotations

from vlmcheck.catalogue import Catalogue, Rule, Severity, register

_RULES = (
    # -- the training callback ------------------------------------------------------------------
    # The fixes are the diagnoses' "Check:" texts, so they continue a sentence.
    Rule("VR001", "loss-zero", Severity.WARNING, "The training loss has been exactly 0 for several logs",
         "Outside RL a loss of exactly 0 for `patience` logs in a row means nothing is supervised. (In logs that "
         "carry a reward it is normal: GRPO's advantages sum to 0 within each group.)",
         "the labels of every sample are -100 (nothing is supervised): max_length cuts off every completion, "
         "assistant_only_loss / completion_only_loss matched no token (a chat template without {% generation %} "
         "markers), or the dataset's completions are empty. Run `vlmcheck scan` with the same max_length, or "
         "look at (batch['labels'] != -100).sum(dim=1) for one batch."),
    Rule("VR002", "loss-nan", Severity.ERROR, "The training loss is NaN or infinite",
         "The weights stop learning, or are ruined, from this step on.",
         "a NaN/inf loss comes from non-finite logits or gradients (fp16 overflow: use bf16 or a lower learning "
         "rate; a bad sample: images with NaN pixels), or from 0/0 when a batch has no supervised token and the "
         "loss is not clamped. In GRPO on TRL 0.14 and forks of it (R1-V), groups of one (num_generations=1) give "
         "a NaN std and advantage; current TRL refuses num_generations=1."),
    Rule("VR003", "grad-nan", Severity.ERROR, "The gradient norm is NaN or infinite",
         "The optimizer step is skipped or poisons the weights.",
         "non-finite gradients: lower the learning rate, set max_grad_norm, use bf16 instead of fp16, and look "
         "for samples with extreme lengths or corrupt images in the steps just before. The logged loss may look "
         "finite: Trainer's logging_nan_inf_filter=True (the default) logs a NaN loss as the running mean."),
    Rule("VR004", "reward-std-zero", Severity.WARNING, "GRPO's reward_std has been 0 for several logs",
         "With equal rewards in every group GRPO has no learning signal.",
         "every completion of every group got the same reward, so GRPO's advantages are 0 and nothing is learned: "
         "the reward function may always return the same value (a parsing failure, a format the model never "
         "produces), or temperature is too low to give different completions."),
    # -- the collator guards --------------------------------------------------------------------
    Rule("VR101", "span-mismatch", Severity.ERROR, "A batch's media placeholders do not match its media",
         "A sample keeps fewer (or more) image or video placeholder tokens than its images or videos have "
         "features: a truncation cut a span, or a generated completion holds vision tokens. The model raises "
         "\"Image features and image tokens do not match\" (or its video twin) at this step. The guards "
         "(policy 'raise') and explain_vision_mismatch raise SpanMismatchError naming the samples.",
         "Raise max_length, cap the processor's max_pixels, or wrap the collator in "
         "SpanGuardCollator(policy='truncate' or 'drop-media'); keep vision tokens out of generation "
         "(vlmcheck.integrations.rollout)."),
    Rule("VR102", "span-repaired", Severity.WARNING, "A guard dropped media or truncated a sample to save the step",
         "SpanGuardCollator (policy 'truncate' or 'drop-media') repaired a sample whose spans were cut: the "
         "sample trains without those images or videos, or without its tail. Counted in the collator's stats "
         "and logged on the vlmcheck.guards logger.",
         "Raise max_length or cap the image size so that no span is cut (`vlmcheck scan` with the same settings "
         "lists the samples)."),
    Rule("VR103", "batch-unsupervised", Severity.ERROR, "No sample of a batch has a supervised label",
         "Every label of the batch is -100 after collation (and any repair): this step's loss is 0, or NaN "
         "where the loss is not clamped.",
         "Raise max_length so completions survive the cut, or fix the completion / assistant mask that matched "
         "nothing."),
)

RUNTIME_CODES = register(Catalogue(
    "VR", "runtime", "docs/findings.md", _RULES,
    intro="Reported while training, by the collator guards (`SpanGuardCollator`, `guard_batch`, "
    "`explain_vision_mismatch`) and the training callback (`TrainingHealthCallback`; its diagnoses keep the "
    "short name as `code` and give the catalogue code in `Diagnosis.finding`).",
))
BY_NAME: dict[str, Rule] = {r.name: r for r in _RULES}
