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

from cache_lock import serialized

SDIST = "llama_cpp_python-0.3.36.tar.gz"
MEMBER_DIR = "vendor/llama.cpp/models/"
NAME = "ggml-vocab-llama-spm"


def _cache() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


@serialized
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


@serialized
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


@serialized
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


@serialized
def sentencepiece_model() -> Path:
    """The Llama-2 vocabulary as the ``tokenizer.model`` a Llama / Vicuna / LLaVA checkpoint ships.

    Built from the GGUF's pieces, scores and piece types (llama.cpp keeps SentencePiece's type numbers) with
    Llama's normalizer spec ("identity", dummy prefix, whitespace escaped, no whitespace folding) and BPE with
    byte fallback; it reproduces llama.cpp's reference encodings (tests/test_llama_vocab.py).
    """
    dest = _cache() / "llama2-sentencepiece" / "tokenizer.model"
    if dest.is_file():
        return dest
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(str(gguf_files() / f"{NAME}.gguf"))

    def field(name: str) -> list:  # type: ignore[type-arg]
        f = reader.fields[name]
        return [f.parts[i] for i in f.data]

    model = pb.ModelProto()  # type: ignore[attr-defined]
    for text, score, kind in zip(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"),
                                 field("tokenizer.ggml.token_type")):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = bytes(text).decode(), float(score[0]), int(kind[0])
    model.trainer_spec.model_type = pb.TrainerSpec.BPE  # type: ignore[attr-defined]
    model.trainer_spec.vocab_size = len(model.pieces)
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
    model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, dest)
    return dest


# tokenizer_config.json of llava-v1.5-7b (Vicuna v1.5): the slow LlamaTokenizer, legacy=False
LLAVA_V15_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                    "legacy": False, "model_max_length": 2048, "padding_side": "right", "sp_model_kwargs": {}}


def llama2_checkpoint(dest: Path, *, fast: bool = False, slow: bool = True, added: tuple[str, ...] = (),
                      special_tokens_map: dict[str, object] | None = None, **config: object) -> Path:
    """A tokenizer folder as a LLaVA checkpoint ships it: ``tokenizer.model`` (``slow``), ``tokenizer.json``
    (``fast``), and tokenizer_config.json (llava-v1.5's, updated by ``config``; a None value removes the key).
    ``added`` are special tokens added after the vocabulary (ids 32000, 32001, ...).

    With ``special_tokens_map``, the folder is in the older format liuhaotian/llava-v1.5-7b was saved in
    (transformers 4.31): no ``added_tokens_decoder``, special tokens as ``{"__type": "AddedToken", ...}``, and a
    special_tokens_map.json (where llava-v1.5 sets ``pad_token`` to ``<unk>``)."""
    import json
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    settings = {**LLAVA_V15_CONFIG, **config}
    settings = {k: v for k, v in settings.items() if v is not None or k == "pad_token"}
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    # a piece of the SentencePiece vocabulary is a special token only when the config names it (llava-v1.6-34b's
    # Yi tokenizer names other tokens: "</s>" is then plain text)
    named = {settings.get(k) for k in ("unk_token", "bos_token", "eos_token", "pad_token")}
    decoder = {str(i): {"content": t, **entry} for i, t in enumerate(["<unk>", "<s>", "</s>"]) if t in named}
    for k, t in enumerate(added):
        decoder[str(32000 + k)] = {"content": t, **entry}
    if special_tokens_map is None:
        settings["added_tokens_decoder"] = decoder
    else:
        for key in ("unk_token", "bos_token", "eos_token"):
            if isinstance(settings.get(key), str):
                settings[key] = {"__type": "AddedToken", "content": settings[key], "lstrip": False,
                                 "normalized": False, "rstrip": False, "single_word": False}
        (dest / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=1), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    if slow:
        shutil.copyfile(sentencepiece_model(), dest / "tokenizer.model")
    if fast:
        from tokenizers import AddedToken, Tokenizer

        backend = Tokenizer.from_file(str(llama2_tokenizer_dir(image_token=False) / "tokenizer.json"))
        if added:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
        # written as the tokenizers of LLaVA's time read it (and Meta's Llama-2 tokenizer.json is): merges as
        # "a b" strings, no ignore_merges key; tokenizers 0.15 cannot parse the newer form
        data = json.loads(backend.to_str())
        data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        data["model"].pop("ignore_merges", None)
        (dest / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dest
