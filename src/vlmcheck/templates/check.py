"""check_template(): compare the label masks a framework builds with the tokenizer's ground truth."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.errors import ModelError, UsageError
from vlmcheck.templates import llava
from vlmcheck.templates.catalogue import TemplateFinding

PER_TURN = "per_turn"
CHAT_TEMPLATE = "chat_template"
FRAMEWORKS = sorted([*llava.TEMPLATES, PER_TURN, CHAT_TEMPLATE])


class Tok:
    """A ``tokenizers.Tokenizer`` plus the few tokenizer_config.json facts frameworks read."""

    def __init__(self, backend: Any, config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        self.backend = backend
        self.config = dict(config or {})
        self.chat_template = chat_template
        self.model_max_length = int(self.config.get("model_max_length") or 10**9)
        if self.model_max_length > 10**9:
            self.model_max_length = 10**9

    @classmethod
    def load(cls, path: str | Path) -> Tok:
        from tokenizers import Tokenizer

        folder = Path(path)
        file = folder if folder.is_file() else folder / "tokenizer.json"
        if not file.is_file():
            raise ModelError(f"no tokenizer.json at {path}")
        folder = file.parent
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        chat = config.get("chat_template")
        if (folder / "chat_template.json").is_file():
            chat = json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
        return cls(Tokenizer.from_file(str(file)), config, chat if isinstance(chat, str) else None)

    @property
    def legacy(self) -> bool:
        """``tokenizer.legacy`` as transformers reports it: unset means True (with a warning)."""
        value = self.config.get("legacy")
        return True if value is None else bool(value)

    def special(self, name: str) -> str | None:
        value = self.config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    def ids(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``tokenizer(text).input_ids``."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int | None]]:
        enc = self.backend.encode(text)
        return list(enc.ids), [tuple(o) for o in enc.offsets], list(enc.sequence_ids)

    def is_special(self, text: str) -> bool:
        return any(t.content == text and t.special for t in self.backend.get_added_tokens_decoder().values())

    def behaves_legacy(self, special: str) -> bool | None:
        """Does text after ``special`` get a "▁" prefix (SentencePiece legacy)? None if not applicable."""
        if not self.is_special(special):
            return None
        enc = self.backend.encode(special + "hello", add_special_tokens=False)
        if len(enc.tokens) < 2:
            return None
        return enc.tokens[1].startswith("▁")


def _truth_mask(tok: Tok, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Ground truth: tokenize the whole text; a token is supervised when its characters overlap a span."""
    ids, offsets, seq = tok.encode(text)
    mask = []
    for (a, b), s in zip(offsets, seq):
        # tokens the post-processor adds (BOS) have no sequence id and no characters
        mask.append(s is not None and b > a and any(a < e and b > st for st, e in spans))
    return ids, mask


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


@dataclass
class SampleVerdict:
    """The verdict for one sample under one framework/template."""

    index: int
    id: str | None
    framework: str
    verdict: str  # "exact" | "misaligned" | "masked" | "drift"
    truth_tokens: int
    framework_tokens: int
    supervised_truth: int
    supervised_framework: int
    warning: str | None = None
    findings: list[TemplateFinding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "findings"}
        d["findings"] = [f.to_dict() for f in self.findings]
        return d


@dataclass
class TemplateReport:
    """All verdicts of one check; ``summary`` counts per framework how many samples train on nothing."""

    framework: str
    verdicts: list[SampleVerdict]

    @property
    def findings(self) -> list[TemplateFinding]:
        return [f for v in self.verdicts for f in v.findings]

    @property
    def summary(self) -> dict[str, int]:
        out = {"samples": len(self.verdicts), "exact": 0, "misaligned": 0, "masked": 0, "drift": 0}
        for v in self.verdicts:
            out[v.verdict] += 1
        return out

    @property
    def clean(self) -> bool:
        return all(v.verdict == "exact" for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "summary": self.summary,
                "verdicts": [v.to_dict() for v in self.verdicts]}

    def render(self) -> str:
        s = self.summary
        lines = [f"{self.framework}: {s['samples']} samples, {s['exact']} exact, {s['misaligned']} misaligned, "
                 f"{s['masked']} silently masked (train on nothing), {s['drift']} per-turn token drift"]
        lines += [str(f) for f in self.findings]
        return "\n".join(lines) + "\n"


