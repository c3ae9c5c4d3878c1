"""An offline LLaVA-NeXT checkpoint folder with llava-hf/llava-v1.6-vicuna-7b-hf's processor files.

Values are those of llava-hf/llava-v1.6-vicuna-7b-hf (and llava-v1.6-mistral-7b-hf, which shares
them): ``preprocessor_config.json`` (LlavaNextImageProcessor: shortest edge 336, center crop 336,
``image_grid_pinpoints`` [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], OpenAI CLIP
mean/std), ``processor_config.json`` (patch_size 14, vision_feature_select_strategy "default",
num_additional_image_tokens 1) and ``config.json`` (LlavaNextConfig, ``image_token_index`` 32000).
Checked against a printout of the mistral checkpoint's loaded processor (a public LLaVA-NeXT
walkthrough: the same image processor values, ``image_token_id`` 32000) and FORMULAS.md §5.2.
The chat template is the vicuna one transformers' LLaVA-NeXT conversion script writes
("{system} USER: <image>\\n{text} ASSISTANT:"). The tokenizer is the real Llama-2 / Vicuna
vocabulary (``llama_vocab.llama2_tokenizer_dir``), ``<image>`` at 32000. Built once, cached.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import _cache, llama2_tokenizer_dir

# transformers' convert_llava_next_*_weights_to_hf.py ``chat_vicuna``
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% else %}{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

CONFIG: dict[str, Any] = {
    "architectures": ["LlavaNextForConditionalGeneration"],
    "model_type": "llava_next",
    "image_token_index": 32000,
    "image_grid_pinpoints": PINPOINTS,
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
    "image_processor_type": "LlavaNextImageProcessor",
    "aspect_ratio_setting": "anyres",
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": PINPOINTS,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

PROCESSOR: dict[str, Any] = {
    "processor_class": "LlavaNextProcessor",
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
}


@serialized
def llava_next_checkpoint(*, preprocessor: dict[str, Any] | None = None, processor: dict[str, Any] | None = None,
                          name: str = "llava-v1.6-vicuna-7b") -> Path:
    """The checkpoint folder; ``preprocessor``/``processor`` replace values (a variant, give it a ``name``)."""
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
    (tmp / "processor_config.json").write_text(json.dumps({**PROCESSOR, **(processor or {})}, indent=2))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def llava_next_processor(folder: Path):
    """transformers' own LlavaNextProcessor for ``folder``, with the PIL image processor (no torchvision)."""
    from transformers import AutoTokenizer, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "aspect_ratio_setting"):
        values.pop(key, None)
    processor_args = json.loads((folder / "processor_config.json").read_text())
    processor_args.pop("processor_class", None)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(**values), tokenizer=AutoTokenizer.from_pretrained(str(folder)),
        chat_template=template, **processor_args,
    )
