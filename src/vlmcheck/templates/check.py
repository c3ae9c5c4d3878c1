"""check_template(): compare the label masks frameworks build with the tokenizer's ground truth.

The ground truth: the whole conversation rendered and tokenized once; a token carries assistant content when its
character offsets overlap an assistant turn (the answer and the marker that ends it). Each framework's labels are
rebuilt as that framework builds them (``llava``, ``llamafactory``, ``trl``, ``unsloth``) and compared token by
token; every verdict, number and fix is computed from the real tokenizer.

LLaVA is run as its own code runs (``frameworks/llava.py``: the tokenizer ``train()`` loads, ``preprocess_*``): its
ids, labels, "tokenization mismatch" numbers and raises are LLaVA's (proved in tests/assets/llava_golden), and
the ground truth above only decides ``exact`` vs ``misaligned`` for the samples LLaVA trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.catalogue import Severity
from vlmcheck.chat import render_chat
from vlmcheck.contract import ReportContract
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import llamafactory, llava, unsloth
from vlmcheck.options import TemplateOptions, from_keywords, keyword_signature
from vlmcheck.templates import trl
from vlmcheck.templates.catalogue import TemplateFinding
from vlmcheck.templates.pieces import (
    Pieces,
    TemplateRaises,
    describe,
    dicts,
    generation_prompt,
    render_pieces,
    user_header,
)
from vlmcheck.tokenizer import Tok

CHAT_TEMPLATE = "chat_template"  # the reference: whole conversation, masked by offsets
LLAMAFACTORY = "llamafactory"
TRL = "trl"
UNSLOTH = "unsloth"
CHAT_ROUTES = (CHAT_TEMPLATE, LLAMAFACTORY, TRL, UNSLOTH)
FRAMEWORKS = sorted([*llava.VERSIONS, *CHAT_ROUTES])
VERDICTS = ("exact", "drift", "misaligned", "masked", "refused")

__all__ = ["FRAMEWORKS", "SampleVerdict", "TemplateReport", "Tok", "check_template"]


@dataclass
class SampleVerdict:
    """The verdict for one sample under one framework.

    ``verdict``: ``exact`` (labels on exactly the assistant tokens), ``drift`` (the framework trains on other
    tokens than the whole conversation's, VT004), ``misaligned`` (labels shifted, VT002), ``masked`` (no label
    left: the sample trains on nothing, VT001/VT003/VT006) or ``refused`` (the framework stops with an error,
    VT005/VT007). ``cause`` names what put the sample there; the report groups samples by it.
    """

    index: int
    id: str | None
    framework: str
    verdict: str
    truth_tokens: int
    framework_tokens: int
    supervised_truth: int
    supervised_framework: int
    warning: str | None = None
    findings: list[TemplateFinding] = field(default_factory=list)
    cause: str | None = None  # what puts the sample in its verdict (the report groups samples by it)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "findings"}
        d["findings"] = [f.to_dict() for f in self.findings]
        return d


@dataclass
class TemplateReport(ReportContract):
    """All verdicts of one check. ``summary[framework]`` counts verdicts; ``masked_away[framework]`` is how many
    samples that framework would silently train on nothing. ``ok``, ``worst``, ``exit_code``:
    :mod:`vlmcheck.contract`, over :attr:`findings` (VT004 drift is a warning; the other codes are errors)."""

    frameworks: list[str]
    verdicts: list[SampleVerdict]
    notes: list[TemplateFinding] = field(default_factory=list)  # dataset-level (index None)
    routes: dict[str, str] = field(default_factory=dict)  # LLaVA version -> which tokenizer route and why

    @property
    def findings(self) -> list[TemplateFinding]:
        return [*self.notes, *(f for v in self.verdicts for f in v.findings)]

    def severities(self) -> list[Severity]:
        return [f.severity for f in self.findings]

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        out = {fw: {"samples": 0, **dict.fromkeys(VERDICTS, 0)} for fw in self.frameworks}
        for v in self.verdicts:
            out[v.framework]["samples"] += 1
            out[v.framework][v.verdict] += 1
        return out

    @property
    def masked_away(self) -> dict[str, int]:
        return {fw: s["masked"] for fw, s in self.summary.items()}

    @property
    def clean(self) -> bool:
        return not self.notes and all(v.verdict == "exact" for v in self.verdicts)

    @property
    def causes(self) -> dict[str, dict[str, int]]:
        """Per framework, how many samples each cause puts in a verdict other than exact."""
        out: dict[str, dict[str, int]] = {fw: {} for fw in self.frameworks}
        for v in self.verdicts:
            if v.verdict != "exact":
                key = f"{v.verdict}: {v.cause or 'see the finding'}"
                out[v.framework][key] = out[v.framework].get(key, 0) + 1
        return out

    def verdicts_for(self, framework: str) -> list[SampleVerdict]:
        return [v for v in self.verdicts if v.framework == framework]

    def to_dict(self) -> dict[str, Any]:
        return {"frameworks": self.frameworks, "summary": self.summary, "masked_away": self.masked_away,
                "routes": self.routes, "causes": self.causes, "notes": [f.to_dict() for f in self.notes],
                "verdicts": [v.to_dict() for v in self.verdicts]}

    def render(self) -> str:
        lines = []
        for fw, s in self.summary.items():
            line = (f"{fw}: {s['samples']} samples, {s['exact']} exact, {s['masked']} silently masked (train on "
                    f"nothing), {s['misaligned']} misaligned, {s['drift']} token drift")
            if s["refused"]:
                line += f", {s['refused']} refused (the framework stops with an error)"
            lines.append(line)
            if fw in self.routes:
                lines.append(f"  tokenizer: {self.routes[fw]}")
            for cause, n in sorted(self.causes[fw].items(), key=lambda kv: -kv[1]):
                lines.append(f"  {n} sample{'s' * (n != 1)} {cause}")
        lines += [str(f) for f in self.findings]
        return "\n".join(lines) + "\n"


# -- shared -------------------------------------------------------------------------------------------------

def _truth_mask(tok: Tok, text: str, spans: list[tuple[int, int]], *, add_special_tokens: bool,
                optional: Sequence[tuple[int, int]] = ()) -> tuple[list[int], list[bool]]:
    """Ground truth: tokenize the whole text; a token is supervised when its characters overlap a span. A token
    lying wholly in an ``optional`` span comes back False and is listed in :func:`_optional_tokens`."""
    enc = tok.encode(text, add_special_tokens=add_special_tokens)
    mask = []
    for (a, b), s in zip(enc.offsets, enc.sequence_ids):
        # tokens the post-processor adds (BOS) have no sequence id and no characters
        inside = s is not None and b > a and any(a < e and b > st for st, e in spans)
        mask.append(inside and not any(st <= a and b <= e for st, e in optional))
    return list(enc.ids), mask


def _optional_tokens(tok: Tok, text: str, optional: Sequence[tuple[int, int]]) -> list[bool]:
    enc = tok.encode(text, add_special_tokens=False)
    return [b > a and any(st <= a and b <= e for st, e in optional) for a, b in enc.offsets]


def _trailing_whitespace(pieces: Pieces) -> list[tuple[int, int]]:
    """The whitespace a template writes after an assistant turn's end marker (``"<|im_end|>\n"``): labelling
    it or not is both right."""
    out = []
    for a, b in pieces.spans:
        kept = len(pieces.text[a:b].rstrip())
        if a + kept < b:
            out.append((a + kept, b))
    return out


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
class _TurnDiff:
    turn: int  # 1-based assistant turn
    start: int  # labels start this many tokens before (<0) or after (>0) the answer's first token
    end: int  # labels end this many tokens after (>0) or before (<0) the answer's last token
    lost: int  # answer tokens without a label
    stray: int  # prompt tokens with a label, not touching the answer
    unlabelled: bool  # the turn has no label at all


def _turn_diffs(truth: list[bool], fw: list[bool]) -> list[_TurnDiff]:
    """Per assistant turn, how the labels (``fw``, aligned to ``truth``) differ from the answer's tokens.

    The prompt between two answers is split: labels touching an answer count as its early start / late end,
    the others as stray.
    """
    runs = _runs(truth)
    n = len(truth)
    out = []
    for k, (a, b) in enumerate(runs):
        lo = runs[k - 1][1] if k else 0
        hi = runs[k + 1][0] if k + 1 < len(runs) else n
        inside = [i for i in range(a, b) if fw[i]]
        start = end = 0
        if fw[a]:
            i = a - 1
            while i >= lo and fw[i]:
                i -= 1
            start = -(a - 1 - i)
        elif inside:
            start = inside[0] - a
        if fw[b - 1]:
            i = b
            while i < hi and fw[i]:
                i += 1
            end = i - b
        elif inside:
            end = inside[-1] + 1 - b
        touching = set(range(a + start, a)) | set(range(b, b + max(end, 0)))
        # prompt labels before this answer (after the previous one's late end), and after the last answer
        stray = sum(1 for i in range(lo, a) if fw[i] and i not in touching and not _touches_prev(i, runs, k, fw))
        if k == len(runs) - 1:
            stray += sum(1 for i in range(b, n) if fw[i] and i not in touching)
        d = _TurnDiff(k + 1, start, end, (b - a) - len(inside), stray, not inside)
        if d.start or d.end or d.lost or d.stray:
            out.append(d)
    return out


def _touches_prev(i: int, runs: list[tuple[int, int]], k: int, fw: list[bool]) -> bool:
    """Is label ``i`` part of the previous answer's late end (a run of labels from its last token)?"""
    if k == 0:
        return False
    b = runs[k - 1][1]
    return fw[b - 1] and all(fw[j] for j in range(b, i + 1))


