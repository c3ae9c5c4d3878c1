"""Issue 5 on Gemma 3 with pan-and-scan: the guard accounts an image as its original plus its crops.

``Gemma3Processor(..., do_pan_and_scan=True)`` cuts a wide image into 2-4 crops; each crop is one more
``pixel_values`` row and one more run of 256 ``<image_soft_token>`` in its own
``<start_of_image>``...``<end_of_image>``, and the processor drops ``num_crops`` from its output. The
guard works the crops out from the examples' image sizes with vlmcheck's Gemma 3 arithmetic and the
processor's settings. Real parts only: the real Gemma3Processor and vocabulary (224 px variant, see
``gemma3_checkpoint.py``), a tiny random-weight ``Gemma3ForConditionalGeneration``, TRL's own collator
and ``SFTTrainer``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gemma3_checkpoint import gemma3_processor, gemma3_small_checkpoint, tiny_gemma3_model

pytestmark = pytest.mark.slow

IMAGE_TOKEN_ID = 262144
# (width, height) -> crops under the processor's defaults (min crop 256, at most 4, ratio 1.2)
WIDE = {(600, 300): 2, (900, 300): 3, (1200, 290): 4, (320, 240): 0}
KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def _image(size: tuple[int, int], color: str = "red") -> Any:
    from PIL import Image

    return Image.new("RGB", size, color)


def _text(processor: Any, images: int, answer: str) -> str:
    content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": "What is shown?"}]
    messages = [{"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return processor.apply_chat_template(messages, tokenize=False)


@pytest.fixture(scope="module")
def processor() -> Any:
    return gemma3_processor(gemma3_small_checkpoint())


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gemma3_model()


def _collator(processor: Any):
    """A user's collator that turns pan-and-scan on the way the processor documents it: a call kwarg."""
    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = processor(images=[e["images"] for e in examples], text=[e["text"] for e in examples],
                        do_pan_and_scan=True, padding=True, padding_side="right", return_tensors="pt",
                        add_special_tokens=False)
        out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
        return dict(out)
    return collate


def _examples(processor: Any) -> list[dict[str, Any]]:
    """Sample 0: a 320x240 image (no crop), then 900x300 (3 crops); sample 1: 600x300 (2 crops)."""
    return [
        {"images": [_image((320, 240)), _image((900, 300), "blue")], "text": _text(processor, 2, "Red, then blue.")},
        {"images": [_image((600, 300), "green")], "text": _text(processor, 1, "Green.")},
    ]


