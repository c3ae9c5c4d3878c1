"""Unsloth: the one home of its facts. Unsloth users launch a Python script or notebook
(``FastVisionModel.from_pretrained(..., max_seq_length=...)``, TRL's ``SFTTrainer`` with
``UnslothVisionDataCollator(model, processor, ...)``). ``vlmcheck check train.py`` reads it without running it
(:mod:`vlmcheck.frameworks.pyscript`; :func:`read_script` says which calls and arguments) and judges every row as
the collator builds its batch (:class:`Run`); ``vlmcheck template`` and ``vlmcheck lint`` read the facts here too.

**The rows** (``UnslothVisionDataCollator.__call__``): the messages (``messages``, ``conversations`` or the example
itself); the images of an ``images`` column, else every image part of the messages, each through ``fetch_image``
(a smart resize to multiples of ``2 * patch_size`` between 4 and 16,384 units of 28x28 pixels; a ratio over 200
raises ValueError); then the collator's resize (below) and the processor. Labels: every token but the placeholder
tokens (``vlm_tokens.IMAGE_TOKENS``, the tokenizer's image token) and padding.

**The vision collator** (unsloth_zoo 2026.10.9 ``vision_utils.UnslothVisionDataCollator``; proved by running that
class, tests/assets/unsloth_golden/README.md):

- ``resize="min"`` (the default) resizes to the model's ``config.vision_config.image_size`` (512 when it has none; a
  ``[h, w]`` list is a fixed size), ``"max"`` leaves images alone, an int is that size, a pair a fixed size.
- An image is resized only when its side chosen by ``resize_dimension`` (0: width, the default; 1: height; ``max``,
  ``min``) is over the size: both sides scale by ``size / side`` with rounding half up, at least 1 px (LANCZOS), so
  the other side may stay above the size. ``snap_to_patch_size`` (off by default) is not modelled.
- ``max_seq_length`` is the collator's argument, else the model's ``max_seq_length`` (set by
  ``FastVisionModel.from_pretrained``, 2048 by default); when there is one, the processor is called with
  ``truncation=True, max_length=max_seq_length`` (a cut from the right; a cut through an image's tokens raises
  "Mismatch in `image` token count"). ``SFTConfig(max_length=...)`` does not cut the collator's batches.
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

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.chat import render_chat
from vlmcheck.data.files import not_a_file
from vlmcheck.data.images import ImageProblem, decode_data_url, probe_bytes, probe_path
from vlmcheck.data.readers import BadRow
from vlmcheck.errors import UsageError
from vlmcheck.families import Expansion, Overrides
from vlmcheck.frameworks import pyscript, trl
from vlmcheck.frameworks._run import json_loadable, loaded_rows, locate, run_version
from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS, UNSET
from vlmcheck.frameworks.trl import SFT_DEFAULTS
from vlmcheck.model import ModelSpec, load_model, read_checkpoint_json
from vlmcheck.results import SampleResult
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


# -- vlmcheck check train.py: the script, read without running it --------------------------------------------------

VERSIONS = "unsloth / unsloth_zoo 2026.10.9, transformers 5.x processors"
# unsloth 2026.10.9 requires datasets >= 3.4.1, < 5.0 (some releases excluded); the newest it accepts, 4.8.5, is
# what pip installs with it
UNSLOTH_DATASETS = "4.8.5"
UNSLOTH_DATASETS_FROM = (3, 4, 1)
UNSLOTH_DATASETS_BELOW = (5, 0)
SCRIPT_SUFFIXES = (".py", ".ipynb")
# `vlmcheck scan --framework unsloth` has no config: the collator's resizes and cut come from the script
SCAN_DEFAULTS: dict[str, Any] | None = None
SCAN_REFUSAL = ("Unsloth resizes images and cuts in its collator, with settings the script passes: run vlmcheck "
                "check on the training script or notebook")
# unsloth/models/loader.py: the loaders whose from_pretrained takes max_seq_length = 2048 by default
LOADERS = ("FastVisionModel", "FastModel", "FastLanguageModel")
LOADER_MAX_SEQ_LENGTH = 2048
# vision_utils.UnslothVisionDataCollator.__init__'s parameters, in order (positional calls)
COLLATOR_PARAMS = ("model", "processor", "max_seq_length", "formatting_func", "resize", "ignore_index",
                   "train_on_responses_only", "instruction_part", "response_part", "force_match", "num_proc",
                   "completion_only_loss", "pad_to_multiple_of", "resize_dimension", "snap_to_patch_size",
                   "last_response_only", "chat_template_kwargs", "mask_out_tokens")
# vision_utils: the patch size when the vision config has none (IMAGE_FACTOR // 2), and fetch_image's smart_resize
# bounds for an image given inside the messages (MIN_PIXELS, MAX_PIXELS, MAX_RATIO)
DEFAULT_PATCH_SIZE = 14
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
FETCH_MAX_RATIO = 200
# vlm_tokens.IMAGE_TOKENS: placeholder tokens the collator never trains on (with the tokenizer's image_token and
# pad token, get_padding_tokens_ids)
IMAGE_TOKENS = (
    "<|image|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<image>",
    "</image>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<image_soft_token>", "<start_of_image>", "<end_of_image>",
    "<|image>", "<image|>", "<|video|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_LINE_BREAK|>", "<|IMG_PATCH|>",
    "<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
    "<|media_begin|>", "<|media_content|>", "<|media_pad|>", "<|media_end|>",
)
# datasets' load_dataset builders whose data_files vlmcheck reads
DATA_BUILDERS = ("json", "parquet")


def _round(x: float, f: int) -> int:
    return round(x / f) * f


def fetch_size(width: int, height: int, *, factor: int) -> tuple[int, int]:
    """The size ``vision_utils.fetch_image`` gives an image found inside the messages (``smart_resize`` with the
    collator's ``patch_size * 2``, 4 to 16,384 units of 28x28 pixels); raises ValueError as it does for a ratio
    over 200."""
    import math

    if max(width, height) / min(width, height) > FETCH_MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {FETCH_MAX_RATIO}, got "
                         f"{max(width, height) / min(width, height)}")
    h = max(factor, _round(height, factor))
    w = max(factor, _round(width, factor))
    if h * w > FETCH_MAX_PIXELS:
        beta = math.sqrt(height * width / FETCH_MAX_PIXELS)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < FETCH_MIN_PIXELS:
        beta = math.sqrt(FETCH_MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w, h


@dataclass
class Script:
    """An Unsloth training script or notebook, read statically: what its calls set, Unsloth's defaults for the rest."""

    path: Path
    model: str | None
    loader: str  # the call that loads the model, as written
    model_max_seq_length: int | None  # from_pretrained(max_seq_length=...), 2048 when unset
    collator: dict[str, Any]  # UnslothVisionDataCollator's arguments as read (by name)
    responses: tuple[str, str] | None  # (instruction_part, response_part) when responses only are trained
    responses_from: str | None  # where the markers were set
    sft: dict[str, Any]  # SFTConfig's arguments as read
    dataset: str | None  # load_dataset's path or builder, as written
    files: tuple[Path, ...]  # the local files it reads
    split: str
    mapping: Any  # the row -> example mapping (pyscript.Column placeholders), None: rows are the examples
    mapping_merges: bool  # Dataset.map keeps the row's other columns; a list comprehension does not
    mapping_name: str | None
    swapped_template: str | None  # get_chat_template(processor, NAME) before training

    def cut(self) -> tuple[int | None, str]:
        """The collator's max_seq_length and the setting it comes from."""
        value = self.collator.get("max_seq_length")
        if value is not None:
            return value, "UnslothVisionDataCollator(max_seq_length = ...)"
        return self.model_max_seq_length, f"{self.loader}(max_seq_length = ...)"


def _is_unsloth(script: pyscript.Script) -> bool:
    return bool(script.imports & {"unsloth", "unsloth_zoo"})


def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """An Unsloth script or notebook (a .py or .ipynb importing unsloth), as the settings ``open_run`` reads; None
    for any other file."""
    if path.suffix.lower() not in SCRIPT_SUFFIXES:
        return None
    script = pyscript.read_source(text, path=path)
    if not _is_unsloth(script):
        return None
    return {"unsloth_script": script}


def claims(raw: dict[str, Any]) -> bool:
    """A script :func:`read_launch` read."""
    return isinstance(raw.get("unsloth_script"), pyscript.Script)


def _known(value: Any, what: str, path: Path, hint: str = "") -> Any:
    """``value``, or a refusal naming the setting vlmcheck cannot read without running the script."""
    found = _first_unresolved(value)
    if found is not None:
        raise UsageError(f"{path}: {what} cannot be read without running the script ({found.why}); "
                         f"{hint or 'write it as a literal, or as a name assigned a literal'}")
    return value


def _first_unresolved(value: Any) -> pyscript.Unresolved | None:
    if isinstance(value, pyscript.Unresolved):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_unresolved(item)
            if found is not None:
                return found
    return None


def _int_setting(value: Any, what: str, path: Path) -> int | None:
    value = _known(value, what, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{path}: {what} is {value!r}; Unsloth takes a whole number")
    return value


def read_script(script: pyscript.Script, *, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Script:
    """The settings an Unsloth script trains with, Unsloth's defaults filled in; a clear refusal for any setting
    that cannot be read without running it."""
    path = script.path
    collators = script.calls_to("UnslothVisionDataCollator")
    if not collators:
        raise UsageError(f"{path}: no UnslothVisionDataCollator(...) call; vlmcheck check reads Unsloth vision runs "
                         "(SFTTrainer with data_collator = UnslothVisionDataCollator(model, processor))")
    trainers = script.calls_to("SFTTrainer")
    trainer = trainers[-1] if trainers else None
    inline = [c for c in collators if trainer is not None and any(
        kw.arg == "data_collator" and kw.value is c.node for kw in trainer.node.keywords)]
    collator_call = inline[0] if inline else collators[-1]
    collator: dict[str, Any] = {}
    for k, name in enumerate(COLLATOR_PARAMS):
        value = collator_call.arg(k, name, pyscript.Unresolved("unset"))
        if not (isinstance(value, pyscript.Unresolved) and value.why == "unset"):
            collator[name] = value
    where = f"UnslothVisionDataCollator (line {collator_call.line})"
    for name in ("formatting_func",):
        if collator.get(name) is not None:
            raise UsageError(f"{path}: {where}: {name} rewrites every example in code vlmcheck does not run; map the "
                             "dataset to messages before training instead")
    for name in ("max_seq_length", "resize", "resize_dimension", "train_on_responses_only", "instruction_part",
                 "response_part", "snap_to_patch_size", "last_response_only", "mask_out_tokens", "chat_template_kwargs"):
        if name in collator:
            collator[name] = _known(collator[name], f"{where} {name}", path)
    collator["max_seq_length"] = _int_setting(collator.get("max_seq_length"), f"{where} max_seq_length", path)
    for name, why in (("snap_to_patch_size", "snapping resized images to the patch grid"),
                      ("last_response_only", "training on the last answer only"),
                      ("mask_out_tokens", "masking tokens inside answers"),
                      ("chat_template_kwargs", "extra chat template arguments")):
        if collator.get(name):
            raise UsageError(f"{path}: {where}: {name} ({why}) is not modelled by vlmcheck yet")

    loaders = [c for c in script.calls if any(c.name == f"{n}.from_pretrained" or c.name.endswith(f".{n}.from_pretrained")
                                              for n in LOADERS) and c.line <= collator_call.line]
    if not loaders:
        raise UsageError(f"{path}: no FastVisionModel.from_pretrained(...) call before the collator; vlmcheck reads "
                         "the model and its max_seq_length from it")
    loader = loaders[-1]
    loader_name = loader.name.split(".")[-2] + ".from_pretrained"
    model_name = loader.arg(0, "model_name", "unsloth/Llama-3.2-11B-Vision-Instruct-bnb-4bit")
    if model is None:
        model_name = _known(model_name, f"{loader_name} model_name (line {loader.line})", path,
                            "pass --model PATH (a local checkpoint folder)")
    model_max = _int_setting(loader.arg(1, "max_seq_length", LOADER_MAX_SEQ_LENGTH),
                             f"{loader_name} max_seq_length (line {loader.line})", path)

    responses, responses_from = None, None
    if collator.get("train_on_responses_only"):
        parts = collator.get("instruction_part"), collator.get("response_part")
        if not all(isinstance(p, str) for p in parts):
            raise UsageError(f"{path}: {where}: train_on_responses_only needs instruction_part and response_part "
                             "strings (Unsloth asserts it)")
        responses, responses_from = (str(parts[0]), str(parts[1])), where
    for call in script.calls_to("train_on_responses_only"):
        if call.line < collator_call.line or responses is not None:
            continue  # the collator already masks: Unsloth leaves it as it is
        parts = (_known(call.arg(1, "instruction_part"), f"train_on_responses_only instruction_part (line {call.line})",
                        path),
                 _known(call.arg(2, "response_part"), f"train_on_responses_only response_part (line {call.line})", path))
        if not all(isinstance(p, str) for p in parts):
            raise UsageError(f"{path}: train_on_responses_only (line {call.line}) needs instruction_part and "
                             "response_part strings")
        if call.arg(7, "last_response_only") or call.arg(8, "mask_out_tokens"):
            raise UsageError(f"{path}: train_on_responses_only (line {call.line}): last_response_only and "
                             "mask_out_tokens are not modelled by vlmcheck yet")
        responses, responses_from = (str(parts[0]), str(parts[1])), f"train_on_responses_only (line {call.line})"

    sft: dict[str, Any] = {}
    configs = script.calls_to("SFTConfig")
    if configs:
        sft = {k: v for k, v in configs[-1].kwargs.items() if k in (
            "max_length", "max_seq_length", "dataset_text_field", "dataset_kwargs", "remove_unused_columns",
            "packing", "per_device_train_batch_size")}

    swapped = [c for c in script.calls_to("get_chat_template") if trainer is None or c.line <= trainer.line]
    swapped_template = None
    if swapped:
        name = swapped[-1].arg(1, "chat_template", "chatml")
        swapped_template = name if isinstance(name, str) else "(not a literal)"

    dataset, files, split, mapping, merges, mapping_name = _data(script, trainer, data=data, path_map=path_map)
    return Script(path=path, model=model if model is not None else str(model_name), loader=loader_name,
                  model_max_seq_length=model_max, collator=collator, responses=responses,
                  responses_from=responses_from, sft=sft, dataset=dataset, files=files, split=split, mapping=mapping,
                  mapping_merges=merges, mapping_name=mapping_name, swapped_template=swapped_template)


def _before(script: pyscript.Script, name: str, line: int) -> ast.expr | None:
    """The last value assigned to ``name`` before ``line``."""
    values = [v for v in script.assigned.get(name, []) if getattr(v, "lineno", 0) < line]
    return values[-1] if values else None


def _call_at(script: pyscript.Script, node: ast.AST) -> pyscript.Call | None:
    return next((c for c in script.calls if c.node is node), None)


def _data(script: pyscript.Script, trainer: pyscript.Call | None, *, data: str | None,
          path_map: Mapping[str, str] | None) -> tuple[str | None, tuple[Path, ...], str, Any, bool, str | None]:
    """Where the training rows come from and how each becomes the collator's example: follow SFTTrainer's
    train_dataset back through ``[convert(s) for s in dataset]`` / ``dataset.map(convert)`` to ``load_dataset``."""
    path = script.path
    node: ast.expr | None = None
    if trainer is not None:
        node = next((kw.value for kw in trainer.node.keywords if kw.arg == "train_dataset"), None)
    mapping: Any = None
    merges, mapping_name = False, None
    load: pyscript.Call | None = None
    line = trainer.line if trainer is not None else 10**9
    for _ in range(12):  # a few hops: names, a mapping, a split, load_dataset
        if node is None:
            break
        if isinstance(node, ast.Name):
            value = _before(script, node.id, line)
            if value is None:
                break
            line = value.lineno
            node = value
            continue
        if isinstance(node, ast.Subscript):  # dataset["train"]
            node = node.value
            continue
        if isinstance(node, ast.ListComp) and isinstance(node.elt, ast.Call) and len(node.generators) == 1:
            call = node.elt
            if mapping is None and isinstance(call.func, ast.Name) and call.func.id in script.functions:
                mapping_name = call.func.id
                mapping = _mapping(script, script.functions[call.func.id], _call_at(script, call))
            node = node.generators[0].iter
            continue
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "map" and node.args:
                target = node.args[0]
                if mapping is None and isinstance(target, ast.Name) and target.id in script.functions:
                    mapping_name, merges = target.id, True
                    mapping = _mapping(script, script.functions[target.id], _call_at(script, node))
                elif mapping is None:
                    raise UsageError(f"{path}: the dataset is mapped (line {node.lineno}) by something other than a "
                                     "function defined in the script; vlmcheck reads a plain mapping function")
                node = func.value
                continue
            if isinstance(func, ast.Attribute) and func.attr in ("shuffle", "select", "train_test_split"):
                node = func.value  # the same rows (a subset): vlmcheck judges every row of the split
                continue
            if (isinstance(func, ast.Name) and func.id == "load_dataset") or (
                    isinstance(func, ast.Attribute) and func.attr == "load_dataset"):
                load = _call_at(script, node)
                break
            if (isinstance(func, ast.Name) and func.id == "load_from_disk") or (
                    isinstance(func, ast.Attribute) and func.attr == "load_from_disk"):
                if data is None:
                    raise UsageError(f"{path}: load_from_disk (line {node.lineno}) reads a save_to_disk folder, which "
                                     "vlmcheck does not; export it to Parquet or JSON Lines and pass --data")
                break
        break
    if mapping is not None:
        _known(mapping, f"{mapping_name} (the row mapping)", path,
               "vlmcheck reads a mapping that returns messages built from the row's columns and literal text")
    if data is not None:
        source = locate(data, Path.cwd() / '-', dict(path_map or {}))
        if not source.exists():
            raise UsageError(f"--data {data}: not found")
        return data, tuple(trl.dataset_files(source, "train")), "train", mapping, merges, mapping_name
    if load is None:
        raise UsageError(f"{path}: cannot follow SFTTrainer's train_dataset back to a load_dataset(...) call; pass "
                         "--data PATH (the rows the trainer sees: JSON Lines or Parquet)")
    return _load_dataset(load, path, path_map) + (mapping, merges, mapping_name)


def _load_dataset(load: pyscript.Call, path: Path,
                  path_map: Mapping[str, str] | None) -> tuple[str | None, tuple[Path, ...], str]:
    """The files ``load_dataset(...)`` reads, when they are local."""
    where = f"load_dataset (line {load.line})"
    source = _known(load.arg(0, "path"), f"{where} path", path, "pass --data PATH")
    split = load.arg(3, "split", "train")
    split = _known(split, f"{where} split", path)
    split = "train" if split is None else str(split).split("[")[0]
    mapping = dict(path_map or {})
    if source in DATA_BUILDERS:
        files = _known(load.arg(2, "data_files"), f"{where} data_files", path, "pass --data PATH")
        if isinstance(files, Mapping):
            if split not in files:
                raise UsageError(f"{path}: {where}: data_files has no {split!r} split")
            files = files[split]
        names = [files] if isinstance(files, str) else list(files or [])
        out: list[Path] = []
        for name in names:
            located = locate(str(name), path, mapping)
            matches = sorted(located.parent.glob(located.name)) if any(c in located.name for c in "*?[") else [located]
            for match in matches:
                if not match.is_file():
                    raise UsageError(f"{path}: {where}: data file {name!r} {not_a_file(match)} ({match}); pass --data PATH, or "
                                     "--path-map for a script from another machine")
                out.append(match)
        if not out:
            raise UsageError(f"{path}: {where}: no data_files given")
        return str(source), tuple(out), split
    if isinstance(source, str):
        located = locate(source, path, mapping)
        if located.exists():
            return source, tuple(trl.dataset_files(located, split)), split
        raise UsageError(f"{path}: {where}: dataset {source!r} is not a local file or folder; a Hugging Face Hub "
                         "dataset cannot be read offline: pass --data PATH (a local copy of its rows, JSON Lines or "
                         "Parquet, e.g. dataset.to_parquet('train.parquet'))")
    raise UsageError(f"{path}: {where}: path {source!r} is not a dataset name or builder vlmcheck reads; pass --data")




def _mapping(script: pyscript.Script, func: ast.FunctionDef, call: pyscript.Call | None) -> Any:
    """What a ``convert_to_conversation(sample)``-style function returns, with ``sample["col"]`` as
    :class:`pyscript.Column`: straight-line code (assignments of literals, one return) only."""
    path = script.path
    args = func.args.args
    if len(args) != 1 or func.args.vararg or func.args.kwarg:
        raise UsageError(f"{path}: {func.name} (line {func.lineno}) takes {len(args)} arguments; vlmcheck reads a "
                         "mapping of one row")
    param = args[0].arg
    env: dict[str, Any] = dict(call.env) if call is not None else {}
    for stmt in func.body:
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            env[stmt.targets[0].id] = pyscript.evaluate(stmt.value, env, param=param)
            continue
        if isinstance(stmt, ast.Return) and stmt.value is not None:
            return pyscript.evaluate(stmt.value, env, param=param)
        raise UsageError(f"{path}: {func.name} line {stmt.lineno} ({ast.unparse(stmt).splitlines()[0][:60]!r}) is "
                         "not a plain assignment or return; vlmcheck reads mappings that build messages from the "
                         "row's columns (pass --data with rows already in the messages shape)")
    raise UsageError(f"{path}: {func.name} (line {func.lineno}) returns nothing vlmcheck can read")


def apply_mapping(template: Any, row: Mapping[str, Any]) -> Any:
    """The example a mapping builds from ``row`` (KeyError for a column the row lacks, as Python raises)."""
    if isinstance(template, pyscript.Column):
        return row[template.name]
    if isinstance(template, Mapping):
        return {k: apply_mapping(v, row) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [apply_mapping(v, row) for v in template]
    return template


# -- the run: every row judged as UnslothVisionDataCollator builds its batch ---------------------------------------

def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    """The run an Unsloth script launches, ready to judge its rows."""
    script = read_script(raw["unsloth_script"], model=model, data=data, path_map=path_map)
    if script.swapped_template is not None and model is None:
        raise UsageError(f"{path}: get_chat_template(processor, {script.swapped_template!r}) swaps in a chat template "
                         "Unsloth ships, which vlmcheck does not hold; save the processor after that call "
                         "(processor.save_pretrained('ckpt')) and pass --model ckpt")
    return Run(script, load_model(script.model or "", overrides=Overrides(resize="processor")))


def _patch_size(vision: Mapping[str, Any]) -> int:
    """``UnslothVisionDataCollator.__init__``'s patch size: the vision config's (an equal pair is one number, an
    unequal one their least common multiple), else 16 for Gemma 3n / Pixtral towers, else 14."""
    import math

    value = vision.get("patch_size")
    if isinstance(value, (list, tuple)):
        if not value:
            return DEFAULT_PATCH_SIZE
        return int(value[0]) if all(p == value[0] for p in value) else math.lcm(*(int(p) for p in value))
    if value is None:
        kind = str(vision.get("model_type", "")).lower()
        return 16 if "gemma3n" in kind or "pixtral" in kind else DEFAULT_PATCH_SIZE
    return int(value)


class Run:
    """An Unsloth vision run: judges rows the way ``UnslothVisionDataCollator`` builds its batch."""

    name = NAME
    versions = VERSIONS
    length_key = "max_seq_length"
    pixels_key = "resize"

    def __init__(self, script: Script, spec: ModelSpec) -> None:

        self.script = script
        self.spec = spec
        self.family = spec.family
        self.settings = spec.settings
        if spec.chat_template is None:
            raise UsageError(f"{spec.path} has no chat template; the collator renders every row with it")
        self.template = spec.chat_template
        config = read_checkpoint_json(spec.path / "config.json")  # read already by load_model
        nested = config.get("vision_config")
        vision: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
        collator = script.collator
        self.resize = collator.get("resize", "min")
        self.resize_dimension = collator.get("resize_dimension", 0)
        try:
            self.size, self.max_length = collator_settings(
                resize=self.resize, model_image_size=vision.get("image_size"),
                max_seq_length=collator.get("max_seq_length"), model_max_seq_length=script.model_max_seq_length)
            if self.resize_dimension not in RESIZE_DIMENSIONS:
                raise ValueError(f"Unsloth: resize_dimension accepts 0, 1, 'max' or 'min', got {self.resize_dimension!r}")
        except ValueError as e:
            raise UsageError(f"{script.path}: {e} (Unsloth raises TypeError)") from None
        self.factor = 2 * _patch_size(vision)
        self.tokenizer = spec.tokenizer
        self.image_token_id = spec.token_id(self.family.image_token)
        unlabeled = {self.tokenizer.token_to_id(t) for t in (*IMAGE_TOKENS, self.family.image_token)}
        pad = spec.special_tokens.get("pad_token")
        if isinstance(pad, str):
            unlabeled.add(self.tokenizer.token_to_id(pad))
        self.unlabeled = {i for i in unlabeled if i is not None}
        self.markers: tuple[Marker, Marker] | None = None
        if script.responses is not None:
            tok = Tok.load(spec.path)
            self.tok = tok
            self.markers = (marker(script.responses[0], tok), marker(script.responses[1], tok))
        self.files = list(script.files)
        self.hf_datasets, self.hf_datasets_assumed = run_version(
            "datasets", newest=UNSLOTH_DATASETS, below=UNSLOTH_DATASETS_BELOW, low=UNSLOTH_DATASETS_FROM)

    def inputs(self) -> list[Path]:
        return [self.script.path, *self.files]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        plan = json_loadable(self.files, datasets_version=self.hf_datasets, loader="the script's load_dataset")
        for k, file in enumerate(self.files):
            for row in loaded_rows(file, plan, k):
                yield row, file

    def shown_settings(self) -> Any:
        return self.settings

    def describe(self) -> dict[str, Any]:
        s = self.script
        _, origin = s.cut()
        return {
            "name": NAME, "versions": VERSIONS, "config": str(s.path), "trainer": "sft", "model": s.model,
            "template": "the checkpoint's chat template", "datasets": [str(f) for f in self.files],
            "dataset": s.dataset, "split": s.split, "mapping": s.mapping_name,
            "max_seq_length": self.max_length, "max_seq_length_from": origin if self.max_length is not None else None,
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "resize_to": list(self.size) if isinstance(self.size, tuple) else self.size,
            "resize_dimension": self.resize_dimension, "fetch_factor": self.factor,
            "train_on_responses_only": list(s.responses) if s.responses else None,
            "responses_from": s.responses_from, "sft_config": {k: v for k, v in s.sft.items()
                                                               if not isinstance(v, pyscript.Unresolved)},
            "length_key": self.length_key, "pixels_key": self.pixels_key, "images": self._images_said(),
            "datasets_library": self.hf_datasets + (" (assumed: the newest Unsloth accepts)" if self.hf_datasets_assumed
                                                    else " (installed here)"),
        }

    def _images_said(self) -> str:
        """How the collator sizes images, in the report's words."""
        if self.size is None:
            resize = "resize='max': not resized by the collator"
        elif isinstance(self.size, tuple):
            resize = f"resized to {self.size[0]}x{self.size[1]}"
        else:
            side = {0: "width", 1: "height", "max": "longer side", "min": "shorter side"}[self.resize_dimension]
            resize = f"{side} over {self.size} px scaled down to {self.size} (resize={self.resize!r})"
        return (f"inside messages: fetch_image's smart resize to multiples of {self.factor} px; then {resize}; then "
                "the processor")

    # -- one row ---------------------------------------------------------------------------------------------------
    def _example(self, row: Any) -> Any:
        mapping = self.script.mapping
        if mapping is None:
            return row
        if not isinstance(row, Mapping):
            raise _Stops(f"the row is a {type(row).__name__}, which {self.script.mapping_name} cannot index")
        try:
            mapped = apply_mapping(mapping, row)
        except KeyError as e:
            raise _Stops(f"{self.script.mapping_name} reads column {e}, which the row lacks: Python raises KeyError") \
                from None
        if self.script.mapping_merges and isinstance(mapped, Mapping):  # Dataset.map keeps the other columns
            mapped = {**row, **mapped}
        return mapped

    def _messages(self, example: Any) -> list[dict[str, Any]]:
        """``_select_messages_or_raw`` and ``_validate_and_normalize_first_message``."""
        if isinstance(example, Mapping):
            messages = example.get("messages") if "messages" in example else example.get("conversations", example)
        else:
            messages = example
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise _Stops("the example has no 'messages' list of role/content dicts")
        messages = [dict(m) for m in messages]
        if messages:
            first = messages[0]
            if "role" not in first and "content" not in first:
                raise _Stops("the first message has neither role nor content: Unsloth raises 'Failed to use vision "
                             "data collator'")
            content = first.get("content")
            if isinstance(content, str):
                first["content"] = [{"type": "text", "text": content}]
            elif not (isinstance(content, list) and content and isinstance(content[0], Mapping)
                      and "type" in content[0]):
                raise _Stops("the first message's content is neither text nor a list of typed parts: Unsloth raises")
        return messages

    def _images(self, example: Any, messages: list[dict[str, Any]]) -> tuple[list[Any], bool]:
        """The images the collator collects and whether they come from the messages (then ``fetch_image`` resizes
        them) or an ``images`` column (``_extract_images_videos_for_example``)."""
        if isinstance(example, Mapping) and example.get("images") is not None:
            images = example["images"]
            return [i for i in (images if isinstance(images, list) else [images]) if i is not None], False
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, Mapping) and part.get("type") in ("image", "image_url", "video"):
                        if part.get("type") == "video":
                            raise _Stops("a video part: vlmcheck does not model Unsloth's video route")
                        if "image" not in part and "image_url" not in part:
                            raise _Stops("an image part holds no image: Unsloth raises 'image, image_url or video "
                                         "should in content.'")
                        value = part.get("image", part.get("image_url"))
                        out.append(value.get("url") if isinstance(value, Mapping) and "url" in value else value)
        return out, True

    def _probe(self, image: Any, *, exif: bool) -> tuple[int, int]:
        if isinstance(image, Mapping):
            data, where = image.get("bytes"), image.get("path")
            if data:
                return probe_bytes(bytes(data)).size(exif_transpose=True)
            if not where:
                raise ImageProblem("VC101", "an image struct with neither bytes nor a path")
            image = where
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=True)
        if not isinstance(image, str):
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which Unsloth cannot load")
        if image.startswith("data:"):
            return probe_bytes(decode_data_url(image)).size(exif_transpose=exif)
        if image.startswith(("http://", "https://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        if image.startswith("file://"):
            image = image[len("file://"):]
        where_path = Path(image).expanduser()
        if not where_path.is_absolute() and not where_path.exists():
            beside = self.script.path.parent / where_path
            where_path = beside if beside.exists() else where_path
        return probe_path(where_path).size(exif_transpose=exif)

    def sizes(self, images: list[Any], *, from_messages: bool) -> list[tuple[int, int]]:
        """Each image's size as the processor receives it: ``fetch_image``'s smart resize for images inside the
        messages, then the collator's own resize."""
        out = []
        for image in images:
            # datasets' Image feature and the images column's loader apply the EXIF orientation; fetch_image opens
            # a path as it is
            width, height = self._probe(image, exif=not from_messages)
            if from_messages:
                width, height = fetch_size(width, height, factor=self.factor)
            out.append(resized(width, height, size=self.size, resize_dimension=self.resize_dimension))
        return out

    def encode(self, messages: list[dict[str, Any]], expansions: list[Expansion]) -> tuple[list[int], list[int]]:
        """The processor's ``input_ids`` for the rendered conversation (``add_special_tokens=False``), and per token
        the image it belongs to (-1: text)."""
        text = render_chat(self.template, messages, special_tokens=self.spec.special_tokens)
        placeholder = self.family.placeholder
        pieces = text.split(placeholder)
        if len(pieces) - 1 != len(expansions):
            raise _Stops(f"the text holds {len(pieces) - 1} image placeholder(s) for {len(expansions)} image(s): the "
                         "processor raises", code="VC002")
        collapsed = pieces[0] + "".join(e.text + piece for e, piece in zip(expansions, pieces[1:]))
        runs = [(k, n) for k, e in enumerate(expansions) for n in e.runs]
        ids: list[int] = []
        image_of: list[int] = []
        j = 0
        for token in self.tokenizer.encode(collapsed, add_special_tokens=False).ids:
            if token == self.image_token_id:
                if j >= len(runs):
                    raise _Stops("the text holds an image token of its own beyond the images: the processor raises",
                                 code="VC002")
                k, n = runs[j]
                ids += [token] * n
                image_of += [k] * n
                j += 1
            else:
                ids.append(token)
                image_of.append(-1)
        return ids, image_of

    def trained(self, ids: list[int]) -> list[bool]:
        """The labels the collator keeps: every token but the placeholders and pad, and with
        ``train_on_responses_only`` only the answers."""
        keep = [i not in self.unlabeled for i in ids]
        if self.markers is not None:
            answers = response_mask(ids, self.tok, *self.markers)
            keep = [a and b for a, b in zip(keep, answers)]
        return keep

    def judge(self, index: int, row: Any, source: Any) -> SampleResult:
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        found = result.findings
        frame: dict[str, Any] = {"name": NAME, "trainer": "sft", "verdict": "ok"}
        result.framework = frame
        if isinstance(row, BadRow):
            found.append(F.make("VC001", f"{row.reason}; datasets cannot load the file and the run stops"))
            frame["verdict"] = "stops"
            return result
        if isinstance(row, Mapping) and isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        try:
            example = self._example(row)
            messages = self._messages(example)
            images, from_messages = self._images(example, messages)
        except _Stops as e:
            found.append(F.make(e.code, f"{e}; the run stops at the step that reaches this sample"))
            frame["verdict"] = "stops"
            return result
        expansions: list[Expansion] = []
        stopped = False
        for k, image in enumerate(images, 1):
            label = f"image {k} of {len(images)} ({image[:120] if isinstance(image, str) else 'bytes'})"
            try:
                width, height = self.sizes([image], from_messages=from_messages)[0]
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                stopped = True
                continue
            except ValueError as e:  # fetch_image's smart_resize refuses a ratio over 200
                found.append(F.make("VC107", f"{label}: Unsloth's fetch_image raises \"{e}\"", image=k))
                stopped = True
                continue
            except OSError as e:
                found.append(F.make("VC102", f"{label}: cannot be opened: {str(e)[:200]}", image=k))
                stopped = True
                continue
            issues = self.family.check_image(width, height, self.settings)
            for issue in issues:
                found.append(F.make(issue.code, f"{label} (resized to {width}x{height}): {issue.message}", image=k,
                                    **issue.data))
            if any(F.CATALOGUE[i.code].severity >= F.Severity.ERROR for i in issues):
                stopped = True
                continue
            expansions.append(self.family.expand(width, height, self.settings))
        if stopped:
            frame["verdict"] = "stops"
            result.image_tokens = [None] * len(images)
            return result
        counts = [e.features for e in expansions]
        result.image_tokens = list(counts)
        try:
            ids, image_of = self.encode(messages, expansions)
        except _Stops as e:
            found.append(F.make(e.code, f"{e}; the run stops at the step that reaches this sample"))
            frame["verdict"] = "stops"
            return result
        marks = self.trained(ids)
        total = len(ids)
        result.tokens = total
        result.text_only_tokens = total - sum(counts)
        supervised = result.supervised_tokens = sum(marks)
        limit = self.max_length
        kept = total if limit is None else min(total, limit)
        kept_images = [0] * len(counts)
        for k in image_of[:kept]:
            if k >= 0:
                kept_images[k] += 1
        labels = sum(marks[:kept])
        frame.update(kept_tokens=kept, kept_supervised=labels, kept_image_tokens=kept_images)
        if supervised == 0:
            found.append(F.make("VC003", "no label survives the collator's masking"
                                + (f" (train_on_responses_only found no {self.markers[1].text!r} answer)"
                                   if self.markers is not None else "")
                                + ": Unsloth raises when a first batch holds only such samples, else warns"))
        if kept >= total:
            return result
        assert limit is not None
        _, origin = self.script.cut()
        fix = f"set {origin.replace('...', str(total))}"
        cut = [k for k, n in enumerate(counts) if kept_images[k] < n]
        for k in cut:
            found.append(F.make(
                "VC201", f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {kept_images[k]:,} survive "
                         f"the collator's cut at max_seq_length={limit:,}; the sample is {total:,} tokens: the "
                         "processor raises \"Mismatch in `image` token count between text and `input_ids`\" in the "
                         "collator and training stops", fix=fix + ", or drop the sample",
                image=k + 1, image_tokens=counts[k], kept=kept_images[k], tokens=total, max_length=limit))
        if cut:
            frame["verdict"] = "crash"
        if supervised and not labels:
            found.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at max_seq_length={limit:,} (sample is "
                         f"{total:,} tokens)", fix=f"{fix}, shorten the prompt, or drop the sample",
                supervised=supervised, tokens=total, max_length=limit))
        elif not cut:
            found.append(F.make(
                "VC203", f"{total:,} tokens > max_seq_length={limit:,}: {total - kept:,} tokens cut, "
                         f"{supervised - labels:,} of {supervised:,} trained tokens lost",
                fix=f"{fix} to keep it whole", tokens=total, max_length=limit, supervised_lost=supervised - labels))
        return result


class _Stops(Exception):
    """The collator (or the mapping before it) raises on this row: the run stops at the step that reaches it."""

    def __init__(self, message: str, *, code: str = "VC001") -> None:
        super().__init__(message)
        self.code = code
