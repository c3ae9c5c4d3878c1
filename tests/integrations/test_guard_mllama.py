"""The guards on Llama 3.2 Vision (Mllama), where no cut can go through an image.

An Mllama image is one ``<|image|>`` in the text; its tiles reach the language model through cross-attention
(``pixel_values`` ``[sample, image, tile, ...]``, ``aspect_ratio_ids``, ``aspect_ratio_mask`` and
``cross_attention_mask`` ``[sample, token, image, tile]``). A truncation can only cut an image's token away
whole. What transformers does then, and what the guard's repair gives, is proved here against the real
``MllamaProcessor`` (the hub's processor files, the real Llama 3 vocabulary) and a tiny random-weight
``MllamaForConditionalGeneration``.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mllama_checkpoint import (  # noqa: E402
    mllama_checkpoint,
    mllama_processor,
    mllama_small_processor,
    tiny_mllama_model,
)
from vlmcheck.integrations.guards import (  # noqa: E402
    SpanMismatchError,
    account_batch,
    guard_batch,
    vision_spec,
)

KEYS = ("input_ids", "attention_mask", "cross_attention_mask", "pixel_values", "aspect_ratio_ids",
        "aspect_ratio_mask")
# (texts, (width, height) of each sample's images): a slice at CUT takes the last image of the first sample
# away; in FIRST the other sample keeps fewer images (the image axis shrinks), in SECOND as many (the first
# sample gets a padding image).
FIRST = (["First <|image|> then <|image|> compare them.", "Look: <|image|> what is it?"],
         [[(224, 420), (200, 200)], [(448, 336)]])
SECOND = (["A long preamble before <|image|> and <|image|> compare.", "<|image|> one <|image|> two three four."],
          [[(224, 420), (1200, 300)], [(448, 336), (90, 700)]])


def _images(sizes: list[list[tuple[int, int]]]) -> list[list[Any]]:
    from PIL import Image

    return [[Image.new("RGB", size, (30 * i + 60, 40, 200)) for i, size in enumerate(sample)] for sample in sizes]


def _process(processor: Any, texts: list[str], images: list[list[Any]], **kwargs: Any) -> dict[str, Any]:
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True, **kwargs))


def _slice(batch: dict[str, Any], cut: int) -> dict[str, Any]:
    """A plain slice of the token keys, as TRL's prompt-completion collator truncates."""
    return {k: v[:, :cut] if k in ("input_ids", "attention_mask") else v for k, v in batch.items()}


def _last_token_of_first_sample(batch: dict[str, Any], image_id: int) -> int:
    return (batch["input_ids"][0] == image_id).nonzero().flatten().tolist()[-1]


@pytest.fixture(scope="module")
def processor() -> Any:
    return mllama_processor(mllama_checkpoint())


@pytest.mark.parametrize("case", [FIRST, SECOND], ids=["fewer-images", "padding-image"])
def test_the_repair_is_the_processors_own_batch_of_the_cut_text(processor: Any, case: Any) -> None:
    """policy='truncate' at a cut before an image's token drops that image from all four per-image keys; the
    batch is then exactly what MllamaProcessor makes of the cut texts with the images that kept their token."""
    texts, sizes = case
    images = _images(sizes)
    batch = _process(processor, texts, images)
    spec = vision_spec(processor)
    cut = _last_token_of_first_sample(batch, spec.image_token_id)
    fixed, accounts, repairs = guard_batch(batch, spec=spec, policy="truncate", max_length=cut)
    assert [(r.sample, r.images_dropped, r.tokens_masked) for r in repairs] == [(0, [2], 0)]
    assert "dropped 1 image(s) (1 pixel_values image slots) and masked 0 token(s)" in repairs[0].message
    assert [i.status for i in accounts[0].images] == ["ok", "missing"]
    assert all(a.ok for a in account_batch(fixed, spec=spec)), "the repaired batch is whole"

    kept = [[image for image, item in zip(sample, account.images) if item.status == "ok"]
            for sample, account in zip(images, accounts)]
    cut_texts = [processor.tokenizer.decode(ids[mask == 1])
                 for ids, mask in zip(batch["input_ids"][:, :cut], batch["attention_mask"][:, :cut])]
    oracle = _process(processor, cut_texts, kept, add_special_tokens=False)
    assert sorted(fixed) == sorted(oracle)
    for key in KEYS:
        assert fixed[key].shape == oracle[key].shape, key
        assert torch.equal(fixed[key], oracle[key]), key


def test_the_processor_raises_when_it_truncates_an_image_token_away(processor: Any) -> None:
    """What the guard's message says the processor does (TRL's vision collator passes max_length to it)."""
    texts, sizes = FIRST
    batch = _process(processor, texts, _images(sizes))
    cut = _last_token_of_first_sample(batch, vision_spec(processor).image_token_id)
    with pytest.raises(ValueError, match="Mismatch in `image` token count between text and `input_ids`"):
        _process(processor, texts, _images(sizes), truncation=True, max_length=cut)


def test_a_cut_is_caught_with_what_transformers_does(processor: Any) -> None:
    texts, sizes = FIRST
    batch = _process(processor, texts, _images(sizes))
    spec = vision_spec(processor)
    cut = _last_token_of_first_sample(batch, spec.image_token_id)
    with pytest.raises(SpanMismatchError) as raised:
        guard_batch(_slice(batch, cut), spec=spec)
    message = str(raised.value)
    assert "sample 0: 1 image tokens, 2 features (image 2 of 2 has none of its 1 placeholders)" in message
    assert "the model raises nothing: it encodes the image and no token attends it" in message
    assert "raise max_length so that each image's <|image|> token fits" in message
    assert "max_pixels" not in message and "Image features and image tokens do not match" not in message
    # images per sample come from the batch itself (aspect_ratio_ids): no caller needs to say them
    assert [len(a.images) for a in raised.value.accounts] == [2, 1]


@pytest.mark.slow
def test_the_model_ignores_a_cut_image_and_the_repair_keeps_the_keys_together() -> None:
    """A tiny real MllamaForConditionalGeneration: after a plain slice the model raises nothing and the cut image
    changes no logit (it is encoded for nothing); the repaired batch gives the same logits; an image taken out
    of pixel_values but left in cross_attention_mask breaks the forward, which is why the repair drops all four."""
    processor = mllama_small_processor(mllama_checkpoint())
    model = tiny_mllama_model()
    texts, sizes = SECOND
    batch = _process(processor, texts, _images(sizes))
    spec = vision_spec(processor)
    cut = _last_token_of_first_sample(batch, spec.image_token_id)
    sliced = _slice(batch, cut)
    with torch.no_grad():
        logits = model(**sliced).logits
        noise = dict(sliced, pixel_values=sliced["pixel_values"].clone())
        noise["pixel_values"][0, 1] = torch.randn_like(noise["pixel_values"][0, 1])
        assert torch.equal(model(**noise).logits, logits), "the cut image reaches no token"

        fixed, _, repairs = guard_batch(batch, spec=spec, policy="truncate", max_length=cut)
        assert repairs[0].images_dropped == [2]
        assert torch.allclose(model(**fixed).logits, logits, atol=1e-6)

        forgot = dict(fixed, cross_attention_mask=sliced["cross_attention_mask"][:, :cut])
        forgot["pixel_values"] = fixed["pixel_values"][:, :1]
        forgot["aspect_ratio_ids"] = fixed["aspect_ratio_ids"][:, :1]
        forgot["aspect_ratio_mask"] = fixed["aspect_ratio_mask"][:, :1]
        with pytest.raises(RuntimeError, match="must match"):
            model(**forgot)
