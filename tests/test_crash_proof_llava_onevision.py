"""The LLaVA-OneVision image count and the VC201 finding proved against a real
``LlavaOnevisionForConditionalGeneration``.

Where scan says the cut at max_length falls in an image span, the processor output cut there raises
the model's real "Image features and image tokens do not match" error; where scan says nothing is
cut, the same forward runs, so the model's own feature count (anyres_max_9 for a sample's only
image, base + newline in multi-image samples, with the processor's ``batch_num_images``) equals
vlmcheck's count for every image.

The model is random-weight and tiny (2-layer SigLIP vision tower at the checkpoint's 384 px /
patch 14, so 27 x 27 = 729 features per tile; 1-layer Qwen2 with the hub's vocabulary size 152128;
the checkpoint's 36 image_grid_pinpoints).
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from onevision_checkpoint import PINPOINTS, onevision_checkpoint, onevision_processor
from vlmcheck import scan

pytestmark = pytest.mark.slow


def _tiny_onevision():
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=384, patch_size=14,
                                         vision_use_head=False),
        text_config=Qwen2Config(vocab_size=152128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2),
        image_token_index=151646, video_token_index=151647, vision_feature_select_strategy="full",
        vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=PINPOINTS,
    )
    return LlavaOnevisionForConditionalGeneration(config).eval()


def test_image_span_cut_is_the_crash(tmp_path):
    import torch
    from transformers.image_utils import load_image

    rng = random.Random(4)
    # small, wide, tall, square, tiny, a 1-pixel strip, and a photo whose grid is downscaled
    sizes = [(64, 48), (900, 300), (90, 700), (384, 384), (1, 400), (5, 3), (1920, 1080)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 30, 90, 200)).save(tmp_path / f"im{i}.png")
    rows = []
    for j in range(len(sizes) + 3):
        picks = [j] if j < len(sizes) else rng.sample(range(len(sizes)), 2)
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

    checkpoint = onevision_checkpoint()
    processor = onevision_processor(checkpoint)
    model = _tiny_onevision()
    batches = []
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [load_image(str(tmp_path / name)) for name in row["images"]]
        batches.append(processor(text=[text], images=[images], return_tensors="pt"))
    outcomes = {"cut": 0, "whole": 0}
    for max_length in (500, 2000, 9000):
        out = tmp_path / f"rec{max_length}.jsonl"
        scan(data, model=checkpoint, max_length=max_length, output=out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        for batch, rec in zip(batches, records):
            assert batch["input_ids"].shape[1] == rec["tokens"]
            cut = {k: batch[k][:, :max_length] for k in ("input_ids", "attention_mask")}
            pixels = {k: batch[k] for k in ("pixel_values", "image_sizes", "batch_num_images")}
            with torch.no_grad():
                if "VC201" in rec["findings"]:
                    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                        model(**cut, **pixels)
                    outcomes["cut"] += 1
                else:
                    model(**cut, **pixels)
                    outcomes["whole"] += 1
    assert outcomes["cut"] >= 8 and outcomes["whole"] >= 8, outcomes
