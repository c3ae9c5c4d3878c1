"""check_template(): compare the label masks frameworks build with the tokenizer's ground truth.

The ground truth: the whole conversation rendered and tokenized once; a token carries assistant content when its
character offsets overlap an assistant turn (the answer and the marker that ends it). Each framework's labels are
rebuilt as that framework builds them (``llava``, ``llamafactory``, ``trl``, ``unsloth``) and compared token by
token; every verdict, number and fix is computed from the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.errors import UsageError
from vlmcheck.templates import llamafactory, llava, trl, unsloth
from vlmcheck.templates.catalogue import TemplateFinding
from vlmcheck.templates.pieces import Pieces, generation_prompt, render_pieces, user_header
from vlmcheck.templates.tokenizer import Tok

CHAT_TEMPLATE = "chat_template"  # the reference: whole conversation, masked by offsets
LLAMAFACTORY = "llamafactory"
TRL = "trl"
UNSLOTH = "unsloth"
CHAT_ROUTES = (CHAT_TEMPLATE, LLAMAFACTORY, TRL, UNSLOTH)
FRAMEWORKS = sorted([*llava.TEMPLATES, *CHAT_ROUTES])
VERDICTS = ("exact", "drift", "misaligned", "masked", "refused")

__all__ = ["FRAMEWORKS", "SampleVerdict", "TemplateReport", "Tok", "check_template"]


@dataclass
class SampleVerdict:
    """The verdict for one sample under one framework.

    ``verdict``: ``exact`` (labels on exactly the assistant tokens), ``drift`` (the framework trains on other
    tokens than the whole conversation's, VT004), ``misaligned`` (labels shifted, VT002), ``masked`` (no label
    left: the sample trains on nothing, VT001/VT003/VT006) or ``refused`` (the framework stops with an error).
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

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "findings"}
        d["findings"] = [f.to_dict() for f in self.findings]
        return d


@dataclass
class TemplateReport:
    """All verdicts of one check. ``summary[framework]`` counts verdicts; ``masked_away[framework]`` is how many
    samples that framework would silently train on nothing."""

    frameworks: list[str]
    verdicts: list[SampleVerdict]
    notes: list[TemplateFinding] = field(default_factory=list)  # dataset-level (index None)

    @property
    def findings(self) -> list[TemplateFinding]:
        return [*self.notes, *(f for v in self.verdicts for f in v.findings)]

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

    def verdicts_for(self, framework: str) -> list[SampleVerdict]:
        return [v for v in self.verdicts if v.framework == framework]

    def to_dict(self) -> dict[str, Any]:
        return {"frameworks": self.frameworks, "summary": self.summary, "masked_away": self.masked_away,
                "notes": [f.to_dict() for f in self.notes], "verdicts": [v.to_dict() for v in self.verdicts]}

    def render(self) -> str:
        lines = []
        for fw, s in self.summary.items():
            line = (f"{fw}: {s['samples']} samples, {s['exact']} exact, {s['masked']} silently masked (train on "
                    f"nothing), {s['misaligned']} misaligned, {s['drift']} token drift")
            if s["refused"]:
                line += f", {s['refused']} refused (the framework stops with an error)"
            lines.append(line)
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

