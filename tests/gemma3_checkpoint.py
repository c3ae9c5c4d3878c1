"""An offline Gemma 3 checkpoint folder with google/gemma-3-4b-it's processor files.

Values are those of google/gemma-3-4b-it: ``config.json`` (Gemma3Config: ``boi_token_index`` 255999,
``eoi_token_index`` 256000, ``image_token_index`` 262144, ``mm_tokens_per_image`` 256, SigLIP 896 px /
patch 14), ``preprocessor_config.json`` (Gemma3ImageProcessor: 896 x 896, mean/std 0.5, bilinear,
``image_seq_length`` 256, and the four pan-and-scan keys ``null`` as on the hub, so the processor's
own defaults apply), ``processor_config.json`` (``image_seq_length`` 256). The tokenizer is the real
Gemma 3 vocabulary (``gemma3_vocab.gemma3_tokenizer_dir``) with its BOS-adding post-processor, as
the hub tokenizer.json has; tokenizer_config.json names boi/eoi/image tokens in
``extra_special_tokens``, where transformers 5.x reads them. The chat template is written here in
the Gemma 3 style: ``<bos>``, then ``<start_of_turn>user\\n...<end_of_turn>\\n``, the assistant role
written as ``model``, a system message prefixed to the first user turn, text parts trimmed, and
each image written as ``<start_of_image>``. Built once, cached next to the tokenizer.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from gemma3_vocab import _cache, gemma3_tokenizer_dir

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CONFIG: dict[str, Any] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}

PREPROCESSOR: dict[str, Any] = {
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_pan_and_scan": None,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Gemma3ImageProcessor",
    "image_seq_length": 256,
    "image_std": [0.5, 0.5, 0.5],
    "pan_and_scan_max_num_crops": None,
    "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None,
    "processor_class": "Gemma3Processor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 896, "width": 896},
}

PROCESSOR: dict[str, Any] = {"image_seq_length": 256, "processor_class": "Gemma3Processor"}

TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "GemmaTokenizer",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "add_bos_token": True,
    "add_eos_token": False,
    "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                             "image_token": "<image_soft_token>"},
    "model_max_length": 1000000000000000019884624838656,
}


@serialized
def gemma3_checkpoint(*, preprocessor: dict[str, Any] | None = None, processor: dict[str, Any] | None = None,
                      name: str = "gemma-3-4b-it") -> Path:
    """The checkpoint folder; ``preprocessor``/``processor`` replace values of the JSON files (a variant)."""
    dest = _cache() / f"checkpoint-{name}"
    if (dest / "chat_template.jinja").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(gemma3_tokenizer_dir() / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **(preprocessor or {})}, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps({**PROCESSOR, **(processor or {})}, indent=2))
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


@functools.cache
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def gemma3_processor(folder: Path):
    """transformers' own Gemma3Processor for ``folder``, assembled as ``AutoProcessor.from_pretrained``
    does (image processor from preprocessor_config.json, which gives ``Gemma3ImageProcessorPil`` without
    torchvision; processor arguments from processor_config.json). The tokenizer (~10 s to load) is
    loaded once: every variant folder has the same tokenizer files."""
    from transformers import AutoImageProcessor, Gemma3Processor

    processor_args = json.loads((folder / "processor_config.json").read_text())
    processor_args.pop("processor_class", None)
    return Gemma3Processor(
        image_processor=AutoImageProcessor.from_pretrained(str(folder)),
        tokenizer=_tokenizer(str(gemma3_checkpoint())),
        chat_template=(folder / "chat_template.jinja").read_text(), **processor_args,
    )


# The crash and trainer tests run a real Gemma3ForConditionalGeneration with tiny random weights. A
# SigLIP tower at the hub's 896 px / patch 14 is 4,096 patches per image, slow on CPU; these tests use
# 224 px / patch 14 (16 x 16 patches, pooled with kernel 1 to the real mm_tokens_per_image = 256) and
# a checkpoint variant whose preprocessor resizes to 224. The placeholder count does not depend on
# the resize size (256 per image or crop), so the counts are the hub checkpoint's.
SMALL_VISION = {"size": {"height": 224, "width": 224}}


@serialized
def gemma3_small_checkpoint() -> Path:
    """gemma3_checkpoint with the preprocessor resizing to 224 x 224 (for the tiny model)."""
    return gemma3_checkpoint(preprocessor=SMALL_VISION, name="gemma-3-4b-it-224")


def tiny_gemma3_model(seed: int = 0):
    """A real ``Gemma3ForConditionalGeneration``: 2 tiny text layers with the real vocabulary size
    (262,208), a 2-layer SigLIP at 224 px / patch 14, the hub's token ids and 256 tokens per image."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    config = Gemma3Config(
        text_config={"model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                     "sliding_window": 512},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224, "patch_size": 14,
                       "vision_use_head": False},
        mm_tokens_per_image=CONFIG["mm_tokens_per_image"], boi_token_index=CONFIG["boi_token_index"],
        eoi_token_index=CONFIG["eoi_token_index"], image_token_index=CONFIG["image_token_index"],
    )
    return Gemma3ForConditionalGeneration(config).eval()
