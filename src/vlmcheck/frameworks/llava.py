"""LLaVA's ``llava/train/train.py`` (haotian-liu/LLaVA and the forks that keep its ``--version`` names): the one
home of its facts. Modelled on haotian-liu/LLaVA at commit c121f04; written from its facts, not copied; the text
side is proved against LLaVA's own code run unmodified (tests/assets/llava_golden/README.md), the rest is read
from the code (docs/frameworks/llava.md says which).

- **Launch** (``scripts/v1_5/finetune.sh`` and the like): the flags of the ``deepspeed llava/train/train_mem.py``
  (or ``train.py`` / ``train_xformers.py``) line, as ``HfArgumentParser`` reads them, with LLaVA's dataclass
  defaults for the unset ones (``version`` ``v0``, ``model_max_length`` 512, ``image_aspect_ratio`` ``square``,
  ``mm_use_im_start_end`` False, ``mm_vision_select_feature`` ``patch``).
- **Conversations** (``llava/conversation.py``, ``preprocess*`` in ``train.py``, ``mm_utils.tokenizer_image_token``):
  what ``train()`` does with ``--version``: ``v0`` adds a ``[PAD]`` token when the tokenizer has no pad token and
  keeps the module default conversation (``conv_vicuna_v1``); ``v0.5`` sets pad = unk and keeps the default; any
  other version sets pad = unk and takes ``conv_templates[version]``, an unknown name falling back to
  ``vicuna_v1`` silently. A row with an ``image`` is tokenized by ``tokenizer_image_token`` (no truncation, the
  ``<image>`` one id, -200); a text row by ``tokenizer(..., truncation=True)`` at ``model_max_length``.
- **Images** (``LazySupervisedDataset.__getitem__``, ``clip_encoder.CLIPVisionTower``): one image per row,
  ``os.path.join(image_folder, row["image"])``; ``pad`` pastes it on a square canvas, any other value (``square``,
  and ``anyres``, which this train.py does not branch on) goes to the CLIP processor as is (shortest edge, then
  the center crop). Either way it becomes (image_size / patch_size)**2 features (576 for
  clip-vit-large-patch14-336), one more with ``mm_vision_select_feature cls_patch``.
- **The cut**: the collator slices the ids to ``model_max_length`` (an ``<image>`` id past it is cut, and the model
  then skips that row's image); ``prepare_inputs_labels_for_multimodal`` puts the features where the ``<image>``
  id was and slices the embeddings and labels to ``tokenizer_model_max_length`` (= ``model_max_length``). LLaVA
  never raises there: a cut image is trained on in part, a cut answer is lost.
- **LLaVA-NeXT** (LLaVA-VL/LLaVA-NeXT df17966, when a launch passes a flag only its train.py has): anyres tiles,
  ``unpad_image`` and ``image_newline`` (``NextImages``; the grid arithmetic in ``families/llava_next.py``), its
  ``preprocess_multimodal``, conversation table and ``preprocess_mpt`` start, and its ``__getitem__`` retry that
  trains on the next row in place of one that fails (proved: tests/assets/llava_golden/produce_next.py).

>>> run = simulate({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
...                tokenizer=tok, version="v1")  # doctest: +SKIP
>>> run.mismatch, run.refused  # doctest: +SKIP
(None, None)
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmcheck.data.files import FileProblem, not_a_file, read_parsed, read_text
from vlmcheck.errors import ModelError, UsageError
from vlmcheck.families.llava import LlavaSettings
from vlmcheck.frameworks._run import locate
from vlmcheck.frameworks._shell import ShellCommand, launch_commands, startable
from vlmcheck.model import read_checkpoint_json
from vlmcheck.slow_llama import SlowLlamaTokenizer
from vlmcheck.slow_llama import read_config as read_tokenizer_config
from vlmcheck.tokenizer import Tok

if TYPE_CHECKING:
    from vlmcheck.results import SampleResult

# conversation.py: the system prompts
_VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                     "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_MMTAG_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant is able "
                 "to understand the visual content that the user provides, and assist the user with a variety of "
                 "tasks using natural language.The visual content will be provided with the following format: "
                 "<Image>visual content</Image>.")
_LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")
_LLAVA_LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using "
                        "natural language.")
_MPT_SYSTEM = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
               "The assistant gives helpful and honest answers.")
_CHATML_DIRECT_SYSTEM = "<|im_start|>system\nAnswer the questions."
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

# llava/constants.py
IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"
IM_START, IM_END = "<im_start>", "<im_end>"
IGNORE_INDEX = -100
# train.py, the generic path: _add_speaker_and_signal
_BEGIN_SIGNAL, _END_SIGNAL = "### ", "\n"


@dataclass(frozen=True)
class Conv:
    """One ``Conversation`` of LLaVA's conversation.py."""

    name: str  # the conv_* object
    style: str  # SeparatorStyle: "single" | "two" | "mpt" | "llama_2" | "plain" | "chatml" (LLaVA-NeXT's Qwen)
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None
    version: str  # Conversation.version: preprocess() dispatches on it

    @property
    def function(self) -> str:
        """The train.py function that builds the labels (``preprocess()``'s dispatch)."""
        if self.style == "plain":
            return "preprocess_plain"
        if self.style == "llama_2":
            return "preprocess_llama_2"
        if self.version.startswith("v1"):
            return "preprocess_v1"
        if self.version == "mpt":
            return "preprocess_mpt"
        if self.version == "qwen":
            return "preprocess_qwen"
        return "preprocess"


