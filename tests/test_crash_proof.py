"""The VC201 finding proved against a real model: where scan says truncation at max_length cuts an
image span, the processor output cut there makes ``Qwen2VLForConditionalGeneration`` raise its
real mismatch error; where scan says nothing is cut, the same forward runs.

This is what TRL / LLaMA-Factory do at that length: cut ``input_ids`` (and the masks) at
``max_length`` and keep ``pixel_values`` / ``image_grid_thw`` whole.
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from realparts import qwen_processor, tiny_qwen2_vl_model
from vlmcheck import scan

pytestmark = pytest.mark.slow


def test_image_span_cut_is_the_crash(tmp_path, qwen2_vl_checkpoint):
    import torch
    from transformers.image_utils import load_image

    rng = random.Random(3)
    sizes = [(56, 56), (112, 84), (200, 140), (84, 300), (140, 140)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 40, 90, 200)).save(tmp_path / f"im{i}.png")
    rows = []
    for j in range(12):
        picks = rng.sample(range(len(sizes)), rng.randint(1, 3))
        content = []
        for _ in picks:
            content += [{"type": "image"}, {"type": "text", "text": "Look."}]
        rows.append({
            "id": f"s{j}",
            "messages": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": "Seen " * rng.randint(1, 30)}]},
            ],
            "images": [f"im{p}.png" for p in picks],
        })
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    processor = qwen_processor("qwen2_vl")
    model = tiny_qwen2_vl_model()
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (40, 60, 90, 120, 160):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=qwen2_vl_checkpoint, max_length=max_length, output=out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        for row, rec in zip(rows, records):
            text = processor.apply_chat_template(row["messages"], tokenize=False)
            images = [load_image(str(tmp_path / name)) for name in row["images"]]
            batch = processor(text=[text], images=images, return_tensors="pt")
            assert batch["input_ids"].shape[1] == rec["tokens"]
            cut = {k: batch[k][:, :max_length] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
            inputs = {**cut, "pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
            says_cut = "VC201" in rec["findings"]
            with torch.no_grad():
                if says_cut:
                    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                        model(**inputs)
                    outcomes["cut"] += 1
                else:
                    model(**inputs)
                    outcomes["whole"] += 1
    # both sides of the claim were exercised
    assert outcomes["cut"] >= 10 and outcomes["whole"] >= 10, outcomes
