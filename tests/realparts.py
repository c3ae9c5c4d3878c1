"""Real transformers parts for tests, built offline: processors and tiny random-weight models.

Everything here is transformers' own classes. The only adaptation: Qwen VL processors are built
without their video processor, which needs torchvision (absent on CPU-only machines); the
processor's image/text code runs unchanged.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from vlmcheck.demo.checkpoints import qwen_checkpoint


def _preprocessor_kwargs(folder: Path) -> dict[str, Any]:
    values = json.loads((folder / "preprocessor_config.json").read_text())
    return {k: v for k, v in values.items() if k not in ("image_processor_type", "processor_class")}


@cache
def qwen_processor(model_type: str = "qwen2_vl", **overrides: Any):
    """transformers' own Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor for the offline checkpoint."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as Base
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as Base
    elif model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        from transformers import Qwen3VLProcessor as Base
    else:
        raise ValueError(model_type)

    class ImageOnlyProcessor(Base):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                chat_template=chat_template, **kwargs,
            )

    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        folder = qwen_checkpoint(model_type)
    else:
        from qwen3_sharing_checkpoint import sharing_checkpoint

        folder = sharing_checkpoint(model_type)
    kwargs = _preprocessor_kwargs(folder)
    kwargs.update(overrides)
    image_processor = Qwen2VLImageProcessorPil(**kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


@cache
def tiny_qwen2_vl_model(seed: int = 0):
    """A real ``Qwen2VLForConditionalGeneration`` with 2 tiny layers and the real vocabulary size."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        },
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.eval()
    return model