def _messages(sample: Any) -> tuple[list[tuple[str, str]], str | None]:
    """(role, text) pairs from a LLaVA ``conversations`` row, a ``messages`` row, or a bare list."""
    sid = None
    rows = sample
    if isinstance(sample, Mapping):
        sid = sample.get("id")
        rows = sample.get("conversations", sample.get("messages"))
    if not isinstance(rows, list):
        raise UsageError("a sample needs a 'conversations' or 'messages' list")
    out = []
    for m in rows:
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        if not isinstance(text, str):
            raise UsageError("template check supports text content only (MVP)")
        out.append(({"human": "user", "gpt": "assistant"}.get(role, role), text))
    if out and out[0][0] != "user":  # LLaVA skips a leading non-human turn
        out = out[1:]
    return out, None if sid is None else str(sid)


def _fix_for_llava(conv: llava.Conv, rendered: llava.Rendered, tok: Tok, *, legacy: bool,
                   legacy_fix: bool, max_length: int | None) -> tuple[str, str]:
    """Name the cause and a fix that is computed: the setting under which this sample comes out exact."""
    sep2 = conv.sep2 or ""
    if sep2 and not tok.is_special(sep2):
        return (f"the template's separator {sep2!r} is not a special token of this tokenizer "
                f"({len(tok.ids(sep2, add_special_tokens=False))} text tokens), so each round is counted "
                f"short", "use the conversation template (--version) made for this model's tokenizer")
    if not tok.ids("")[:1]:
        return ("the tokenizer adds no BOS but the arithmetic assumes one (cur_len starts at 1, "
                "instruction_len subtracts 2)", "use the conversation template made for this tokenizer")
    actual = tok.behaves_legacy(sep2) if sep2 else None
    flipped = llava.preprocess(conv, rendered, tok, legacy=not legacy, legacy_fix=legacy_fix,
                               max_length=max_length)
    if actual is not None and actual != legacy and flipped.warning is None:
        how = "prepends" if actual else "does not prepend"
        return (f"legacy vs non-legacy: tokenizer.legacy={legacy} but the tokenizer {how} '▁' after "
                f"{sep2!r}, so every round after the first is counted one token "
                f"{'short' if actual else 'long'}",
                f"load the tokenizer with legacy={actual} (a fast tokenizer honours legacy=False only with "
                f"from_slow=True)")
    if legacy_fix is False and not legacy:
        return ("separator counted once too many per round (this LLaVA version lacks the non-legacy -1)",
                "update LLaVA to a version with the `not tokenizer.legacy` adjustment")
    return ("the per-round arithmetic disagrees with the whole-conversation tokenization",
            "use the conversation template made for this tokenizer")


