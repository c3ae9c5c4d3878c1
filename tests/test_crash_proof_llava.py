"""The VC201 finding proved against a real ``LlavaForConditionalGeneration``: where scan says the cut
at max_length falls in an image span, the processor output cut there raises LLaVA's real
"Image features and image tokens do not match" error (``modeling_llava.get_placeholder_mask``);
where scan says nothing is cut, the same forward runs.

The model is random-weight and tiny (2-layer CLIP vision tower at the checkpoint's 336 px / patch 14,
1-layer Llama with llava-1.5's vocabulary size 32064), so its feature count is the real one: 576
per image.
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from llava_checkpoint import llava_checkpoint, llava_processor
from vlmcheck import scan

pytestmark = pytest.mark.slow


def _tiny_llava():
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=336, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2),
        image_token_index=32000, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return LlavaForConditionalGeneration(config).eval()


def test_image_span_cut_is_the_crash(tmp_path):
    import torch
    from transformers.image_utils import load_image

    rng = random.Random(4)
    sizes = [(64, 48), (500, 300), (90, 700), (336, 336)]
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

    checkpoint = llava_checkpoint()
    processor = llava_processor(checkpoint)
    model = _tiny_llava()
    batches = []
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [load_image(str(tmp_path / name)) for name in row["images"]]
        batches.append(processor(text=[text], images=images, return_tensors="pt"))
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (300, 590, 620, 900, 1200):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=checkpoint, max_length=max_length, output=out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        for batch, rec in zip(batches, records):
            assert batch["input_ids"].shape[1] == rec["tokens"]
            cut = {k: batch[k][:, :max_length] for k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                if "VC201" in rec["findings"]:
                    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                        model(**cut, pixel_values=batch["pixel_values"])
                    outcomes["cut"] += 1
                else:
                    model(**cut, pixel_values=batch["pixel_values"])
                    outcomes["whole"] += 1
    assert outcomes["cut"] >= 8 and outcomes["whole"] >= 8, outcomes