def _llava_cause(conv: llava.Conv, rendered: llava.Rendered, tok: Tok, *, legacy: bool, legacy_fix: bool,
                 max_length: int | None) -> str:
    """The cause of a length mismatch, each one tested by re-running the arithmetic without it."""
    sep = conv.sep if conv.style == "mpt" else (conv.sep2 or "")
    if sep and not tok.is_special(sep):
        return (f"the template's separator {sep!r} is not a special token of this tokenizer "
                f"({len(tok.ids(sep, add_special_tokens=False))} text tokens), so the rounds are counted wrong")
    if conv.style != "mpt" and not tok.ids("")[:1]:
        return ("the tokenizer adds no BOS but the arithmetic assumes one (cur_len starts at 1, "
                "instruction_len subtracts 2)")
    actual = tok.behaves_legacy(sep) if sep else None
    flipped = llava.preprocess(conv, rendered, tok, legacy=not legacy, legacy_fix=legacy_fix, max_length=max_length)
    if actual is not None and actual != legacy and flipped.warning is None:
        how = "prepends" if actual else "does not prepend"
        return (f"legacy vs non-legacy: tokenizer.legacy={legacy} but the tokenizer {how} '▁' after {sep!r}, so "
                f"every round after the first is counted one token {'short' if actual else 'long'}")
    if conv.style == "two" and legacy_fix is False and not legacy:
        return "separator counted once too many per round (this LLaVA version lacks the non-legacy -1)"
    for per_round in (1, -1):
        again = llava.preprocess(conv, rendered, tok, legacy=legacy, legacy_fix=legacy_fix,
                                 max_length=max_length, sep_per_round=per_round)
        if again.warning is None:
            what = "once too few" if per_round > 0 else "once too many"
            return (f"separator counted {what} per round: {conv.function} splits the rounds on {sep!r} and "
                    f"{'counts' if per_round < 0 else 'never counts'} the one that closes each round "
                    f"(with {per_round:+d} token per round the lengths agree)")
    return "the per-round arithmetic disagrees with the whole-conversation tokenization"


def _llava_fix(conv: llava.Conv, rendered_for: Mapping[str, llava.Rendered], tok: Tok, *, legacy: bool | None,
               legacy_fix: bool, max_length: int | None, cause: str) -> str:
    """A fix that is computed: the setting, or the conversation templates, under which this sample is exact."""
    if cause.startswith("legacy vs non-legacy"):
        actual = tok.behaves_legacy(conv.sep2 or conv.sep)
        return (f"load the tokenizer with legacy={actual} (a fast tokenizer honours legacy=False only with "
                f"from_slow=True)")
    if cause.startswith("separator counted once too many per round (this LLaVA"):
        return "update LLaVA to a version with the `not tokenizer.legacy` adjustment in preprocess_v1"
    good = []
    for name, other in llava.TEMPLATES.items():
        if other.style == "plain" or name == conv.name:
            continue
        r = rendered_for[name]
        flag = (tok.legacy_attribute if other.style == "mpt" else tok.legacy) if legacy is None else legacy
        out = llava.preprocess(other, r, tok, legacy=flag, legacy_fix=legacy_fix, max_length=max_length)
        truth_ids, truth = _llava_truth(tok, r)
        if out.warning is None and out.supervised == truth[:len(out.supervised)] and any(out.supervised):
            good.append(name)
    if good:
        return f"use --version {' or '.join(good)} (exact for this sample with this tokenizer)"
    return ("no LLaVA conversation version comes out exact with this tokenizer: train through its chat template "
            "(vlmcheck template --template chat_template shows the reference)")


def _llava_truth(tok: Tok, rendered: llava.Rendered) -> tuple[list[int], list[bool]]:
    """The sequence LLaVA trains on (``tokenizer_image_token`` when the sample has an image), labelled by the
    characters of its tokens."""
    if not rendered.has_image:
        return _truth_mask(tok, rendered.text, rendered.spans, add_special_tokens=True)
    ids, offsets = llava.image_token_ids(rendered.text, tok)
    return ids, [t != llava.IMAGE_TOKEN_INDEX and b > a and any(a < e and b > s for s, e in rendered.spans)
                 for t, (a, b) in zip(ids, offsets)]