def _check_llava(conv: llava.Conv, index: int, sid: str | None, msgs: list[tuple[str, str]], tok: Tok, *,
                 legacy: bool, legacy_fix: bool, max_length: int | None) -> SampleVerdict:
    rendered = llava.render(conv, msgs)
    truth_ids, truth = _truth_mask(tok, rendered.text, rendered.spans)
    if max_length is not None:
        truth_ids, truth = truth_ids[:max_length], truth[:max_length]
    fw = llava.preprocess(conv, rendered, tok, legacy=legacy, legacy_fix=legacy_fix, max_length=max_length)
    v = SampleVerdict(index, sid, conv.name, "exact", len(truth_ids), len(fw.input_ids), sum(truth),
                      sum(fw.supervised), fw.warning)
    data: dict[str, Any] = {"cur_len": fw.cur_len, "total_len": fw.total_len, "round_lens": fw.round_lens}
    if fw.warning is not None:
        cause, fix = _fix_for_llava(conv, rendered, tok, legacy=legacy, legacy_fix=legacy_fix,
                                    max_length=max_length)
        off = (fw.cur_len or 0) - fw.total_len
        v.verdict = "masked"
        v.findings.append(TemplateFinding(
            "VT001", f"{conv.name}: \"tokenization mismatch: {fw.cur_len} vs. {fw.total_len}. (ignored)\" "
            f"(arithmetic off by {off:+d} tokens over {len(fw.round_lens)} rounds): all "
            f"{sum(truth)} assistant tokens masked; cause: {cause}", fix, index, sid, {**data, "off_by": off}))
        return v
    if truth != fw.supervised:
        truth_runs, fw_runs = _runs(truth), _runs(fw.supervised)
        turn, delta = 0, 0
        for k, (a, b) in enumerate(zip(truth_runs + [(-1, -1)] * 9, fw_runs + [(-1, -1)] * 9)):
            if a != b:
                turn, delta = k + 1, b[0] - a[0]
                break
        v.verdict = "misaligned"
        v.findings.append(TemplateFinding(
            "VT002", f"{conv.name}: labels off by {delta:+d} tokens at assistant turn {turn} "
            f"({sum(fw.supervised)} supervised vs {sum(truth)} assistant tokens)",
            "use the conversation template made for this tokenizer", index, sid,
            {**data, "turn": turn, "off_by": delta}))
    if not any(fw.supervised):
        v.verdict = "masked"
        v.findings.append(TemplateFinding("VT003", f"{conv.name}: every label is masked", "drop the sample",
                                          index, sid, data))
    return v


