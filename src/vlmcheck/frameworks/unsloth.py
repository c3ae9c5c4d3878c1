"""Unsloth: the one home of its facts. Unsloth users launch a Python script (``FastVisionModel.from_pretrained(...,
max_seq_length=...)``, TRL's ``SFTTrainer`` with ``UnslothVisionDataCollator(model, processor, ...)``), so there is
no config for ``vlmcheck check`` to read yet; what is known of its data path lives here, and ``vlmcheck template``
and ``vlmcheck lint`` read it.

**The vision collator** (unsloth_zoo 2026.10.9 ``vision_utils.UnslothVisionDataCollator``; proved by running that
class, tests/assets/unsloth_golden/README.md):

- ``resize="min"`` (the default) resizes to the model's ``config.vision_config.image_size`` (512 when it has none; a
  ``[h, w]`` list is a fixed size), ``"max"`` leaves images alone, an int is that size, a pair a fixed size.
- An image is resized only when its side chosen by ``resize_dimension`` (0: width, the default; 1: height; ``max``,
  ``min``) is over the size: both sides scale by ``size / side`` with rounding half up, at least 1 px (LANCZOS), so
  the other side may stay above the size. ``snap_to_patch_size`` (off by default) is not modelled.
- ``max_seq_length`` is the collator's argument, else the model's ``max_seq_length`` (set by
  ``FastVisionModel.from_pretrained``); when there is one, the processor is called with ``truncation=True,
  max_length=max_seq_length`` (a cut from the right).
- On a machine without a GPU, ``import unsloth`` selects its CPU backend, whose ``UnslothVisionDataCollator`` raises
  NotImplementedError ("vision / audio models are not supported on the CPU backend yet").

**``train_on_responses_only``** (unsloth-zoo ``dataset_utils.py``, 2026.10) on TRL's text route:
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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS, UNSET
from vlmcheck.frameworks.trl import SFT_DEFAULTS
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


# -- the vision collator -------------------------------------------------------------------------------------

NAME = "unsloth"
RELEASE = "unsloth / unsloth_zoo 2026.10.9"
# vision_utils.UnslothVisionDataCollator.__init__: the size when the model's vision config has none
DEFAULT_IMAGE_SIZE = 512
RESIZE_DIMENSIONS = (0, 1, "max", "min")
# `vlmcheck lint`: Unsloth scripts drive TRL's SFTConfig (its option names and defaults); the collator's own
# max_seq_length is read from the call.
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    **TRAINING_ARGUMENTS_OPTIONS,
    "bf16": ("bf16", None),
    "gradient_checkpointing": ("gradient_checkpointing", True),
    "max_length": ("max_length", SFT_DEFAULTS["max_length"]),
    "packing": ("packing", SFT_DEFAULTS["packing"]),
    "padding_free": ("padding_free", SFT_DEFAULTS["padding_free"]),
    "assistant_only_loss": ("assistant_only_loss", SFT_DEFAULTS["assistant_only_loss"]),
    "truncation_mode": ("truncation_mode", SFT_DEFAULTS["truncation_mode"]),
    "max_pixels": ("max_pixels", UNSET),
}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads: an Unsloth vision script is SFT."""
    return "sft"


def collator_settings(*, resize: str | int | tuple[int, int] = "min", model_image_size: Any = None,
                      max_seq_length: int | None = None,
                      model_max_seq_length: int | None = None) -> tuple[int | tuple[int, int] | None, int | None]:
    """What ``UnslothVisionDataCollator(model, processor, max_seq_length=..., resize=...)`` resizes to (None: no
    resize) and cuts at (None: no truncation)."""
    size: int | tuple[int, int] | None
    if resize == "min":
        if model_image_size is None:
            size = DEFAULT_IMAGE_SIZE
        elif isinstance(model_image_size, (tuple, list)):
            size = (int(model_image_size[0]), int(model_image_size[1])) if model_image_size else None
        else:
            size = int(model_image_size)
    elif resize == "max":
        size = None
    elif isinstance(resize, (tuple, list)) and len(resize) == 2:
        size = (int(resize[0]), int(resize[1]))
    elif isinstance(resize, int) and not isinstance(resize, bool):
        size = resize
    else:
        raise ValueError(f"Unsloth: resize accepts 'min', 'max', a pair or one number, got {resize!r}")
    limit = max_seq_length if max_seq_length is not None else model_max_seq_length
    return size, (max(limit, 0) if isinstance(limit, int) else None)


def resized(width: int, height: int, *, size: int | tuple[int, int] | None,
            resize_dimension: int | str = 0) -> tuple[int, int]:
    """The image size the collator hands the processor (``_resize_images_inplace``)."""
    if size is None:
        return width, height
    if isinstance(size, tuple):
        return size
    if resize_dimension not in RESIZE_DIMENSIONS:
        raise ValueError(f"Unsloth: resize_dimension accepts 0, 1, 'max' or 'min', got {resize_dimension!r}")
    side = {0: width, 1: height, "max": max(width, height), "min": min(width, height)}[resize_dimension]
    if side <= size:
        return width, height
    return max(1, (width * size + side // 2) // side), max(1, (height * size + side // 2) // side)
