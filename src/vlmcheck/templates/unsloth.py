"""Unsloth's ``train_on_responses_only`` (unsloth-zoo ``dataset_utils.py``, 2026.10), modelled from its facts.

Unsloth trains through TRL's ``SFTTrainer`` on a text column (the conversation rendered with
``apply_chat_template(tokenize=False)``): TRL appends the EOS token when the text does not end with it and
tokenizes with ``tokenizer(text)``, special tokens included. ``train_on_responses_only(trainer,
instruction_part, response_part)`` then rebuilds every label from ``input_ids``:

- each marker is tokenized on its own, ``tokenizer(part, add_special_tokens=False)`` (``force_match=True``, the
  default: the marker's whole tokenization must appear). Since 2026 an edge token that changes when text touches
  it (probed with the characters ``\\ { a A 1 ( . < } >``) becomes optional, but only when the rest of the marker
  holds an added token;
- a label run starts right after each occurrence of the response marker and ends before the next instruction
  marker, before a BOS or the opener the two markers share (``<|im_start|>``), or on an EOS (kept);
- a sample whose markers are never found keeps every label at -100: Unsloth drops it (and raises when that is
  every sample). The marker is matched on token ids, so a marker that merges with the text next to it in the
  whole conversation (``"\\n"`` + ``"\\n\\nRoses"`` -> ``"\\n\\n\\n"``, ``"\\n###"`` vs ``"▁###"``) is never found.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.tokenizer import Tok

# unsloth-zoo dataset_utils.py: _MARKER_EDGE_PROBES
_EDGE_PROBES = ("\\", "{", "a", "A", "1", "(", ".", "<", "}", ">")


@dataclass
class Marker:
    """A marker's ids: the part that must match, and the optional edges around it."""

    text: str
    core: list[int]
    left: list[int]
    right: list[int]


def marker(text: str, tok: Tok) -> Marker:
    """The ids Unsloth matches for ``text`` (``force_match=True``)."""
    ids = tok.ids(text, add_special_tokens=False)
    n = len(ids)
    start, end = 0, n
    for c in _EDGE_PROBES:
        right = tok.ids(text + c, add_special_tokens=False)
        k = 0
        while k < min(n, len(right)) and right[k] == ids[k]:
            k += 1
        end = min(end, k)
        left = tok.ids(c + text, add_special_tokens=False)
        k = 0
        while k < min(n, len(left)) and left[len(left) - 1 - k] == ids[n - 1 - k]:
            k += 1
        start = max(start, n - k)
    if end > start and (start, end) != (0, n):
        added = tok.added()
        if any(str(getattr(added.get(i), "content", "")).strip() for i in ids[start:end]):
            return Marker(text, ids[start:end], ids[:start], ids[end:])
    return Marker(text, ids, [], [])


def _at(ids: list[int], j: int, seq: list[int]) -> bool:
    return bool(seq) and ids[j:j + len(seq)] == seq


def response_mask(ids: list[int], tok: Tok, instruction: Marker, response: Marker) -> list[bool]:
    """The tokens ``train_on_responses_only`` keeps as labels."""
    q, a = instruction, response
    if a.core == q.core[:len(a.core)] and a.right:  # a marker trimmed to the opener both roles share
        a = Marker(a.text, a.core + a.right, a.left, [])
    if q.core == a.core[:len(q.core)] and q.right:
        q = Marker(q.text, q.core + q.right, q.left, [])
    opener: list[int] = []
    for x, y in zip(q.core, a.core):
        if x != y:
            break
        opener.append(x)
    added = tok.added()
    if not (opener and all(i in added and added[i].special for i in opener)
            and any(added[i].content.strip() for i in opener)):
        opener = []
    bos, eos = tok.token_id(tok.special("bos_token")), tok.token_id(tok.special("eos_token"))
    n = len(ids)
    keep = [False] * n
    j = 0
    while j < n:
        if _at(ids, j, a.core):
            k = j + len(a.core)
            for x in a.right:
                if k < n and ids[k] == x:
                    k += 1
                else:
                    break
            begin, j = k, k
            while j < n:
                t = ids[j]
                if t == eos:
                    keep[begin:j + 1] = [True] * (j + 1 - begin)
                    break
                if t == bos or _at(ids, j, opener) or _at(ids, j, a.core):
                    keep[begin:j] = [True] * (j - begin)
                    j -= 1
                    break
                if j == n - 1 or _at(ids, j, q.core):
                    stop = j
                    for x in reversed(q.left):
                        if stop >= 1 and ids[stop - 1] == x:
                            stop -= 1
                        else:
                            break
                    if stop == n - 1:  # the last token of the sample stays in
                        stop = n
                    keep[begin:stop] = [True] * (stop - begin)
                    break
                j += 1
        j += 1
    return keep


def text_route_ids(text: str, tok: Tok) -> list[int]:
    """What TRL's ``SFTTrainer`` feeds Unsloth for a text column: EOS appended when missing, then
    ``tokenizer(text)`` with the tokenizer's special tokens (a template that writes ``<bos>`` itself gets two)."""
    eos = tok.special("eos_token")
    if eos and not text.endswith(eos):
        text += eos
    return tok.ids(text)