def _check_llava(conv: llava.Conv, index: int, sid: str | None, msgs: list[tuple[str, str]], tok: Tok, *,
                 legacy: bool | None, legacy_fix: bool, max_length: int | None, has_image: bool,
                 fixes: dict[str, str]) -> SampleVerdict:
    if msgs and msgs[0][0] == "system":
        msgs = msgs[1:]  # LLaVA's data has no system turn; the template brings its own
    if msgs and msgs[0][0] != "user":  # preprocess_* skip a first turn that is not from the human
        msgs = msgs[1:]
    flag = (tok.legacy_attribute if conv.style == "mpt" else tok.legacy) if legacy is None else legacy
    rendered = llava.render(conv, msgs, has_image=has_image)
    truth_ids, truth = _llava_truth(tok, rendered)
    fw = llava.preprocess(conv, rendered, tok, legacy=flag, legacy_fix=legacy_fix, max_length=max_length)
    truth_cut = truth[:len(fw.input_ids)]
    v = SampleVerdict(index, sid, conv.name, "exact", len(truth_ids), len(fw.input_ids), sum(truth),
                      sum(fw.supervised), fw.warning)
    data: dict[str, Any] = {"cur_len": fw.cur_len, "total_len": fw.total_len, "round_lens": fw.round_lens}
    if fw.warning is not None:
        cause = _llava_cause(conv, rendered, tok, legacy=flag, legacy_fix=legacy_fix, max_length=max_length)
        if conv.name not in fixes:
            others = {name: llava.render(c, msgs, has_image=has_image) for name, c in llava.TEMPLATES.items()}
            fixes[conv.name] = _llava_fix(conv, others, tok, legacy=legacy, legacy_fix=legacy_fix,
                                          max_length=max_length, cause=cause)
        off = (fw.cur_len or 0) - fw.total_len
        v.verdict = "masked"
        v.findings.append(TemplateFinding(
            "VT001", f"{conv.name}: \"tokenization mismatch: {fw.cur_len} vs. {fw.total_len}. (ignored)\" "
            f"(arithmetic off by {off:+d} tokens over {len(fw.round_lens)} rounds): all {sum(truth)} assistant "
            f"tokens masked; cause: {cause}", fixes[conv.name], index, sid, {**data, "off_by": off}))
        return v
    if not any(fw.supervised):
        v.verdict = "masked"
        if any(truth) and not any(truth_cut):
            first = truth.index(True)
            v.findings.append(TemplateFinding(
                "VT003", f"{conv.name}: every label is masked: truncation at model_max_length={max_length} keeps "
                f"{len(fw.input_ids)} of {len(truth_ids)} tokens and the first answer token is token {first}",
                f"raise --model_max_length to at least {first + 1} ({len(truth_ids)} keeps the whole sample), or "
                "drop the sample", index, sid, data))
        else:
            v.findings.append(TemplateFinding("VT003", f"{conv.name}: every label is masked", "drop the sample",
                                              index, sid, data))
        return v
    diffs = _turn_diffs(truth_cut, fw.supervised)
    if diffs:
        diff = diffs[0]
        cause, fix = "the label arithmetic disagrees with the whole-conversation tokenization", \
            "use the conversation template made for this tokenizer"
        if conv.style == "single":
            cause, fix = _single_cause(conv, rendered, tok, truth_cut)
        v.verdict = "misaligned"
        v.findings.append(TemplateFinding(
            "VT002", f"{conv.name}: {_describe(diff)} ({sum(fw.supervised)} labels vs {sum(truth_cut)} assistant "
            f"tokens, {len(diffs)} turn{'s' * (len(diffs) != 1)} off); cause: {cause}", fix, index, sid,
            {**data, "turn": diff.turn, "start_off": diff.start, "end_off": diff.end, "turns_off": len(diffs)}))
    return v


def _single_cause(conv: llava.Conv, rendered: llava.Rendered, tok: Tok, truth: list[bool]) -> tuple[str, str]:
    """The ``###`` path has no length check: name what shifts its mask, by re-running it without the BOS."""
    bos = tok.ids("")[:1]
    base = llava.preprocess(conv, rendered, tok, legacy=True)
    without = llava.preprocess(conv, rendered, tok, legacy=True, bos_per_sentence=False)
    wrong = sum(a != b for a, b in zip(base.supervised, truth))
    wrong_without = sum(a != b for a, b in zip(without.supervised, truth))
    header = len(tok.ids(f"{llava._BEGIN_SIGNAL}{conv.roles[1]}: ", add_special_tokens=False))
    what = (f"the generic preprocess path trains the '### {conv.roles[1]}: ' header ({header} tokens) and "
            "keeps the first two tokens of every human sentence")
    if bos and wrong_without < wrong:
        return (f"BOS added per turn: _tokenize_fn counts a BOS for every sentence it tokenizes on its own, so "
                f"the mask drifts one token further per sentence ({wrong} wrong labels, {wrong_without} without "
                f"the extra BOS); and {what}",
                "use a --version with a length check (v1 for Vicuna/Llama tokenizers), or mask by offsets")
    return what, "use a --version with a length check (v1 for Vicuna/Llama tokenizers), or mask by offsets"


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
        full = llamafactory.encode(pieces, tok)
        cut = llamafactory.encode(pieces, tok, cutoff_len=max_length) if max_length is not None else full
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


