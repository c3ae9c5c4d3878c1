"""An offline LLaVA-1.5 checkpoint folder with llava-hf/llava-1.5-7b-hf's processor files.

Values are those of llava-hf/llava-1.5-7b-hf: ``config.json`` (LlavaConfig, CLIP ViT-L/14-336 vision
tower, ``image_token_index`` 32000, ``vision_feature_select_strategy`` "default"),
``preprocessor_config.json`` (CLIPImageProcessor: shortest edge 336, center crop 336, OpenAI CLIP
mean/std), ``processor_config.json`` (patch_size 14, num_additional_image_tokens 1) and its
``chat_template.json`` ("USER: <image>\\n... ASSISTANT:"). The tokenizer is the real Llama-2 one
(``llama_vocab.llama2_tokenizer_dir``). Built once, cached next to it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import _cache, llama2_tokenizer_dir

# chat_template.json of llava-hf/llava-1.5-7b-hf (images first, then text, "ASSISTANT:" prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CONFIG: dict[str, Any] = {
    "architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava",
    "image_token_index": 32000,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "image_size": 336, "patch_size": 14, "num_attention_heads": 16, "num_hidden_layers": 24,
                      "projection_dim": 768},
    "vocab_size": 32064,
}

PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "CLIPImageProcessor",
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

PROCESSOR: dict[str, Any] = {
    "processor_class": "LlavaProcessor",
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
}


@serialized
def llava_checkpoint(*, preprocessor: dict[str, Any] | None = None, name: str = "llava-1.5-7b") -> Path:
    """The checkpoint folder; ``preprocessor`` replaces preprocessor_config.json values (a variant)."""
    dest = _cache() / f"checkpoint-{name}"
    if (dest / "chat_template.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama2_tokenizer_dir() / f, tmp / f)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **(preprocessor or {})}, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps(PROCESSOR, indent=2))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def llava_processor(folder: Path):
    """transformers' own LlavaProcessor for ``folder``, with the PIL CLIP image processor (no torchvision)."""
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    values = json.loads((folder / "preprocessor_config.json").read_text())
    values.pop("image_processor_type", None)
    processor_args = json.loads((folder / "processor_config.json").read_text())
    processor_args.pop("processor_class", None)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(**values), tokenizer=AutoTokenizer.from_pretrained(str(folder)),
        chat_template=template, **processor_args,
    )
