"""The real Llama-2 / Vicuna vocabulary (LLaVA-1.5's language model), offline.

The llama-cpp-python sdist ships llama.cpp's vocab-only GGUF ``ggml-vocab-llama-spm.gguf`` with
reference encodings (``.inp``/``.out``). transformers loads the GGUF; the Llama-2 normalizer
(prepend "▁", spaces to "▁", no pre-tokenizer) makes it match all references. ``<image>`` is added
as a special token and lands on 32000, as in llava-hf checkpoints. Built once, cached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "llama_cpp_python-0.3.36.tar.gz"
MEMBER_DIR = "vendor/llama.cpp/models/"
NAME = "ggml-vocab-llama-spm"


def _cache() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


def _sdist() -> Path:
    folder = _cache() / "sdist"
    path = folder / SDIST
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "llama-cpp-python==0.3.36", "-d", str(folder)],
            check=True,
        )
    return path


def gguf_files() -> Path:
    """Folder holding the GGUF and its reference .inp/.out files."""
    dest = _cache() / "llama-spm-gguf"
    if not (dest / f"{NAME}.gguf.out").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(_sdist()) as tar:
            for member in tar.getmembers():
                base = member.name.split("/", 1)[-1]
                if base.startswith(MEMBER_DIR + NAME):
                    data = tar.extractfile(member)
                    assert data is not None
                    (dest / Path(base).name).write_bytes(data.read())
    return dest


def llama2_tokenizer_dir(*, image_token: bool = True) -> Path:
    """A folder with tokenizer.json / tokenizer_config.json of the Llama-2 vocabulary."""
    dest = _cache() / ("llama2-tokenizer-image" if image_token else "llama2-tokenizer")
    if (dest / "tokenizer.json").is_file():
        return dest
    from tokenizers import normalizers
    from transformers import AddedToken, AutoTokenizer

    src = gguf_files()
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=f"{NAME}.gguf")
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    if image_token:
        tok.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", special=True, normalized=False)]})
        assert tok.convert_tokens_to_ids("<image>") == 32000
    tmp = dest.with_name(dest.name + ".tmp")
    tok.save_pretrained(str(tmp))
    os.replace(tmp, dest)
    return dest


def reference_cases() -> list[tuple[str, list[int]]]:
    src = gguf_files()
    # each text is followed by "\n__ggml_vocab_test__\n"; each .out line holds one text's ids
    texts = (src / f"{NAME}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = (src / f"{NAME}.gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    assert len(ids) == len(texts), (len(ids), len(texts))
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]
