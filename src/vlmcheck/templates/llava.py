"""LLaVA's conversation templates and label arithmetic, modelled on haotian-liu/LLaVA.

Facts from ``llava/conversation.py`` (templates: system text, roles, separators, ``get_prompt``) and
``llava/train/train.py`` (``preprocess_v1``, ``preprocess_mpt``, ``preprocess_llama_2``, ``preprocess_plain``
and the generic ``preprocess`` path with ``_add_speaker_and_signal`` / ``_mask_targets`` for the ``###``
SeparatorStyle.SINGLE templates), text-only path (``has_image=False``: the whole prompt goes through
``tokenizer(...)``). Written from those facts, not copied.

Which function a ``--version`` reaches (``train()`` then ``preprocess()``): PLAIN style -> ``preprocess_plain``;
LLAMA_2 style -> ``preprocess_llama_2``; a conversation whose ``version`` starts with "v1" -> ``preprocess_v1``;
version "mpt" -> ``preprocess_mpt``; anything else (the SINGLE ``###`` templates) -> the generic path.
``--version v0`` leaves ``default_conversation`` at ``conv_vicuna_v1`` (train() only replaces it for other
versions), so it gets the v1 arithmetic; the ``###`` template is reached with ``--version llava_v0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.templates.tokenizer import Tok

# conversation.py: conv_vicuna_v1
_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# conversation.py: conv_llava_v1, conv_llava_v0 (and conv_vicuna_v0)
_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# conversation.py: conv_llama_2 (Llama-2-chat's default system prompt)
_LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")
# conversation.py: conv_llava_llama_2
_LLAVA_LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using "
                        "natural language.")
# conversation.py: conv_mpt, conv_chatml_direct
_MPT_SYSTEM = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
               "The assistant gives helpful and honest answers.")
_CHATML_DIRECT_SYSTEM = "<|im_start|>system\nAnswer the questions."
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

# train.py, generic preprocess path: _add_speaker_and_signal's BEGIN_SIGNAL / END_SIGNAL
_BEGIN_SIGNAL = "### "
_END_SIGNAL = "\n"
# llava/constants.py
IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Conv:
    """One entry of LLaVA's ``conv_templates``, named by the ``--version`` that selects it."""

    name: str
    style: str  # "single" | "two" | "mpt" | "llama_2" | "plain"  (SeparatorStyle)
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None
    function: str  # the train.py function that builds the labels


TEMPLATES: dict[str, Conv] = {
    "llava_v0": Conv("llava_v0", "single", _HUMAN_SYSTEM, ("Human", "Assistant"), "###", None, "preprocess"),
    "v0": Conv("v0", "two", _V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "preprocess_v1"),
    "v1": Conv("v1", "two", _V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "preprocess_v1"),
    "vicuna_v1": Conv("vicuna_v1", "two", _V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "preprocess_v1"),
    "llava_v1": Conv("llava_v1", "two", _HUMAN_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "preprocess_v1"),
    "llama_2": Conv("llama_2", "llama_2", _LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>",
                    "preprocess_llama_2"),
    "llava_llama_2": Conv("llava_llama_2", "llama_2", _LLAVA_LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>",
                          "preprocess_llama_2"),
    "mistral_instruct": Conv("mistral_instruct", "llama_2", "", ("USER", "ASSISTANT"), "", "</s>",
                             "preprocess_llama_2"),
    "mpt": Conv("mpt", "mpt", _MPT_SYSTEM, _CHATML_ROLES, "<|im_end|>", None, "preprocess_mpt"),
    "chatml_direct": Conv("chatml_direct", "mpt", _CHATML_DIRECT_SYSTEM, _CHATML_ROLES, "<|im_end|>", None,
                          "preprocess_mpt"),
    "plain": Conv("plain", "plain", "", ("", ""), "\n", None, "preprocess_plain"),
}


def multimodal(value: str) -> str:
    """``preprocess_multimodal``: a turn that holds ``<image>`` gets it moved to its front, then a newline."""
    if IMAGE_TOKEN in value:
        value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
    return value


def image_token_ids(text: str, tok: Tok) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenizer_image_token`` (llava/mm_utils.py): each chunk between ``<image>`` tokenized on its own (BOS
    stripped from all but the first), one IMAGE_TOKEN_INDEX per image; with each token's character offsets."""
    chunks = text.split(IMAGE_TOKEN)
    encs = [tok.encode(c) for c in chunks]
    bos = tok.token_id(tok.special("bos_token"))
    offset = 1 if encs[0].ids and bos is not None and encs[0].ids[0] == bos else 0
    ids: list[int] = [bos] if offset and bos is not None else []
    offsets: list[tuple[int, int]] = [(0, 0)] * len(ids)
    pos = 0
    for k, (chunk, enc) in enumerate(zip(chunks, encs)):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
            offsets.append((pos - len(IMAGE_TOKEN), pos))
        for t, (a, b), seq in list(zip(enc.ids, enc.offsets, enc.sequence_ids))[offset:]:
            ids.append(t)
            offsets.append((pos + a, pos + b) if seq is not None else (0, 0))
        pos += len(chunk) + len(IMAGE_TOKEN)
    return ids, offsets


