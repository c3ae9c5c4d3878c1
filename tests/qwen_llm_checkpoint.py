"""Tokenizer folders of Qwen2 / Qwen2.5 language models (Qwen2-7B-Instruct, Qwen2.5-7B-Instruct), the LLMs that
LLaVA-NeXT / LLaVA-OneVision train with ``--version qwen_1_5`` / ``qwen_2`` / ``qwen_2_5``.

Built offline from the real Qwen2 BPE ranks (``vlmcheck.demo.qwen_tokenizer``). What differs between the two is
what LLaVA-NeXT's ``preprocess_qwen`` reads: the added tokens, and ``additional_special_tokens`` in
``tokenizer_config.json`` (two in Qwen2-7B-Instruct, ``<|im_start|>`` and ``<|im_end|>``; thirteen in
Qwen2.5-7B-Instruct, from ``<|im_start|>`` to ``<|video_pad|>``), values of those hub checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cache_lock import serialized
from vlmcheck.demo.checkpoints import cache_dir
from vlmcheck.demo.qwen_tokenizer import QWEN2_SPECIAL_TOKENS, find_qwen_tiktoken


@serialized
def write_qwen_llm_tokenizer(dest: Path, *, qwen25: bool = False) -> Path:
    """Write tokenizer.json, tokenizer_config.json and config.json of a Qwen2 (or Qwen2.5) Instruct LLM to ``dest``."""
    from tokenizers import Tokenizer

    from vlmcheck.demo.qwen_tokenizer import build_qwen2_tokenizer

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    tiktoken = find_qwen_tiktoken()
    if qwen25:  # Qwen2.5's vocabulary: every Qwen2-VL special token, then the eight plain added tokens
        tok = build_qwen2_tokenizer(tiktoken, qwen25=True)
        specials = QWEN2_SPECIAL_TOKENS[1:]
    else:  # Qwen2-7B-Instruct: three added tokens only
        full = build_qwen2_tokenizer(tiktoken, qwen25=False)
        data = json.loads(full.to_str())
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= 151645]
        tok = Tokenizer.from_str(json.dumps(data))
        specials = QWEN2_SPECIAL_TOKENS[1:3]
        assert tok.get_vocab_size(with_added_tokens=True) == 151646
    tok.save(str(tmp / "tokenizer.json"))
    config = {
        "add_prefix_space": False,
        "additional_special_tokens": specials,
        "bos_token": None,
        "chat_template": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768 if not qwen25 else 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                                 "vocab_size": 152064}, indent=2) + "\n")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


@serialized
def qwen_llm_tokenizer(*, qwen25: bool = False) -> Path:
    """The cached folder (built on first use): ``qwen2-7b-instruct`` or ``qwen2.5-7b-instruct``."""
    dest = cache_dir() / "checkpoints" / ("qwen2.5-7b-instruct" if qwen25 else "qwen2-7b-instruct")
    if not (dest / "tokenizer.json").is_file():
        write_qwen_llm_tokenizer(dest, qwen25=qwen25)
    return dest