def _describe(d: _TurnDiff) -> str:
    def n(x: int) -> str:
        return f"{abs(x)} token{'s' * (abs(x) != 1)}"

    if d.unlabelled:
        parts = [f"no label on its {d.lost} answer tokens"]
    else:
        parts = []
        if d.start:
            parts.append(f"labels start {n(d.start)} {'early' if d.start < 0 else 'late'}")
        if d.end:
            parts.append(f"end {n(d.end)} {'late' if d.end > 0 else 'early'}")
        if d.lost and not (d.start > 0 or d.end < 0):
            parts.append(f"{n(d.lost)} of the answer unlabelled")
    if d.stray:
        parts.append(f"{n(d.stray)} of the prompt labelled")
    return f"assistant turn {d.turn}: " + ", ".join(parts)


def _align(fw_ids: list[int], truth_ids: list[int]) -> int | None:
    """Where the whole-conversation ids sit inside the framework's ids (extra BOS before, EOS after)."""
    for p in range(len(fw_ids) - len(truth_ids) + 1):
        if fw_ids[p:p + len(truth_ids)] == truth_ids:
            return p
    return None


def _drift_cause(tok: Tok, fw_ids: list[int], truth_ids: list[int], first: int) -> str:
    bos = tok.token_id(tok.special("bos_token"))
    eos = tok.token_id(tok.special("eos_token"))
    causes = []
    if bos is not None and fw_ids.count(bos) > truth_ids.count(bos):
        extra = fw_ids.count(bos) - truth_ids.count(bos)
        causes.append(f"BOS added {extra} more time{'s' * (extra != 1)} (the template writes "
                      f"{tok.special('bos_token')!r} and the tokenizer adds one per encode call)")
    if eos is not None and fw_ids.count(eos) > truth_ids.count(eos):
        causes.append(f"{tok.special('eos_token')!r} appended to the text")
    if _align(fw_ids, truth_ids) is None:
        a = tok.tokens(truth_ids[first:first + 3])
        b = tok.tokens(fw_ids[first:first + 3])
        if a and b and b[0] == "▁" + a[0]:
            causes.append(f"SentencePiece prefix: each piece encoded on its own starts with '▁' (the whole "
                          f"conversation has {a} where the framework has {b})")
        else:
            causes.append(f"boundary merge: the whole conversation has {a} where the framework has {b}")
    return "; ".join(causes) or "the token sequences differ"


