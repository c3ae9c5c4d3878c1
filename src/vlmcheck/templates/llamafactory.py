"""LLaMA-Factory's per-turn encoding (``data/processor/supervised.py``, ``processor_utils.infer_seqlen``),
modelled from its facts with the checkpoint's own chat template standing in for LLaMA-Factory's template.

``Template.encode_multiturn`` turns a conversation into (prompt, answer) pairs and encodes each piece on its own
with ``tokenizer.encode(piece, add_special_tokens=False)``; the sample is their concatenation, labels -100 on the
prompts. Truncation to ``cutoff_len`` goes pair by pair: ``infer_seqlen`` shares the remaining budget between a
prompt and its answer, so an answer keeps some tokens where a keep-the-start cut would lose all of them. Tokens
that would merge across a turn boundary in the whole text are split here: the model trains on a token sequence
that inference (which tokenizes the whole conversation) never produces.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.layout import infer_seqlen
from vlmcheck.templates.pieces import Pieces
from vlmcheck.tokenizer import Tok


@dataclass
class PerTurn:
    input_ids: list[int]
    supervised: list[bool]
    bounds: list[int]  # the end (token index) of each encoded piece, prompt and answer alternating


def encode(pieces: Pieces, tok: Tok, *, cutoff_len: int | None = None) -> PerTurn:
    """The sample LLaMA-Factory builds: each pair's prompt and answer encoded apart, truncated pair by pair."""
    ids: list[int] = []
    sup: list[bool] = []
    bounds: list[int] = []
    for prompt, answer in pieces.pairs():
        source = tok.ids(prompt, add_special_tokens=False)
        target = tok.ids(answer, add_special_tokens=False)
        if cutoff_len is not None:
            if len(ids) >= cutoff_len:
                break
            keep_source, keep_target = infer_seqlen(len(source), len(target), cutoff_len - len(ids))
            source, target = source[:keep_source], target[:keep_target]
        ids += source
        sup += [False] * len(source)
        bounds.append(len(ids))
        ids += target
        sup += [True] * len(target)
        bounds.append(len(ids))
    return PerTurn(ids, sup, bounds)
