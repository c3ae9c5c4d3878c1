"""An offline LLaVA-OneVision checkpoint folder with llava-hf/llava-onevision-qwen2-7b-ov-hf's processor files.

Values are those of llava-hf/llava-onevision-qwen2-7b-ov-hf: ``preprocessor_config.json``
(LlavaOnevisionImageProcessor: size 384 x 384, the 36 ``image_grid_pinpoints`` (384 i, 384 j) for
i, j in 1..6, SigLIP mean/std 0.5), ``processor_config.json`` (num_image_tokens 729,
vision_feature_select_strategy "full"; no vision_aspect_ratio, so the class default "anyres_max_9",
which config.json also names) and ``config.json`` (``image_token_index`` 151646,
``video_token_index`` 151647). Sources: the hub config.json as mirrored in a public 4-bit copy of
the checkpoint (pinpoints, ``image_token_index``), llava-hf's OneVision ``added_tokens.json``
(``<image>`` 151646, ``<video>`` 151647), a public conversion script that copies the official
preprocessor/processor files, and FORMULAS.md §5.3. The chat template is the one transformers'
``convert_llava_onevision_weights_to_hf.py`` writes.

The tokenizer is the real Qwen2 BPE (the `dashscope` wheel's ranks, as in
``vlmcheck.demo.qwen_tokenizer``) with the Qwen2 (not Qwen2-VL) special tokens
``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645, then ``<image>`` and
``<video>``, added in id order so they land on 151646 and 151647. Built once, cached.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import _cache

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all video then #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

CONFIG: dict[str, Any] = {
    "architectures": ["LlavaOnevisionForConditionalGeneration"],
    "model_type": "llava_onevision",
    "image_token_index": 151646,
    "video_token_index": 151647,
    "image_grid_pinpoints": PINPOINTS,
    "vision_aspect_ratio": "anyres_max_9",
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "full",
    "projector_hidden_act": "gelu",
    "text_config": {"model_type": "qwen2", "vocab_size": 152128, "hidden_size": 3584, "intermediate_size": 18944,
                    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "image_size": 384, "patch_size": 14, "num_attention_heads": 16, "num_hidden_layers": 26,
                      "vision_use_head": False},
}

PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "processor_class": "LlavaOnevisionProcessor",
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": PINPOINTS,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}

PROCESSOR: dict[str, Any] = {
    "processor_class": "LlavaOnevisionProcessor",
    "image_token": "<image>",
    "video_token": "<video>",
    "num_image_tokens": 729,
    "vision_feature_select_strategy": "full",
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]  # 151643..151647


def onevision_tokenizer_files(dest: Path) -> None:
    """tokenizer.json + tokenizer_config.json of the Qwen2 vocabulary with OneVision's tokens."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    from vlmcheck.demo.qwen_tokenizer import QWEN2_SPLIT_PATTERN, find_qwen_tiktoken, vocab_and_merges

    vocab, merges = vocab_and_merges(find_qwen_tiktoken())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content in SPECIAL_TOKENS:  # one at a time, in id order
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(151643, 151648))
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None, "add_prefix_space": False,
        "errors": "replace", "split_special_tokens": False, "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


@serialized
def onevision_checkpoint(*, name: str = "llava-onevision-qwen2-7b-ov") -> Path:
    dest = _cache() / f"checkpoint-{name}"
    if (dest / "chat_template.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    onevision_tokenizer_files(tmp)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps(PROCESSOR, indent=2))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def onevision_processor(folder: Path):
    """transformers' own LlavaOnevisionProcessor for ``folder``: PIL image processor, and no video
    processor (it needs torchvision); all image and text code runs unchanged."""
    from transformers import AutoTokenizer, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    class ImageOnlyProcessor(LlavaOnevisionProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    processor_args = json.loads((folder / "processor_config.json").read_text())
    processor_args.pop("processor_class", None)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return ImageOnlyProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(**values),
        tokenizer=AutoTokenizer.from_pretrained(str(folder)), chat_template=template, **processor_args,
    )