# -- LLaVA --------------------------------------------------------------------------------------------------

def _llava_tokenizer(tokenizer: str | Path | Tok, *, version: str, max_length: int | None, legacy: bool | None,
                     model_name_or_path: str | None, mm_use_im_start_end: bool,
                     fork: str = llava.LLAVA) -> llava.LlavaTokenizer:
    """The tokenizer LLaVA's ``train()`` builds (a folder: its own route choice; a ``Tok``: the fast route)."""
    if isinstance(tokenizer, Tok):
        # shared with the caller until train()'s [PAD] / <im_start> are added: LlavaTokenizer copies it first
        tok = llava.LlavaTokenizer(Tok(tokenizer.backend, tokenizer.config, tokenizer.chat_template), "fast",
                                   "a tokenizers.Tokenizer was passed (fast route)",
                                   max_length or tokenizer.model_max_length,
                                   tokenizer.legacy if "legacy" in tokenizer.config else None)
        unk = tok.token_id(tok.special("unk_token"))
        pad = tok.special("pad_token")
        if version == "v0":
            tok.pad_id = tok.token_id(pad) if pad is not None else tok.add_special("[PAD]")
        else:
            tok.pad_id = unk
        if mm_use_im_start_end:
            tok.add_special(llava.IM_START)
            tok.add_special(llava.IM_END)
    else:
        name = model_name_or_path if model_name_or_path is not None else str(tokenizer)
        tok = llava.load_tokenizer(tokenizer, version=version, model_max_length=max_length,
                                   model_name_or_path=model_name_or_path, mm_use_im_start_end=mm_use_im_start_end,
                                   legacy=legacy, fork=fork,
                                   use_fast=fork == llava.LLAVA_NEXT and llava.next_tokenizer_route(name) == "fast")
    if legacy is not None:
        tok.legacy = legacy
    return tok


def _llava_truth(run: llava.LlavaRun) -> list[bool]:
    """A token should carry a label when its characters overlap an assistant message or the separator that
    closes it. LLaVA-NeXT's preprocess_qwen labels whole assistant turns and, by design, its newline and turn
    markers wherever they stand: those are what it means to train on."""
    truth = [t != llava.IMAGE_TOKEN_INDEX and b > a and any(a < e and b > s for s, e in run.spans)
             for t, (a, b) in zip(run.input_ids, run.offsets)]
    if run.conv.style == "chatml":  # an <image> in an answer keeps its label there, which the splice drops
        marks = {"<|im_start|>", "<|im_end|>"}
        truth = [want or t == llava.QWEN_NEWLINE_ID or run.prompt[a:b] in marks
                 or (t == llava.IMAGE_TOKEN_INDEX and s)
                 for want, t, (a, b), s in zip(truth, run.input_ids, run.offsets, run.supervised)]
    return truth


def _exact(run: llava.LlavaRun) -> bool:
    return run.refused is None and run.mismatch is None and any(run.supervised) \
        and run.supervised == _llava_truth(run)


@dataclass
class _LlavaSetup:
    """What one LLaVA run is checked with: a tokenizer per version, built once."""

    source: str | Path | Tok
    max_length: int | None
    legacy: bool | None
    model_name_or_path: str | None
    mm_use_im_start_end: bool
    fork: str = llava.LLAVA
    cache: dict[tuple[str, bool | None], llava.LlavaTokenizer | llava.Refused] = field(default_factory=dict)

    def tokenizer(self, version: str, legacy: bool | None = None) -> llava.LlavaTokenizer | llava.Refused:
        flag = self.legacy if legacy is None else legacy
        key = (version, flag)
        if key not in self.cache:
            try:
                self.cache[key] = _llava_tokenizer(self.source, version=version, max_length=self.max_length,
                                                   legacy=flag, model_name_or_path=self.model_name_or_path,
                                                   mm_use_im_start_end=self.mm_use_im_start_end, fork=self.fork)
            except llava.Refused as e:
                self.cache[key] = e
        return self.cache[key]

    def run(self, row: Mapping[str, Any], version: str, legacy: bool | None = None) -> llava.LlavaRun:
        tok = self.tokenizer(version, legacy)
        if isinstance(tok, llava.Refused):
            conv = llava.conversation_for(version, fork=self.fork)
            return llava.LlavaRun(version, conv, conv.function, "image" in row, refused=tok)
        return llava.simulate(row, tokenizer=tok, version=version, mm_use_im_start_end=self.mm_use_im_start_end,
                              fork=self.fork)


def _split_strings(conv: llava.Conv) -> list[str]:
    """The strings the round arithmetic splits the prompt on."""
    if conv.style == "mpt":
        return [conv.sep, conv.sep + conv.roles[1]]
    if conv.style == "two":
        return [conv.sep2 or "", conv.sep + conv.roles[1] + ": "]
    if conv.style == "llama_2":
        return [conv.sep2 or "", "[/INST] "]
    return []