def _forward(model: Any, batch: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        model(**{k: batch[k] for k in KEYS if k in batch}, logits_to_keep=1)


def test_crops_follow_the_real_processor(processor):
    from vlmcheck.integrations.guards import (
        account_batch,
        gemma3_crops,
        gemma3_settings,
        guard_batch,
        vision_spec,
    )

    settings = gemma3_settings(processor, {"do_pan_and_scan": True})
    assert gemma3_crops(list(WIDE), settings=settings) == list(WIDE.values())
    assert gemma3_crops(list(WIDE), settings=gemma3_settings(processor)) == [0, 0, 0, 0]  # off by default
    out = processor(images=[[_image(s)] for s in WIDE], text=[_text(processor, 1, "A.")] * len(WIDE),
                    do_pan_and_scan=True, padding=True, padding_side="right", return_tensors="pt")
    assert out["pixel_values"].shape[0] == sum(1 + c for c in WIDE.values()) == 13
    assert "num_crops" not in out  # the processor drops it
    spec = vision_spec(processor)
    accounts = account_batch(out, spec=spec, images_per_sample=[1] * 4, crops_per_image=list(WIDE.values()))
    assert all(a.ok for a in accounts)
    assert [a.images[0].crops for a in accounts] == [2, 3, 4, 0]
    assert [a.image_tokens for a in accounts] == [768, 1024, 1280, 256]
    # a batch that carries num_crops (the image processor's own output) is read as it is, and kept in step
    carried = {**out, "num_crops": [[c] for c in WIDE.values()]}
    assert all(a.ok for a in account_batch(carried, spec=spec, images_per_sample=[1] * 4))
    # a cut 150 tokens short goes through the last crops of sample 2 (the longest: 4 crops) only
    cut, _, repairs = guard_batch(carried, spec=spec, policy="drop-media",
                                  max_length=out["input_ids"].shape[1] - 150, images_per_sample=[1] * 4)
    assert [(r.sample, r.images_dropped) for r in repairs] == [(2, [1])]
    assert cut["num_crops"] == [[2], [3], [], [0]] and cut["pixel_values"].shape[0] == 3 + 4 + 1


def test_a_cut_through_a_crop_raises_the_real_error_and_each_policy_repairs_it(processor, model):
    """One batch, cut through crop 2 of sample 0's second image: the model raises; each policy runs."""
    import torch

    from vlmcheck.integrations.guards import SpanGuardCollator, SpanMismatchError

    examples = _examples(processor)
    full = _collator(processor)([dict(e) for e in examples])
    ids = full["input_ids"][0].tolist()
    starts = [i for i in range(len(ids)) if ids[i] == IMAGE_TOKEN_ID and ids[i - 1] != IMAGE_TOKEN_ID]
    assert len(starts) == 1 + 4  # image 1, then image 2's original and 3 crops
    max_length = starts[3] + 100  # inside image 2's second crop
    cut = {k: (v[:, :max_length] if v.dim() == 2 else v) for k, v in full.items()}
    assert cut["pixel_values"].shape[0] == 1 + 4 + 3
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        _forward(model, cut)

    def guard(policy: str) -> SpanGuardCollator:
        return SpanGuardCollator(_collator(processor), processor=processor, policy=policy,  # type: ignore[arg-type]
                                 max_length=max_length, processor_options={"do_pan_and_scan": True})

    with pytest.raises(SpanMismatchError) as info:
        guard("raise")([dict(e) for e in examples])
    message = str(info.value)
    # image 1 (256), then image 2's original, crop 1 and 100 of crop 2; 1 + 4 rows of 256 features
    assert "sample 0: 868 image tokens, 1,280 features" in message
    assert "image 2 of 2 (original + 3 crops) needs 1,024 placeholders, only 612 are left" in message
    assert "it has 3: lower pan_and_scan_max_num_crops" in message

    for policy in ("drop-media", "drop-images", "truncate"):
        g = guard(policy)
        fixed = g([dict(e) for e in examples])
        assert fixed["input_ids"].shape == (2, max_length)  # same samples, same keys
        assert set(fixed) == set(cut)
        # image 2 of sample 0 leaves with its 3 crops: 1 + (1 + 2) rows stay
        assert fixed["pixel_values"].shape[0] == 1 + 3
        kept = int((fixed["input_ids"] == IMAGE_TOKEN_ID).sum())
        assert kept == 256 * fixed["pixel_values"].shape[0] == int(fixed["token_type_ids"].sum())
        assert g.stats["dropped_images"] == 1 and g.repairs[0].images_dropped == [2]
        assert "1 image(s) (4 pixel_values rows)" in g.repairs[0].message
        # the rows that stay are sample 0's first image and sample 1's original and crops
        assert torch.equal(fixed["pixel_values"][:1], full["pixel_values"][:1])
        assert torch.equal(fixed["pixel_values"][1:], full["pixel_values"][5:])
        if policy == "truncate":  # cut at image 2's <start_of_image>: nothing of it stays
            row = fixed["input_ids"][0][fixed["attention_mask"][0] == 1].tolist()
            assert row[-1] != 255999 and IMAGE_TOKEN_ID not in row[starts[1]:]
        _forward(model, fixed)


def test_the_guard_finds_pan_and_scan_without_being_told(processor, caplog):
    """A collator that turns pan-and-scan on at call time, and a guard given no options: the rows only
    add up with the processor's pan-and-scan crops, and the guard says which settings it used."""
    from vlmcheck.integrations.guards import SpanGuardCollator

    guard = SpanGuardCollator(_collator(processor), processor=processor, policy="raise")
    with caplog.at_level(logging.INFO, logger="vlmcheck.guards"):
        batch = guard([dict(e) for e in _examples(processor)])
    assert batch["pixel_values"].shape[0] == 8 and all(a.ok for a in guard.last_accounts)
    assert [[i.crops for i in a.images] for a in guard.last_accounts] == [[0, 3], [2]]
    assert any("counting crops with do_pan_and_scan=True" in r.getMessage() for r in caplog.records)


def _sft_row(size: tuple[int, int], color: str, answer: str) -> dict[str, Any]:
    return {
        "images": [_image(size, color)],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
    }


def test_sft_trainer_with_pan_and_scan_completes_with_the_guard(tmp_path: Path, caplog):
    """TRL 1.16's VLM collator passes the processor no image options, so pan-and-scan is turned on in the
    processor's own ``images_kwargs`` (the lowest-priority defaults of every call). Sample 0's 600x300
    image (original + 2 crops, 3 x 256 placeholders) does not fit max_length=600: TRL's slice cuts its
    second crop. Without the guard the model raises; with it the run completes."""
    from datasets import Dataset
    from transformers import Gemma3Processor
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmcheck.integrations.guards import SpanGuardCollator

    processor = gemma3_processor(gemma3_small_checkpoint())
    processor.images_kwargs = {**Gemma3Processor.images_kwargs, "do_pan_and_scan": True}
    dataset = Dataset.from_list([_sft_row((600, 300), "red", "A red band."), _sft_row((320, 240), "blue", "Blue.")])

    def trainer(collator: Any) -> Any:
        args = SFTConfig(output_dir=str(tmp_path), max_length=600, per_device_train_batch_size=2, max_steps=1,
                         logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0)
        return SFTTrainer(model=tiny_gemma3_model(), args=args, train_dataset=dataset, processing_class=processor,
                          data_collator=collator)

    inner = DataCollatorForVisionLanguageModeling(processor, max_length=600, completion_only_loss=True)
    with pytest.raises(ValueError) as info:
        trainer(inner).train()
    seen: BaseException | None = info.value
    while seen is not None and "Image features and image tokens do not match" not in str(seen):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None and "features: 1024" in str(seen)  # 3 + 1 pixel rows, 256 each

    guard = SpanGuardCollator(inner, processor=processor, policy="truncate")
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        output = trainer(guard).train()
    assert output.global_step == 1
    assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
    repairs = [r.getMessage() for r in caplog.records if r.name == "vlmcheck.guards"]
    assert len(repairs) == 1 and "image 1 of 1 (original + 2 crops) needs 768 placeholders" in repairs[0]
    assert "1 image(s) (3 pixel_values rows)" in repairs[0]
