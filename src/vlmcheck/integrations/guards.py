"""Guards between a collator and the model: span-aware truncation and a collator wrapper.

A vision-language model checks, at forward time, that the number of image placeholder tokens in
``input_ids`` equals the number of features its images produce. Truncating a processed batch with
a plain slice (``input_ids[:, :max_length]``, as TRL's prompt-completion collator does) can cut an
image span in two, and the model then raises "Image features and image tokens do not match". This
module counts, per sample, the placeholders present against the placeholders each image needs,
and repairs what it can at image-span boundaries, keeping ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids`` consistent with the placeholders that remain. Videos are counted and repaired
the same way ("Video features and video tokens do not match").

Every family that scan counts declares its batch layout in its own module
(:class:`vlmcheck.families.base.BatchLayoutFamily`): which token the model counts against image (video)
features, which marker opens a span, and where each image of a processed batch sits: the placeholder runs
it fills and the ``pixel_values`` rows it owns, read from the batch's own metadata (``image_grid_thw`` for
the Qwen VL families and GLM-4V, ``image_sizes`` for LLaVA-NeXT, LLaVA-OneVision and Pixtral, the fixed
per-image count of LLaVA, PaliGemma and Gemma 3). :func:`vision_spec` finds the family of a processor in the
registry; this module holds no family's tokens or numbers. Gemma 3 pan-and-scan crops and InternVL tiles:
an image with ``c`` crops owns ``1 + c`` rows; the processors leave the crops out of their output, so they
are given as ``crops_per_image`` (the collator works them out from the examples' images). Idefics3 / SmolVLM
tiles and Mllama images sit in per-sample slots of ``pixel_values``. An Mllama image is one placeholder (it
reaches the model through cross-attention), so a cut cannot go through it, only take its token away; the
model does not raise on that, and the guards' error says what transformers does instead.

Example::

    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    from vlmcheck.integrations.guards import SpanGuardCollator

    inner = DataCollatorForVisionLanguageModeling(processor)          # no max_length here
    collator = SpanGuardCollator(inner, processor=processor, policy="truncate", max_length=2048)
    trainer = SFTTrainer(..., data_collator=collator)
"""

from __future__ import annotations

# The guards by job: the layout (_layout), per-sample accounting (_accounting), repairs (_repair), the collator
# (_collator) and the explanation of the model's own error (_explain); this module is their public face.
from vlmcheck.integrations._accounting import ImageAccount, SampleAccount, account_batch
from vlmcheck.integrations._collator import SpanGuardCollator, gemma3_crops, gemma3_settings
from vlmcheck.integrations._explain import explain_vision_mismatch
from vlmcheck.integrations._layout import (
    IGNORE_INDEX,
    POLICIES,
    MediaKind,
    Policy,
    SpanMismatchError,
    VisionSpec,
    batch_layout_family,
    processor_model_type,
    vision_spec,
)
from vlmcheck.integrations._repair import Repair, guard_batch, truncate_batch

__all__ = [
    "IGNORE_INDEX",
    "POLICIES",
    "ImageAccount",
    "MediaKind",
    "Policy",
    "Repair",
    "SampleAccount",
    "SpanGuardCollator",
    "SpanMismatchError",
    "VisionSpec",
    "account_batch",
    "batch_layout_family",
    "explain_vision_mismatch",
    "gemma3_crops",
    "gemma3_settings",
    "guard_batch",
    "processor_model_type",
    "truncate_batch",
    "vision_spec",
]
