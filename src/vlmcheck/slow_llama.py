"""The slow SentencePiece ``LlamaTokenizer`` as LLaVA runs it (``AutoTokenizer.from_pretrained(...,
use_fast=False)`` under the transformers LLaVA pins, 4.37.2), rebuilt on the ``sentencepiece`` library.

Facts from transformers 4.37.2 ``models/llama/tokenization_llama.py`` and ``tokenization_utils.py``:

- ``legacy`` unset means True. With ``legacy=False`` the SentencePiece model is loaded with
  ``add_dummy_prefix=False``; ``tokenize`` then prepends "▁" to the whole text once and drops it when a special
  token follows, and each text piece after an added token is encoded as ``unk_token + piece`` with the unk
  pieces cut off, so no "▁" appears after ``</s>`` (``</s>USER`` is ``['</s>', 'USER']``).
- Added tokens (the config's ``added_tokens_decoder`` and the named special tokens) split the text first (a
  trie, leftmost-longest); ``lstrip``/``rstrip`` eat the whitespace beside them. A SentencePiece control piece
  that is not an added token (``</s>`` in a Yi-style config) is plain text.
- ``add_bos_token`` / ``add_eos_token`` wrap the ids; truncation keeps room for them.

Needs the optional ``sentencepiece`` package (``pip install vlmcheck[llava]``).

>>> tok = SlowLlamaTokenizer.load("llava-v1.5-7b/")  # doctest: +SKIP
>>> tok.tokens(tok.ids("</s>USER"))  # legacy=False, as llava-v1.5 ships it  # doctest: +SKIP
['<s>', '</s>', 'USER']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmcheck.data.files import not_a_file
from vlmcheck.errors import ModelError, UsageError
from vlmcheck.model import read_checkpoint_json

_UNDERLINE = "▁"  # SentencePiece's whitespace symbol (SPIECE_UNDERLINE)


@dataclass(frozen=True)
class _Added:
    id: int
    lstrip: bool = False
    rstrip: bool = False


@dataclass
class SlowEncoding:
    """Ids with the character span of each token in the text (``(0, 0)`` for BOS/EOS); ``sequence_ids`` is
    None for the tokens the tokenizer adds, as in a ``tokenizers.Encoding``."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    sequence_ids: list[int | None]


