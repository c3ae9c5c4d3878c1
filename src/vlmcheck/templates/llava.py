"""LLaVA's conversation templates and label arithmetic, modelled on haotian-liu/LLaVA (commit c121f04).

Facts from ``llava/conversation.py`` (``conv_templates``, ``get_prompt``), ``llava/train/train.py`` (``train()``
picks the tokenizer, pad token and conversation; ``preprocess_multimodal``; ``preprocess`` dispatches to
``preprocess_plain``, ``preprocess_llama_2``, ``preprocess_v1``, ``preprocess_mpt`` or the generic ``###`` path
with ``_add_speaker_and_signal`` / ``_tokenize_fn`` / ``_mask_targets``) and ``llava/mm_utils.py``
(``tokenizer_image_token``). Written from those facts, not copied; proved against LLaVA's own code run
unmodified (tests/assets/llava_golden/README.md).

What ``train()`` does with ``--version``: ``v0`` adds a ``[PAD]`` token when the tokenizer has no pad token and
keeps the module default conversation (``conv_vicuna_v1``); ``v0.5`` sets pad = unk and keeps the default; any
other version sets pad = unk and takes ``conv_templates[version]``, an unknown name falling back to
``vicuna_v1`` silently.

>>> run = simulate({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
...                tokenizer=tok, version="v1")  # doctest: +SKIP
>>> run.mismatch, run.refused  # doctest: +SKIP
(None, None)
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.errors import ModelError
from vlmcheck.templates.slow_llama import SlowLlamaTokenizer, read_config
from vlmcheck.templates.tokenizer import Tok

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
    style: str  # SeparatorStyle: "single" | "two" | "mpt" | "llama_2" | "plain"
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


def conversation_for(version: str) -> Conv:
    """The conversation ``train()`` leaves in ``default_conversation`` for ``--version``."""
    if version in SPECIAL_VERSIONS:
        return _VICUNA_V1
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

    def encode(self, text: str, *, max_length: int | None = None) -> Any:
        """``tokenizer(text)`` with ids, offsets and sequence ids."""
        if isinstance(self.backend, SlowLlamaTokenizer):
            return self.backend.encode(text, max_length=max_length)
        from vlmcheck.templates.slow_llama import SlowEncoding

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
                   legacy: bool | None = None) -> LlavaTokenizer:
    """The tokenizer ``train()`` builds for ``--version``: ``AutoTokenizer.from_pretrained(model_name_or_path,
    model_max_length=..., use_fast=False)`` (the default fast route when "mpt" is in the model path), then the
    pad token, then ``initialize_vision_tokenizer``'s ``<im_start>``/``<im_end>`` when ``mm_use_im_start_end``.
    ``legacy`` stands for ``"legacy"`` in tokenizer_config.json: the slow tokenizer tokenizes by it; a fast one
    only gets the attribute (transformers 4.37.2's fast tokenizers have none).

    Raises :class:`Refused` where LLaVA's own load raises (a slow Llama class without ``tokenizer.model``).
    """
    folder = Path(folder)
    config = read_config(folder)
    if legacy is not None:
        config["legacy"] = legacy
    cls = str(config.get("tokenizer_class") or "LlamaTokenizer")
    name = model_name_or_path if model_name_or_path is not None else str(folder)
    use_fast = "mpt" in name
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
        why = ("'mpt' is in the model path, so train() loads the default fast tokenizer" if use_fast
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
    else:  # v0.5 and every other version: pad = unk
        tok.pad_id = tok.token_id(tok.special("unk_token"))
    if mm_use_im_start_end:
        tok.add_special(IM_START)
        tok.add_special(IM_END)
    return tok


# -- rendering ---------------------------------------------------------------------------------------------

def multimodal(value: str, *, conv: Conv, mm_use_im_start_end: bool) -> str:
    """``preprocess_multimodal`` on one sentence (samples with an ``image`` only)."""
    if IMAGE_TOKEN in value:
        value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        if "mmtag" in conv.version:
            value = value.replace(IMAGE_TOKEN, "<Image>" + IMAGE_TOKEN + "</Image>")
    if mm_use_im_start_end:
        value = value.replace(IMAGE_TOKEN, IM_START + IMAGE_TOKEN + IM_END)
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
             mm_use_im_start_end: bool = False, patch: tuple[int, int] = (0, 0)) -> LlavaRun:
    """Run LLaVA's ``LazySupervisedDataset.__getitem__`` text side on one row (without opening its image).

    ``patch`` changes the round arithmetic on purpose, as users patch train.py: ``(start, step)`` adds
    ``start`` to the initial ``cur_len`` and ``step`` to ``round_len``/``instruction_len`` of each round after
    the first. The counterfactual that names a fix.
    """
    conv = conversation_for(version)
    has_image = "image" in row
    run = LlavaRun(version, conv, conv.function, has_image)
    source = copy.deepcopy(list(row.get("conversations") or []))
    if has_image:
        for sentence in source:
            sentence["value"] = multimodal(str(sentence.get("value", "")), conv=conv,
                                           mm_use_im_start_end=mm_use_im_start_end)
    try:
        if conv.style == "plain":
            _plain(run, source, tokenizer)
        elif conv.style == "single":
            _generic(run, source, tokenizer)
        else:
            _rounds(run, source, tokenizer, patch)
    except Refused as e:
        run.refused = e
    return run


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