def _llava_cause(run: llava.LlavaRun, tok: llava.LlavaTokenizer, setup: _LlavaSetup,
                 row: Mapping[str, Any]) -> str:
    """Why the round arithmetic disagrees with the whole, each named cause checked on the sample."""
    conv = run.conv
    texts = [str(t.get("value", "")) for t in row.get("conversations") or []]
    inside = [x for x in _split_strings(conv) if x and any(x in t for t in texts)]
    if inside:
        return f"the sample's own text holds {inside[0]!r}, which {conv.function} splits the rounds on"
    pads = sum(1 for i in run.input_ids if i == tok.pad_id)
    if pads:
        pad = tok.tokens([tok.pad_id or 0])[0]
        return (f"the pad token {pad!r} is in the text: total_len leaves out pad ids, the rounds count them "
                f"({pads} here)")
    sep = conv.sep if conv.style == "mpt" else (conv.sep2 or "")
    if sep and not tok.is_special(sep):
        return (f"the separator {sep!r} is not a special token of this tokenizer, so {conv.function} counts each "
                "round's closing separator wrong")
    if conv.style != "mpt" and tok.ids("")[:1] != [tok.bos_id]:
        return (f"the tokenizer adds no BOS but {conv.function} assumes one (cur_len starts at 1, instruction_len "
                "subtracts 2)")
    if tok.add_eos or tok.ids("")[-1:] == [tok.token_id(tok.special("eos_token"))]:
        return ("the tokenizer appends EOS to every piece (add_eos_token), so each round counts one more token than "
                "the whole holds")
    if conv.function == "preprocess_v1" and tok.route == "slow" and \
            setup.run(row, run.version, not tok.legacy).mismatch is None:
        return (f"tokenizer.legacy={tok.legacy}: the slow tokenizer "
                f"{'prepends' if tok.legacy else 'does not prepend'} '▁' after {sep!r}, and preprocess_v1 "
                f"{'does not subtract the 1 per round it then needs' if tok.legacy else 'subtracts 1 per round'}")
    if conv.style == "mpt" and not tok.ids(""):
        return (f"{conv.function} splits the rounds on {sep!r} and drops the one that closes each answer; a BOS "
                "per round would make up for it, and this tokenizer adds none")
    return f"{conv.function}'s per-round counts disagree with the whole conversation's tokens"


def _llava_fix(setup: _LlavaSetup, row: Mapping[str, Any], run: llava.LlavaRun, tok: llava.LlavaTokenizer,
               cause: str, good_versions: Callable[[], list[str]]) -> str:
    """A computed fix for this sample: the text, the legacy flag or the versions under which it is exact,
    else the cur_len patch with its numbers (each one re-run and checked)."""
    assert run.mismatch is not None
    cur, total = run.mismatch
    if cause.startswith("the sample's own text holds"):
        return f"take {cause.split('holds ', 1)[1].split(',')[0]} out of the sample's text"
    if cause.startswith("the pad token"):
        return f"take {tok.tokens([tok.pad_id or 0])[0]!r} out of the sample's text"
    if cause.startswith("the tokenizer appends EOS"):
        return "set \"add_eos_token\": false in tokenizer_config.json"
    if run.function == "preprocess_v1" and tok.route == "slow" and _exact(setup.run(row, run.version,
                                                                                   not tok.legacy)):
        return f"set \"legacy\": {str(not tok.legacy).lower()} in tokenizer_config.json (the slow tokenizer honours it)"
    good = good_versions()
    if good:
        return f"use --version {' or '.join(good)} (exact for this sample with this tokenizer)"
    tok_run = setup.tokenizer(run.version)
    assert not isinstance(tok_run, llava.Refused)
    start = 0 if run.function == "preprocess_mpt" else 1
    rounds, later = len(run.round_lens), len(run.round_lens) - 1
    if rounds > 1 and (total - cur) % rounds == 0:
        step = (total - cur) // rounds
        patched = llava.simulate(row, tokenizer=tok_run, version=run.version, patch=(step, step),
                                 mm_use_im_start_end=setup.mm_use_im_start_end, fork=setup.fork)
        if _exact(patched):
            return (f"no registered version is exact: patch {run.function} to count {step:+d} token per round, "
                    f"the first included ({cur} {step:+d}x{rounds} = {total})")
    if later > 0 and (total - cur) % later == 0:
        step = (total - cur) // later
        patched = llava.simulate(row, tokenizer=tok_run, version=run.version, patch=(0, step),
                                 mm_use_im_start_end=setup.mm_use_im_start_end, fork=setup.fork)
        if _exact(patched):
            return (f"no registered version is exact: patch {run.function} to add {step:+d} to round_len and "
                    f"instruction_len of each round after the first ({cur} {step:+d}x{later} = {total})")
    patched = llava.simulate(row, tokenizer=tok_run, version=run.version, patch=(total - cur, 0),
                             mm_use_im_start_end=setup.mm_use_im_start_end, fork=setup.fork)
    if _exact(patched):
        return (f"no registered version is exact: patch {run.function} to start cur_len at {start + total - cur} "
                f"instead of {start} ({cur} vs. {total}; the labels then fall on the answers)")
    return (f"no registered version is exact and no cur_len patch fits ({cur} vs. {total}); drop the sample or "
            "train through the chat template")


# every version a fix may name: each conversation object once, by its most common name
_FIX_VERSIONS = ("v1", "llava_v1", "v1_mmtag", "llama_2", "llava_llama_2", "mistral_instruct", "mpt",
                 "chatml_direct", "llava_v0", "v0_mmtag")