def read_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json as transformers 4.37.2's ``from_pretrained`` sees it: a folder saved in the older
    format (no ``added_tokens_decoder``, as liuhaotian/llava-v1.5-7b) also takes special_tokens_map.json (its
    values win: llava-v1.5's ``pad_token`` "<unk>" comes from there) and added_tokens.json."""
    # read as the checkpoint reader reads them: a FIFO, a file too large or too deep is refused, never skipped
    config = read_checkpoint_json(folder / "tokenizer_config.json")
    if "added_tokens_decoder" in config:
        return config
    for key, value in read_checkpoint_json(folder / "special_tokens_map.json").items():
        if key == "additional_special_tokens" and isinstance(value, list):
            known = list(config.get(key) or [])
            value = known + [t for t in value if t not in known]
        config[key] = value
    if not_a_file(folder / "added_tokens.json") != "not found":
        added = read_checkpoint_json(folder / "added_tokens.json")
        config["added_tokens_decoder"] = {str(i): {"content": t} for t, i in added.items()}
    return config


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class SlowLlamaTokenizer:
    """``LlamaTokenizer`` (slow, SentencePiece) with transformers 4.37.2's behaviour; see the module docstring."""

    route = "slow"

    def __init__(self, model: bytes, config: Mapping[str, Any] | None = None) -> None:
        try:
            import sentencepiece as spm
            from sentencepiece import sentencepiece_model_pb2 as pb
        except ImportError as e:  # pragma: no cover - the extra is installed in the tests
            raise UsageError("the slow LlamaTokenizer route needs sentencepiece: pip install 'vlmcheck[llava]'") \
                from e
        self.config = dict(config or {})
        raw = self.config.get("legacy")
        self.legacy: bool = True if raw is None else bool(raw)
        self.add_bos = bool(self.config.get("add_bos_token", True))
        self.add_eos = bool(self.config.get("add_eos_token", False))
        proto = pb.ModelProto()  # type: ignore[attr-defined]
        proto.ParseFromString(model)
        if not self.legacy:  # get_spm_processor: the new behaviour turns the dummy prefix off
            proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.model_max_length = int(self.config.get("model_max_length") or 10**9)
        self.added: dict[str, _Added] = {}
        self._compiled: tuple[tuple[str, ...], re.Pattern[str]] | None = None
        for key, value in (self.config.get("added_tokens_decoder") or {}).items():
            text = _token_text(value)
            if text is not None:
                self.added[text] = _Added(int(key), bool(value.get("lstrip")), bool(value.get("rstrip")))
        self.special_tokens: dict[str, str] = {}
        # all_special_tokens: the named ones, additional_special_tokens, and tokens added later as special
        self.all_special: set[str] = {t for t in map(_token_text, self.config.get("additional_special_tokens") or [])
                                      if t is not None}
        defaults = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": None}
        for name, default in defaults.items():
            text = _token_text(self.config.get(name, default))
            if text is not None:
                self.special_tokens[name] = text
                self.all_special.add(text)
                if text not in self.added:
                    self.add_token(text)

    @classmethod
    def load(cls, folder: str | Path) -> SlowLlamaTokenizer:
        """A checkpoint folder with ``tokenizer.model`` (and tokenizer_config.json)."""
        folder = Path(folder)
        model = folder / "tokenizer.model"
        if not model.is_file():
            raise ModelError(f"no tokenizer.model at {folder}")
        return cls(model.read_bytes(), read_config(folder))

    def __len__(self) -> int:
        """``len(tokenizer)``: the pieces plus the added tokens that are not pieces."""
        n = self.sp.get_piece_size()
        return n + sum(1 for a in self.added.values() if a.id >= n)

    def add_token(self, text: str) -> int:
        """``tokenizer.add_tokens([text], special_tokens=True)``: a piece keeps its id, a new text gets the next
        one."""
        if text not in self.added:
            piece = self.sp.piece_to_id(text)
            known = piece != self.sp.unk_id() or text == self.sp.id_to_piece(self.sp.unk_id())
            self.added[text] = _Added(piece if known else len(self))
        self.all_special.add(text)
        return self.added[text].id

    def token_id(self, text: str | None) -> int | None:
        if text is None:
            return None
        if text in self.added:
            return self.added[text].id
        piece = self.sp.piece_to_id(text)
        return None if piece == self.sp.unk_id() and text != self.sp.id_to_piece(piece) else int(piece)

    def special(self, name: str) -> str | None:
        return self.special_tokens.get(name)

    def is_special(self, text: str) -> bool:
        return text in self.added

    def tokens(self, ids: list[int]) -> list[str]:
        by_id = {a.id: t for t, a in self.added.items()}
        return [by_id.get(i) or (self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else "?") for i in ids]

    # -- tokenize ------------------------------------------------------------------------------------------

    def _split(self, text: str, start: int) -> list[tuple[str, int, bool]]:
        """(piece, position, is-added-token), leftmost-longest on the added tokens, stripping as they ask."""
        out: list[tuple[str, int, bool]] = []
        last = 0
        for m in self._pattern().finditer(text):
            out.append((text[last:m.start()], start + last, False))
            out.append((m.group(), start + m.start(), True))
            last = m.end()
        out.append((text[last:], start + last, False))
        for k, (piece, _, added) in enumerate(out):
            if not added:
                continue
            spec = self.added[piece]
            if spec.rstrip and k + 1 < len(out) and out[k + 1][0]:
                right, rpos, _ = out[k + 1]
                stripped = right.lstrip()
                out[k + 1] = (stripped, rpos + len(right) - len(stripped), False)
            if spec.lstrip and k > 0 and out[k - 1][0]:
                left, lpos, _ = out[k - 1]
                out[k - 1] = (left.rstrip(), lpos, False)
        return [p for p in out if p[0]]

    def _pattern(self) -> re.Pattern[str]:
        """The added tokens, longest first (leftmost-longest, as transformers' trie splits)."""
        names = tuple(sorted((t for t in self.added if t), key=len, reverse=True))
        if self._compiled is None or self._compiled[0] != names:
            self._compiled = (names, re.compile("|".join(map(re.escape, names)) or r"(?!)"))
        return self._compiled[1]

    def _pieces(self, text: str) -> list[str]:
        """``_tokenize``: SentencePiece pieces of one text piece."""
        if self.legacy or not text.startswith((_UNDERLINE, " ")):
            return list(self.sp.encode(text, out_type=str))
        unk = self.special_tokens.get("unk_token", "<unk>")
        pieces = list(self.sp.encode(unk + text, out_type=str))
        n = len(self.sp.encode(unk))
        return pieces[n:] if len(pieces) >= n else pieces

    def _encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``tokenize`` then ids, with character offsets into ``text``."""
        prefixed = 0
        if not self.legacy and text:
            text = _UNDERLINE + text.replace(_UNDERLINE, " ")
            prefixed = 1
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        tokens: list[str] = []
        for piece, pos, added in self._split(text, 0):
            if added:
                ids.append(self.added[piece].id)
                offsets.append((pos, pos + len(piece)))
                tokens.append(piece)
                continue
            pieces = self._pieces(piece)
            ids += [self.added[p].id if p in self.added else int(self.sp.piece_to_id(p)) for p in pieces]
            offsets += _piece_offsets(pieces, piece, pos)
            tokens += pieces
        if prefixed and len(tokens) > 1 and tokens[0] == _UNDERLINE and tokens[1] in self.all_special:
            ids, offsets = ids[1:], offsets[1:]
        return ids, [(max(a - prefixed, 0), max(b - prefixed, 0)) for a, b in offsets]

    def encode(self, text: str, *, add_special_tokens: bool = True, max_length: int | None = None) -> SlowEncoding:
        """``tokenizer(text)`` (``truncation=True`` at ``max_length``: room is kept for BOS/EOS)."""
        ids, offsets = self._encode_text(text)
        bos = [self.token_id(self.special("bos_token"))] if add_special_tokens and self.add_bos else []
        eos = [self.token_id(self.special("eos_token"))] if add_special_tokens and self.add_eos else []
        if max_length is not None and len(ids) + len(bos) + len(eos) > max_length:
            keep = max(max_length - len(bos) - len(eos), 0)
            ids, offsets = ids[:keep], offsets[:keep]
        head = [i for i in bos if i is not None]
        tail = [i for i in eos if i is not None]
        return SlowEncoding(head + ids + tail, [(0, 0)] * len(head) + offsets + [(0, 0)] * len(tail),
                            [None] * len(head) + [0] * len(ids) + [None] * len(tail))

    def ids(self, text: str, *, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """``tokenizer(text).input_ids``."""
        return self.encode(text, add_special_tokens=add_special_tokens, max_length=max_length).ids


def _piece_offsets(pieces: list[str], text: str, pos: int) -> list[tuple[int, int]]:
    """The character span of each SentencePiece piece in ``text`` (which starts at ``pos``): "▁" stands for a
    space or for the dummy prefix, a byte piece ``<0xNN>`` for one UTF-8 byte of a character."""
    surface: list[bytes] = []
    for p in pieces:
        if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
            surface.append(bytes([int(p[3:5], 16)]))
        else:
            surface.append(p.replace(_UNDERLINE, " ").encode("utf-8"))
    total = sum(len(s) for s in surface)
    raw = text.replace(_UNDERLINE, " ").encode("utf-8")
    lead = max(total - len(raw), 0)  # a dummy "▁" the model put in front
    # byte position -> character position
    char_at = [0] * (len(raw) + 1)  # characters that start before byte b
    count = 0
    for b in range(len(raw) + 1):
        char_at[b] = count
        if b < len(raw) and (raw[b] & 0xC0) != 0x80:
            count += 1
    out = []
    at = -lead
    for s in surface:
        a, b = min(max(at, 0), len(raw)), min(max(at + len(s), 0), len(raw))
        at += len(s)
        # a byte piece inside a character gets that whole character's span
        start = char_at[a + 1] - 1 if a < b else char_at[a]
        out.append((pos + start, pos + char_at[b]))
    return out
