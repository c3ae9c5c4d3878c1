"""Issue 5's proof on Gemma 3: TRL SFTTrainer, a tiny random-weight Gemma3ForConditionalGeneration, CPU.

Every Gemma 3 image is 256 ``<image_soft_token>`` placeholders. Three samples have one image (about
275 tokens), one has two (about 535); at max_length=400 the second image of that sample is cut in
two, and vlmcheck's scan says so beforehand (VC201 for that sample only). TRL's prompt-completion
collator slices ``input_ids`` to max_length and keeps every image's ``pixel_values``, so without a
guard the model raises its real "Image features and image tokens do not match"; wrapped in
``SpanGuardCollator`` the run completes and the repair is logged.

The model and processor are the ones of ``test_crash_proof_gemma3.py``: the real Gemma3Processor and
vocabulary, a 224 px SigLIP instead of 896 so that it trains quickly on CPU, 256 tokens per image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gemma3_checkpoint import gemma3_processor, gemma3_small_checkpoint, tiny_gemma3_model

pytestmark = pytest.mark.slow

MAX_LENGTH = 400
IMAGE_TOKEN_ID = 262144
COLORS = ["red", "green", "blue", "white", "black"]


def _image(color: str, size: tuple[int, int] = (320, 240)) -> Any:
    from PIL import Image

    return Image.new("RGB", size, color)


def _row(colors: list[str], answer: str) -> dict[str, Any]:
    return {
        "images": [_image(c) for c in colors],
        "prompt": [{"role": "user", "content": [{"type": "image"} for _ in colors]
                    + [{"type": "text", "text": "What is shown?"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
    }


ROWS = [(["red"], "A red picture."), (["green", "blue"], "Green, then blue."), (["white"], "White."),
        (["black"], "A black picture.")]


@pytest.fixture(scope="module")
def processor() -> Any:
    return gemma3_processor(gemma3_small_checkpoint())


def _dataset() -> Any:
    from datasets import Dataset

    return Dataset.from_list([_row(colors, answer) for colors, answer in ROWS])


def _trainer(processor: Any, tmp_path: Path, collator: Any = None) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path),
        max_length=MAX_LENGTH,
        per_device_train_batch_size=2,
        max_steps=2,  # the whole dataset: the two-image sample is in one of the batches
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return SFTTrainer(model=tiny_gemma3_model(), args=args, train_dataset=_dataset(), processing_class=processor,
                      data_collator=collator)


def test_scan_flags_the_sample_the_trainer_will_cut(tmp_path):
    from vlmcheck import scan

    rows = []
    for k, (colors, answer) in enumerate(ROWS):
        names = []
        for c in colors:
            _image(c).save(tmp_path / f"{c}.png")
            names.append(f"{c}.png")
        row = _row(colors, answer)
        rows.append({"id": f"s{k}", "messages": row["prompt"] + row["completion"], "images": names})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    scan(data, model=gemma3_small_checkpoint(), max_length=MAX_LENGTH, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # the cut goes through image 2, and the answer after it is lost too (VC202)
    assert [r["findings"] for r in records] == [[], ["VC201", "VC202"], [], []]
    assert records[1]["image_tokens"] == [256, 256] and records[1]["tokens"] > MAX_LENGTH


def test_without_the_guard_the_run_raises_the_real_error(processor, tmp_path):
    with pytest.raises(ValueError) as info:
        _trainer(processor, tmp_path).train()
    seen: BaseException | None = info.value
    messages = []
    while seen is not None:
        messages.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    real = next(m for m in messages if "Image features and image tokens do not match" in m)
    assert "features: 768" in real  # the failing batch: 1 + 2 images, 256 features each


def test_with_the_guard_the_run_completes_and_logs_the_repair(processor, tmp_path, caplog):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmcheck.integrations.guards import SpanGuardCollator

    inner = DataCollatorForVisionLanguageModeling(processor, max_length=MAX_LENGTH, completion_only_loss=True)
    guard = SpanGuardCollator(inner, processor=processor, policy="truncate")
    assert guard.spec.family == "gemma3" and guard.spec.image_token_id == IMAGE_TOKEN_ID
    with caplog.at_level(logging.WARNING, logger="vlmcheck"):
        output = _trainer(processor, tmp_path, collator=guard).train()
    assert output.global_step == 2
    assert guard.stats["batches"] == 2 and guard.stats["samples"] == 4
    assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
    repairs = [r.getMessage() for r in caplog.records if r.name == "vlmcheck.guards"]
    assert len(repairs) == 1 and "policy 'truncate'" in repairs[0]
    assert "image 2 of 2 needs 256 placeholders, only" in repairs[0]
    assert "1 image(s) (1 pixel_values rows)" in repairs[0]


def test_drop_images_gives_a_batch_the_model_takes(processor):
    """The other repair on the same batch TRL builds: the cut image's placeholders masked, its
    pixel_values entry dropped; the model's forward then runs where the unguarded batch raises."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmcheck.integrations.guards import SpanGuardCollator

    examples = [_row(colors, answer) for colors, answer in ROWS[:2]]
    inner = DataCollatorForVisionLanguageModeling(processor, max_length=MAX_LENGTH, completion_only_loss=True)
    guard = SpanGuardCollator(inner, processor=processor, policy="drop-images")
    model = tiny_gemma3_model()
    raw = inner([dict(e) for e in examples])
    fixed = guard([dict(e) for e in examples])
    assert tuple(raw["pixel_values"].shape[:1]) == (3,) and tuple(fixed["pixel_values"].shape[:1]) == (2,)
    assert int((fixed["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2 * 256
    assert int(fixed["token_type_ids"].sum()) == 2 * 256
    assert guard.stats["repaired_samples"] == 1 and guard.stats["dropped_images"] == 1
    keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    with torch.no_grad():
        with pytest.raises(ValueError, match="Image features and image tokens do not match"):
            model(**{k: raw[k] for k in keys}, logits_to_keep=1)
        model(**{k: fixed[k] for k in keys}, logits_to_keep=1)
