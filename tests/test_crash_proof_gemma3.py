"""The VC201 finding proved against a real ``Gemma3ForConditionalGeneration``: where scan says the cut
at max_length falls in an image span (or leaves an image's span out entirely), the processor output
cut there raises Gemma 3's real "Image features and image tokens do not match" error
(``modeling_gemma3.Gemma3Model.get_placeholder_mask``); where scan says nothing is cut, the same
forward runs. With and without pan-and-scan, whose crops are extra images of 256 features each.

The model is random-weight and tiny (``gemma3_checkpoint.tiny_gemma3_model``: 2 text layers with the
real vocabulary size, a 2-layer SigLIP at 224 px instead of the hub's 896 so that it runs quickly on
CPU, pooled to the real 256 tokens per image). The processor is the real ``Gemma3Processor`` with the
checkpoint's files, its preprocessor resizing to 224 to match the tower; the token counts do not
depend on that size.
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from gemma3_checkpoint import gemma3_processor, gemma3_small_checkpoint, tiny_gemma3_model
from vlmcheck import scan
from vlmcheck.families import Overrides
from vlmcheck.model import load_model

pytestmark = pytest.mark.slow

PAS = {"do_pan_and_scan": True}


@pytest.mark.parametrize("call", [{}, PAS], ids=["plain", "pan-and-scan"])
def test_image_span_cut_is_the_crash(tmp_path, call):
    import torch
    from transformers.image_utils import load_image

    rng = random.Random(11)
    # square, wide (2-3 crops with pan-and-scan), tall, small
    sizes = [(300, 300), (800, 300), (640, 480), (260, 900), (64, 48)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 50, 90, 200)).save(tmp_path / f"im{i}.png")
    rows = []
    for j in range(6):
        picks = rng.sample(range(len(sizes)), rng.randint(1, 2))
        rows.append({
            "id": f"s{j}",
            "messages": [
                {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": "Look."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Seen " * rng.randint(1, 40)}]},
            ],
            "images": [f"im{p}.png" for p in picks],
        })
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    checkpoint = gemma3_small_checkpoint()
    spec = load_model(checkpoint, overrides=Overrides(extra=dict(call)))
    processor = gemma3_processor(checkpoint)
    model = tiny_gemma3_model()
    batches = []
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [load_image(str(tmp_path / name)) for name in row["images"]]
        batches.append(processor(text=[text], images=images, add_special_tokens=False, return_tensors="pt", **call))
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (8, 140, 275, 300, 560, 1100, 1400):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=spec, max_length=max_length, output=out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        for batch, rec in zip(batches, records):
            assert batch["input_ids"].shape[1] == rec["tokens"]
            cut = {k: batch[k][:, :max_length] for k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.no_grad():
                if "VC201" in rec["findings"]:
                    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                        model(**cut, pixel_values=batch["pixel_values"], logits_to_keep=1)
                    outcomes["cut"] += 1
                else:
                    model(**cut, pixel_values=batch["pixel_values"], logits_to_keep=1)
                    outcomes["whole"] += 1
    assert outcomes["cut"] >= 10 and outcomes["whole"] >= 8, outcomes