def check_template(dataset: Iterable[Any], *, tokenizer: str | Path | Tok, template: str | Sequence[str],
                   legacy: bool | None = None, legacy_fix: bool = True, chat_template: str | None = None,
                   max_length: int | None = None, instruction_part: str | None = None,
                   response_part: str | None = None) -> TemplateReport:
    """Check that each framework's label mask covers exactly the assistant tokens of each sample.

    ``template`` is one framework or several: a LLaVA ``--version`` (``llava_v0``, ``v0``, ``v1``,
    ``vicuna_v1``, ``llava_v1``, ``llama_2``, ``llava_llama_2``, ``mistral_instruct``, ``mpt``, ``chatml_direct``,
    ``plain``), ``llamafactory`` (per-turn encoding), ``trl`` (``assistant_only_loss=True``), ``unsloth``
    (``train_on_responses_only``; markers from the chat template unless ``instruction_part`` /
    ``response_part`` are given) or ``chat_template`` (the reference: whole conversation, masked by offsets).
    ``legacy`` overrides what LLaVA reads as ``tokenizer.legacy``; ``max_length`` is where the framework
    truncates (LLaVA's ``model_max_length``, TRL's ``max_length``, LLaMA-Factory's ``cutoff_len``).

    >>> rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    >>> report = check_template(rows, tokenizer="llama2-tokenizer/", template=["v1", "mpt"])  # doctest: +SKIP
    >>> report.masked_away  # doctest: +SKIP
    {'v1': 0, 'mpt': 1}
    """
    tok = tokenizer if isinstance(tokenizer, Tok) else Tok.load(tokenizer)
    names = [template] if isinstance(template, str) else list(dict.fromkeys(template))
    for name in names:
        if name not in FRAMEWORKS:
            raise UsageError(f"unknown template {name!r}; use one of: {', '.join(FRAMEWORKS)}")
    chat = chat_template or tok.chat_template
    if chat is None and any(n in CHAT_ROUTES for n in names):
        raise UsageError("the chat-template frameworks need a chat template (none in the tokenizer folder; pass "
                         "chat_template)")
    rows = [_messages(sample) for sample in dataset]
    report = TemplateReport(names, [])
    training = markers = None
    if TRL in names and chat is not None:
        training = trl.training_template(chat)
        if training.template is None:
            report.notes.append(TemplateFinding(
                "VT005", f"trl: {training.source}: SFTTrainer(assistant_only_loss=True) raises ValueError at init "
                "(\"The chat template is not training-compatible ...\")",
                "add {% generation %}...{% endgeneration %} around each assistant turn (its answer and "
                "end-of-turn marker) in the chat template", None, None, {}))
    if UNSLOTH in names and chat is not None:
        special = tok.special_map()
        probe = [("user", "a"), ("assistant", "b"), ("user", "c")]
        response = response_part if response_part is not None else generation_prompt(chat, probe[:1], special)
        instruction = instruction_part if instruction_part is not None else user_header(chat, special)
        if not response or not instruction:
            raise UsageError("cannot find the chat template's markers; pass instruction_part and response_part")
        markers = (unsloth.marker(instruction, tok), unsloth.marker(response, tok))
    fixes: dict[str, str] = {}
    for name in names:
        for index, (msgs, sid, has_image) in enumerate(rows):
            if name in llava.TEMPLATES:
                report.verdicts.append(_check_llava(llava.TEMPLATES[name], index, sid, msgs, tok, legacy=legacy,
                                                    legacy_fix=legacy_fix, max_length=max_length,
                                                    has_image=has_image, fixes=fixes))
            elif name == TRL and training is not None and training.template is None:
                report.verdicts.append(SampleVerdict(index, sid, name, "refused", 0, 0, 0, 0))
            else:
                assert chat is not None
                report.verdicts.append(_check_chat(name, index, sid, msgs, tok, chat, max_length=max_length,
                                                   training=training, markers=markers))
    return report