_VICUNA_V0 = Conv("conv_vicuna_v0", "single", _HUMAN_SYSTEM, ("Human", "Assistant"), "###", None, "Unknown")
_VICUNA_V1 = Conv("conv_vicuna_v1", "two", _VICUNA_V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "v1")
_LLAMA_2 = Conv("conv_llama_2", "llama_2", _LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>", "llama_v2")
_LLAVA_LLAMA_2 = Conv("conv_llava_llama_2", "llama_2", _LLAVA_LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>",
                      "llama_v2")
_MISTRAL_INSTRUCT = Conv("conv_mistral_instruct", "llama_2", "", ("USER", "ASSISTANT"), "", "</s>", "llama_v2")
_CHATML_DIRECT = Conv("conv_chatml_direct", "mpt", _CHATML_DIRECT_SYSTEM, _CHATML_ROLES, "<|im_end|>", None, "mpt")
_MPT = Conv("conv_mpt", "mpt", _MPT_SYSTEM, _CHATML_ROLES, "<|im_end|>", None, "mpt")
_PLAIN = Conv("conv_llava_plain", "plain", "", ("", ""), "\n", None, "Unknown")
_LLAVA_V0 = Conv("conv_llava_v0", "single", _HUMAN_SYSTEM, ("Human", "Assistant"), "###", None, "Unknown")
_LLAVA_V0_MMTAG = Conv("conv_llava_v0_mmtag", "single", _MMTAG_SYSTEM, ("Human", "Assistant"), "###", None,
                       "v0_mmtag")
_LLAVA_V1 = Conv("conv_llava_v1", "two", _HUMAN_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "v1")
_LLAVA_V1_MMTAG = Conv("conv_llava_v1_mmtag", "two", _MMTAG_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "v1_mmtag")

# conversation.py: conv_templates, every registered name
CONV_TEMPLATES: dict[str, Conv] = {
    "default": _VICUNA_V0, "v0": _VICUNA_V0, "v1": _VICUNA_V1, "vicuna_v1": _VICUNA_V1, "llama_2": _LLAMA_2,
    "mistral_instruct": _MISTRAL_INSTRUCT, "chatml_direct": _CHATML_DIRECT, "mistral_direct": _CHATML_DIRECT,
    "plain": _PLAIN, "v0_plain": _PLAIN, "llava_v0": _LLAVA_V0, "v0_mmtag": _LLAVA_V0_MMTAG, "llava_v1": _LLAVA_V1,
    "v1_mmtag": _LLAVA_V1_MMTAG, "llava_llama_2": _LLAVA_LLAMA_2, "mpt": _MPT,
}
# train(): versions it handles before the table (the module default conversation stays conv_vicuna_v1)
SPECIAL_VERSIONS = ("v0", "v0.5")
VERSIONS = sorted({*CONV_TEMPLATES, *SPECIAL_VERSIONS})


# LLaVA-NeXT's conversation.py (df17966): conv_qwen / conv_qwen_2_5 (version "qwen": preprocess_qwen, which writes
# its own system message, "You are a helpful assistant.", whatever the conversation's)
_QWEN = Conv("conv_qwen", "chatml", "<|im_start|>system\nYou are a helpful assistant.",
             ("<|im_start|>user", "<|im_start|>assistant"), "<|im_end|>", None, "qwen")
_QWEN_2_5 = Conv("conv_qwen_2_5", "chatml",
                 "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                 ("<|im_start|>user", "<|im_start|>assistant"), "<|im_end|>", None, "qwen")
NEXT_CONV_TEMPLATES: dict[str, Conv] = {"qwen_1_5": _QWEN, "qwen_2": _QWEN, "qwen_2_5": _QWEN_2_5}
# names it adds that are not modelled (their own preprocess_* or system prompts), the two c121f04 names it dropped
# (so they fall back to vicuna_v1 there), and its module default (conv_vicuna_v0)
NEXT_ONLY_VERSIONS = ("gemma_instruct", "llava_llama_2_mmtag", "llava_llama_2_simple", "llava_llama_3",
                      "llava_mistral_instruct", "llava_v0_mmtag", "llava_v1_mmtag", "mistral_orca", "mistral_zephyr")
NEXT_DROPPED_VERSIONS = ("v0_mmtag", "v1_mmtag")
LLAVA, LLAVA_NEXT = "llava", "llava_next"


def conversation_for(version: str, *, fork: str = LLAVA) -> Conv:
    """The conversation ``train()`` leaves in ``default_conversation`` for ``--version``."""
    if version in SPECIAL_VERSIONS:
        return _VICUNA_V0 if fork == LLAVA_NEXT else _VICUNA_V1
    if fork == LLAVA_NEXT and version in NEXT_DROPPED_VERSIONS:
        return _VICUNA_V1
    if fork == LLAVA_NEXT and version in NEXT_CONV_TEMPLATES:
        return NEXT_CONV_TEMPLATES[version]
    return CONV_TEMPLATES.get(version, _VICUNA_V1)


# -- the tokenizer LLaVA loads ------------------------------------------------------------------------------

class Refused(Exception):
    """Where LLaVA raises: ``what`` is the exception as Python prints it, ``where`` the statement."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(what)
        self.what, self.where = what, where


_FAST_LLAMA = ("LlamaTokenizerFast", "CodeLlamaTokenizerFast")
_SLOW_LLAMA = ("LlamaTokenizer", "CodeLlamaTokenizer")


@dataclass
class LlavaTokenizer:
    """The tokenizer as ``train()`` sets it up for one ``--version``: the route (slow SentencePiece or fast),
    its pad token, ``model_max_length``, and whether it has a ``legacy`` attribute (None: it has none, as
    transformers 4.37.2's fast tokenizers)."""

    backend: Any  # SlowLlamaTokenizer | Tok
    route: str  # "slow" | "fast"
    reason: str
    model_max_length: int
    legacy: bool | None
    add_bos: bool | None = None  # fast LlamaTokenizerFast: the config's add_bos/add_eos rebuild the post-processor
    add_eos: bool = False
    pad_id: int | None = None
    class_name: str = "PreTrainedTokenizerFast"
    owned: bool = False  # a fast backend is shared until a token is added to it (copy on write)
    with_image: LlavaTokenizer | None = None  # preprocess_qwen's copy with <image> added, made once

    def encode(self, text: str, *, max_length: int | None = None) -> Any:
        """``tokenizer(text)`` with ids, offsets and sequence ids."""
        if isinstance(self.backend, SlowLlamaTokenizer):
            return self.backend.encode(text, max_length=max_length)
        from vlmcheck.slow_llama import SlowEncoding

        if self.add_bos is not None:
            enc = self.backend.encode(text, add_special_tokens=False)
            ids, offsets = list(enc.ids), list(enc.offsets)
            head = [self.token_id(self.special("bos_token"))] if self.add_bos else []
            tail = [self.token_id(self.special("eos_token"))] if self.add_eos else []
            head_ids = [i for i in head if i is not None]
            tail_ids = [i for i in tail if i is not None]
        else:
            enc = self.backend.encode(text)
            seq = list(enc.sequence_ids)
            n_head = next((k for k, s in enumerate(seq) if s is not None), len(seq))
            n_tail = next((k for k, s in enumerate(reversed(seq)) if s is not None), 0) if n_head < len(seq) else 0
            all_ids, all_off = list(enc.ids), list(enc.offsets)
            head_ids, tail_ids = all_ids[:n_head], all_ids[len(all_ids) - n_tail:]
            ids, offsets = all_ids[n_head:len(all_ids) - n_tail], all_off[n_head:len(all_ids) - n_tail]
        if max_length is not None and len(ids) + len(head_ids) + len(tail_ids) > max_length:
            keep = max(max_length - len(head_ids) - len(tail_ids), 0)
            ids, offsets = ids[:keep], offsets[:keep]
        return SlowEncoding(head_ids + ids + tail_ids,
                            [(0, 0)] * len(head_ids) + offsets + [(0, 0)] * len(tail_ids),
                            [None] * len(head_ids) + [0] * len(ids) + [None] * len(tail_ids))

    def ids(self, text: str, *, max_length: int | None = None) -> list[int]:
        return list(self.encode(text, max_length=max_length).ids)

    def token_id(self, text: str | None) -> int | None:
        return self.backend.token_id(text)

    def special(self, name: str) -> str | None:
        return self.backend.special(name)

    def tokens(self, ids: list[int]) -> list[str]:
        return [("<image>" if i == IMAGE_TOKEN_INDEX else t)
                for i, t in zip(ids, self.backend.tokens([max(i, 0) for i in ids]))]

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.special("bos_token"))

    def is_special(self, text: str) -> bool:
        return bool(self.backend.is_special(text))

    def add_special(self, text: str) -> int:
        """``tokenizer.add_tokens([text], special_tokens=True)`` / ``add_special_tokens``."""
        if isinstance(self.backend, SlowLlamaTokenizer):
            return self.backend.add_token(text)
        from tokenizers import AddedToken, Tokenizer

        if not self.owned:
            shared = self.backend
            self.backend = Tok(Tokenizer.from_str(shared.backend.to_str()), shared.config, shared.chat_template)
            self.owned = True
        self.backend.backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        return int(self.backend.backend.token_to_id(text))

    def get_legacy(self, where: str) -> bool:
        """``tokenizer.legacy`` as preprocess_v1 reads it: an AttributeError where the class has none."""
        if self.legacy is None:
            cls = "LlamaTokenizerFast" if self.add_bos is not None else self.class_name
            raise Refused(f"AttributeError: '{cls}' object has no attribute 'legacy'", where)
        return self.legacy


def _mtime(folder: Path) -> int:
    path = folder / "tokenizer.json"
    return path.stat().st_mtime_ns if path.is_file() else 0


@functools.lru_cache(maxsize=4)
def _load_fast(folder: str, mtime: int) -> Tok:
    """tokenizer.json read once per folder (and version of the file); LlavaTokenizer copies it before adding."""
    return Tok.load(folder)


def load_tokenizer(folder: str | Path, *, version: str, model_max_length: int | None = None,
                   model_name_or_path: str | None = None, mm_use_im_start_end: bool = False,
                   legacy: bool | None = None, fork: str = LLAVA, use_fast: bool = False) -> LlavaTokenizer:
    """The tokenizer ``train()`` builds for ``--version``: ``AutoTokenizer.from_pretrained(model_name_or_path,
    model_max_length=..., use_fast=False)`` (the default fast route when "mpt" is in the model path), then the
    pad token, then ``initialize_vision_tokenizer``'s ``<im_start>``/``<im_end>`` when ``mm_use_im_start_end``.
    ``legacy`` stands for ``"legacy"`` in tokenizer_config.json: the slow tokenizer tokenizes by it; a fast one
    only gets the attribute (transformers 4.37.2's fast tokenizers have none).

    ``fork`` ``llava_next`` with ``use_fast``: LLaVA-NeXT's load for a qwen / mistral name (``AutoTokenizer``'s
    default fast class); there the pad token becomes unk only when the tokenizer has one.

    Raises :class:`Refused` where LLaVA's own load raises (a slow Llama class without ``tokenizer.model``).
    """
    folder = Path(folder)
    config = read_tokenizer_config(folder)
    if legacy is not None:
        config["legacy"] = legacy
    cls = str(config.get("tokenizer_class") or "LlamaTokenizer")
    name = model_name_or_path if model_name_or_path is not None else str(folder)
    use_fast = use_fast or "mpt" in name
    has_model, has_json = (folder / "tokenizer.model").is_file(), (folder / "tokenizer.json").is_file()
    if not has_model and not has_json:
        raise ModelError(f"no tokenizer.model or tokenizer.json at {folder}")
    limit = model_max_length if model_max_length is not None else int(config.get("model_max_length") or 10**9)
    limit = min(limit, 10**9)
    fast_cls = cls if cls.endswith("Fast") else (cls + "Fast" if use_fast else None)
    if fast_cls is None and cls in _SLOW_LLAMA:
        if not has_model:
            raise Refused("TypeError: expected str, bytes or os.PathLike object, not NoneType",
                          f"AutoTokenizer.from_pretrained(use_fast=False): {cls} needs tokenizer.model, the "
                          "folder has only tokenizer.json")
        tok: LlavaTokenizer = LlavaTokenizer(
            SlowLlamaTokenizer(
                (folder / "tokenizer.model").read_bytes(), config), "slow",
            f"train() loads use_fast=False and the checkpoint ships tokenizer.model ({cls}, "
            f"legacy={config.get('legacy', 'unset')})", limit, None)
        tok.legacy = tok.backend.legacy
    elif fast_cls is not None:
        if not has_json:
            raise ModelError(f"the fast route needs tokenizer.json at {folder} (vlmcheck does not convert "
                             "tokenizer.model)")
        why = ("LLaVA-NeXT's train() loads the default fast tokenizer for this name" if fork == LLAVA_NEXT and use_fast
               else "'mpt' is in the model path, so train() loads the default fast tokenizer" if use_fast
               else f"tokenizer_config.json names the fast class {cls}")
        tok = LlavaTokenizer(Tok(_load_fast(str(folder), _mtime(folder)).backend, config), "fast",
                             f"{why} (tokenizer.json; no `legacy` attribute)", limit, None, class_name=fast_cls)
        if fast_cls in _FAST_LLAMA:
            tok.add_bos = bool(config.get("add_bos_token", True))
            tok.add_eos = bool(config.get("add_eos_token", False))
    else:
        # another slow class (Qwen2Tokenizer, GPT2Tokenizer, ...): a byte-level BPE gives the ids of its
        # tokenizer.json; like the fast classes it has no `legacy` attribute
        if not has_json:
            raise ModelError(f"tokenizer class {cls}: vlmcheck reads it from tokenizer.json, which {folder} lacks")
        shared = _load_fast(str(folder), _mtime(folder))
        tok = LlavaTokenizer(Tok(shared.backend, config), "fast", f"train() loads the slow {cls}; its ids are read "
                             "from tokenizer.json (no `legacy` attribute)", limit, None, class_name=cls)
    pad = tok.special("pad_token")
    if version == "v0":
        if pad is None:  # smart_tokenizer_and_embedding_resize(dict(pad_token="[PAD]"))
            tok.pad_id = tok.add_special("[PAD]")
        else:
            tok.pad_id = tok.token_id(pad)
    elif fork == LLAVA_NEXT and version != "v0.5" and tok.special("unk_token") is None:
        tok.pad_id = tok.token_id(pad)  # LLaVA-NeXT sets pad = unk only when there is an unk token
    else:  # v0.5 and every other version: pad = unk
        tok.pad_id = tok.token_id(tok.special("unk_token"))
    if mm_use_im_start_end:
        tok.add_special(IM_START)
        tok.add_special(IM_END)
    return tok


# -- rendering ---------------------------------------------------------------------------------------------

def multimodal(value: str, *, conv: Conv, mm_use_im_start_end: bool, fork: str = LLAVA) -> str:
    """``preprocess_multimodal`` on one sentence (samples with an ``image`` only). LLaVA-NeXT moves the
    ``<image>`` to the front only when the sentence holds exactly one and does not start with it (c121f04 does it
    to every sentence holding any, collapsing several into one), and deletes "QA_GT_caption_based_noisy"."""
    if fork == LLAVA_NEXT:
        if value.count(IMAGE_TOKEN) == 1 and not value.startswith(IMAGE_TOKEN):
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        if IMAGE_TOKEN in value and "mmtag" in conv.version:
            value = value.replace(IMAGE_TOKEN, "<Image>" + IMAGE_TOKEN + "</Image>")
    elif IMAGE_TOKEN in value:
        value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        if "mmtag" in conv.version:
            value = value.replace(IMAGE_TOKEN, "<Image>" + IMAGE_TOKEN + "</Image>")
    if mm_use_im_start_end:
        value = value.replace(IMAGE_TOKEN, IM_START + IMAGE_TOKEN + IM_END)
    if fork == LLAVA_NEXT:
        value = value.replace("QA_GT_caption_based_noisy", "")
    return value


def _prompt(conv: Conv, messages: list[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """``Conversation.get_prompt()`` for (role, message) pairs, with the character span of each assistant
    message and the separator that closes it (the tokens that should carry labels)."""
    spans: list[tuple[int, int]] = []
    if conv.style == "two":
        assert conv.sep2 is not None
        text = conv.system + conv.sep
        for i, (role, msg) in enumerate(messages):
            if msg:
                text += role + ": "
                start = len(text)
                text += msg + (conv.sep, conv.sep2)[i % 2]
                if role == conv.roles[1]:
                    spans.append((start, len(text)))
            else:
                text += role + ":"
        return text, spans
    if conv.style == "mpt":
        text = conv.system + conv.sep
        for role, msg in messages:
            if msg:
                text += role
                start = len(text)
                text += msg + conv.sep
                if role == conv.roles[1]:
                    spans.append((start, len(text)))
            else:
                text += role
        return text, spans
    assert conv.style == "llama_2" and conv.sep2 is not None
    text = ""
    for i, (role, msg) in enumerate(messages):
        if i == 0:
            if not msg:
                raise Refused("AssertionError: first message should not be none",
                              'get_prompt: assert message, "first message should not be none"')
            if role != conv.roles[0]:  # pragma: no cover - the role check before get_prompt catches it
                raise Refused("AssertionError: first message should come from user", "get_prompt")
        if not msg:
            continue
        if i == 0 and conv.system:
            msg = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" + msg
        if i % 2 == 0:
            text += conv.sep + f"[INST] {msg} [/INST]"
        else:
            text += " "
            start = len(text)
            text += msg + " " + conv.sep2
            spans.append((start, len(text)))
    # get_prompt ends with ret.lstrip(sep): strips the *characters* of sep from the left
    stripped = text.lstrip(conv.sep) if conv.sep else text
    shift = len(text) - len(stripped)
    return stripped, [(a - shift, b - shift) for a, b in spans]


# -- tokenization as preprocess does it ----------------------------------------------------------------------

def image_token_ids(text: str, tok: LlavaTokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenizer_image_token``: each chunk between ``<image>`` tokenized on its own, one IMAGE_TOKEN_INDEX
    between chunks; when the first chunk starts with the BOS id, the first token of *every* chunk is dropped
    (and one BOS kept). No truncation. With each token's character offsets."""
    chunks = text.split(IMAGE_TOKEN)
    encs = [tok.encode(c) for c in chunks]
    first = list(encs[0].ids)
    offset = 1 if first and first[0] == tok.bos_id else 0
    ids: list[int] = [first[0]] if offset else []
    offsets: list[tuple[int, int]] = [(0, 0)] * len(ids)
    pos = 0
    for k, (chunk, enc) in enumerate(zip(chunks, encs)):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
            offsets.append((pos - len(IMAGE_TOKEN), pos - len(IMAGE_TOKEN)))
        for t, (a, b), seq in list(zip(enc.ids, enc.offsets, enc.sequence_ids))[offset:]:
            ids.append(t)
            offsets.append((pos + a, pos + b) if seq is not None else (pos, pos))
        pos += len(chunk) + len(IMAGE_TOKEN)
    return ids, offsets


@dataclass
class LlavaRun:
    """What LLaVA's preprocess does with one sample: the ids it trains on and their labels, the warning's two
    numbers (``mismatch = (cur_len, total_len)``, all labels then masked), or ``refused`` where it raises."""

    version: str
    conv: Conv
    function: str
    has_image: bool
    prompt: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    supervised: list[bool] = field(default_factory=list)
    mismatch: tuple[int, int] | None = None
    round_lens: list[int] = field(default_factory=list)
    refused: Refused | None = None
    truncated: bool = False  # the text path cut the prompt at model_max_length


def _ignore(sup: list[bool], start: int | None, stop: int | None) -> None:
    """``target[start:stop] = IGNORE_INDEX`` with Python's slice rules (a negative stop counts from the end)."""
    n = len(sup[start:stop])
    if n:
        sup[start:stop] = [False] * n


def _roles_checked(conv: Conv, source: list[dict[str, Any]], function: str) -> list[tuple[str, str]]:
    """preprocess_v1 / _mpt / _llama_2: skip a first sentence not from the human, then every sentence must
    alternate human, gpt (``roles[sentence["from"]]`` and ``assert role == conv.roles[j % 2]``)."""
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    if not source:
        raise Refused("IndexError: list index out of range", f'{function}: if roles[source[0]["from"]] != ...')
    first = source[0].get("from")
    if first not in roles:
        raise Refused(f"KeyError: {first!r}", f'{function}: if roles[source[0]["from"]] != conv.roles[0]:')
    if roles[first] != conv.roles[0]:
        source = source[1:]
    out = []
    for j, sentence in enumerate(source):
        who = sentence.get("from")
        if who not in roles:
            raise Refused(f"KeyError: {who!r}", f'{function}: role = roles[sentence["from"]]')
        if roles[who] != conv.roles[j % 2]:
            raise Refused("AssertionError: 0", f'{function}: assert role == conv.roles[j % 2], f"{{i}}"')
        out.append((roles[who], str(sentence.get("value", ""))))
    return out


def simulate(row: Mapping[str, Any], *, tokenizer: LlavaTokenizer, version: str,
             mm_use_im_start_end: bool = False, patch: tuple[int, int] = (0, 0), fork: str = LLAVA) -> LlavaRun:
    """Run LLaVA's ``LazySupervisedDataset.__getitem__`` text side on one row (without opening its image).

    ``patch`` changes the round arithmetic on purpose, as users patch train.py: ``(start, step)`` adds
    ``start`` to the initial ``cur_len`` and ``step`` to ``round_len``/``instruction_len`` of each round after
    the first. The counterfactual that names a fix. ``fork`` ``llava_next``: LLaVA-NeXT's train.py (df17966).
    """
    conv = conversation_for(version, fork=fork)
    if fork == LLAVA_NEXT and conv.style == "mpt":  # its preprocess_mpt starts at cur_len = 1, c121f04's at 0
        patch = (patch[0] + 1, patch[1])
    has_image = "image" in row
    run = LlavaRun(version, conv, conv.function, has_image)
    source = copy.deepcopy(list(row.get("conversations") or []))
    if has_image:
        for sentence in source:
            if fork == LLAVA_NEXT and not (isinstance(sentence, Mapping) and isinstance(sentence.get("value"), str)):
                # preprocess_multimodal: re.findall(DEFAULT_IMAGE_TOKEN, sentence["value"]) of every sentence
                what = ("KeyError: 'value'" if not isinstance(sentence, Mapping) or "value" not in sentence
                        else "TypeError: expected string or bytes-like object")
                run.refused = Refused(what, 'preprocess_multimodal: re.findall(DEFAULT_IMAGE_TOKEN, sentence["value"])')
                return run
            sentence["value"] = multimodal(str(sentence.get("value", "")), conv=conv,
                                           mm_use_im_start_end=mm_use_im_start_end, fork=fork)
    try:
        if conv.style == "chatml":
            _qwen(run, source, tokenizer)
        elif conv.style == "plain":
            _plain(run, source, tokenizer)
        elif conv.style == "single":
            _generic(run, source, tokenizer)
        else:
            _rounds(run, source, tokenizer, patch)
    except Refused as e:
        run.refused = e
    return run


# preprocess_qwen: the chat template it sets on its copy of the tokenizer (each message rendered and tokenized on
# its own), the system message it always writes, and the ids it labels wherever they stand ("\n" is 198 in Qwen's
# vocabulary, hard-coded there, with <|im_start|> and <|im_end|> read from additional_special_tokens_ids)
QWEN_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
QWEN_SYSTEM_MESSAGE = "You are a helpful assistant."
QWEN_NEWLINE_ID = 198


def _qwen(run: LlavaRun, source: list[dict[str, Any]], tok: LlavaTokenizer) -> None:
    """LLaVA-NeXT's preprocess_qwen: on a copy of the tokenizer (``<image>`` added as a special token when the row
    has an image), the system message and then each sentence through ``apply_chat_template`` one at a time;
    user and system turns unlabelled, every other role labelled whole (its ``<|im_start|>role\n`` header too);
    then ids 198, ``<|im_start|>`` and ``<|im_end|>`` labelled wherever they stand, and the ``<image>`` id becomes
    IMAGE_TOKEN_INDEX. No length check, no truncation (the collator cuts)."""
    fn = run.function
    specials = tok.backend.config.get("additional_special_tokens") or []
    specials = [t.get("content") if isinstance(t, Mapping) else t for t in specials]
    if len(specials) != 2:
        why = ("too many values to unpack (expected 2)" if len(specials) > 2
               else f"not enough values to unpack (expected 2, got {len(specials)})")
        raise Refused(f"ValueError: {why}", f"{fn}: im_start, im_end = tokenizer.additional_special_tokens_ids "
                                            f"({len(specials)} additional special tokens)")
    image_id = tok.token_id(IMAGE_TOKEN)  # convert_tokens_to_ids: None unless the vocabulary has it already
    if run.has_image:  # preprocess_qwen deep-copies the tokenizer before adding <image>: one copy kept per tokenizer
        if tok.with_image is None:
            copied = copy.copy(tok)
            copied.owned = False
            copied.add_special(IMAGE_TOKEN)
            tok.with_image = copied
        tok = tok.with_image
        image_id = tok.token_id(IMAGE_TOKEN)
    im_start, im_end = (tok.token_id(str(t)) for t in specials)
    unmask = {QWEN_NEWLINE_ID, im_start, im_end}
    roles = {"human": "user", "gpt": "assistant"}
    if not source:
        raise Refused("IndexError: list index out of range", f'{fn}: if roles[source[0]["from"]] != roles["human"]:')
    where = f'{fn}: if roles[source[0]["from"]] != roles["human"]:'
    if not isinstance(source[0], Mapping) or "from" not in source[0]:
        raise Refused("KeyError: 'from'", where)
    first = source[0]["from"]
    if not isinstance(first, str) or first not in roles:
        raise Refused(f"KeyError: {first!r}", where)
    if roles[first] != "user":
        source = source[1:]
    pieces: list[tuple[str, bool]] = [(QWEN_TURN.format(role="system", content=QWEN_SYSTEM_MESSAGE), False)]
    for conv in source:
        if not isinstance(conv, Mapping):
            raise Refused("TypeError: string indices must be integers", f'{fn}: role = conv["from"]')
        if "role" in conv and "content" in conv:
            role, content = conv["role"], conv["content"]
        elif "from" in conv and "value" in conv:
            role, content = conv["from"], conv["value"]
        else:
            missing = "from" if "from" not in conv else "value"
            raise Refused(f"KeyError: {missing!r}", f'{fn}: role = conv["from"]; content = conv["value"]')
        role = roles.get(role, role) if isinstance(role, str) else role
        if not isinstance(role, str) or not isinstance(content, str):
            bad = role if not isinstance(role, str) else content
            raise Refused(f'TypeError: can only concatenate str (not "{type(bad).__name__}") to str',
                          f"{fn}: tokenizer.apply_chat_template(conv)")
        pieces.append((QWEN_TURN.format(role=role, content=content), role not in ("user", "system")))
    ids: list[int] = []
    sup: list[bool] = []
    offsets: list[tuple[int, int]] = []
    prompt = ""
    for text, labelled in pieces:
        enc = tok.encode(text)
        ids += enc.ids
        offsets += [(len(prompt) + a, len(prompt) + b) for a, b in enc.offsets]
        sup += [labelled] * len(enc.ids)
        if labelled:
            run.spans.append((len(prompt), len(prompt) + len(text)))
        prompt += text
    for k, t in enumerate(ids):
        if t in unmask:
            sup[k] = True
        if image_id is not None and t == image_id:
            ids[k] = IMAGE_TOKEN_INDEX
    run.prompt, run.input_ids, run.supervised, run.offsets = prompt, ids, sup, offsets


def _whole(run: LlavaRun, tok: LlavaTokenizer) -> None:
    """The conversation's ids: ``tokenizer_image_token`` (no truncation) or ``tokenizer(..., truncation=True)``."""
    if run.has_image:
        run.input_ids, run.offsets = image_token_ids(run.prompt, tok)
    else:
        enc = tok.encode(run.prompt, max_length=tok.model_max_length)
        run.input_ids = list(enc.ids)
        run.offsets = [(a, b) if s is not None else (0, 0) for (a, b), s in zip(enc.offsets, enc.sequence_ids)]
        run.truncated = len(enc.ids) < len(tok.ids(run.prompt))
    run.supervised = [True] * len(run.input_ids)


def _length(run: LlavaRun, tok: LlavaTokenizer) -> Callable[[str], int]:
    if run.has_image:
        return lambda text: len(image_token_ids(text, tok)[0])
    return lambda text: len(tok.ids(text))


def _plain(run: LlavaRun, source: list[dict[str, Any]], tok: LlavaTokenizer) -> None:
    """preprocess_plain: exactly two sentences, ``<image>`` in the first; "<image>" + answer + "\\n", always
    through tokenizer_image_token; the image part unlabelled."""
    if len(source) != 2:
        raise Refused("AssertionError", "preprocess_plain: assert len(source) == 2")
    if IMAGE_TOKEN not in str(source[0].get("value", "")):
        raise Refused("AssertionError", "preprocess_plain: assert DEFAULT_IMAGE_TOKEN in source[0]['value']")
    answer = str(source[1].get("value", ""))
    run.prompt = IMAGE_TOKEN + answer + run.conv.sep
    run.spans = [(len(IMAGE_TOKEN), len(run.prompt))]
    run.has_image = True
    _whole(run, tok)
    _ignore(run.supervised, None, len(image_token_ids(IMAGE_TOKEN, tok)[0]))


def _generic(run: LlavaRun, source: list[dict[str, Any]], tok: LlavaTokenizer) -> None:
    """The ``###`` path: header + "### Role: text\\n" per sentence + "### "; each piece's length counted on its
    own (text path: ids that are not the pad id, truncated as the whole is); ``_mask_targets`` masks the
    header and each "human" sentence from its third token on. No length check."""
    conv = run.conv
    header = conv.system + "\n\n"
    text = header
    sentences: list[tuple[str, str]] = []
    for sentence in source:
        who = str(sentence.get("from", ""))
        role = {"human": conv.roles[0], "gpt": conv.roles[1]}.get(who.lower(), "unknown")
        value = str(sentence.get("value", ""))
        piece = _BEGIN_SIGNAL + role + ": " + value + _END_SIGNAL
        if who.lower() == "gpt":
            start = len(text) + len(piece) - len(value) - len(_END_SIGNAL)
            run.spans.append((start, len(text) + len(piece) + len(conv.sep)))
        sentences.append((who, piece))
        text += piece
    run.prompt = text + _BEGIN_SIGNAL
    _whole(run, tok)
    if run.has_image:
        lens = [len(image_token_ids(p, tok)[0]) for p in [header, *(s for _, s in sentences)]]
    else:
        lens = [sum(1 for i in tok.ids(p, max_length=tok.model_max_length) if i != tok.pad_id)
                for p in [header, *(s for _, s in sentences)]]
    cur = lens[0]
    _ignore(run.supervised, None, cur)
    for n, (who, _) in zip(lens[1:], sentences):
        if who == "human":
            _ignore(run.supervised, cur + 2, cur + n)
        cur += n
    run.round_lens = lens[1:]


def _rounds(run: LlavaRun, source: list[dict[str, Any]], tok: LlavaTokenizer,
            patch: tuple[int, int] = (0, 0)) -> None:
    """preprocess_v1 / preprocess_llama_2 / preprocess_mpt: split the prompt into rounds, add up their token
    counts, and mask everything when the sum differs from the number of non-pad ids (below model_max_length)."""
    conv, fn = run.conv, run.function
    messages = _roles_checked(conv, source, fn)
    run.prompt, run.spans = _prompt(conv, messages)
    _whole(run, tok)
    sup = run.supervised
    total = sum(1 for i in run.input_ids if i != tok.pad_id)
    length = _length(run, tok)
    if conv.style == "mpt":
        sep = conv.sep + conv.roles[1]
        parts = run.prompt.split(conv.sep)
        rounds = [conv.sep.join(parts[:3])] + [conv.sep.join(parts[k:k + 2]) for k in range(3, len(parts), 2)]
        cur, head_drop, bump = 0, 1, +1
    else:
        assert conv.sep2 is not None
        sep = conv.sep + conv.roles[1] + ": " if conv.style == "two" else "[/INST] "
        rounds = run.prompt.split(conv.sep2)
        cur, head_drop, bump = 1, 2, -1
    cur += patch[0]
    _ignore(sup, None, cur)
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        pieces = rou.split(sep)
        if len(pieces) != 2:
            break
        round_len = length(rou)
        instruction_len = length(pieces[0] + sep) - head_drop
        if i != 0:
            round_len += patch[1]
            instruction_len += patch[1]
            # preprocess_v1: `not tokenizer.legacy` (-1); preprocess_mpt: getattr(tokenizer, 'legacy', False) (+1)
            if fn == "preprocess_v1" and not tok.get_legacy(f"{fn}: if i != 0 and not tokenizer.legacy ..."):
                round_len += bump
                instruction_len += bump
            elif fn == "preprocess_mpt" and tok.legacy:
                round_len += bump
                instruction_len += bump
        _ignore(sup, cur, cur + instruction_len)
        run.round_lens.append(round_len)
        cur += round_len
    _ignore(sup, cur, None)
    if cur < tok.model_max_length and cur != total:
        run.supervised = [False] * len(sup)
        run.mismatch = (cur, total)


# -- the launch script ---------------------------------------------------------------------------------------

NAME = "llava"
RELEASE = "haotian-liu/LLaVA c121f04 (LLaVA-1.5), and forks that keep its train.py and --version names"
# llava/train/train.py dataclass defaults: ModelArguments.version, TrainingArguments.model_max_length,
# DataArguments.image_aspect_ratio, ModelArguments.mm_use_im_start_end / mm_vision_select_feature
DEFAULT_VERSION = "v0"
DEFAULT_MODEL_MAX_LENGTH = 512
DEFAULT_ASPECT = "square"
DEFAULT_SELECT_FEATURE = "patch"
# LLaVA-VL/LLaVA-NeXT df17966 llava/train/train.py: TrainingArguments.model_max_length, ModelArguments.
# mm_patch_merge_type; and the flags only its argument dataclasses have (HfArgumentParser refuses them in c121f04):
# a launch that passes one runs LLaVA-NeXT's train.py
NEXT_RELEASE = "LLaVA-VL/LLaVA-NeXT df17966"
NEXT_DEFAULT_MODEL_MAX_LENGTH = 4096
DEFAULT_MERGE = "flat"
NEXT_ONLY_FLAGS = frozenset((
    "add_faster_video", "add_time_instruction", "early_mix_text", "faster_token_stride", "force_sample",
    "frames_upbound", "freeze_mm_vision_resampler", "group_by_modality_length_auto", "group_by_varlen",
    "image_crop_resolution", "image_grid_pinpoints", "image_split_resolution", "mm_mask_drop_mode",
    "mm_mask_drop_ratio", "mm_newline_position", "mm_resampler_type", "mm_spatial_pool_mode",
    "mm_spatial_pool_stride", "mm_tunable_parts", "mm_vision_tower_lr", "model_class_name", "pos_skipping_range",
    "rope_scaling_factor", "rope_scaling_type", "s2", "s2_scales", "tune_mm_vision_resampler",
    "unfreeze_language_model", "unfreeze_mm_vision_tower", "use_pos_skipping", "video_folder", "video_fps",
    "vision_tower_pretrained"))
# `vlmcheck scan --framework llava` has no launch script to read: LLaVA's cut is not the processor's
SCAN_DEFAULTS: dict[str, Any] | None = None
_ENTRY = re.compile(r"(^|/)(train|train_mem|train_xformers)\.py$")
_MODULE_ENTRY = re.compile(r"^llava\.train\.(train|train_mem|train_xformers)$")
_TRUE, _FALSE = {"true", "yes", "1", "t", "y"}, {"false", "no", "0", "f", "n"}


@dataclass(frozen=True)
class LlavaLaunch:
    """The settings of one LLaVA training command, as ``train()`` would receive them."""

    script: Path
    version: str | None  # None: set through a shell variable the script does not set (see ``unresolved``)
    model_name_or_path: str | None
    model_max_length: int
    data_path: str | None
    image_folder: str | None
    mm_use_im_start_end: bool
    unresolved: dict[str, str]  # setting -> the shell variable it needs
    image_aspect_ratio: str = DEFAULT_ASPECT
    vision_tower: str | None = None
    mm_vision_select_feature: str = DEFAULT_SELECT_FEATURE
    values: dict[str, str | None] = field(default_factory=dict)  # every flag as written, for the report
    fork: str = LLAVA  # LLAVA_NEXT when a flag only LLaVA-NeXT's train.py has is passed
    mm_patch_merge_type: str = DEFAULT_MERGE
    image_grid_pinpoints: str | None = None

    def need(self, name: str) -> str:
        """Why a setting is missing, for a usage error."""
        if name in self.unresolved:
            return (f"{self.script} sets --{name} from ${self.unresolved[name]}, which is empty or not set in the "
                    "script or the environment")
        return f"{self.script} has no --{name}"


def _bool_flag(name: str, value: str | None) -> bool:
    """``HfArgumentParser``'s booleans: True/False/yes/no/1/0; a bare flag is True."""
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"--{name} {value!r} is not a boolean (HfArgumentParser reads True/False)")


def _command(text: str, *, script: Path, env: Mapping[str, str] | None = None,
             strict: bool = False) -> LlavaLaunch | None:
    """The settings of the first command in ``text`` that runs LLaVA's ``llava/train/train*.py``, read as bash runs
    the script (see ``_shell.launch_commands``): variables set in the script (``MODEL=...``) or in ``env`` are
    expanded; a setting that needs one that is empty or not set is left out and named in ``unresolved`` (LLaVA's
    own scripts leave ``$PROMPT_VERSION`` for the user to set). With ``strict`` a bare ``train.py`` counts only
    with LLaVA's own ``--data_path`` (other frameworks have train.py scripts too)."""
    env = os.environ if env is None else env
    program = r"llava[./]train|train(_mem|_xformers)?\.py"
    for command in launch_commands(text, env=env, path=script, program=program):
        words = command.words
        at = next((k for k, w in enumerate(words) if _ENTRY.search(w) or _MODULE_ENTRY.match(w)), None)
        if at is None:
            continue
        if strict and "llava/train/" not in words[at] and not _MODULE_ENTRY.match(words[at]) \
                and not any(w == "--data_path" or w.startswith("--data_path=") for w in words[at + 1:]):
            continue
        startable(command, at + 1, path=script, program=words[at])
        return _launch(script, *_flags(command, at + 1))
    return None


def launch_settings(path: str | os.PathLike[str]) -> LlavaLaunch:
    """The settings of the LLaVA training command in the launch script at ``path`` (``vlmcheck template
    --launch``)."""
    script = Path(path)
    try:
        text = read_text(script)  # a regular file of at most 64 MiB: a FIFO would block the read
    except FileProblem as e:
        raise UsageError(f"cannot read the launch script: {e.message}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the launch script {script}: {e}") from None
    launch = _command(text, script=script)
    if launch is None:
        raise UsageError(f"{script}: no command runs llava/train/train.py, train_mem.py or train_xformers.py")
    return launch


def _flags(command: ShellCommand, first: int) -> tuple[dict[str, str | None], dict[str, str]]:
    """The ``--flag value`` / ``--flag=value`` / bare ``--flag`` (None) settings of ``command`` from word ``first``,
    as train.py's HfArgumentParser gets them, and (setting -> variable) those whose value came from an empty or
    unset shell variable."""
    args = command.words[first:]
    dropped = {at - first: names for at, names in command.vanished}  # words bash dropped, by the index after them
    values: dict[str, str | None] = {}
    unresolved: dict[str, str] = {}
    k = 0
    while k < len(args):
        word = args[k]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            raw: str | None = None
            names = command.unset.get(first + k, ())
            if eq:
                raw = value
            else:
                names += dropped.get(k + 1, ())  # `--version $PROMPT_VERSION` with it unset: no word at all
                if k + 1 < len(args) and not args[k + 1].startswith("--"):
                    raw = args[k + 1]
                    names += command.unset.get(first + k + 1, ())
                    k += 1
            if names:
                unresolved[name] = names[0]
                values.pop(name, None)
            else:
                values[name] = raw
        k += 1
    return values, unresolved


def _launch(script: Path, values: dict[str, str | None], unresolved: dict[str, str]) -> LlavaLaunch:
    """The settings LLaVA's ``train()`` gets from the flags ``values`` (defaults filled in)."""
    raw_length = values.get("model_max_length")
    fork = LLAVA_NEXT if NEXT_ONLY_FLAGS & set(values) else LLAVA
    try:
        length = int(raw_length) if raw_length is not None else (
            NEXT_DEFAULT_MODEL_MAX_LENGTH if fork == LLAVA_NEXT else DEFAULT_MODEL_MAX_LENGTH)
    except ValueError:
        raise UsageError(f"{script}: --model_max_length {raw_length!r} is not an integer") from None
    if length <= 0:
        raise UsageError(f"{script}: --model_max_length must be positive, got {length}")
    version = None if "version" in unresolved else (values.get("version") or DEFAULT_VERSION)
    return LlavaLaunch(script, version, values.get("model_name_or_path"), length,
                       values.get("data_path"), values.get("image_folder"),
                       _bool_flag("mm_use_im_start_end", values["mm_use_im_start_end"])
                       if "mm_use_im_start_end" in values else False, unresolved,
                       image_aspect_ratio=values.get("image_aspect_ratio") or DEFAULT_ASPECT,
                       vision_tower=values.get("vision_tower"),
                       mm_vision_select_feature=values.get("mm_vision_select_feature") or DEFAULT_SELECT_FEATURE,
                       values=values, fork=fork, mm_patch_merge_type=values.get("mm_patch_merge_type") or DEFAULT_MERGE,
                       image_grid_pinpoints=values.get("image_grid_pinpoints"))


def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The flags of the LLaVA training command in a shell script (``vlmcheck check train.sh``), marked as
    LLaVA's; None when the script runs none."""
    launch = _command(text, script=path, env=env, strict=True)
    if launch is None:
        return None
    return {"__launch__": NAME, **launch.values, "__unresolved__": dict(launch.unresolved)}


def claims(raw: dict[str, Any]) -> bool:
    return raw.get("__launch__") == NAME


# -- the vision tower ----------------------------------------------------------------------------------------

# clip_encoder.CLIPVisionTower: the features are the vision tower's patches (select_feature "patch" drops CLS,
# "cls_patch" keeps it); image_size and patch_size come from the tower's CLIPVisionConfig. The OpenAI CLIP
# names spell both: clip-vit-large-patch14 (224 px, 256 features), clip-vit-large-patch14-336 (576).
_CLIP_NAME = re.compile(r"patch(\d+)(?:-(\d+))?(?:$|[^0-9])")
_CLIP_DEFAULT_SIZE = 224


# LLaVA-NeXT's siglip_encoder.py: SigLipVisionTower keeps the default SigLipVisionConfig (384 px, 14 px patches)
# whatever checkpoint it loads, its SigLipImageProcessor resizes every image (and every anyres tile) to 384 x 384
# without keeping the aspect ratio, and forward asserts 729 features a crop
SIGLIP_SIZE, SIGLIP_PATCH = 384, 14


def _model_type(folder: Path) -> str:
    """config.json's model_type (the vision config's when nested), or "" where there is none. A config.json that
    cannot be read (a FIFO, over the size read whole, nested too deep, not a JSON object) is a ModelError."""
    config = read_checkpoint_json(folder / "config.json")
    vision = config.get("vision_config")
    value = (vision.get("model_type") if isinstance(vision, dict) else None) or config.get("model_type")
    return str(value or "")


def siglip_settings() -> LlavaSettings:
    return LlavaSettings(patch_size=SIGLIP_PATCH, vision_feature_select_strategy="full", num_additional_image_tokens=0,
                         do_center_crop=False, crop_height=SIGLIP_SIZE, crop_width=SIGLIP_SIZE, shortest_edge=None,
                         height=SIGLIP_SIZE, width=SIGLIP_SIZE)


def tower_settings(vision_tower: str, *, select_feature: str = DEFAULT_SELECT_FEATURE,
                   base: Path | None = None, fork: str = LLAVA) -> LlavaSettings:
    """The CLIP image processor and feature count of ``--vision_tower``: from its config.json when it is a local
    folder, else from the OpenAI CLIP name (``...-patch14-336``). ``build_vision_tower`` loads an existing path or
    an openai / laion / ShareGPT4V name as CLIP; LLaVA-NeXT loads any other name holding "siglip" with its
    SigLipVisionTower (384 px, 729 features); another name raises 'Unknown vision tower'."""
    folder = Path(vision_tower).expanduser()
    if not folder.is_absolute() and base is not None and not folder.exists() and (base / folder).exists():
        folder = base / folder
    clip = folder.exists() or vision_tower.startswith(("openai", "laion")) or "ShareGPT4V" in vision_tower
    if folder.exists() and "siglip" in _model_type(folder):
        raise UsageError(f"--vision_tower {vision_tower}: build_vision_tower loads any existing folder with "
                         "CLIPVisionTower, and this one holds a SigLIP checkpoint; vlmcheck does not guess what "
                         "that loads into (LLaVA-OneVision's scripts pass the hub name, which LLaVA-NeXT loads "
                         "with its SigLipVisionTower)")
    if not clip and fork == LLAVA_NEXT and "siglip" in vision_tower:
        m = _CLIP_NAME.search(vision_tower)
        if m is not None and (int(m.group(1)), int(m.group(2) or 0)) != (SIGLIP_PATCH, SIGLIP_SIZE):
            raise UsageError(f"--vision_tower {vision_tower}: LLaVA-NeXT's SigLipVisionTower sizes images for "
                             f"{SIGLIP_SIZE} px with {SIGLIP_PATCH} px patches and asserts 729 features a crop, which "
                             "this checkpoint's patches do not give: the first step with an image raises")
        return siglip_settings()
    if not clip:
        raise UsageError(f"--vision_tower {vision_tower}: LLaVA's build_vision_tower raises 'Unknown vision tower' "
                         "(it loads an existing folder, or an openai / laion / ShareGPT4V name"
                         f"{', or a siglip name under LLaVA-NeXT' if fork == LLAVA_NEXT else ''})")
    size = patch = None
    if folder.is_dir():  # what build_vision_tower loads from a folder: its config.json, read as the checkpoint's
        config = read_checkpoint_json(folder / "config.json")
        nested = config.get("vision_config")
        vision = nested if isinstance(nested, dict) else config
        size, patch = vision.get("image_size"), vision.get("patch_size")
    if size is None or patch is None:
        m = _CLIP_NAME.search(vision_tower)
        if m is None:
            raise UsageError(f"--vision_tower {vision_tower}: vlmcheck reads its image size and patch size from a "
                             "local folder's config.json or from an OpenAI CLIP name (clip-vit-large-patch14-336)")
        patch, size = int(m.group(1)), int(m.group(2) or _CLIP_DEFAULT_SIZE)
    if select_feature not in ("patch", "cls_patch"):
        raise UsageError(f"--mm_vision_select_feature {select_feature!r}: LLaVA raises 'Unexpected select "
                         "feature' (patch or cls_patch)")
    # LlavaSettings counts (size // patch)**2 + 1 (the CLS feature), less one for "default" (patch only)
    return LlavaSettings(patch_size=int(patch), vision_feature_select_strategy="default" if select_feature == "patch"
                         else "full", num_additional_image_tokens=1, do_center_crop=True, crop_height=int(size),
                         crop_width=int(size), shortest_edge=int(size), height=None, width=None)


# -- LLaVA-NeXT's tiles ---------------------------------------------------------------------------------------

# mm_utils.process_anyres_image / get_anyres_image_grid_shape: the "(1x1),...,(6x6)" form, scaled by the tower's size
_PIN_RANGE = re.compile(r"\((\d+)x(\d+)\)")
_RANGE_SIZES = (224, 336, 384, 448, 512)
_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")


@dataclass(frozen=True)
class NextImages:
    """How LLaVA-NeXT's train.py (df17966) turns one image into features: ``process_image`` (anyres tiles or one
    crop) and ``prepare_inputs_labels_for_multimodal``'s merge (llava_arch.py), for a CLIP tower of ``size`` px
    and ``patch`` px patches whose one crop is ``base`` features."""

    aspect: str
    merge: str
    pinpoints: tuple[tuple[int, int], ...]  # (height, width), as families.llava_next takes them
    size: int
    patch: int
    base: int

    @property
    def anyres(self) -> bool:
        return self.aspect == "anyres" or "anyres_max" in self.aspect

    @property
    def one_crop(self) -> int:
        """One crop's features: the spatial merge's single-image branch appends ``image_newline``."""
        return self.base + (1 if self.merge.startswith("spatial") and "unpad" in self.merge else 0)

    def features(self, width: int, height: int) -> int:
        from vlmcheck.families import llava_next as family

        side = self.size // self.patch
        if not self.anyres:
            return self.one_crop
        best_h, best_w = family.select_best_resolution(height, width, self.pinpoints)
        tiles_h, tiles_w = best_h // self.size, best_w // self.size
        if self.merge == "flat":  # every tile flattened, the base image first
            return (1 + tiles_h * tiles_w) * self.base
        if "unpad" in self.merge:
            rows, cols = family.unpadded_grid(height, width, tiles_h * side, tiles_w * side, rounded=False)
            m = _ANYRES_MAX.match(self.aspect)
            if m is not None:
                rows, cols = family.max_patches_grid(rows, cols, max_num_patches=int(m.group(1)), patches=side)
            n = rows * (cols + 1)  # image_newline closes every row
        else:
            n = tiles_h * tiles_w * side * side
        return n if "nobase" in self.merge else n + self.base


def next_images(launch: LlavaLaunch, tower: LlavaSettings) -> NextImages:
    """LLaVA-NeXT's image path for a launch, or a usage error where every image row would fail the same way."""
    from vlmcheck.families import llava as family

    size, patch = tower.crop_height, tower.patch_size
    base = family.count_image_tokens(1, 1, tower)
    aspect, merge = launch.image_aspect_ratio, launch.mm_patch_merge_type
    if aspect in ("highres", "crop_split") or "maxpool2x2" in merge:
        raise UsageError(f"--image_aspect_ratio {aspect} --mm_patch_merge_type {merge}: this LLaVA-NeXT path is "
                         "not modelled by vlmcheck yet")
    if merge != "flat" and not merge.startswith("spatial"):
        raise UsageError(f"--mm_patch_merge_type {merge}: LLaVA-NeXT raises \"Unexpected mm_patch_merge_type\" "
                         "in the first step with an image (flat, spatial, spatial_unpad, ...)")
    pinpoints: tuple[tuple[int, int], ...] = ()
    anyres = aspect == "anyres" or "anyres_max" in aspect
    if anyres:
        raw = launch.image_grid_pinpoints
        if raw is None:
            raise UsageError(f"--image_aspect_ratio {aspect} without --image_grid_pinpoints: LLaVA-NeXT's "
                             "process_anyres_image raises on every image (ast.literal_eval(None))")
        if "x" in raw:
            if size not in _RANGE_SIZES:
                raise UsageError(f"--image_grid_pinpoints {raw}: LLaVA-NeXT asserts the tower's size ({size}) is "
                                 f"one of {', '.join(map(str, _RANGE_SIZES))}")
            ends = _PIN_RANGE.findall(raw)
            if not ends:
                raise UsageError(f"--image_grid_pinpoints {raw}: LLaVA-NeXT finds no (AxB) in it")
            (a0, b0), (a1, b1) = (tuple(map(int, ends[0])), tuple(map(int, ends[-1])))
            wh = [(i * size, j * size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
        else:
            import ast

            try:
                wh = [(int(w), int(h)) for w, h in ast.literal_eval(raw)]
            except (ValueError, SyntaxError, TypeError) as e:
                raise UsageError(f"--image_grid_pinpoints {raw}: LLaVA-NeXT cannot read it ({e})") from None
        if not wh:
            raise UsageError(f"--image_grid_pinpoints {raw}: no resolution in it")
        pinpoints = tuple((h, w) for w, h in wh)  # LLaVA-NeXT writes (width, height)
        if merge.startswith("spatial") and base != (size // patch) ** 2:
            raise UsageError("--mm_vision_select_feature cls_patch with anyres: LLaVA-NeXT asserts that the base "
                             "image has (size / patch)^2 features in the first step with an image")
    return NextImages(aspect=aspect, merge=merge, pinpoints=pinpoints, size=size, patch=patch, base=base)


def next_unmodelled(version: str, model_name: str) -> str | None:
    """Why LLaVA-NeXT's train() with ``--version`` and ``--model_name_or_path`` is not judged by vlmcheck (it raises,
    or its path is not modelled), or None."""
    if version in NEXT_ONLY_VERSIONS:
        return (f"--version {version}: LLaVA-NeXT's own conversation for it is not modelled by vlmcheck yet (its "
                "--version names shared with LLaVA-1.5, and its qwen versions, are)")
    route = next_tokenizer_route(model_name)
    if route is None:
        return (f"--model_name_or_path {model_name}: LLaVA-NeXT's train() loads a tokenizer only for names holding "
                "vicuna, llama, yi, wizardlm-2, mistral, mixtral, zephyr or qwen; for this one it raises "
                "UnboundLocalError")
    if route == "fast" and version not in NEXT_CONV_TEMPLATES:
        return (f"--model_name_or_path {model_name}: LLaVA-NeXT loads the fast tokenizer for this name, which "
                f"vlmcheck models with the qwen versions only ({', '.join(NEXT_CONV_TEMPLATES)}), not --version "
                f"{version}")
    if route == "slow" and version in NEXT_CONV_TEMPLATES:
        return (f"--version {version} with --model_name_or_path {model_name}: preprocess_qwen on LLaVA-NeXT's "
                "slow-tokenizer route is not modelled by vlmcheck (it hard-codes Qwen's ids)")
    return None


def next_tokenizer_route(name: str) -> str | None:
    """LLaVA-NeXT's ``train()`` picks the tokenizer from the model's name: the slow one (``use_fast=False``) for
    vicuna / llama / yi / wizardlm-2 names; the fast one for mistral / mixtral / zephyr and qwen; None: no branch
    matches and ``tokenizer`` is never assigned (UnboundLocalError)."""
    low = name.lower()
    if any(k in low for k in ("mistral", "mixtral", "zephyr", "qwen")):
        return "fast"
    if any(k in low for k in ("wizardlm-2", "vicuna", "llama", "yi")):
        return "slow"
    return None


# -- the run -------------------------------------------------------------------------------------------------

def _json_load_rows(file: Path) -> Iterator[Any]:
    """``json.load`` of a --data_path file, streamed: a JSON list of rows. Anything else (JSON Lines, whatever the
    file's name, or one object) makes LLaVA's load raise or take a dict's keys for rows: one BadRow."""
    from vlmcheck.data.readers import BadRow, iter_rows

    try:
        with file.open("rb") as f:
            head = b""
            while not head:  # the first byte that is not whitespace
                chunk = f.read(65536)
                if not chunk:
                    break
                head = chunk.lstrip()
    except OSError as e:
        yield BadRow(f"{file.name}: {e}", terminal=True)
        return
    if head.startswith(b"\xef\xbb\xbf"):
        yield BadRow(f"{file.name} starts with a UTF-8 byte order mark: LLaVA's json.load raises ('Unexpected UTF-8 "
                     "BOM') and the run stops while building the dataset", terminal=True)
        return
    if not head.startswith(b"["):
        yield BadRow(f"{file.name} is not one JSON list (JSON Lines or an object): LLaVA's json.load raises "
                     "('Extra data') or reads a dict, and the run stops while building the dataset", terminal=True)
        return
    yield from iter_rows(file, python_ints=True)


def _yaml_part_rows(file: Path) -> Iterator[Any]:
    """A YAML ``json_path`` file as LLaVA-NeXT reads it: ``json.loads(line.strip())`` of every line of a .jsonl
    (lines as text mode splits them: at ``\\n``, ``\\r\\n`` and a lone ``\\r``; a blank line raises), ``json.load``
    of a .json (one document). What raises is a BadRow, then nothing more. Read within bounded memory: a line
    over ``MAX_ROW_BYTES`` is not read (a BadRow), and a .json document is streamed twice (once to find whether
    json.load would raise on any of it, then its rows) instead of held whole."""
    import json

    from vlmcheck.data.compressed import open_binary
    from vlmcheck.data.readers import MAX_ROW_BYTES, BadRow, bounded_lines, iter_rows

    def raised(e: BaseException | str) -> BadRow:
        return BadRow(f"{file.name}: {str(e)[:200]}: LLaVA-NeXT's json.load raises while building the dataset",
                      terminal=True)

    try:
        if file.suffix == ".jsonl":
            number = 0
            with open_binary(file) as f:
                for raw, size in bounded_lines(f):
                    if raw is None:
                        yield BadRow(f"line {number + 1} is {size:,} bytes, over the {MAX_ROW_BYTES >> 20} MiB "
                                     "vlmcheck reads of one row (LLaVA-NeXT's json.loads of it raises or fills "
                                     "memory)", line=number + 1, terminal=True)
                        return
                    for line in raw.decode("utf-8").replace("\r\n", "\n").split("\r") if b"\r" in raw else \
                            [raw.decode("utf-8")]:
                        if not line:
                            continue
                        number += 1
                        try:
                            yield json.loads(line.strip())
                        except (ValueError, RecursionError) as e:
                            yield BadRow(f"line {number}: {e}: LLaVA-NeXT's json.loads raises while building the "
                                         "dataset", line=number, terminal=True)
                            return
            return
        with open_binary(file) as f:
            head = f.read(4096).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
        if not head.startswith("["):  # an object (extend() takes its keys) or not JSON: json.load of it is read
            if len(head) < 4096 or file.stat().st_size <= MAX_ROW_BYTES:
                with file.open(encoding="utf-8") as g:
                    value = json.load(g)
                yield BadRow(f"{file.name} holds a {type(value).__name__}, not a list of rows: LLaVA-NeXT's extend() "
                             "takes its keys", terminal=True)
            else:
                yield raised(f"not a JSON list (it starts {head[:20]!r})")
            return
        for row in iter_rows(file, python_ints=True):  # json.load raises on any flaw: then no row is trained
            if isinstance(row, BadRow):
                yield raised(row.reason)
                return
        yield from iter_rows(file, python_ints=True)
    except (OSError, ValueError, RecursionError, EOFError) as e:
        yield raised(e)


@dataclass(frozen=True)
class DataPart:
    """One file of ``--data_path`` and its YAML ``sampling_strategy`` (None: a plain JSON path)."""

    file: Path
    sampling: str | None = None

    def chosen(self, rows: int) -> tuple[str, slice]:
        """LLaVA-NeXT's sampling: ``first:N`` / ``end:N`` (N or N% of the rows, rounded up) and ``random:N``
        (an unseeded shuffle: which rows is not known before the run); anything else keeps every row."""
        strategy, number = self.sampling or "all", None
        if ":" in strategy:
            strategy, count = strategy.split(":", 1)
            try:
                number = (math.ceil(int(count.split("%")[0]) * rows / 100) if "%" in count else int(count))
            except (ValueError, OverflowError):
                raise UsageError(f"{self.file}: sampling_strategy {self.sampling!r}: LLaVA-NeXT's int() raises on "
                                 "its number") from None
        if number is None or strategy not in ("first", "end", "random"):
            return "all", slice(None)
        if strategy == "first":
            return strategy, slice(None, number)
        if strategy == "end":
            return strategy, slice(-number, None)  # end:0 keeps every row, as [-0:] does
        return strategy, slice(None, number)

@dataclass(frozen=True)
class Config:
    """A LLaVA launch with LLaVA's defaults filled in."""

    path: Path
    launch: LlavaLaunch
    version: str
    model: Path
    model_name: str  # as written (train() picks the fast tokenizer when "mpt" is in it)
    data: Path
    image_folder: Path | None
    vision_tower: str | None
    path_map: tuple[tuple[str, str], ...] = ()  # --path-map, for the files a LLaVA-NeXT YAML names


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The settings LLaVA's ``train()`` runs with for the flags in ``raw`` (from :func:`read_launch`)."""
    mapping = dict(path_map or {})
    values = {k: v for k, v in raw.items() if not k.startswith("__")}
    unresolved = dict(raw.get("__unresolved__") or {})
    launch = _launch(path, values, unresolved)
    if launch.version is None or "version" in unresolved:
        raise UsageError(launch.need("version"))
    name = model or launch.model_name_or_path
    if not name:
        raise UsageError(launch.need("model_name_or_path") + " (or pass --model)")
    source = data or launch.data_path
    if not source:
        raise UsageError(launch.need("data_path") + " (or pass --data)")
    folder = launch.image_folder
    return Config(path=path, launch=launch, version=launch.version, model=locate(name, path, mapping, up=2),
                  model_name=launch.model_name_or_path or name, data=locate(source, path, mapping, up=2),
                  image_folder=locate(folder, path, mapping, up=2) if folder is not None else None,
                  vision_tower=launch.vision_tower, path_map=tuple(mapping.items()))


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    """The run a LLaVA launch script starts, ready to judge its rows."""
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map, env=env)
    return Run(config)


class Run:
    """A LLaVA run: judges rows the way ``LazySupervisedDataset``, the collator and the model's splice do."""

    name = NAME
    versions = RELEASE
    fork = LLAVA
    next: NextImages | None = None
    length_key = "model_max_length"
    pixels_key = "image_aspect_ratio"

    def __init__(self, config: Config) -> None:
        from vlmcheck.families import llava as family
        from vlmcheck.model import ModelSpec

        launch = config.launch
        self.config = config
        self.fork = launch.fork
        if self.fork == LLAVA_NEXT:
            refused = next_unmodelled(config.version, config.model_name)
            if refused is not None:
                raise UsageError(refused)
        if not config.model.is_dir():
            raise UsageError(f"model {config.model} is not a local folder (vlmcheck reads the tokenizer LLaVA "
                             "loads from it; pass --model)")
        try:
            self.tokenizer = load_tokenizer(config.model, version=config.version,
                                            model_max_length=launch.model_max_length,
                                            model_name_or_path=config.model_name,
                                            mm_use_im_start_end=launch.mm_use_im_start_end, fork=self.fork,
                                            use_fast=self.fork == LLAVA_NEXT
                                            and next_tokenizer_route(config.model_name) == "fast")
        except Refused as e:
            raise UsageError(f"LLaVA's train() raises while loading the tokenizer of {config.model}: {e.what} "
                             f"({e.where})") from None
        self.max_length = launch.model_max_length
        self.settings = (tower_settings(config.vision_tower, select_feature=launch.mm_vision_select_feature,
                                        base=config.path.parent, fork=self.fork) if config.vision_tower else None)
        self.features = family.count_image_tokens(1, 1, self.settings) if self.settings is not None else None
        self.next = (next_images(launch, self.settings)
                     if self.fork == LLAVA_NEXT and self.settings is not None else None)
        self._issues = family.image_issues
        self.spec = ModelSpec(path=config.model, model_type="llava", family=family.FAMILY, settings=self.settings,
                              chat_template=None, special_tokens={})

    def inputs(self) -> list[Path]:
        return [self.config.path, self.config.data, *(part.file for part in self.data_parts())]

    def data_parts(self) -> list[DataPart]:
        """The files ``LazySupervisedDataset`` reads for ``--data_path``, in order: the one JSON file; under
        LLaVA-NeXT also ``base{a,b}.json`` (each ``base{name}.json``) and a YAML list of ``json_path`` entries with
        their ``sampling_strategy``."""
        data = self.config.data
        text = str(data)
        if self.fork == LLAVA_NEXT and "{" in text and "}" in text:
            m = re.match(r"^(.*)\{(.*)\}\.json$", text)
            if m is None:  # re.match(...).groups() of None
                raise UsageError(f"--data_path {text}: LLaVA-NeXT reads base{{a,b}}.json here and raises "
                                 "AttributeError on any other name with braces")
            return [DataPart(Path(f"{m.group(1)}{name}.json")) for name in m.group(2).split(",")]
        if self.fork == LLAVA_NEXT and text.endswith(".yaml"):
            return self._yaml_parts(data)
        return [DataPart(data)]

    def _yaml_parts(self, data: Path) -> list[DataPart]:
        import yaml

        try:  # at most 64 MiB, a regular file (a FIFO would block), nested no deeper than vlmcheck reads
            spec = read_parsed(data, yaml.safe_load, what="--data_path")
        except yaml.YAMLError as e:
            raise UsageError(f"--data_path {data}: LLaVA-NeXT cannot read it ({e})") from None
        datasets = spec.get("datasets") if isinstance(spec, dict) else None
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            raise UsageError(f"--data_path {data}: LLaVA-NeXT reads a `datasets:` list of json_path entries here")
        parts = []
        for entry in datasets:
            raw = entry.get("json_path")
            if not isinstance(raw, str) or not raw.endswith((".json", ".jsonl")):
                raise UsageError(f"--data_path {data}: json_path {raw!r}: LLaVA-NeXT raises 'Unsupported file type'")
            strategy = entry.get("sampling_strategy", "all")
            if not isinstance(strategy, str):  # `":" in sampling_strategy` raises TypeError
                raise UsageError(f"--data_path {data}: sampling_strategy {strategy!r} of {raw}: LLaVA-NeXT raises "
                                 "TypeError (a string such as all, first:1000, end:10%)")
            parts.append(DataPart(locate(raw, self.config.path, dict(self.config.path_map), up=2), strategy))
        return parts

    def rows(self) -> Iterator[tuple[Any, DataPart]]:
        from vlmcheck.data.readers import BadRow

        parts = self.data_parts()
        if parts == [DataPart(self.config.data)] and not self.config.data.is_file():
            raise UsageError(f"--data_path {self.config.data}: {not_a_file(self.config.data)} (LLaVA json.load()s it)")
        for part in parts:
            if not part.file.is_file():
                raise UsageError(f"{part.file} (from --data_path {self.config.data}): {not_a_file(part.file)}: LLaVA-NeXT "
                                 "raises while building the dataset")
            if part.sampling is None:  # the plain --data_path (json.load) or a base{a,b}.json file
                for row in _json_load_rows(part.file):
                    yield row, part
                continue
            rows = list(_yaml_part_rows(part.file))  # LLaVA-NeXT holds every file's rows too
            if any(isinstance(row, BadRow) for row in rows):  # the load raises before any sampling
                yield from ((row, part) for row in rows)
                continue
            kind, chosen = part.chosen(len(rows))
            if kind == "random":  # random.shuffle, unseeded when the dataset is built: every row is judged
                for row in rows:
                    yield row, part
            else:
                yield from ((row, part) for row in rows[chosen])

    def shown_settings(self) -> Any:
        return self.settings

    def describe(self) -> dict[str, Any]:
        cfg, launch = self.config, self.config.launch
        conv = conversation_for(cfg.version, fork=self.fork)
        images = (f"image_aspect_ratio {launch.image_aspect_ratio}, vision tower {cfg.vision_tower}: "
                  f"{self.features} features per image; media from {cfg.image_folder}"
                  if self.settings is not None else "no --vision_tower: rows with an image stop the run")
        if self.next is not None:
            images = (f"LLaVA-NeXT: image_aspect_ratio {launch.image_aspect_ratio}, mm_patch_merge_type "
                      f"{launch.mm_patch_merge_type}, vision tower {cfg.vision_tower}: features from each image's size"
                      f"{' and the grid pinpoints' if self.next.anyres else ''}; media from {cfg.image_folder}")
        return {
            "name": NAME, "versions": NEXT_RELEASE if self.fork == LLAVA_NEXT else RELEASE, "fork": self.fork,
            "config": str(cfg.path), "version": cfg.version,
            "template": f"--version {cfg.version} ({conv.name}, {conv.function})", "conversation": conv.name,
            "preprocess": conv.function, "tokenizer": self.tokenizer.reason,
            "datasets": [str(cfg.data)] if self.data_parts() == [DataPart(cfg.data)] else [
                f"{part.file}" + (f" ({part.sampling})" if part.sampling not in (None, "all") else "")
                for part in self.data_parts()], "image_folder": str(cfg.image_folder) if cfg.image_folder else None,
            "model_max_length": launch.model_max_length, "image_aspect_ratio": launch.image_aspect_ratio,
            "vision_tower": cfg.vision_tower, "features_per_image": self.features,
            "mm_use_im_start_end": launch.mm_use_im_start_end, "length_key": self.length_key,
            "images": images, "mm_patch_merge_type": launch.mm_patch_merge_type,
            "image_grid_pinpoints": launch.image_grid_pinpoints,
            "pixels_key": self.pixels_key,
        }

    def _image(self, value: Any, found: list[Any], *, aspect: str | None = None, image: int = 1
               ) -> tuple[int, int] | None:
        """``Image.open(os.path.join(image_folder, image_file)).convert('RGB')`` and the processor: its (width,
        height) as opened when it loads, else None and a finding. ``aspect``: ``process_image``'s override (LLaVA-NeXT
        pads each image of a multi-image row)."""
        aspect = aspect or self.config.launch.image_aspect_ratio
        from vlmcheck import findings as F
        from vlmcheck.data.images import ImageProblem, probe_path

        if self.settings is None:
            found.append(F.make("VC001", "the row has an image but the launch sets no --vision_tower: train() "
                                         "builds no image processor and __getitem__ raises AttributeError"))
            return None
        if not isinstance(value, str):
            found.append(F.make("VC001", f"'image' is a {type(value).__name__}: this train.py takes one file name "
                                         "per row and os.path.join raises TypeError"))
            return None
        if self.config.image_folder is None:
            found.append(F.make("VC001", "the launch sets no --image_folder: os.path.join(None, ...) raises "
                                         "TypeError"))
            return None
        path = self.config.image_folder / value
        try:
            width, height = probe_path(path).size(exif_transpose=False)  # PIL's open: no EXIF rotation
        except ImageProblem as p:
            found.append(F.make(p.code, f"image {value}: {p.message}", image=image, **p.data))
            return None
        except (OSError, ValueError) as e:
            found.append(F.make("VC102", f"image {value}: cannot be opened: {str(e)[:200]}", image=image))
            return None
        size = (width, height)
        if self.next is not None and (aspect == "anyres" or "anyres_max" in aspect):  # tiles resized to the crop
            return size
        rows = max(width, height) if aspect == "pad" else height
        if self.next is not None and rows == 1:
            # the CLIP processor of LLaVA-NeXT's pinned transformers (4.37.2) reads an (H, W, 3) array with H = 1 as
            # channels-first (infer_channel_dimension_format) and raises; anyres resizes first and is spared
            found.append(F.make("VC102", f"image {value}: {width}x{height}: the CLIP image processor takes its one "
                                         "row for a channel and raises", image=image))
            return None
        if aspect == "pad":  # expand2square: a max(w, h) square canvas first
            width = height = max(width, height)
        issues = self._issues(width, height, self.settings)
        for issue in issues:
            found.append(F.make(issue.code, f"image {value}: {issue.message}", image=image, **issue.data))
        return None if issues else size

    def _modality_words(self, row: Mapping[str, Any]) -> str | None:
        """With ``--group_by_modality_length`` (LLaVA-NeXT: also ``_auto``, and ``--group_by_length``, which its
        sampler reads first), ``modality_lengths`` / ``lengths`` run ``len(conv["value"].split())`` over every turn
        of every row when the sampler is built; LLaVA-NeXT's ``modality_lengths`` also asserts the total is
        positive. What raises on ``row``, or None."""
        values = self.config.launch.values

        def on(key: str) -> bool:
            return key in values and _bool_flag(key, values[key])

        if self.fork == LLAVA_NEXT:  # its sampler: group_by_length first (``lengths``: no assert), then modality
            by_length = on("group_by_length")
            if not (by_length or on("group_by_modality_length") or on("group_by_modality_length_auto")):
                return None
        elif on("group_by_modality_length"):
            by_length = False
        else:
            return None
        convs = row.get("conversations")
        if convs is None:
            return "KeyError: 'conversations'"
        total = 0
        try:
            for conv in convs:
                total += len(conv["value"].split())
        except KeyError as e:
            return f"KeyError: {e}"
        except (TypeError, AttributeError) as e:
            return f"{type(e).__name__}: {e}"
        if self.fork == LLAVA_NEXT and not by_length and total <= 0:
            return "AssertionError: Conversation length is 0"
        return None

    def _fails(self, frame: dict[str, Any], found: list[Any], index: int) -> None:
        """Where ``__getitem__`` raises: c121f04's run stops; LLaVA-NeXT's retries the row three times, then
        returns row ``index + 1`` in its place (and raises only if that one fails too)."""
        from vlmcheck import findings as F

        if self.fork != LLAVA_NEXT:
            frame["verdict"] = "stops"
            return
        frame["verdict"] = "replaced"
        found.append(F.make("VC001", f"LLaVA-NeXT's __getitem__ gives up on this row after three tries and trains "
                                     f"on row {index + 1} in its place (the run stops only if that row fails too)",
                            fix="fix or drop the row"))

    def judge(self, index: int, row: Any, source: DataPart | Path) -> SampleResult:
        from vlmcheck import findings as F
        from vlmcheck.data.readers import BadRow
        from vlmcheck.results import SampleResult

        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        found = result.findings
        frame: dict[str, Any] = {"name": NAME, "version": self.config.version, "verdict": "ok"}
        if isinstance(source, DataPart) and source.file != self.config.data:  # a file the --data_path names
            frame["data"] = str(source.file)
            if source.sampling is not None and source.sampling.startswith("random:"):
                frame["sampling"] = source.sampling  # judged, though only some rows of the file are drawn
        result.framework = frame
        if isinstance(row, BadRow):
            found.append(F.make("VC001", f"{row.reason}; json.load() of --data_path raises and the run stops"))
            frame["verdict"] = "stops"
            return result
        if not isinstance(row, Mapping):
            found.append(F.make("VC001", f"the row is a {type(row).__name__}, not an object"))
            frame["verdict"] = "stops"
            return result
        if isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        words = self._modality_words(row)
        if words is not None:
            found.append(F.make("VC001", f"the trainer's length-grouped sampler (--group_by_modality_length, or "
                                         f"LLaVA-NeXT's --group_by_length) counts every row's words before step 1 "
                                         f"and raises on this one ({words}): the run stops", fix="fix or drop the row"))
            frame["verdict"] = "stops"
            return result
        if self.fork == LLAVA_NEXT and "video" in row and "image" not in row:
            found.append(F.make("VC007", "a 'video' row: LLaVA-NeXT samples its frames (decord, --frames_upbound) and "
                                         "pools them; vlmcheck does not count videos yet"))
            frame["verdict"] = "unknown"
            return result
        has_image = "image" in row
        # the features each image gives, in order; a text row's stand-in image (zeros, one crop) when none
        features = [self.next.one_crop if self.next is not None else self.features or 0]
        if has_image:
            value = row["image"]
            listed = self.fork == LLAVA_NEXT and isinstance(value, list)
            if listed and not value:
                found.append(F.make("VC001", "'image' is an empty list: the model's splice concatenates no images "
                                             "(torch.cat of an empty list raises) and the run stops"))
                frame["verdict"] = "stops"
                return result
            # LLaVA-NeXT's _get_item: a list of more than one image is processed again, each padded to one crop
            multi = listed and len(value) > 1
            features = []
            for k, item in enumerate(value if listed else [value], 1):
                size = self._image(item, found, image=k)
                if size is not None and multi:  # processed once as configured, then again padded to one crop
                    size = self._image(item, found, aspect="pad", image=k)
                if size is None:
                    self._fails(frame, found, index)
                    result.image_tokens = [self.features] if not listed else []
                    return result
                if self.next is None:
                    features.append(self.features or 0)
                else:
                    features.append(self.next.one_crop if multi else self.next.features(*size))
            result.image_tokens = [*features]
        run = simulate(row, tokenizer=self.tokenizer, version=self.config.version,
                       mm_use_im_start_end=self.config.launch.mm_use_im_start_end, fork=self.fork)
        if run.refused is not None:
            found.append(F.make("VC001", f"LLaVA's {run.function} raises {run.refused.what} "
                                         f"({run.refused.where}); the run stops at the step that reaches it"
                                if self.fork == LLAVA else
                                f"LLaVA-NeXT's {run.function} raises {run.refused.what} ({run.refused.where})"))
            self._fails(frame, found, index)
            return result
        return self._cut(result, run, has_image, features)

    def _cut(self, result: SampleResult, run: LlavaRun, has_image: bool, features: list[int]) -> SampleResult:
        """The collator's slice of the ids, the model's splice of the image features, and its slice of the
        embeddings and labels (``prepare_inputs_labels_for_multimodal``). ``features``: each image's, in order (a
        text row: the stand-in image's). The k-th ``<image>`` id takes image k (batch of one)."""
        from vlmcheck import findings as F

        found, frame = result.findings, result.framework
        assert frame is not None
        limit = self.max_length
        ids, sup = run.input_ids, run.supervised
        pad = self.tokenizer.pad_id
        if pad is None and self.fork == LLAVA_NEXT:
            pad = 0  # its collator, with no pad token: "pad_token_id = 0 # This gets the best result."
        at = [k for k, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
        sliced = ids[:limit]  # DataCollatorForSupervisedDataset's slice
        holes = sliced.count(IMAGE_TOKEN_INDEX)
        n = len(features) if has_image else 1
        images = len(features) if has_image else 0
        if holes > n and self.fork == LLAVA_NEXT:
            if holes > n + 1:  # image_features[k] and then image_features[k - 1] both past the end: IndexError
                found.append(F.make("VC002", f"{holes} <image> tokens in the text for the row's {images} image(s): "
                                             "LLaVA-NeXT's splice runs past the batch's images (IndexError; with a "
                                             "larger batch another sample's images) and the run stops",
                                    images=images, placeholders=holes))
                frame["verdict"] = "stops"
                return result
            found.append(F.make("VC002", f"{holes} <image> tokens in the text for the row's {images} image(s): "
                                         "LLaVA-NeXT catches the IndexError and splices the previous image again "
                                         "(this row's own last image with a batch of one; in a larger batch "
                                         "another sample's)", images=images, placeholders=holes))
        elif holes > 1 and self.fork != LLAVA_NEXT:
            found.append(F.make("VC002", f"{holes} <image> tokens in the text (within model_max_length) for the "
                                         "row's one image: the model takes one image's features per <image> and "
                                         "runs past the batch's images (IndexError, or another sample's image)",
                                images=1 if has_image else 0, placeholders=holes))
            frame["verdict"] = "stops"
            return result
        if has_image and not at:
            found.append(F.make("VC002", "the row has an image but no <image> in its text: preprocess_multimodal "
                                         "places none and the model skips the image without a word",
                                images=images, placeholders=0))
            frame["verdict"] = "image_dropped"
        elif has_image and len(at) < images:
            found.append(F.make("VC002", f"{images} images but {len(at)} <image> tokens: the model splices the first "
                                         f"{len(at)} and skips the rest without a word",
                                images=images, placeholders=len(at)))
            frame["verdict"] = "image_dropped"
        # the features the j-th <image> id takes: image j, and past the last image the last one again
        taken = [features[min(j, n - 1)] for j in range(len(at))]
        # per position of the spliced sequence: (which <image> it belongs to or None, labelled?). The collator's
        # attention mask is ids != pad id, and the model drops the masked positions before splicing: a pad string
        # written in the text (pad = unk for every --version but v0) is not in the sequence the model trains on.
        layout: list[tuple[int | None, bool]] = []
        j = 0
        for token, label in zip(sliced, sup[:limit]):
            if token == IMAGE_TOKEN_INDEX:
                layout += [(j, False)] * taken[j]
                j += 1
            elif token != pad:
                layout.append((None, label))
        whole = self.tokenizer.ids(run.prompt) if run.truncated else ids  # a text row: before preprocess's cut
        total = sum(1 for t in whole if t != pad and t != IMAGE_TOKEN_INDEX) + sum(taken)
        kept = min(len(layout), limit)
        kept_each = [0] * len(at)
        for image, _ in layout[:kept]:
            if image is not None:
                kept_each[image] += 1
        supervised = sum(1 for t, s in zip(ids, sup) if s and t != IMAGE_TOKEN_INDEX and t != pad)
        labels = sum(1 for _, s in layout[:kept] if s)
        result.tokens = total
        result.text_only_tokens = total - sum(taken)
        result.supervised_tokens = supervised
        frame.update(kept_tokens=kept, kept_supervised=labels, kept_image_tokens=kept_each, preprocess=run.function)
        if run.mismatch is not None:
            cur, counted = run.mismatch
            found.append(F.make("VC003", f"LLaVA prints \"WARNING: tokenization mismatch: {cur} vs. {counted}. "
                                         f"(ignored)\" and masks every label of this sample ({run.function} with "
                                         f"--version {self.config.version}): it trains on nothing",
                                fix="use the --version the checkpoint was trained with, or check it with "
                                    "`vlmcheck template --launch`"))
            frame["verdict"] = "masked"
        elif supervised == 0:
            found.append(F.make("VC003", "no answer tokens to learn from: every label is masked"))
        if total <= limit:
            return result
        fix = f"set {_setting('model_max_length', total)}"
        cut = [k for k in range(len(at)) if kept_each[k] < taken[k]]
        if cut:
            first = cut[0]
            partly = any(0 < kept_each[k] < taken[k] for k in cut)
            where = ("LLaVA does not raise: it slices the spliced embeddings, and the model trains on part of the "
                     "image" if kept_each[first] else
                     "the collator slices the ids first and cuts the <image> id itself, so the model skips the image"
                     if at[first] >= limit else "LLaVA does not raise: the model trains on none of it")
            named = f"image {first + 1}" if len(at) > 1 else "the image"
            found.append(F.make(
                "VC201", f"{named} needs {taken[first]:,} features, only {kept_each[first]:,} survive LLaVA's cut at "
                         f"model_max_length={limit:,}; the sample is {total:,} tokens: {where}",
                fix=fix + ", or drop the sample", image=first + 1, image_tokens=taken[first], kept=kept_each[first],
                tokens=total, max_length=limit))
            frame["verdict"] = "image_cut" if partly else "image_dropped"
        if supervised and not labels:
            found.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at model_max_length={limit:,} (sample is "
                         f"{total:,} tokens)", fix=f"{fix}, shorten the prompt, or drop the sample",
                supervised=supervised, tokens=total, max_length=limit))
        elif not cut:
            found.append(F.make(
                "VC203", f"{total:,} tokens > model_max_length={limit:,}: {total - kept:,} tokens cut, "
                         f"{supervised - labels:,} of {supervised:,} trained tokens lost",
                fix=f"{fix} to keep it whole", tokens=total, max_length=limit, supervised_lost=supervised - labels))
        return result


def _setting(key: str, value: Any) -> str:
    """A fix written in LLaVA's own launch syntax."""
    return f"--{key} {value}"