def _check_llava(setup: _LlavaSetup, version: str, index: int, sid: str | None, row: Mapping[str, Any],
                 fixes: dict[tuple[str, str], list[str]]) -> SampleVerdict:
    run = setup.run(row, version)
    tok = setup.tokenizer(version)
    truth = _llava_truth(run)
    v = SampleVerdict(index, sid, version, "exact", len(run.input_ids), len(run.input_ids), sum(truth),
                      sum(run.supervised))
    data: dict[str, Any] = {"function": run.function, "route": getattr(tok, "route", None),
                            "round_lens": run.round_lens}
    if run.refused is not None or isinstance(tok, llava.Refused):
        e = run.refused
        assert e is not None
        v.verdict = "refused"
        v.cause = f"LLaVA raises {e.what}"
        v.findings.append(TemplateFinding(
            "VT007", f"{version}: LLaVA stops the run: {e.what} at {e.where}", _refused_fix(e, run), index, sid,
            {**data, "error": e.what, "where": e.where}))
        return v
    assert not isinstance(tok, llava.Refused)
    if run.mismatch is not None:
        cur, total = run.mismatch
        v.warning = f"WARNING: tokenization mismatch: {cur} vs. {total}. (ignored)"
        cause = _llava_cause(run, tok, setup, row)
        key = (version, cause)

        def good_versions() -> list[str]:  # per class: the versions that make its first sample exact
            if key not in fixes:
                fixes[key] = [w for w in _FIX_VERSIONS if w != version and _exact(setup.run(row, w))]
            return fixes[key]

        fix = _llava_fix(setup, row, run, tok, cause, good_versions)
        v.verdict, v.cause = "masked", cause
        v.findings.append(TemplateFinding(
            "VT001", f"{version}: \"tokenization mismatch: {cur} vs. {total}. (ignored)\" (off by {cur - total:+d} "
            f"over {len(run.round_lens)} rounds): all {sum(truth)} assistant tokens masked; cause: {cause}",
            fix, index, sid, {**data, "cur_len": cur, "total_len": total, "off_by": cur - total}))
        return v
    if not any(run.supervised):
        v.verdict = "masked"
        if run.truncated:
            v.cause = "truncated before the first answer"
            v.findings.append(TemplateFinding(
                "VT003", f"{version}: every label is masked: truncation at model_max_length={tok.model_max_length} "
                f"keeps {len(run.input_ids)} tokens, none of an answer",
                "raise --model_max_length, or drop the sample", index, sid, data))
        else:
            v.cause = "nothing to train on"
            v.findings.append(TemplateFinding("VT003", f"{version}: every label is masked (no assistant text)",
                                              "drop the sample", index, sid, data))
        return v
    # a whitespace-only token at the edge of an answer ("▁" before "日本", SentencePiece's dummy "▁" at the
    # start of the chunk after <image>) may carry a label or not
    edges = {x for span in run.spans for x in span}
    either = [t != llava.IMAGE_TOKEN_INDEX and k > 0 and not run.prompt[a:b].strip() and (a in edges or b in edges)
              for k, (t, (a, b)) in enumerate(zip(run.input_ids, run.offsets))]
    diffs = _turn_diffs(truth, [t if e else f for f, t, e in zip(run.supervised, truth, either)])
    if diffs:
        v.verdict = "misaligned"
        if run.conv.style == "single":
            v.cause = ("the generic ### path trains the role header and keeps the first two tokens of every "
                       "human sentence (it has no length check)")
            fix = "use a --version with a length check (v1 for Vicuna/Llama tokenizers)"
        elif tok.add_eos or tok.ids("")[-1:] == [tok.token_id(tok.special("eos_token"))]:
            v.cause = "the tokenizer appends EOS to every piece preprocess tokenizes (add_eos_token)"
            fix = "set \"add_eos_token\": false in tokenizer_config.json"
        else:
            v.cause = f"{run.function}'s mask is shifted"
            good = [w for w in _FIX_VERSIONS if w != version and _exact(setup.run(row, w))]
            fix = (f"use --version {' or '.join(good)} (exact for this sample)" if good
                   else "mask by character offsets of the answers")
        v.findings.append(TemplateFinding(
            "VT002", f"{version}: {_describe(diffs[0])} ({sum(run.supervised)} labels vs {sum(truth)} assistant "
            f"tokens, {len(diffs)} turn{'s' * (len(diffs) != 1)} off); cause: {v.cause}", fix, index, sid,
            {**data, "turn": diffs[0].turn, "start_off": diffs[0].start, "end_off": diffs[0].end}))
    return v


def _refused_fix(e: llava.Refused, run: llava.LlavaRun) -> str:
    if "preprocess_plain" in e.where:
        return "plain (pretraining) needs exactly one human turn holding <image> and one answer: fix or drop the sample"
    if "AttributeError" in e.what:
        return ("ship tokenizer.model and load the slow LlamaTokenizer (LLaVA's pinned transformers gives fast "
                "tokenizers no `legacy`), or use a version whose preprocess does not read it (mpt)")
    if "TypeError" in e.what:
        return "ship tokenizer.model with the checkpoint (LLaVA loads use_fast=False)"
    if "KeyError" in e.what:
        return "use only 'human' and 'gpt' in every turn's 'from'"
    if "first message" in e.what:
        return "the first human turn must not be empty"
    return "turns must alternate human, gpt (a leading gpt turn is skipped): merge or drop the out-of-order turns"


# -- chat-template routes ---------------------------------------------------------------------------------

@dataclass
class _Route:
    """What one framework builds for one sample."""

    ids: list[int]
    supervised: list[bool]
    cut_supervised: list[bool]  # after truncation at max_length
    findings: list[TemplateFinding] = field(default_factory=list)
    verdict: str | None = None  # decided by a route-specific finding
    first_cut_label: int | None = None  # smallest max_length that keeps a label (keep-start routes)


def _keep_start(ids: list[int], sup: list[bool], max_length: int | None) -> _Route:
    cut = sup if max_length is None else sup[:max_length]
    return _Route(ids, sup, cut, first_cut_label=sup.index(True) + 1 if any(sup) else None)


