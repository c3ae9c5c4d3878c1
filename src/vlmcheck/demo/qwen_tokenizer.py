"""Build the real Qwen2 / Qwen2-VL tokenizer offline, from the BPE ranks the `dashscope` wheel ships.

Qwen, Qwen2, Qwen2.5 and their VL models share one byte-level BPE of 151,643 ranks; the
`dashscope` package carries it as ``dashscope/resources/qwen.tiktoken`` (``base64(token) rank`` per
line). From those ranks we derive vocab and merges, add the Qwen2 pre-tokenizer and the special
tokens at their real ids, and write a ``tokenizer.json`` that transformers and `tokenizers` load
like the hub's. Used by the bundled demo and by the tests; needs no network and no transformers.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import zipfile
from pathlib import Path

# Qwen2 pre-tokenizer split pattern (Qwen2 tokenizer.json, "pre_tokenizer" -> Split -> Regex).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens in id order (Qwen2-VL-7B-Instruct / Qwen2.5-VL tokenizer_config.json
# "added_tokens_decoder"); the first one sits right after the 151,643 BPE ranks.
QWEN2_SPECIAL_TOKENS = [
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
]
# Qwen2.5 adds these after <|video_pad|> (Qwen2.5-VL tokenizer_config.json); they are not special.
QWEN25_EXTRA_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]

TIKTOKEN_MEMBER = "dashscope/resources/qwen.tiktoken"


def find_qwen_tiktoken(wheel: str | os.PathLike[str] | None = None) -> bytes:
    """Return the bytes of ``qwen.tiktoken`` from an installed `dashscope` or a downloaded wheel.

    Looks at, in order: ``wheel`` (a .whl path or a folder holding one), ``$VLMCHECK_DASHSCOPE_WHEEL``,
    and the installed `dashscope` package (found without importing it, so ``pip install --no-deps`` is
    enough).
    """
    candidates: list[Path] = []
    for source in (wheel, os.environ.get("VLMCHECK_DASHSCOPE_WHEEL")):
        if source:
            path = Path(source)
            candidates += sorted(path.glob("dashscope-*.whl")) if path.is_dir() else [path]
    for path in candidates:
        if path.is_file():
            with zipfile.ZipFile(path) as zf:
                return zf.read(TIKTOKEN_MEMBER)
    spec = importlib.util.find_spec("dashscope")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            tiktoken = Path(location) / "resources" / "qwen.tiktoken"
            if tiktoken.is_file():
                return tiktoken.read_bytes()
    raise FileNotFoundError(
        "qwen.tiktoken not found: `pip install --no-deps dashscope==2.0.2`, or "
        "`pip download --no-deps dashscope==2.0.2 -d DIR` and pass the wheel"
    )


def _byte_to_unicode() -> dict[int, str]:
    # The GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256+n.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def vocab_and_merges(tiktoken: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turn tiktoken ranks into a BPE vocab and an ordered merge list.

    A token of rank r is made by merging two shorter tokens; the merge's priority is r. Where a
    token can be split several ways, the split whose halves rank lowest comes first.
    """
    ranks: dict[bytes, int] = {}
    for line in tiktoken.splitlines():
        if line:
            encoded, rank = line.split()
            ranks[base64.b64decode(encoded)] = int(rank)
    alphabet = _byte_to_unicode()

    def as_str(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab: dict[str, int] = {}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for piece, piece_rank in ranks.items():
        vocab[as_str(piece)] = piece_rank
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ranks and right in ranks:
                merges.append((piece_rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return vocab, [(as_str(left), as_str(right)) for _, _, _, left, right in merges]


def build_qwen2_tokenizer(tiktoken: bytes, *, qwen25: bool = True):  # -> tokenizers.Tokenizer
    """The Qwen2(-VL) tokenizer as a `tokenizers.Tokenizer`."""
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

    vocab, merges = vocab_and_merges(tiktoken)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added one at a time, in id order, so each lands on its real id.
    for content in QWEN2_SPECIAL_TOKENS:
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    if qwen25:
        for content in QWEN25_EXTRA_TOKENS:
            tok.add_tokens([AddedToken(content, special=False, normalized=False)])
    assert tok.token_to_id("<|image_pad|>") == 151655, "special tokens landed on the wrong ids"
    return tok


def write_qwen2_tokenizer_files(dest: Path, tiktoken: bytes) -> None:
    """Write tokenizer.json + tokenizer_config.json as a Qwen2-VL checkpoint has them."""
    import json

    dest.mkdir(parents=True, exist_ok=True)
    tok = build_qwen2_tokenizer(tiktoken)
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
