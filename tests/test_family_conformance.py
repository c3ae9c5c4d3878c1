"""Every registered family, through every capability it claims, against its real tokenizer.

A family declares the media special tokens its processor and chat template write (``vision_tokens``) and
the ones the model counts against its features (``feature_tokens``). The rollout guards read those
declarations from the registry, so a family that declares a token wrong, or a new family with no
checkpoint here, fails this file rather than letting a generated vision token through.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vlmcheck.families import Family, known_families, vision_tokens
from vlmcheck.families.base import (
    BatchLayoutFamily,
    Overrides,
    PixelBudgetFamily,
    VideoBatchLayoutFamily,
    VideoFamily,
)
from vlmcheck.families.base import Family as FamilyProtocol


def _sharing(model_type: str) -> Callable[[], Path]:
    def build() -> Path:
        from qwen3_sharing_checkpoint import sharing_checkpoint

        return sharing_checkpoint(model_type)

    return build


def _qwen(model_type: str) -> Callable[[], Path]:
    def build() -> Path:
        from vlmcheck.demo.checkpoints import qwen_checkpoint

        return qwen_checkpoint(model_type)

    return build


def _gemma3() -> Path:
    from gemma3_checkpoint import gemma3_checkpoint

    return gemma3_checkpoint()


def _llava() -> Path:
    from llava_checkpoint import llava_checkpoint

    return llava_checkpoint()


def _llava_next() -> Path:
    from llava_next_checkpoint import llava_next_checkpoint

    return llava_next_checkpoint()


def _onevision() -> Path:
    from onevision_checkpoint import onevision_checkpoint

    return onevision_checkpoint()


def _internvl() -> Path:
    from internvl_checkpoint import internvl_checkpoint

    return internvl_checkpoint()


def _paligemma() -> Path:
    from paligemma_checkpoint import paligemma_checkpoint

    return paligemma_checkpoint()


def _mllama() -> Path:
    from mllama_checkpoint import mllama_checkpoint

    return mllama_checkpoint()


def _pixtral(name: str) -> Callable[[], Path]:
    def build() -> Path:
        from pixtral_checkpoint import pixtral_checkpoint

        return pixtral_checkpoint(name)

    return build


def _glm4v() -> Path:
    from glm4v_checkpoint import glm4v_checkpoint

    return glm4v_checkpoint()


def _idefics3(name: str) -> Callable[[], Path]:
    def build() -> Path:
        from idefics3_checkpoint import checkpoint

        return checkpoint(name)

    return build


# model_type -> a checkpoint folder holding that family's real tokenizer (its special tokens at their ids).
CHECKPOINTS: dict[str, Callable[[], Path]] = {
    "qwen2_vl": _qwen("qwen2_vl"),
    "qwen2_5_vl": _qwen("qwen2_5_vl"),
    "qwen3_vl": _qwen("qwen3_vl"),
    "qwen3_vl_moe": _sharing("qwen3_vl_moe"),
    "qwen3_5": _sharing("qwen3_5"),
    "qwen3_5_moe": _sharing("qwen3_5_moe"),
    "llava": _llava,
    "gemma3": _gemma3,
    "llava_next": _llava_next,
    "llava_onevision": _onevision,
    "internvl": _internvl,
    "paligemma": _paligemma,
    "mllama": _mllama,
    "pixtral": _pixtral("pixtral-12b"),
    "mistral3": _pixtral("mistral-small-3.1"),
    "glm4v": _glm4v,
    "glm4v_moe": _glm4v,  # GLM-4.5V ships GLM-4.1V's tokenizer special tokens
    "idefics3": _idefics3("idefics3-8b-llama3"),
    "smolvlm": _idefics3("smolvlm2-2.2b-instruct"),
}
FAMILIES = known_families()


def test_every_registered_family_has_a_checkpoint_here():
    missing = sorted(set(FAMILIES) - set(CHECKPOINTS))
    assert not missing, f"add a checkpoint builder for {missing} to CHECKPOINTS (its real tokenizer)"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_declares_its_contract(name: str):
    family = FAMILIES[name]
    assert isinstance(family, Family), f"{name} lacks a member of the Family protocol"
    assert family.feature_tokens and family.feature_tokens[0] == family.image_token
    assert set(family.feature_tokens) <= set(family.vision_tokens)
    if isinstance(family, VideoFamily):
        assert family.video_token in family.feature_tokens
    # every declared token is in the registry's union the rollout guards read
    assert set(family.vision_tokens) <= set(vision_tokens())
    assert set(family.feature_tokens) <= set(vision_tokens(features_only=True))


LAYOUT_MEMBERS = sorted(set(dir(BatchLayoutFamily)) - set(dir(FamilyProtocol)) - {"_is_protocol", "_is_runtime_protocol"})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_declares_its_batch_layout(name: str):
    """The collator guards read every family's batch layout from the registry; a family without one is
    unguarded, so it fails here naming what it lacks."""
    family = FAMILIES[name]
    missing = [m for m in LAYOUT_MEMBERS if not m.startswith("_") and not hasattr(family, m)]
    assert not missing, (
        f"{name} lacks {', '.join(missing)} of BatchLayoutFamily (vlmcheck/families/base.py): the collator guards "
        "cannot check its batches; declare them in its module and prove them in tests/integrations/"
        "test_guard_families.py"
    )
    assert isinstance(family, BatchLayoutFamily)
    tokens = family.layout_tokens
    assert tokens.image == family.image_token, "the guards count the family's image_token"
    assert {t for t in (tokens.start, tokens.end) if t is not None} <= set(family.vision_tokens)
    if isinstance(family, VideoFamily):
        assert isinstance(family, VideoBatchLayoutFamily), f"{name} counts videos: it lacks video_layout"
        assert tokens.video == family.video_token


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_with_a_pixel_budget_declares_it(name: str):
    """Config lint's VL202 reads PixelBudgetFamily from the registry: a family whose settings take a pixel
    budget must say how many pixels a token covers."""
    family = FAMILIES[name]
    settings = family.settings(preprocessor={}, config={}, overrides=Overrides())
    if family.with_max_pixels(settings, 1_000_000) is not None:
        assert isinstance(family, PixelBudgetFamily), f"{name} takes max_pixels: it lacks token_side, image_wrap_tokens"
        assert family.token_side > 0 and family.image_wrap_tokens >= 0


def test_layout_members_are_the_protocol():
    assert LAYOUT_MEMBERS == ["image_layout", "layout_settings", "layout_tokens"]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    loaded: dict[str, object] = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = AutoTokenizer.from_pretrained(str(CHECKPOINTS[name]()))
        return loaded[name]

    return get


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_vision_tokens_are_single_special_tokens_of_the_real_tokenizer(name: str, tokenizers):
    tokenizer = tokenizers(name)
    added = set(tokenizer.get_added_vocab())
    for token in FAMILIES[name].vision_tokens:
        assert token in added or token in tokenizer.all_special_tokens, f"{name}: {token} is not an added token"
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] == tokenizer.convert_tokens_to_ids(token), (name, token, ids)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rollout_guards_catch_every_vision_token(name: str, tokenizers):
    """``vision_token_ids`` (what the suppressor, ``bad_words_ids`` and the vLLM bias ban) holds every
    media token of the family; the sanitizer replaces every feature token in a generated completion."""
    pytest.importorskip("torch")
    from vlmcheck.integrations.rollout import sanitize_completion_ids, space_token_id, vision_token_ids

    tokenizer = tokenizers(name)
    family = FAMILIES[name]
    banned = vision_token_ids(tokenizer)
    want = {token: tokenizer.convert_tokens_to_ids(token) for token in family.vision_tokens}
    assert {t: banned.get(t) for t in want} == want
    space = space_token_id(tokenizer)
    text_ids = tokenizer("a cat", add_special_tokens=False)["input_ids"]
    for token in family.feature_tokens:
        completion = [*text_ids, want[token], *text_ids]
        clean, replaced = sanitize_completion_ids([completion], processor=tokenizer)
        assert replaced == 1 and clean == [[*text_ids, space, *text_ids]]
