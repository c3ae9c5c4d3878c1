"""RL rollout safety: keep vision placeholder tokens out of generated completions.

In GRPO-style training (TRL, EasyR1, verl), the policy samples completions and prompt+completion
is fed back to the model for log-probs. A completion that contains a generated ``<|image_pad|>``
adds one placeholder without a feature, and the re-feed raises "Image features and image tokens
do not match, tokens: N+1, features: N". ``skip_special_tokens=True`` only affects decoded text,
not the ids that are re-fed.

Three layers, use one or all:

* at generation: :class:`VisionTokenSuppressor` (a transformers ``LogitsProcessor``),
  :func:`bad_words_ids` for ``generate``, :func:`vllm_sampling_kwargs` for vLLM's ``SamplingParams``;
* after generation: :func:`sanitize_completion_ids` replaces placeholder ids by the tokenizer's
  own id for a space;
* before the forward: :func:`check_rollout` compares prompt+completion with the image grid.

Example::

    from vlmcheck.integrations.rollout import VisionTokenSuppressor
    from transformers import LogitsProcessorList

    out = model.generate(**inputs, logits_processor=LogitsProcessorList([VisionTokenSuppressor(processor)]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.families import vision_tokens

try:
    import torch
    from transformers import LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("transformers", "transformers", "vlmcheck.integrations.rollout") from exc

from vlmcheck.integrations.guards import (
    MediaKind,
    SampleAccount,
    VisionSpec,
    account_batch,
    vision_spec,
)
from vlmcheck.integrations.spans import counts_by_prefix, positions, runs_of

T = TypeVar("T")


def _tokenizer_of(processor_or_tokenizer: Any) -> Any:
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def vision_token_ids(processor_or_tokenizer: Any, *, placeholders_only: bool = False) -> dict[str, int]:
    """The vision special tokens this processor's or tokenizer's vocabulary has, ``{token: id}``.

    ``placeholders_only`` keeps the tokens the model counts against image/video features
    (``<|image_pad|>``, ``<|video_pad|>``, ``<image_soft_token>``, ...), leaving out markers such
    as ``<|vision_start|>``.

    Example::

        vision_token_ids(processor)
        # {'<|vision_start|>': 151652, '<|vision_end|>': 151653, '<|vision_pad|>': 151654,
        #  '<|image_pad|>': 151655, '<|video_pad|>': 151656}
    """
    tokenizer = _tokenizer_of(processor_or_tokenizer)
    vocab_special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    known = set(added()) if callable(added) else set()
    found: dict[str, int] = {}
    for token in vision_tokens(features_only=placeholders_only):
        if token not in vocab_special and token not in known:
            continue  # '<image>' can be ordinary text in a vocabulary without it as a token
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            found[token] = int(token_id)
    # The processor's own attributes win (a checkpoint may rename its image token).
    for attribute in ("image_token", "video_token"):
        name = getattr(processor_or_tokenizer, attribute, None)
        value = getattr(processor_or_tokenizer, f"{attribute}_id", None)
        if isinstance(name, str) and isinstance(value, int):
            found[name] = value
    return found


def bad_words_ids(processor_or_tokenizer: Any) -> list[list[int]]:
    """``bad_words_ids`` for transformers ``generate`` / ``GenerationConfig`` banning every vision token.

    Example::

        model.generate(**inputs, bad_words_ids=bad_words_ids(processor))
        GRPOConfig(generation_kwargs={"bad_words_ids": bad_words_ids(processor)})   # transformers backend
    """
    return [[token_id] for token_id in sorted(set(vision_token_ids(processor_or_tokenizer).values()))]


def vllm_sampling_kwargs(processor_or_tokenizer: Any, *, bias: float = -100.0) -> dict[str, Any]:
    """Keyword arguments for vLLM's ``SamplingParams`` that keep vision tokens out of completions.

    Returns ``{"logit_bias": {token_id: bias, ...}}``. vLLM's ``SamplingParams`` takes
    ``logit_bias: dict[int, float]`` (OpenAI semantics, -100 is the strongest ban the OpenAI API
    accepts, and what EasyR1's rollout uses for the image token). ``bad_words`` (strings) is an
    alternative that sets the logits to -inf, but vLLM re-tokenizes those strings, so token ids
    are the more direct route. vLLM is not imported here.

    Example::

        SamplingParams(temperature=1.0, **vllm_sampling_kwargs(processor))
        GRPOConfig(use_vllm=True, generation_kwargs=vllm_sampling_kwargs(processor))
    """
    return {
        "logit_bias": {
            token_id: bias for token_id in sorted(set(vision_token_ids(processor_or_tokenizer).values()))
        }
    }


class VisionTokenSuppressor(LogitsProcessor):
    """A transformers ``LogitsProcessor`` that makes every vision special token impossible to sample.

    Example::

        from transformers import LogitsProcessorList
        model.generate(**inputs, logits_processor=LogitsProcessorList([VisionTokenSuppressor(processor)]))
    """

    def __init__(self, processor_or_tokenizer: Any = None, *, token_ids: Sequence[int] | None = None) -> None:
        if token_ids is None:
            if processor_or_tokenizer is None:
                raise UsageError("VisionTokenSuppressor needs a processor, a tokenizer or token_ids=")
            token_ids = sorted(set(vision_token_ids(processor_or_tokenizer).values()))
        self.token_ids = list(token_ids)
        self._index: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._index is None or self._index.device != scores.device:
            self._index = torch.tensor(self.token_ids, dtype=torch.long, device=scores.device)
        index = self._index[self._index < scores.shape[-1]]
        return scores.index_fill(-1, index, float("-inf"))  # type: ignore[return-value]


def space_token_id(processor_or_tokenizer: Any) -> int:
    """The tokenizer's own id for a single space (220 for Qwen2, but looked up, never assumed).

    Example::

        space_token_id(processor)   # 220
    """
    tokenizer = _tokenizer_of(processor_or_tokenizer)
    ids = tokenizer.encode(" ", add_special_tokens=False)
    if len(ids) != 1:
        raise UsageError(
            f"this tokenizer encodes ' ' as {ids}, not one token; pass replacement_id= to sanitize_completion_ids"
        )
    return int(ids[0])


def sanitize_completion_ids(
    completion_ids: T,
    *,
    processor: Any,
    replacement_id: int | None = None,
) -> tuple[T, int]:
    """Replace image/video placeholder ids in generated completions by the id of a space.

    Accepts a tensor, a list of ids or a list of lists and returns the same kind, plus how many ids
    were replaced. Only placeholders are replaced: they are what the model counts against its
    features. Sanitize the completion only, never the prompt (its placeholders are real).

    Example::

        completion_ids, replaced = sanitize_completion_ids(completion_ids, processor=processor)
    """
    placeholders = sorted(set(vision_token_ids(processor, placeholders_only=True).values()))
    replacement = space_token_id(processor) if replacement_id is None else replacement_id
    if isinstance(completion_ids, torch.Tensor):
        hit = torch.isin(completion_ids, torch.tensor(placeholders, device=completion_ids.device))
        return completion_ids.masked_fill(hit, replacement), int(hit.sum())  # type: ignore[return-value]
    if isinstance(completion_ids, list):
        replaced = 0

        def fix(ids: list[Any]) -> list[Any]:
            nonlocal replaced
            out: list[Any] = []
            for value in ids:
                if isinstance(value, list):
                    out.append(fix(value))
                elif value in placeholders:
                    out.append(replacement)
                    replaced += 1
                else:
                    out.append(value)
            return out

        return fix(completion_ids), replaced  # type: ignore[return-value]
    raise UsageError(f"completion_ids must be a tensor or a list of ids, got {type(completion_ids).__name__}")


def check_rollout(
    input_ids: torch.Tensor,
    *,
    image_grid_thw: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
    processor: Any = None,
    spec: VisionSpec | None = None,
    images_per_sample: Sequence[int] | None = None,
    videos_per_sample: Sequence[int] | None = None,
) -> list[SampleAccount]:
    """Compare prompt+completion ids with the image (video) grid before the log-prob forward.

    Returns the samples whose placeholders do not match their images and videos (empty when all
    is well); each :class:`~vlmcheck.integrations.guards.SampleAccount` says how many placeholders
    it has, how many its images need, and where the extra ones are (``orphan_runs``). Give it
    ``mm_token_type_ids`` (the processor's for the prompt, zeros for the completion, as TRL builds
    them) and every placeholder the processor did not put there is a stray one, whatever its length.

    Example::

        problems = check_rollout(prompt_completion_ids, image_grid_thw=grid, processor=processor)
        for account in problems:
            print(account.describe())   # sample 3: 5 image tokens, 4 features (1 placeholder(s) belong to no image ...)
    """
    if spec is None:
        if processor is None:
            raise UsageError("check_rollout needs processor= or spec=")
        spec = vision_spec(processor)
    batch: dict[str, Any] = {"input_ids": input_ids}
    for key, value in (
        ("image_grid_thw", image_grid_thw),
        ("pixel_values", pixel_values),
        ("attention_mask", attention_mask),
        ("video_grid_thw", video_grid_thw),
        ("mm_token_type_ids", mm_token_type_ids),
    ):
        if value is not None:
            batch[key] = value
    # Without counts, runs are images; a stray generated placeholder would then look like an image.
    # In a rollout every prompt is intact, so each run takes the whole images (videos) that fit it.
    if mm_token_type_ids is None:
        if images_per_sample is None:
            images_per_sample = _prefix_counts(batch, spec, "image")
        if videos_per_sample is None and spec.video_token_id is not None:
            videos_per_sample = _prefix_counts(batch, spec, "video")
    return [
        account
        for account in account_batch(
            batch, spec=spec, images_per_sample=images_per_sample, videos_per_sample=videos_per_sample
        )
        if not account.ok
    ]


def _prefix_counts(batch: dict[str, Any], spec: VisionSpec, kind: MediaKind) -> list[int]:
    token_id = spec.image_token_id if kind == "image" else spec.video_token_id
    runs = [runs_of(row) for row in positions(batch["input_ids"], token_id)]
    return counts_by_prefix(runs, spec.chunks(batch, kind))
