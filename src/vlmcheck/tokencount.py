"""Exact tokenization that tokenizes each distinct stretch of text between special tokens once.

The ``tokenizers`` library cuts a text at its added tokens (special or not) before anything else runs, then
normalizes, pre-tokenizes and tokenizes each stretch between them on its own (``AddedVocabulary::
extract_and_normalize`` in the library's ``added_vocabulary.rs``). So a stretch gives the same ids, and the
same offsets counted from its own start, wherever it stands: a system prompt, a role header or a recurring
question need tokenizing once per scan. :class:`SegmentEncoder` splits each text at the added tokens, takes
the stretches it has already seen from a bounded cache, tokenizes the new ones in one ``encode_batch`` and
puts the ids and offsets back together, identical to ``Tokenizer.encode_batch`` of the whole text.

The stretches are independent only for tokenizers built from parts that do not look beyond their stretch.
:func:`text_encoder` checks the tokenizer's parts against the ones known to be (below) and returns the
tokenizer itself for anything else: an added token that strips the whitespace next to it or matches only
whole words, added tokens matched after normalization, truncation or padding, BPE dropout, a post-processor
other than BOS/EOS templates, Metaspace's ``prepend_scheme="first"`` (it adds "▁" only at the start of the whole
string, so a stretch tokenizes differently there).

``VLMCHECK_SEGMENT_CACHE=0`` turns the cache off (every text is tokenized whole, as before);
``VLMCHECK_SEGMENT_CACHE_MB`` bounds its memory (default 64). ``tests/test_tokencount.py`` compares every
id and offset, and whole scans' records, with and without it, on the real tokenizers of several families.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

# Parts of a tokenizer.json that act on one stretch between added tokens and nothing else, by "type".
_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Replace", "Prepend", "Strip", "StripAccents",
                "Precompiled", "Nmt", "BertNormalizer", "Sequence"}
_PRE_TOKENIZERS = {"ByteLevel", "Split", "Digits", "Whitespace", "WhitespaceSplit", "Punctuation",
                   "BertPreTokenizer", "UnicodeScripts", "CharDelimiterSplit", "Metaspace", "Sequence"}
_PROCESSORS = {"ByteLevel", "TemplateProcessing", "Sequence"}  # BOS/EOS around the text; offsets per token
_MODELS = {"BPE", "WordPiece", "WordLevel", "Unigram"}
_MAX_SEGMENT = 65_536  # characters; longer stretches are tokenized, never kept
_SEEN = 1 << 16  # hashes of stretches seen once (about 4 MiB); cleared when full
# Looking each stretch up costs Python time per text; on data that repeats little it costs more than it saves
# (docs/performance.md). After every _JUDGED texts, when fewer than _WORTH of them were put together from the
# cache, the next _SKIPPED calls tokenize whole texts straight away; then the cache is tried again.
_JUDGED = 2048
_WORTH = 0.05
_SKIPPED = 15


class Encoded:
    """What the scan reads of an encoding: ``ids`` and character ``offsets`` (as ``tokenizers.Encoding``)."""

    __slots__ = ("ids", "offsets")

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]) -> None:
        self.ids = ids
        self.offsets = offsets


class TextEncoder(Protocol):
    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = ...) -> list[Any]: ...


def _kinds(state: Any) -> list[dict[str, Any]]:
    """Every component of a serialized normalizer/pre-tokenizer/processor, sequences flattened."""
    if state is None:
        return []
    out = [state]
    for key in ("normalizers", "pretokenizers", "processors"):
        for part in state.get(key) or []:
            out.extend(_kinds(part))
    return out


def _state(component: Any) -> Any:
    return None if component is None else json.loads(component.__getstate__())


def why_not_segments(tokenizer: Any) -> str | None:
    """Why stretches between added tokens might not tokenize alike wherever they stand; None when they do."""
    if getattr(tokenizer, "encode_special_tokens", False):
        return "special tokens are encoded as text"
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        return "the tokenizer truncates or pads"
    model = type(tokenizer.model).__name__
    if model not in _MODELS or getattr(tokenizer.model, "dropout", None):
        return f"model {model} (with dropout?)"
    normalizers = _kinds(_state(tokenizer.normalizer))
    for label, parts, known in (("normalizer", normalizers, _NORMALIZERS),
                                ("pre-tokenizer", _kinds(_state(tokenizer.pre_tokenizer)), _PRE_TOKENIZERS),
                                ("post-processor", _kinds(_state(tokenizer.post_processor)), _PROCESSORS)):
        for part in parts:
            if part.get("type") not in known:
                return f"{label} {part.get('type')}"
            if part.get("type") == "Metaspace" and part.get("prepend_scheme") == "first":
                return "Metaspace prepends only at the start of the whole text"
    for token in tokenizer.get_added_tokens_decoder().values():
        if token.lstrip or token.rstrip or token.single_word:
            return f"added token {token.content!r} strips whitespace or matches whole words only"
        if token.normalized and normalizers:
            return f"added token {token.content!r} is matched after normalization"
    return None


class SegmentEncoder:
    """``encode_batch`` of whole texts, with each stretch between added tokens tokenized once (module doc).

    >>> from tokenizers import Tokenizer  # doctest: +SKIP
    >>> enc = SegmentEncoder(Tokenizer.from_file("tokenizer.json"))  # doctest: +SKIP
    >>> enc.encode_batch(["<|im_start|>user\\nHi<|im_end|>"], add_special_tokens=True)[0].ids  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, *, max_bytes: int = 64 << 20) -> None:
        self.tokenizer = tokenizer
        self.max_bytes = max_bytes
        added = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.content}
        self._added = added
        # longest first: at each position the longest token wins, as the library's leftmost-longest matching
        alternatives = sorted(added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        self._frames = {special: self._frame(special) for special in (False, True)}
        self._cache: OrderedDict[str, tuple[array[int], array[int]]] = OrderedDict()
        self._seen: set[int] = set()  # hashes of stretches seen once: kept only when seen again
        self._bytes = 0
        self._judged = self._pieced = 0  # texts since the last judgement, and how many were put together
        self._skip = 0  # calls left that tokenize whole texts without looking at the cache

    def _frame(self, special: bool) -> tuple[list[int], list[tuple[int, int]], list[int], list[tuple[int, int]]]:
        """The ids/offsets the post-processor puts before and after the text (BOS, EOS)."""
        bare = self.tokenizer.encode("a", add_special_tokens=False)
        full = self.tokenizer.encode("a", add_special_tokens=special)
        n = len(bare.ids)
        for i in range(len(full.ids) - n + 1):
            if full.ids[i:i + n] == bare.ids:
                return full.ids[:i], full.offsets[:i], full.ids[i + n:], full.offsets[i + n:]
        raise ValueError("the post-processor changes the text's own tokens")

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Any]:
        """As ``Tokenizer.encode_batch``: a text whose stretches are mostly new is tokenized whole (putting
        pieces together costs Python time per token); one that is mostly known is put together from the
        cache and the tokenized new stretches. On data where few texts are mostly known, the cache is left
        alone for a while (:data:`_WORTH`)."""
        if self._skip:
            self._skip -= 1
            return self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        split = self._split
        cache, seen = self._cache, self._seen
        whole: list[int] = []  # indices of texts tokenized whole
        pieced: list[tuple[int, list[str]]] = []
        hits: dict[str, tuple[array[int], array[int]]] = {}  # held here: _keep may evict them from the cache
        missing: dict[str, None] = {}  # stretches to tokenize: of pieced texts, and those seen a second time
        admit: set[str] = set()  # the ones seen a second time: kept (a stretch seen once is most often an answer)
        for i, text in enumerate(texts):
            parts = split.split(text) if split is not None else [text]
            known = total = 0
            for k in range(0, len(parts), 2):
                segment = parts[k]
                if not segment:
                    continue
                total += len(segment)
                entry = hits.get(segment) or cache.get(segment)
                if entry is not None:
                    known += len(segment)
                    if segment not in hits:
                        hits[segment] = entry
                        cache.move_to_end(segment)
                elif len(segment) <= _MAX_SEGMENT:
                    key = hash(segment)
                    if key in seen:
                        missing[segment] = None  # seen before: tokenized now, and kept
                        admit.add(segment)
                    else:
                        if len(seen) >= _SEEN:
                            seen.clear()
                        seen.add(key)
            if known * 4 >= total and known:
                pieced.append((i, parts))
                for k in range(0, len(parts), 2):
                    if parts[k] and parts[k] not in hits:
                        missing[parts[k]] = None
            else:
                whole.append(i)
        self._judged += len(texts)
        self._pieced += len(pieced)
        if self._judged >= _JUDGED:
            if self._pieced < _WORTH * self._judged:
                self._skip = _SKIPPED
            self._judged = self._pieced = 0
        out: list[Any] = [None] * len(texts)
        if whole:
            encoded = self.tokenizer.encode_batch([texts[i] for i in whole], add_special_tokens=add_special_tokens)
            for i, enc in zip(whole, encoded):
                out[i] = enc
        fresh: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
        if missing:
            new = list(missing)
            for segment, enc in zip(new, self.tokenizer.encode_batch(new, add_special_tokens=False)):
                fresh[segment] = (enc.ids, enc.offsets)
            self._keep({segment: fresh[segment] for segment in admit})
        if not pieced:
            return out
        head_ids, head_offsets, tail_ids, tail_offsets = self._frames[add_special_tokens]
        added = self._added
        for i, parts in pieced:
            ids = list(head_ids)
            offsets = list(head_offsets)
            at = 0
            for k, part in enumerate(parts):
                if k % 2:  # an added token
                    ids.append(added[part])
                    offsets.append((at, at + len(part)))
                elif part:
                    if part in fresh:
                        seg_ids, seg_offsets = fresh[part]
                        ids += seg_ids
                        offsets += seg_offsets if at == 0 else [(s + at, e + at) for s, e in seg_offsets]
                    else:
                        kept_ids, flat = hits[part]
                        ids += kept_ids
                        if at:
                            offsets += zip(map(at.__add__, flat[0::2]), map(at.__add__, flat[1::2]))
                        else:
                            offsets += zip(flat[0::2], flat[1::2])
                at += len(part)
            ids += tail_ids
            offsets += tail_offsets
            out[i] = Encoded(ids, offsets)
        return out

    def _keep(self, fresh: dict[str, tuple[list[int], list[tuple[int, int]]]]) -> None:
        """Keep newly tokenized stretches within ``max_bytes``, dropping the least recently used."""
        cache = self._cache
        for segment, (ids, offsets) in fresh.items():
            if len(segment) > _MAX_SEGMENT or segment in cache:
                continue
            entry = (array("i", ids), array("i", [x for pair in offsets for x in pair]))
            cache[segment] = entry
            self._bytes += _size(segment, entry)
            while self._bytes > self.max_bytes and cache:
                old, old_entry = cache.popitem(last=False)
                self._bytes -= _size(old, old_entry)


def _size(segment: str, entry: tuple[array[int], array[int]]) -> int:
    return 2 * len(segment) + 4 * (len(entry[0]) + len(entry[1])) + 200


def text_encoder(tokenizer: Any) -> TextEncoder:
    """The :class:`SegmentEncoder` of ``tokenizer`` where stretches between added tokens tokenize alike wherever
    they stand and ``VLMCHECK_SEGMENT_CACHE`` is not ``0``; the tokenizer itself otherwise."""
    if os.environ.get("VLMCHECK_SEGMENT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return tokenizer
    if why_not_segments(tokenizer) is not None:
        return tokenizer
    try:
        megabytes = float(os.environ.get("VLMCHECK_SEGMENT_CACHE_MB", "64"))
    except ValueError:
        megabytes = 64.0
    try:
        return SegmentEncoder(tokenizer, max_bytes=int(megabytes * (1 << 20)))
    except ValueError:  # a post-processor that touches the text's own tokens
        return tokenizer
