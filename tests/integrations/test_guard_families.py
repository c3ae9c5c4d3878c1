"""Every family's batch layout, proved against its real processor's output batch.

Each family module declares where its images sit in a processed batch (``BatchLayoutFamily``); the collator
guards read it from the registry. For every model type that declares one, the real transformers processor
(built from the same fixtures as tests/test_oracle_*.py) processes two samples (one image, then two): the
guard's accounting of that batch must find every image whole, and a plain cut of the batch through an image
span must be caught (SpanMismatchError), then repaired by ``policy="truncate"`` into a batch the guard finds
whole again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmcheck.families import known_families  # noqa: E402
from vlmcheck.families.base import BatchLayoutFamily, CroppedBatchLayoutFamily  # noqa: E402
from vlmcheck.integrations.guards import (  # noqa: E402
    SpanGuardCollator,
    SpanMismatchError,
    account_batch,
    guard_batch,
    vision_spec,
)


def _qwen(name: str) -> Callable[[], Any]:
    def build() -> Any:
        from realparts import qwen_processor

        return qwen_processor(name)

    return build


def _from(module: str, checkpoint: str, processor: str, *args: str) -> Callable[[], Any]:
    def build() -> Any:
        import importlib

        loaded = importlib.import_module(module)
        return getattr(loaded, processor)(getattr(loaded, checkpoint)(*args))

    return build


# model_type -> its real processor, built offline from the oracle tests' fixtures
PROCESSORS: dict[str, Callable[[], Any]] = {
    "qwen2_vl": _qwen("qwen2_vl"),
    "qwen2_5_vl": _qwen("qwen2_5_vl"),
    "qwen3_vl": _qwen("qwen3_vl"),
    # the model types transformers gives Qwen3VLProcessor (tests/qwen3_sharing_checkpoint.py)
    "qwen3_vl_moe": _qwen("qwen3_vl_moe"),
    "qwen3_5": _qwen("qwen3_5"),
    "qwen3_5_moe": _qwen("qwen3_5_moe"),
    "llava": _from("llava_checkpoint", "llava_checkpoint", "llava_processor"),
    "gemma3": _from("gemma3_checkpoint", "gemma3_checkpoint", "gemma3_processor"),
    "llava_next": _from("llava_next_checkpoint", "llava_next_checkpoint", "llava_next_processor"),
    "llava_onevision": _from("onevision_checkpoint", "onevision_checkpoint", "onevision_processor"),
    "paligemma": _from("paligemma_checkpoint", "paligemma_checkpoint", "paligemma_processor"),
    "pixtral": _from("pixtral_checkpoint", "pixtral_checkpoint", "pixtral_processor", "pixtral-12b"),
    "mistral3": _from("pixtral_checkpoint", "pixtral_checkpoint", "pixtral_processor", "mistral-small-3.1"),
    "glm4v": _from("glm4v_checkpoint", "glm4v_checkpoint", "glm4v_processor"),
    "glm4v_moe": _from("glm4v_checkpoint", "glm4v_checkpoint", "glm4v_processor"),
    "internvl": _from("internvl_checkpoint", "internvl_checkpoint", "internvl_processor"),
    # SmolVLM-256M-Instruct (idefics3) and SmolVLM2: the sizes below give 1 + 12, 1 + 12 and 1 + 0 tiles
    "idefics3": _from("idefics3_checkpoint", "checkpoint", "processor", "smolvlm-256m-instruct"),
    "smolvlm": _from("idefics3_checkpoint", "checkpoint", "processor", "smolvlm2-2.2b-instruct"),
    "mllama": _from("mllama_checkpoint", "mllama_checkpoint", "mllama_processor"),
}
# What an image owns of pixel_values where it is not rows: slots of a per-sample layout
PIXEL_UNITS = {"idefics3": "tile slots", "smolvlm": "tile slots", "mllama": "image slots"}
LAYOUTS = sorted(name for name, family in known_families().items() if isinstance(family, BatchLayoutFamily))


def test_every_layout_family_is_proved_here() -> None:
    missing = sorted(set(LAYOUTS) - set(PROCESSORS))
    assert not missing, f"add a real processor builder for {missing} to PROCESSORS"


SIZES = [[(448, 336)], [(224, 420), (200, 200)]]  # (width, height) of each sample's images


def _examples(name: str, processor: Any) -> tuple[list[str], list[list[Any]]]:
    from PIL import Image

    family = known_families()[name]
    if processor.tokenizer.pad_token is None:  # as TRL's collators do
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    images = [[Image.new("RGB", size, (90, 40, 200)) for size in sample] for sample in SIZES]
    if name == "paligemma":  # the processor writes the image tokens in front of the text itself
        return ["caption en", "answer en two"], images
    ph = family.placeholder
    return [f"Look: {ph} what is it?", f"First {ph} then {ph} compare."], images


def _batch(name: str, processor: Any) -> dict[str, Any]:
    texts, images = _examples(name, processor)
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


def _crops(name: str, processor: Any, keep: list[list[int]] | None = None) -> list[int] | None:
    """Crops per image where the processor leaves them out of its batch, from the images' sizes (the family's
    arithmetic, as SpanGuardCollator works them out); ``keep``: the 1-based images each sample kept."""
    family = known_families()[name]
    if not isinstance(family, CroppedBatchLayoutFamily):
        return None
    spec = vision_spec(processor, model_type=name)
    sizes = [size for n, sample in enumerate(SIZES) for i, size in enumerate(sample, 1)
             if keep is None or i in keep[n]]
    return family.layout_crops(sizes, family.crop_settings(processor, {}, settings=spec.settings))


@pytest.fixture(scope="module", params=LAYOUTS)
def case(request: pytest.FixtureRequest) -> tuple[str, Any, dict[str, Any]]:
    name = request.param
    processor = PROCESSORS[name]()
    return name, processor, _batch(name, processor)


def test_the_real_batch_is_whole(case: tuple[str, Any, dict[str, Any]]) -> None:
    name, processor, batch = case
    spec = vision_spec(processor, model_type=name)
    accounts = account_batch(batch, spec=spec, images_per_sample=[1, 2], crops_per_image=_crops(name, processor))
    assert [a.ok for a in accounts] == [True, True], [a.describe() for a in accounts]
    assert [len(a.images) for a in accounts] == [1, 2]
    # every placeholder the processor wrote belongs to an image the layout accounts for
    assert sum(a.image_tokens for a in accounts) == int((batch["input_ids"] == spec.image_token_id).sum())
    assert [i.needed for a in accounts for i in a.images] == [i.present for a in accounts for i in a.images]
    # the processor class alone finds a family with this layout
    assert vision_spec(processor).image_token_id == spec.image_token_id


def _cut(name: str, processor: Any, spec: Any, batch: dict[str, Any]) -> tuple[int, str]:
    """Where a plain slice goes through the longer sample's last image, and what that image becomes: cut inside
    its placeholders, or, where an image is one placeholder (Mllama) and no cut can go through it, cut away
    whole by a slice just before its token."""
    last = (batch["input_ids"][1] == spec.image_token_id).nonzero().flatten().tolist()[-1]
    accounts = account_batch(batch, spec=spec, images_per_sample=[1, 2], crops_per_image=_crops(name, processor))
    if accounts[1].images[-1].needed == 1:
        return last, "missing"
    return last - 3, "cut"


def test_a_cut_span_is_caught_and_repaired(case: tuple[str, Any, dict[str, Any]]) -> None:
    name, processor, batch = case
    spec = vision_spec(processor, model_type=name)
    # cut the longer sample inside (or, for a one-token image, just before) its last image, as a plain slice would
    max_length, status = _cut(name, processor, spec, batch)
    with pytest.raises(SpanMismatchError, match="do not match") as raised:
        guard_batch(batch, spec=spec, policy="raise", max_length=max_length, images_per_sample=[1, 2],
                    crops_per_image=_crops(name, processor))
    assert raised.value.code == "VR101"
    bad = [a for a in raised.value.accounts if not a.ok]
    assert bad and bad[-1].index == 1 and bad[-1].images[-1].status == status
    fixed, accounts, repairs = guard_batch(batch, spec=spec, policy="truncate", max_length=max_length,
                                           images_per_sample=[1, 2], crops_per_image=_crops(name, processor))
    assert repairs and repairs[-1].sample == 1 and 2 in repairs[-1].images_dropped
    # what the repair says it dropped is what the family's pixel_values hold per image
    assert f"pixel_values {PIXEL_UNITS.get(name, 'rows')})" in repairs[-1].message, repairs[-1].message
    dropped = {r.sample: set(r.images_dropped) for r in repairs}
    keep = [[i.number for i in a.images if i.number not in dropped.get(a.index, set())] for a in accounts]
    again = account_batch(fixed, spec=spec, images_per_sample=[len(k) for k in keep],
                          crops_per_image=_crops(name, processor, keep))
    assert all(a.ok for a in again), [a.describe() for a in again]


def test_the_collator_guards_the_real_processor(case: tuple[str, Any, dict[str, Any]]) -> None:
    """SpanGuardCollator around the real processor: it reads images per sample (and, where the batch leaves
    them out, each image's crops) from the examples, passes a whole batch and catches a cut one."""
    name, processor, _ = case
    texts, images = _examples(name, processor)
    examples = [{"text": t, "images": i} for t, i in zip(texts, images)]

    def collate(rows: list[dict[str, Any]], cut: int | None = None) -> dict[str, Any]:
        out = dict(processor(text=[r["text"] for r in rows], images=[r["images"] for r in rows],
                             return_tensors="pt", padding=True))
        out.pop("labels", None)  # PaliGemma's processor labels nothing without a suffix; a trainer's collator labels
        if cut is not None:  # a plain slice, as TRL's collators truncate
            for key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
                if key in out:
                    out[key] = out[key][:, :cut]
        return out

    spec = vision_spec(processor, model_type=name)
    SpanGuardCollator(collate, processor=processor, spec=spec)(examples)
    last = (collate(examples)["input_ids"][1] == spec.image_token_id).nonzero().flatten().tolist()[-1]
    with pytest.raises(SpanMismatchError, match="batch 0"):
        SpanGuardCollator(lambda rows: collate(rows, cut=last - 3), processor=processor, spec=spec)(examples)


def test_the_guards_hold_no_family_constants() -> None:
    """Every token the guards use comes from the families registry: no string in their code (docstrings and
    comments aside) is a family's media token."""
    import ast

    from vlmcheck import integrations
    from vlmcheck.families import vision_tokens

    for path in sorted(Path(integrations.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        strings = [n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
        assert [t for t in vision_tokens() if any(t in text for text in strings)] == [], path.name