@dataclass
class Rendered:
    """The prompt text and, per assistant turn, the character span LLaVA means to supervise."""

    text: str
    spans: list[tuple[int, int]]
    sentences: list[tuple[str, str]]  # generic path: (speaker, "### Role: text\n") as _mask_targets sees them
    has_image: bool = False  # LLaVA's has_image: the sample has an image, so text goes through tokenizer_image_token

    def ids(self, tok: Tok, text: str | None = None) -> list[int]:
        """How the preprocess function tokenizes ``text`` (default: the whole prompt)."""
        text = self.text if text is None else text
        return image_token_ids(text, tok)[0] if self.has_image else tok.ids(text)


def render(conv: Conv, messages: list[tuple[str, str]], *, has_image: bool = False) -> Rendered:
    """``Conversation.get_prompt()`` (generic path: header + ``_add_speaker_and_signal``) for user/assistant
    alternating ``messages``, with the character span of each assistant turn.

    The span is the answer plus the separator that ends it (``</s>``, ``<|im_end|>``, ``\\n###``: the stop
    string), located by characters: the ground truth the token masks are compared with.
    """
    text = ""
    spans: list[tuple[int, int]] = []
    sentences: list[tuple[str, str]] = []
    if has_image:
        messages = [(r, multimodal(m)) for r, m in messages]
    if conv.style == "single":
        # the generic path never calls get_prompt(): header "system\n\n", "### Role: text\n" per turn, "### "
        text = conv.system + "\n\n"
        for i, (_, msg) in enumerate(messages):
            sentence = _BEGIN_SIGNAL + conv.roles[i % 2] + ": " + msg + _END_SIGNAL
            start = len(text) + len(sentence) - len(msg) - len(_END_SIGNAL)
            text += sentence
            sentences.append(("human" if i % 2 == 0 else "gpt", sentence))
            if i % 2 == 1:
                spans.append((start, len(text) + len(conv.sep)))  # ... "\n" and the next "###"
        text += _BEGIN_SIGNAL
    elif conv.style == "two":
        assert conv.sep2 is not None
        text = conv.system + conv.sep
        for i, (_, msg) in enumerate(messages):
            text += conv.roles[i % 2] + ": "
            start = len(text)
            text += msg + (conv.sep if i % 2 == 0 else conv.sep2)
            if i % 2 == 1:
                spans.append((start, len(text)))
    elif conv.style == "mpt":
        text = conv.system + conv.sep
        for i, (_, msg) in enumerate(messages):
            text += conv.roles[i % 2]
            start = len(text)
            text += msg + conv.sep
            if i % 2 == 1:
                spans.append((start, len(text)))
    elif conv.style == "llama_2":
        assert conv.sep2 is not None
        for i, (_, msg) in enumerate(messages):
            if i == 0 and conv.system:
                msg = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" + msg
            if i % 2 == 0:
                text += conv.sep + f"[INST] {msg} [/INST]"
            else:
                text += " "
                start = len(text)
                text += msg + " " + conv.sep2
                spans.append((start, len(text)))
        # get_prompt() ends with ret.lstrip(sep): strips the *characters* "<", "s", ">" from the left
        stripped = text.lstrip(conv.sep) if conv.sep else text
        shift = len(text) - len(stripped)
        text, spans = stripped, [(a - shift, b - shift) for a, b in spans]
    elif conv.style == "plain":
        # preprocess_plain keeps only "<image>" of the first turn, then the answer and sep; always the image path
        answer = messages[1][1] if len(messages) > 1 else ""
        text = IMAGE_TOKEN
        spans.append((len(text), len(text) + len(answer) + len(conv.sep)))
        text += answer + conv.sep
        has_image = True
    else:  # pragma: no cover - TEMPLATES is closed
        raise ValueError(conv.style)
    return Rendered(text, spans, sentences, has_image)


@dataclass
class LlavaLabels:
    """What LLaVA's preprocess builds: the input ids, the label mask, and its length check."""

    input_ids: list[int]
    supervised: list[bool]
    cur_len: int | None  # the arithmetic's total (None where the function has no check)
    total_len: int
    round_lens: list[int]
    warning: str | None