def _judge(framework: str, index: int, sid: str | None, tok: Tok, truth_ids: list[int], truth: list[bool],
           route: _Route, *, max_length: int | None, fix: str, either: list[bool]) -> SampleVerdict:
    v = SampleVerdict(index, sid, framework, route.verdict or "exact", len(truth_ids), len(route.ids), sum(truth),
                      sum(route.cut_supervised))
    v.findings += route.findings
    if route.verdict is not None:
        return v
    if not any(route.supervised):
        v.verdict = "masked"
        v.findings.append(TemplateFinding("VT003", f"{framework}: every label is masked ({sum(truth)} assistant "
                                          "tokens)", fix, index, sid, {}))
        return v
    if not any(route.cut_supervised):
        need = route.first_cut_label
        v.verdict = "masked"
        v.findings.append(TemplateFinding(
            "VT003", f"{framework}: every label is masked after truncation at max_length={max_length} (the "
            f"sample has {len(route.ids)} tokens"
            + (f", its first label is token {need - 1})" if need else ")"),
            f"raise max_length to at least {need or len(route.ids)} ({len(route.ids)} keeps the whole sample), "
            "or drop the sample", index, sid, {"max_length": max_length, "tokens": len(route.ids)}))
        return v
    where = 0 if route.ids == truth_ids else _align(route.ids, truth_ids)
    if where != 0 or route.ids != truth_ids:
        first = next((i for i, (a, b) in enumerate(zip(route.ids, truth_ids)) if a != b),
                     min(len(route.ids), len(truth_ids)))
        turn = sum(1 for a, _ in _runs(truth) if a <= first) or 1
        off = len(route.ids) - len(truth_ids)
        v.verdict = "drift"
        v.findings.append(TemplateFinding(
            "VT004", f"{framework}: trains on {len(route.ids)} tokens where the whole conversation has "
            f"{len(truth_ids)} (off by {off:+d}); first difference at token {first}, by assistant turn {turn}; "
            f"cause: {_drift_cause(tok, route.ids, truth_ids, first)}",
            "tokenize the whole rendered conversation once (add_special_tokens=False when the template writes "
            "the BOS) and mask by character offsets", index, sid, {"off_by": off, "turn": turn, "first": first}))
        if where is None:
            return v
    window = route.supervised[where:where + len(truth_ids)]
    aligned = [t if e else f for f, t, e in zip(window, truth, either)]
    diffs = _turn_diffs(truth, aligned)
    if diffs:
        diff = diffs[0]
        cause = _mask_cause(framework, tok, truth_ids, truth, aligned, diffs)
        v.verdict = "misaligned"
        v.findings.append(TemplateFinding(
            "VT002", f"{framework}: {_describe(diff)} ({sum(window)} labels vs {sum(truth)} assistant tokens, "
            f"{len(diffs)} turn{'s' * (len(diffs) != 1)} off){cause}", fix, index, sid,
            {"turn": diff.turn, "start_off": diff.start, "end_off": diff.end, "turns_off": len(diffs)}))
    return v


def _mask_cause(framework: str, tok: Tok, ids: list[int], truth: list[bool], fw: list[bool],
                diffs: list[_TurnDiff]) -> str:
    """Name what the differing tokens are, from the tokens themselves."""
    runs = _runs(truth)
    if all(d.end < 0 and d.start == 0 and not d.stray for d in diffs) and len(diffs) == len(runs):
        a, b = runs[0]
        lost = tok.tokens(ids[b + diffs[0].end:b])
        if any(i in tok.added() for i in ids[b + diffs[0].end:b]):
            where = "outside {% generation %}" if framework == TRL else "never labelled"
            return (f"; cause: the end-of-turn marker {lost} of every answer is {where}: the model never learns "
                    "to stop")
    return ""


def _route_trl(msgs: list[tuple[str, str]], tok: Tok, training: trl.TrainingTemplate, index: int,
               sid: str | None, max_length: int | None) -> _Route:
    assert training.template is not None
    out = trl.assistant_mask(training.template, msgs, tok)
    route = _keep_start(out.input_ids, out.supervised, max_length)
    if not any(out.supervised):
        route.verdict = "refused"
        route.findings.append(TemplateFinding(
            "VT003", "trl: no assistant token in the mask: SFTTrainer stops with RuntimeError (\"You're using "
            "`assistant_only_loss=True`, but at least one example has no assistant tokens\")",
            "drop the sample (or fix the template's {% generation %} blocks)", index, sid, {}))
        return route
    return route


def _route_unsloth(pieces: Pieces, tok: Tok, markers: tuple[unsloth.Marker, unsloth.Marker], index: int,
                   sid: str | None, max_length: int | None) -> _Route:
    instruction, response = markers
    ids = unsloth.text_route_ids(pieces.text, tok)
    sup = unsloth.response_mask(ids, tok, instruction, response)
    cut_ids = ids if max_length is None else ids[:max_length]
    cut = unsloth.response_mask(cut_ids, tok, instruction, response) if max_length is not None else sup
    route = _Route(ids, sup, cut, first_cut_label=sup.index(True) + 1 if any(sup) else None)
    if not any(sup):
        found = unsloth._at
        seen = any(found(ids, j, response.core) for j in range(len(ids)))
        whole = [t for t in pieces.pieces if not t[1]]
        route.verdict = "masked"
        if not seen:
            near = _marker_in_context(tok, ids, response)
            route.findings.append(TemplateFinding(
                "VT006", f"unsloth: response_part {response.text!r} is {tok.tokens(response.core)} on its own, "
                f"but the whole conversation has {near}: the marker is never found and all "
                f"{len([p for p in pieces.pieces if p[1]])} answers are masked (Unsloth drops the sample)",
                "pass a response_part whose tokens do not merge with the text around it (end it before the "
                "boundary whitespace), or mask by character offsets", index, sid,
                {"marker": response.core, "prompts": len(whole)}))
    return route