def _chat_pieces(tok: Tok, template: str, msgs: list[tuple[str, str]]) -> tuple[str, list[tuple[str, bool]]]:
    """The whole rendered text and its per-turn pieces (text, supervised), found by rendering prefixes."""
    from vlmcheck.chat import render_chat

    special = {k: tok.special(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    dicts = [{"role": r, "content": c} for r, c in msgs]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, (role, _) in enumerate(msgs):
        if role == "assistant":
            prompt = render_chat(template, dicts[:k], special_tokens=special, add_generation_prompt=True)
            if prompt.startswith(done) and len(prompt) > len(done):
                pieces.append((prompt[len(done):], False))
                done = prompt
        full = render_chat(template, dicts[: k + 1], special_tokens=special)
        if not full.startswith(done):
            raise UsageError("the chat template does not render conversations as growing prefixes")
        pieces.append((full[len(done):], role == "assistant"))
        done = full
    return done, pieces


def _check_chat(framework: str, index: int, sid: str | None, msgs: list[tuple[str, str]], tok: Tok,
                template: str, *, max_length: int | None) -> SampleVerdict:
    text, pieces = _chat_pieces(tok, template, msgs)
    spans, pos = [], 0
    for piece, sup in pieces:
        if sup:
            spans.append((pos, pos + len(piece)))
        pos += len(piece)
    truth_ids, truth = _truth_mask(tok, text, spans)
    if framework == CHAT_TEMPLATE:
        fw_ids, fw_sup = truth_ids, truth
    else:  # LLaMA-Factory style: encode each piece on its own, concatenate
        fw_ids, fw_sup, bounds = [], [], []
        for k, (piece, sup) in enumerate(pieces):
            ids = tok.ids(piece, add_special_tokens=k == 0)
            fw_ids += ids
            fw_sup += [sup] * len(ids)
            bounds.append(len(fw_ids))
    if max_length is not None:
        truth_ids, truth, fw_ids, fw_sup = (truth_ids[:max_length], truth[:max_length], fw_ids[:max_length],
                                            fw_sup[:max_length])
    v = SampleVerdict(index, sid, framework, "exact", len(truth_ids), len(fw_ids), sum(truth), sum(fw_sup))
    if fw_ids != truth_ids:
        first = next((i for i, (a, b) in enumerate(zip(fw_ids, truth_ids)) if a != b),
                     min(len(fw_ids), len(truth_ids)))
        turn = next(k for k, b in enumerate(bounds) if first < b or k == len(bounds) - 1)
        off = len(fw_ids) - len(truth_ids)
        # the assistant turn the differing piece belongs to (a prompt piece leads into the next one)
        answer = sum(sup for _, sup in pieces[: turn + 1]) + (0 if pieces[turn][1] else 1)
        # a BOS per turn shows up as extra special tokens; otherwise a merge across the turn boundary
        bos = tok.ids("")
        cause = ("BOS added per turn" if bos and fw_ids.count(bos[0]) > truth_ids.count(bos[0])
                 else "boundary merge: text on both sides of a turn boundary tokenizes differently together")
        v.verdict = "drift"
        v.findings.append(TemplateFinding(
            "VT004", f"{framework}: per-turn encoding is {len(fw_ids)} tokens, the whole conversation "
            f"{len(truth_ids)} (off by {off:+d}); first difference at token {first}, assistant turn {answer} "
            f"(in piece {pieces[turn][0][:30]!r}); cause: {cause}",
            "tokenize the whole conversation and mask by offsets (or keep boundary whitespace inside the "
            "template, not the message)", index, sid, {"off_by": off, "turn": answer, "first": first}))
    elif fw_sup != truth:
        v.verdict = "misaligned"
        v.findings.append(TemplateFinding("VT002", f"{framework}: label mask differs from assistant tokens",
                                          "mask by character offsets", index, sid, {}))
    if not any(fw_sup):
        v.verdict = "masked"
        v.findings.append(TemplateFinding("VT003", f"{framework}: every label is masked",
                                          "raise max_length or drop the sample", index, sid, {}))
    return v


def check_template(dataset: Iterable[Any], *, tokenizer: str | Path | Tok, template: str,
                   legacy: bool | None = None, legacy_fix: bool = True, chat_template: str | None = None,
                   max_length: int | None = None) -> TemplateReport:
    """Check that ``template``'s label mask matches the tokenizer's own split of each conversation.

    ``template`` is a LLaVA conversation version (``v1``, ``vicuna_v1``, ``llava_v1``, ``llava_llama_2``,
    ``plain``), ``per_turn`` (LLaMA-Factory-style: each turn of the chat template encoded separately) or
    ``chat_template`` (whole conversation, masked by offsets). ``legacy`` overrides ``tokenizer.legacy``.

    >>> rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    >>> check_template(rows, tokenizer="llama2-tokenizer/", template="v1").summary  # doctest: +SKIP
    {'samples': 1, 'exact': 1, 'misaligned': 0, 'masked': 0, 'drift': 0}
    """
    tok = tokenizer if isinstance(tokenizer, Tok) else Tok.load(tokenizer)
    if template not in FRAMEWORKS:
        raise UsageError(f"unknown template {template!r}; use one of: {', '.join(FRAMEWORKS)}")
    flag = tok.legacy if legacy is None else legacy
    verdicts = []
    for index, sample in enumerate(dataset):
        msgs, sid = _messages(sample)
        if template in llava.TEMPLATES:
            verdicts.append(_check_llava(llava.TEMPLATES[template], index, sid, msgs, tok, legacy=flag,
                                         legacy_fix=legacy_fix, max_length=max_length))
        else:
            chat = chat_template or tok.chat_template
            if chat is None:
                raise UsageError(f"template {template!r} needs a chat template (none in the tokenizer folder)")
            verdicts.append(_check_chat(template, index, sid, msgs, tok, chat, max_length=max_length))
    return TemplateReport(template, verdicts)
