"""Tokenizers for the Idefics3 / SmolVLM checkpoints, offline, from llama.cpp's vocab-only GGUFs.

The llama-cpp-python sdist (see ``llama_vocab``) ships ``ggml-vocab-llama-bpe.gguf``, the Llama-3
vocabulary (128,000 byte-level BPE pieces + 256 control tokens), and ``ggml-vocab-starcoder.gguf``,
StarCoder2's 49,152-piece byte-level BPE, each with llama.cpp's reference encodings (``.inp``/``.out``).
Both are rebuilt here as ``tokenizers`` BPE models (vocab + merges from the GGUF, the pre-tokenizer of
their family) and must reproduce every reference encoding (``reference_mismatches``).

- Idefics3-8B-Llama3: the real Llama-3 vocabulary (BOS ``<|begin_of_text|>`` added, as Llama-3's
  tokenizer.json does) plus the three tokens ``Idefics3Processor`` adds, at their hub ids
  ``<fake_token_around_image>`` 128256, ``<image>`` 128257, ``<end_of_utterance>`` 128258
  (HuggingFaceM4/Idefics3-8B-Llama3: config.json ``image_token_id`` 128257, generation_config.json
  eos 128258). ``<global-img>`` and ``<row_i_col_j>`` are plain text there.
- SmolVLM / SmolVLM2: no package ships the SmolLM2 vocabulary, so StarCoder2's 49,152-piece BPE
  (same size, same byte-level pre-tokenization with single digits) stands in, with ids 1 and 2
  renamed to SmolLM2's ``<|im_start|>`` / ``<|im_end|>``. The SmolVLM special tokens are then added
  in id order at their real ids: for SmolVLM-256M/500M and SmolVLM2 (128 added tokens,
  added_tokens.json) ``<global-img>`` 49152, ``<row_1_col_1>``..``<row_6_col_6>`` 49153-49188,
  ``<fake_token_around_image>`` 49189, ``<image>`` 49190, ``<|reserved_special_token_0..87|>``
  49191-49278, ``<end_of_utterance>`` 49279; for SmolVLM-Instruct (2B) only
  ``<fake_token_around_image>`` 49152, ``<image>`` 49153, ``<end_of_utterance>`` 49154
  (HuggingFaceTB/SmolVLM-Base added_tokens.json; SmolVLM-Instruct config.json ``image_token_id`` 49153).
  Text between the special tokens therefore splits as StarCoder2 splits it, not as SmolLM2 does:
  the image spans and marker tokens are exact, the text token counts are StarCoder2's.

Built once into ``$VLMCHECK_CACHE`` (default ``~/.cache/vlmcheck``).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import MEMBER_DIR, _cache, _sdist

LLAMA3 = "ggml-vocab-llama-bpe"
STARCODER2 = "ggml-vocab-starcoder"
# Llama-3's tokenizer.json pre-tokenizer split (llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

IDEFICS3_ADDED = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]  # from 128256
SMOLVLM_ADDED = (  # from 49152
    ["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    + ["<fake_token_around_image>", "<image>"] + [f"<|reserved_special_token_{i}|>" for i in range(88)]
    + ["<end_of_utterance>"]
)
SMOLVLM_2B_ADDED = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]  # from 49152


@serialized
def gguf_files() -> Path:
    """Folder holding the two GGUFs and their reference .inp/.out files."""
    dest = _cache() / "idefics3-gguf"
    names = (LLAMA3, STARCODER2)
    if all((dest / f"{n}.gguf.out").is_file() for n in names):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(_sdist()) as tar:
        for member in tar.getmembers():
            base = member.name.split("/", 1)[-1]
            if any(base.startswith(MEMBER_DIR + n + ".gguf") for n in names):
                data = tar.extractfile(member)
                assert data is not None
                tmp = dest / (Path(base).name + ".tmp")
                tmp.write_bytes(data.read())
                os.replace(tmp, dest / Path(base).name)
    return dest


def _bpe(name: str):
    """The GGUF's byte-level BPE as a ``tokenizers.Tokenizer`` (control tokens added as special)."""
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(gguf_files() / f"{name}.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    if name == STARCODER2:  # SmolLM2's chat tokens sit where StarCoder2 has two FIM tokens
        tokens[1], tokens[2] = "<|im_start|>", "<|im_end|>"
    llama3 = name == LLAMA3
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=llama3))
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def reference_mismatches(name: str, tok: Any) -> list[str]:
    """Texts of llama.cpp's reference file that ``tok`` encodes differently (none expected)."""
    src = gguf_files()
    texts = (src / f"{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = (src / f"{name}.gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    assert len(texts) == len(lines) > 40
    return [t for t, line in zip(texts, lines)
            if tok.encode(t, add_special_tokens=False).ids != [int(x) for x in line.split()]]


def _write(dest: Path, tok: Any, added: list[str], first_id: int, config: dict[str, Any]) -> Path:
    from tokenizers import AddedToken

    for k, token in enumerate(added):  # in id order, so each lands on its hub id
        tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        assert tok.token_to_id(token) == first_id + k, (token, tok.token_to_id(token))
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


@serialized
def idefics3_tokenizer_dir() -> Path:
    """Llama-3 + Idefics3's three added tokens (HuggingFaceM4/Idefics3-8B-Llama3)."""
    dest = _cache() / "idefics3-llama3-tokenizer"
    if (dest / "tokenizer.json").is_file():
        return dest
    from tokenizers import processors

    tok = _bpe(LLAMA3)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 128000)]),
    ])
    return _write(dest, tok, IDEFICS3_ADDED, 128256, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|reserved_special_token_0|>",
        "additional_special_tokens": IDEFICS3_ADDED,
        "model_max_length": 131072,
    })


@serialized
def smolvlm_tokenizer_dir(*, full: bool = True) -> Path:
    """The SmolLM2 stand-in with SmolVLM's added tokens: the 128 of SmolVLM-256M/500M and SmolVLM2
    (``full``), or the three of SmolVLM-Instruct (2B)."""
    dest = _cache() / ("smolvlm-tokenizer" if full else "smolvlm-2b-tokenizer")
    if (dest / "tokenizer.json").is_file():
        return dest
    # special tokens as in HuggingFaceTB/SmolVLM2-*/special_tokens_map.json
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "model_max_length": 8192,
    }
    if full:  # SmolVLMProcessor reads its token strings from these tokenizer attributes
        config["extra_special_tokens"] = {
            "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
            "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>",
        }
    return _write(dest, _bpe(STARCODER2), SMOLVLM_ADDED if full else SMOLVLM_2B_ADDED, 49152, config)