def _marker_in_context(tok: Tok, ids: list[int], m: unsloth.Marker) -> str:
    """The tokens the whole conversation has where the marker's text is."""
    text = tok.backend.decode(ids, skip_special_tokens=False)
    at = text.find(m.text)
    if at < 0:
        return "no such text"
    enc = tok.encode(text, add_special_tokens=False)
    first, last = enc.char_to_token(at), enc.char_to_token(at + len(m.text) - 1)
    if first is None or last is None:
        return "no such tokens"
    return str(tok.tokens(list(enc.ids[first:last + 1])))


def _check_chat(framework: str, index: int, sid: str | None, msgs: list[tuple[str, str]], tok: Tok,
                template: str, *, max_length: int | None, training: trl.TrainingTemplate | None,
                markers: tuple[unsloth.Marker, unsloth.Marker] | None) -> SampleVerdict:
    pieces = render_pieces(template, msgs, tok.special_map())
    optional = _trailing_whitespace(pieces)
    truth_ids, truth = _truth_mask(tok, pieces.text, pieces.spans, add_special_tokens=False, optional=optional)
    either = _optional_tokens(tok, pieces.text, optional)
    fix = "mask by character offsets of the assistant turns"
    if framework == CHAT_TEMPLATE:
        route = _keep_start(truth_ids, truth, max_length)
    elif framework == LLAMAFACTORY:
        full = llamafactory.encode_pairs(pieces.pairs(), tok)
        cut = llamafactory.encode_pairs(pieces.pairs(), tok, cutoff_len=max_length) if max_length is not None else full
        route = _Route(full.input_ids, full.supervised, cut.supervised)
    elif framework == TRL:
        assert training is not None
        route = _route_trl(msgs, tok, training, index, sid, max_length)
        fix = "fix the chat template's {% generation %} blocks"
    else:
        assert markers is not None
        route = _route_unsloth(pieces, tok, markers, index, sid, max_length)
        fix = "pass instruction_part / response_part that match the template's tokens"
    return _judge(framework, index, sid, tok, truth_ids, truth, route, max_length=max_length, fix=fix,
                  either=either)


# -- entry point ------------------------------------------------------------------------------------------

def _messages(sample: Any) -> tuple[list[tuple[str, str]], str | None, bool]:
    """(role, text) pairs from a LLaVA ``conversations`` row, a ``messages`` row, or a bare list; the id; and
    whether the row has an ``image`` (LLaVA's ``has_image``)."""
    sid = None
    rows = sample
    has_image = False
    if isinstance(sample, Mapping):
        sid = sample.get("id")
        has_image = "image" in sample
        rows = sample.get("conversations", sample.get("messages"))
    if not isinstance(rows, list):
        raise UsageError("a sample needs a 'conversations' or 'messages' list")
    out = []
    for m in rows:
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        if not isinstance(text, str):
            raise UsageError("the template check supports text content only (image parts: use the <image> "
                             "placeholder in the text)")
        out.append(({"human": "user", "gpt": "assistant"}.get(role, role), text))
    return out, None if sid is None else str(sid), has_image


