"""The LLaVA-NeXT count and the VC201 finding proved against a real ``LlavaNextForConditionalGeneration``.

Where scan says the cut at max_length falls in an image span, the processor output cut there raises
the model's real "Image features and image tokens do not match" error
(``modeling_llava_next.get_placeholder_mask``); where scan says nothing is cut, the same forward
runs, so the model's anyres feature count (``pack_image_features``: unpadded grid, one
``image_newline`` per row, base features) equals vlmcheck's count for every image.

The model is random-weight and tiny (2-layer CLIP vision tower at the checkpoint's 336 px / patch 14,
1-layer Llama with llava-v1.6-vicuna's vocabulary size 32064, the checkpoint's image_grid_pinpoints).
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from llava_next_checkpoint import PINPOINTS, llava_next_checkpoint, llava_next_processor
from vlmcheck import scan

pytestmark = pytest.mark.slow


def _tiny_llava_next():
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=336, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2),
        image_token_index=32000, vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextForConditionalGeneration(config).eval()


def test_image_span_cut_is_the_crash(tmp_path):
    import torch
    from transformers.image_utils import load_image

    rng = random.Random(4)
    # one per pinpoint and then some: wide, tall, square, tiny, a 1-pixel strip
    sizes = [(64, 48), (500, 300), (90, 700), (336, 336), (1000, 330), (1, 400), (700, 700), (5, 3)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 30, 90, 200)).save(tmp_path / f"im{i}.png")
    rows = []
    for j in range(8):
        picks = [j] if j < 4 else rng.sample(range(len(sizes)), 2)
        rows.append({
            "id": f"s{j}",
            "messages": [
                {"role": "user", "content": [{"type": "image"} for _ in picks] + [{"type": "text", "text": "Look."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Seen " * rng.randint(1, 40)}]},
            ],
            "images": [f"im{p}.png" for p in picks],
        })
    for j, i in enumerate(range(4, len(sizes))):  # the other single images too
        rows.append({**rows[0], "id": f"t{j}", "images": [f"im{i}.png"]})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    checkpoint = llava_next_checkpoint()
    processor = llava_next_processor(checkpoint)
    model = _tiny_llava_next()
    batches = []
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [load_image(str(tmp_path / name)) for name in row["images"]]
        batches.append(processor(text=[text], images=[images], return_tensors="pt"))
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (300, 1500, 2500, 5000):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=checkpoint, max_length=max_length, output=out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        for batch, rec in zip(batches, records):
            assert batch["input_ids"].shape[1] == rec["tokens"]
            cut = {k: batch[k][:, :max_length] for k in ("input_ids", "attention_mask")}
            pixels = {"pixel_values": batch["pixel_values"], "image_sizes": batch["image_sizes"]}
            with torch.no_grad():
                if "VC201" in rec["findings"]:
                    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                        model(**cut, **pixels)
                    outcomes["cut"] += 1
                else:
                    model(**cut, **pixels)
                    outcomes["whole"] += 1
    assert outcomes["cut"] >= 10 and outcomes["whole"] >= 10, outcomes
