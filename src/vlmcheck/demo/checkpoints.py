"""Checkpoint folders for the Qwen VL family, laid out as on the hub, built offline.

They hold what vlmcheck reads from a real checkpoint: config.json (``model_type``),
preprocessor_config.json with the hub's values, the processor chat template in chat_template.json,
and the real Qwen2 tokenizer (built by :mod:`vlmcheck.demo.qwen_tokenizer`). No weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vlmcheck.demo.qwen_tokenizer import find_qwen_tiktoken, write_qwen2_tokenizer_files

# The processor chat template of Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct
# (chat_template.json on the hub); a fact of those checkpoints, reproduced so the demo renders what
# a real run renders.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# preprocessor_config.json values of the hub checkpoints (they override the class defaults).
_PREPROCESSOR = {
    # Qwen/Qwen2-VL-7B-Instruct preprocessor_config.json
    "qwen2_vl": {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True,
        "do_normalize": True,
        "do_resize": True,
        "do_convert_rgb": True,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
    },
    # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json: same values, its own processor class.
    "qwen2_5_vl": {
        "image_processor_type": "Qwen2_5_VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    # Qwen/Qwen3-VL-8B-Instruct preprocessor_config.json: patch 16, size in shortest/longest_edge.
    "qwen3_vl": {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
}

QWEN_MODEL_TYPES = tuple(_PREPROCESSOR)


def cache_dir() -> Path:
    """Where built fixtures live: ``$VLMCHECK_CACHE`` or ``~/.cache/vlmcheck``."""
    root = os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck"
    return Path(root)


def write_qwen_checkpoint(dest: Path, model_type: str = "qwen2_vl", *, wheel: str | None = None) -> Path:
    """Write a weightless Qwen VL checkpoint folder to ``dest`` (atomically) and return it."""
    if model_type not in _PREPROCESSOR:
        raise ValueError(f"model_type must be one of {QWEN_MODEL_TYPES}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    write_qwen2_tokenizer_files(tmp, find_qwen_tiktoken(wheel))
    config = {
        "model_type": model_type,
        "architectures": [
            {
                "qwen2_vl": "Qwen2VLForConditionalGeneration",
                "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                "qwen3_vl": "Qwen3VLForConditionalGeneration",
            }[model_type]
        ],
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR[model_type], indent=2) + "\n")
    (tmp / "chat_template.json").write_text(
        json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2) + "\n"
    )
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def qwen_checkpoint(model_type: str = "qwen2_vl", *, wheel: str | None = None) -> Path:
    """The cached checkpoint folder for ``model_type``, built on first use. Safe when several processes ask at
    once: each builds in a folder of its own and the first to rename it into place wins; the others discard
    theirs (a folder left without its tokenizer by an older build is replaced)."""
    dest = cache_dir() / "checkpoints" / model_type
    if (dest / "tokenizer.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{model_type}-", dir=dest.parent))
    try:
        built = write_qwen_checkpoint(staging / model_type, model_type, wheel=wheel)
        try:
            os.rename(built, dest)  # refused while another process's complete folder is there
        except OSError:
            if not (dest / "tokenizer.json").is_file():
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(built, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