def check_template(dataset: Iterable[Any], *, tokenizer: str | Path | Tok, options: TemplateOptions | None = None,
                   **kwargs: Any) -> TemplateReport:
    """Check that each framework's label mask covers exactly the assistant tokens of each sample.

    Every keyword but ``tokenizer`` is a field of :class:`~vlmcheck.options.TemplateOptions`, built once from them
    (or pass one as ``options=``).

    ``template`` is one framework or several: ``llamafactory`` (per-turn encoding), ``trl``
    (``assistant_only_loss=True``), ``unsloth`` (``train_on_responses_only``; markers from the chat template
    unless ``instruction_part`` / ``response_part`` are given), ``chat_template`` (the reference: whole
    conversation, masked by offsets), or anything else: a LLaVA ``--version`` (every name of LLaVA's
    ``conv_templates``, ``v0``, ``v0.5``; an unknown one runs as ``vicuna_v1``, as LLaVA's ``train()`` does).

    For LLaVA, ``tokenizer`` is the checkpoint folder, loaded as ``train()`` loads it (the slow SentencePiece
    LlamaTokenizer from ``tokenizer.model``; fast when "mpt" is in ``model_name_or_path`` or the config names a
    fast class); ``max_length`` is ``--model_max_length``; ``mm_use_im_start_end`` as LLaVA's flag; ``legacy``
    overrides ``tokenizer.legacy``. Each sample gets LLaVA's verdict: ``masked`` with the two numbers of its
    "tokenization mismatch" warning, ``refused`` where its code raises, ``misaligned`` or ``exact``.

    >>> rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    >>> report = check_template(rows, tokenizer="llava-v1.5-7b/", template=["v1", "mpt"])  # doctest: +SKIP
    >>> report.masked_away  # doctest: +SKIP
    {'v1': 0, 'mpt': 1}
    """
    options = from_keywords(TemplateOptions, options, kwargs, caller="check_template")
    names = list(options.template)
    max_length, instruction_part, response_part = options.max_length, options.instruction_part, options.response_part
    chat_names = [n for n in names if n in CHAT_ROUTES]
    tok: Tok | None = None
    if chat_names:
        tok = tokenizer if isinstance(tokenizer, Tok) else Tok.load(tokenizer)
    chat = options.chat_template or (tok.chat_template if tok is not None else None)
    if chat is None and chat_names:
        raise UsageError("the chat-template frameworks need a chat template (none in the tokenizer folder; pass "
                         "chat_template)")
    samples = list(dataset)
    rows = [_messages(sample) for sample in samples]
    report = TemplateReport(names, [])
    if chat is not None and chat_names:
        assert tok is not None
        _probe(chat, tok, "the chat template given (chat_template, --chat-template)" if options.chat_template
               else "the tokenizer's chat template" if isinstance(tokenizer, Tok)
               else f"the chat template of {tokenizer}")
    training = markers = None
    if TRL in names and chat is not None:
        training = trl.training_template(chat)
        if training.template is None:
            report.notes.append(TemplateFinding(
                "VT005", f"trl: {training.source}: SFTTrainer(assistant_only_loss=True) raises ValueError at init "
                "(\"The chat template is not training-compatible ...\")",
                "add {% generation %}...{% endgeneration %} around each assistant turn (its answer and "
                "end-of-turn marker) in the chat template", None, None, {}))
    if UNSLOTH in names and chat is not None and tok is not None:
        special = tok.special_map()
        probe = [("user", "a"), ("assistant", "b"), ("user", "c")]
        try:
            response = response_part if response_part is not None else generation_prompt(chat, probe[:1], special)
            instruction = instruction_part if instruction_part is not None else user_header(chat, special)
        except TemplateRaises as e:
            raise UsageError(f"the chat template raises on the conversation that finds its markers ({e}); pass "
                             "instruction_part and response_part") from None
        if not response or not instruction:
            raise UsageError("cannot find the chat template's markers; pass instruction_part and response_part")
        markers = (unsloth.marker(instruction, tok), unsloth.marker(response, tok))
    setup = _LlavaSetup(tokenizer, max_length, options.legacy, options.model_name_or_path,
                        options.mm_use_im_start_end, options.llava_fork)
    if options.llava_fork == llava.LLAVA_NEXT:
        for name in names:
            if name not in CHAT_ROUTES:
                model = options.model_name_or_path or (str(tokenizer) if not isinstance(tokenizer, Tok) else "")
                refused = llava.next_unmodelled(name, model)
                if refused is not None:
                    raise UsageError(refused)
    fixes: dict[tuple[str, str], list[str]] = {}
    for name in names:
        if name not in CHAT_ROUTES:
            built = setup.tokenizer(name)
            conv = llava.conversation_for(name, fork=setup.fork)
            if setup.fork == llava.LLAVA_NEXT:  # its table: the shared names but two, and its qwen versions
                known = name in llava.NEXT_CONV_TEMPLATES or (name in llava.VERSIONS
                                                               and name not in llava.NEXT_DROPPED_VERSIONS)
            else:
                known = name in llava.VERSIONS
            fallback = "" if known else " (not registered: train() falls back to vicuna_v1)"
            route = (f"LLaVA raises while loading it: {built.what}" if isinstance(built, llava.Refused)
                     else f"{built.route} ({built.reason})")
            report.routes[name] = f"{route}; {conv.function} with {conv.name}{fallback}"
        for index, (msgs, sid, _) in enumerate(rows):
            if name not in CHAT_ROUTES:
                row = samples[index] if isinstance(samples[index], Mapping) else {"conversations": samples[index]}
                report.verdicts.append(_check_llava(setup, name, index, sid, _llava_row(row), fixes))
            elif name == TRL and training is not None and training.template is None:
                report.verdicts.append(SampleVerdict(index, sid, name, "refused", 0, 0, 0, 0))
            else:
                assert chat is not None and tok is not None
                try:
                    verdict = _check_chat(name, index, sid, msgs, tok, chat, max_length=max_length,
                                          training=training, markers=markers)
                except TemplateRaises as e:
                    verdict = SampleVerdict(index, sid, name, "refused", 0, 0, 0, 0, cause="the chat template raises")
                    verdict.findings.append(TemplateFinding(
                        "VT007", f"{name}: the chat template raises on this conversation ({e}): apply_chat_template "
                        "raises the same and the run stops", "fix the sample or the chat template", index, sid,
                        {"error": str(e)}))
                report.verdicts.append(verdict)
    return report


def _probe(chat: str, tok: Tok, where: str) -> None:
    """The template must render a plain two-turn conversation: one that cannot (a syntax error, ``1/0``, a bound
    of the sandbox such as a range past 100,000) is broken for every sample, refused before any is judged, as
    ``scan`` refuses it. A ``raise_exception`` is left to the samples: a template may rightly refuse this one."""
    import jinja2
    from jinja2.sandbox import SecurityError

    from vlmcheck.chat import RenderLimit, compile_template

    try:
        compile_template(chat)
    except Exception as e:
        line = f", line {e.lineno}" if isinstance(e, jinja2.TemplateSyntaxError) else ""
        raise UsageError(f"{where} does not compile ({type(e).__name__}: {str(e)[:200]}{line}); fix it or pass "
                         "another chat template") from None
    probe = dicts([("user", "Hi"), ("assistant", "Hello")])
    try:
        render_chat(chat, probe, special_tokens=tok.special_map())
    except RenderLimit as e:
        raise UsageError(f"{where} does not finish on a two-turn conversation: {e}") from None
    except SecurityError as e:
        raise UsageError(f"{where} does something the sandbox refuses ({e}); fix it or pass another chat "
                         "template") from None
    except jinja2.TemplateError:
        pass
    except Exception as e:
        raise UsageError(f"{where} fails on a plain two-turn conversation ({describe(e)}); fix it or pass "
                         "another chat template") from None



def _llava_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A LLaVA row: ``conversations`` as is; a ``messages`` row mapped to from/value (user -> human,
    assistant -> gpt), as a user converting a dataset for LLaVA would."""
    if "conversations" in row:
        return dict(row)
    turns = [{"from": {"user": "human", "assistant": "gpt"}.get(m.get("role"), m.get("role")),
              "value": m.get("content")} for m in row.get("messages") or []]
    return {**{k: v for k, v in row.items() if k != "messages"}, "conversations": turns}


# the rows, the tokenizer, then every option, as help() and editors show it
check_template.__signature__ = keyword_signature(  # type: ignore[attr-defined]
    check_template, TemplateOptions, after="tokenizer")