def preprocess(conv: Conv, rendered: Rendered, tok: Tok, *, legacy: bool, legacy_fix: bool = True,
               max_length: int | None = None, bos_per_sentence: bool = True,
               sep_per_round: int = 0) -> LlavaLabels:
    """The label mask LLaVA's ``preprocess_*`` builds for ``rendered.text``.

    ``legacy`` is what the function reads: ``tokenizer.legacy`` (v1) or ``getattr(tokenizer, "legacy", False)``
    (mpt); ``legacy_fix`` is whether the LLaVA version has the ``not tokenizer.legacy`` adjustment of
    ``preprocess_v1`` (added in early 2024). ``max_length`` is ``tokenizer.model_max_length`` (LLaVA's
    ``--model_max_length``): the prompt is truncated to it and the length check only runs below it.
    ``bos_per_sentence`` and ``sep_per_round`` change the arithmetic on purpose: the counterfactuals that
    name a cause (does the sample come out right without the per-sentence BOS, or with one more separator
    token per round?).
    """
    ids = rendered.ids(tok)
    if max_length is not None:
        ids = ids[:max_length]
    total = len(ids)
    sup = [True] * total
    limit = max_length if max_length is not None else tok.model_max_length
    if conv.style == "plain":
        n = len(rendered.ids(tok, IMAGE_TOKEN))
        for i in range(min(n, total)):
            sup[i] = False
        return LlavaLabels(ids, sup, None, total, [], None)
    if conv.style == "single":
        return _mask_targets(conv, rendered, tok, ids, bos_per_sentence=bos_per_sentence)
    if conv.style == "mpt":
        return _preprocess_mpt(conv, rendered, tok, ids, legacy=legacy, limit=limit, sep_per_round=sep_per_round)
    assert conv.sep2 is not None
    sep = conv.sep + conv.roles[1] + ": " if conv.style == "two" else "[/INST] "
    cur = 1
    sup[:1] = [False] * min(1, total)
    round_lens: list[int] = []
    for i, rou in enumerate(rendered.text.split(conv.sep2)):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        head = parts[0] + sep
        round_len = len(rendered.ids(tok, rou)) + sep_per_round
        instruction_len = len(rendered.ids(tok, head)) - 2
        if conv.style == "two" and legacy_fix and i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        for j in range(cur, min(cur + instruction_len, total)):
            sup[j] = False
        round_lens.append(round_len)
        cur += round_len
    for j in range(cur, total):
        sup[j] = False
    warning = None
    if cur < limit and cur != total:
        sup = [False] * total
        warning = f"WARNING: tokenization mismatch: {cur} vs. {total}. (ignored)"
    return LlavaLabels(ids, sup, cur, total, round_lens, warning)


def _preprocess_mpt(conv: Conv, rendered: Rendered, tok: Tok, ids: list[int], *, legacy: bool, limit: int,
                    sep_per_round: int) -> LlavaLabels:
    """``preprocess_mpt``: rounds are split on ``<|im_end|>`` and regrouped (system + user + gpt, then
    user + gpt); ``cur_len`` starts at 0 and ``instruction_len`` subtracts 1; +1 per round after the first
    when ``getattr(tokenizer, "legacy", False)``."""
    total = len(ids)
    sup = [True] * total
    sep = conv.sep + conv.roles[1]
    rounds = rendered.text.split(conv.sep)
    regrouped = [conv.sep.join(rounds[:3])]
    for k in range(3, len(rounds), 2):
        regrouped.append(conv.sep.join(rounds[k:k + 2]))
    cur = 0
    round_lens: list[int] = []
    for i, rou in enumerate(regrouped):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        head = parts[0] + sep
        round_len = len(rendered.ids(tok, rou)) + sep_per_round
        instruction_len = len(rendered.ids(tok, head)) - 1
        if i != 0 and legacy:
            round_len += 1
            instruction_len += 1
        for j in range(cur, min(cur + instruction_len, total)):
            sup[j] = False
        round_lens.append(round_len)
        cur += round_len
    for j in range(cur, total):
        sup[j] = False
    warning = None
    if cur < limit and cur != total:
        sup = [False] * total
        warning = f"WARNING: tokenization mismatch: {cur} vs. {total}. (ignored)"
    return LlavaLabels(ids, sup, cur, total, round_lens, warning)


def _mask_targets(conv: Conv, rendered: Rendered, tok: Tok, ids: list[int], *,
                  bos_per_sentence: bool) -> LlavaLabels:
    """The generic path: ``_tokenize_fn`` counts the header and each ``"### Role: text\\n"`` sentence tokenized
    on its own (a BOS each), then ``_mask_targets`` masks the header and each human sentence from its third
    token on. No length check: a wrong count shifts the mask silently."""
    total = len(ids)
    sup = [True] * total
    header = conv.system + "\n\n"
    drop = 0 if bos_per_sentence else len(tok.ids(""))
    lens = [len(rendered.ids(tok, header))] + [len(rendered.ids(tok, s)) - drop for _, s in rendered.sentences]
    cur = lens[0]
    for j in range(min(cur, total)):
        sup[j] = False
    for n, (speaker, _) in zip(lens[1:], rendered.sentences):
        if speaker == "human":
            for j in range(cur + 2, min(cur + n, total)):
                sup[j] = False
        cur += n
    return LlavaLabels(ids, sup, None, total, lens[1:], None)
