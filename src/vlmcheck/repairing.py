"""``repair()``: turn a dataset that would crash training into one that trains, losing nothing.

>>> report = repair("train.jsonl", model="Qwen/Qwen2-VL-7B-Instruct", max_length=4096,
...                 output="train.fixed.jsonl")  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'kept': 9812, 'changed': 41, 'split': 2, 'held': 0, 'dropped': 3}

Each sample is scanned exactly as ``scan()`` would, then:

- **kept**: no error finding; the row is written unchanged (JSON Lines: the very same bytes).
- **changed** / **split**: the sample is over ``max_length`` with an image span cut (VC201) or all
  supervision cut (VC202). The strategies of ``on_overlong`` are tried in order and the first that
  makes it fit whole wins: ``cap-pixels`` (resize its images to the largest pixel budget that fits;
  changed), ``split`` (cut the conversation at turn boundaries into samples that each fit; split;
  with ``cap-pixels`` also listed, a round too long alone is capped), ``truncate-turns`` (drop
  trailing turns; changed), ``drop``.
- **held**: what would be dropped for a finding ``hold`` selects goes, unchanged, to a review file
  next to the output (``OUT.review.jsonl``, same format), for a person to fix and repair again.
- **dropped**: anything else at error severity (malformed row, missing/corrupt image, placeholder
  mismatch, aspect ratio), or over-long with no strategy that works, with the codes and the reason
  in the manifest.

The manifest (``OUT.manifest.jsonl``, next to the output) has one line per input row, in order. All
files are written to temporary names and renamed at the end: an interrupted run leaves no output.
The module is named ``repairing`` so that ``vlmcheck.repair`` stays the function.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.contract import ReportContract
from vlmcheck.data.compressed import compression, open_binary
from vlmcheck.data.formats import Conversation, RowError, detect_format, to_conversation
from vlmcheck.data.images import ImageProblem, decode_data_url
from vlmcheck.data.readers import MAX_ROW_BYTES, BadRow, dataset_kind, iter_rows
from vlmcheck.data.writers import Sink, open_sink
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.model import ModelSpec
from vlmcheck.options import ScanOptions
from vlmcheck.pipeline import nonempty
from vlmcheck.results import SampleResult
from vlmcheck.scan import Scanner, build_scanner
from vlmcheck.util import hidden_prefix, honour_umask, make_folders, output_target, remove_made

# What can be done with a sample over max_length, in the order tried by default.
ON_OVERLONG = ("cap-pixels", "split", "truncate-turns", "drop")
DEFAULT_ON_OVERLONG = ",".join(ON_OVERLONG)
OUTCOMES = ("kept", "changed", "split", "held", "dropped")
_LENGTH_CODES = frozenset({"VC201", "VC202"})
# What ``hold`` takes besides error codes: the findings a person has to decide, the length ones.
HOLD_GROUPS = {
    "broken": frozenset(c for c, r in F.CATALOGUE.items()
                        if r.severity >= F.Severity.ERROR and c not in {*_LENGTH_CODES, "VC205"}),
    "overlong": frozenset({*_LENGTH_CODES, "VC205"}),
}
HOLD_GROUPS["all"] = HOLD_GROUPS["broken"] | HOLD_GROUPS["overlong"]
_ID_KEYS = ("id", "sample_id", "uid", "idx", "question_id")  # formats.row_id's order
_CHUNK = 64
_SHRINK_STEPS = 60


def parse_on_overlong(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"split,drop"`` / ``["split", "drop"]`` -> ``("split", "drop")``; ``drop`` is always last
    (implied when left out: the output has to scan clean)."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ON_OVERLONG]
    if unknown or not names:
        raise UsageError(f"on_overlong takes a comma-separated list of {', '.join(ON_OVERLONG)}, "
                         f"not {','.join(names) or 'nothing'!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"on_overlong names a strategy twice: {','.join(names)}")
    if "drop" in names and names[-1] != "drop":
        raise UsageError("on_overlong: drop ends the list (nothing after it is ever tried)")
    if names[-1] != "drop":
        names.append("drop")
    return tuple(names)


def parse_hold(value: str | Sequence[str] | None) -> frozenset[str]:
    """``"broken"`` / ``"VC002,VC101"`` / ``["overlong", "VC101"]`` -> the error codes whose rows
    are held for review instead of dropped. Groups: ``broken`` (every error but the length ones),
    ``overlong`` (VC201, VC202, VC205), ``all``. None or empty: hold nothing."""
    if value is None:
        return frozenset()
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    codes: set[str] = set()
    for name in (n for n in names if n):
        if name.lower() in HOLD_GROUPS:
            codes |= HOLD_GROUPS[name.lower()]
        elif name.upper() in HOLD_GROUPS["all"]:
            codes.add(name.upper())
        else:
            rule = F.CATALOGUE.get(name.upper())
            what = f"{name} is a warning (a warning never drops a row)" if rule is not None else f"not {name!r}"
            raise UsageError(f"hold takes a comma-separated list of {', '.join(HOLD_GROUPS)} or error codes "
                             f"(VC001, VC101, ...): {what}")
    return frozenset(codes)


@dataclass
class RepairReport(ReportContract):
    """What ``repair()`` did (or, with ``dry_run``, would do).

    ``ok``, ``worst``, ``exit_code`` (:mod:`vlmcheck.contract`) judge what the output lost. A finished repair
    is a success: its output trains (``repair && train`` works by default). A sample dropped or held counts as a
    warning (the data lost it: ``--fail-on warning`` stops a pipeline on any loss), a sample changed or split
    as info (it trains, but not as written), a sample kept whole not at all.
    """

    dataset: str
    output: str | None
    manifest: str | None
    dry_run: bool
    review: str | None = None  # where held rows went (None: nothing is held)
    counts: dict[str, int] = field(default_factory=dict)
    # changed samples per strategy (cap-pixels, truncate-turns)
    changed_by: dict[str, int] = field(default_factory=dict)
    # dropped samples per error code (a sample with two codes counts under both)
    dropped_codes: dict[str, int] = field(default_factory=dict)
    # held samples per error code, likewise
    held_codes: dict[str, int] = field(default_factory=dict)
    # rows the split samples became, and how many of them had their images capped
    split_rows: int = 0
    split_capped: int = 0
    rows_written: int = 0
    images_written: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def severities(self) -> list[F.Severity]:
        levels: list[F.Severity] = []
        if self.counts.get("dropped") or self.counts.get("held") or self.dropped_codes or self.held_codes:
            levels.append(F.Severity.WARNING)
        if self.counts.get("changed") or self.counts.get("split"):
            levels.append(F.Severity.INFO)
        return levels

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "output": self.output, "manifest": self.manifest, "review": self.review,
            "dry_run": self.dry_run, "total": self.total, "counts": self.counts, "changed_by": self.changed_by,
            "split_rows": self.split_rows, "split_capped": self.split_capped, "held_codes": self.held_codes,
            "dropped_codes": self.dropped_codes, "rows_written": self.rows_written,
            "images_written": self.images_written,
        }

    def render(self) -> str:
        head = "would repair" if self.dry_run else "repaired"
        lines = [f"{head} {self.dataset}: {self.total:,} samples"]
        for outcome in OUTCOMES:
            line = f"  {outcome:<8} {self.counts.get(outcome, 0):>8,}"
            if outcome == "changed" and self.changed_by:
                line += "  (" + ", ".join(f"{s} {n:,}" for s, n in self.changed_by.items()) + ")"
            if outcome == "split" and self.counts.get("split"):
                capped = f", {self.split_capped:,} with capped images" if self.split_capped else ""
                line += f"  (into {self.split_rows:,} samples{capped})"
            lines.append(line)
        if self.held_codes:
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(self.held_codes.items()))
            lines.append(f"  held for: {codes}")
        if self.dropped_codes:
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(self.dropped_codes.items()))
            lines.append(f"  dropped for: {codes}")
        if self.dry_run:
            lines.append("dry run: nothing written")
        else:
            lines.append(f"output:   {self.output} ({self.rows_written:,} samples)")
            lines.append(f"manifest: {self.manifest}")
            if self.review is not None:
                lines.append(f"review:   {self.review} ({self.counts.get('held', 0):,} samples held; not training data)")
            if self.images_written:
                lines.append(f"images:   {self.images_written:,} resized copies")
        return "\n".join(lines) + "\n"


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``output`` goes: ``fixed.jsonl`` -> ``fixed.manifest.jsonl``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.manifest.jsonl")


def review_path(output: str | os.PathLike[str]) -> Path:
    """Where held rows of ``output`` go, in its format: ``fixed.jsonl`` -> ``fixed.review.jsonl``,
    a ``save_to_disk`` folder ``fixed`` -> ``fixed.review``."""
    out = Path(output)
    if out.suffix.lower() in (".json", ".jsonl", ".ndjson", ".parquet", ".pq"):
        return out.with_name(f"{out.stem}.review{out.suffix}")
    return out.with_name(f"{out.name}.review")


def remainder_path(output: str | os.PathLike[str]) -> Path:
    """Where ``hold`` keeps the unreadable rest of a JSON input, verbatim: ``fixed.json`` ->
    ``fixed.remainder``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.remainder")


def images_dir(output: str | os.PathLike[str]) -> Path:
    """Where resized images of ``output`` go: ``fixed.jsonl`` -> ``fixed.images/``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.images")


# -- the shape of a row: its turns, rounds and image slots ------------------------------------------
def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(isinstance(p, dict) and str(p.get("text") or "").strip() for p in content or [])


@dataclass
class _Turns:
    """A row's turn list, cut into rounds (a user turn up to the next user turn that follows a reply).

    ``prefix`` leading system turns go into every piece; every round holds a supervised turn.
    """

    key: str  # "conversations" / "messages"
    prefix: int
    rounds: list[tuple[int, int]]  # [start, end) turn indices
    images: list[list[int]]  # per turn: the indices (placeholder order) of the images it references
    image_key: str | None  # the row field listing the images; None when they are inline in the turns


def _turns(row: dict[str, Any], fmt: str, conv: Conversation) -> _Turns | str:
    if fmt in ("llava", "sharegpt"):
        key = "conversations" if "conversations" in row else "messages"
    else:
        key = "messages" if "messages" in row else "conversations"
    turns = row[key]
    offset = len(conv.messages) - len(turns)  # a 'system' field becomes a leading message
    messages = conv.messages[offset:]
    roles = [m.get("role") for m in messages]
    images: list[list[int]] = []
    seen = 0
    for m in messages:
        content = m.get("content")
        n = sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image") if isinstance(content, list) else 0
        images.append(list(range(seen, seen + n)))
        seen += n
    prefix = 0
    while prefix < len(roles) and roles[prefix] == "system":
        prefix += 1
    if any(images[i] for i in range(prefix)):
        return "the system turn holds an image (it would repeat in every piece)"
    starts = [prefix] + [i for i in range(prefix + 1, len(roles)) if roles[i] == "user" and roles[i - 1] != "user"]
    supervised = [r == "assistant" and _has_text(m.get("content")) for r, m in zip(roles, messages)]
    rounds: list[tuple[int, int]] = []
    for start, end in zip(starts, [*starts[1:], len(roles)]):
        if start >= end:
            continue
        if rounds and not any(supervised[start:end]):
            rounds[-1] = (rounds[-1][0], end)  # a turn with nothing to learn stays with the reply before it
        else:
            rounds.append((start, end))
    if len(rounds) > 1 and not any(supervised[rounds[0][0]:rounds[0][1]]):
        rounds[:2] = [(rounds[0][0], rounds[1][1])]
    image_key = next((k for k in ("images", "image") if k in row), None)
    value = row.get(image_key) if image_key else None
    if not value:
        image_key = None  # inline images travel with their turns
    elif isinstance(value, list) and any(v is None for v in value):
        return f"the {image_key!r} list has null entries"
    return _Turns(key=key, prefix=prefix, rounds=rounds, images=images, image_key=image_key)


def _piece(row: dict[str, Any], t: _Turns, turn_ids: list[int]) -> tuple[dict[str, Any], list[int]]:
    """The row restricted to ``turn_ids`` and the images they reference, all other fields as they were."""
    new = dict(row)  # same keys, same order
    new[t.key] = [row[t.key][i] for i in turn_ids]
    image_ids = [k for i in turn_ids for k in t.images[i]]
    if t.image_key is not None:
        value = row[t.image_key]
        if isinstance(value, list):
            new[t.image_key] = [value[k] for k in image_ids]
        elif not image_ids:
            del new[t.image_key]  # one image, now in another piece (LLaVA reads a text-only row without 'image')
    return new, image_ids


def _id_key(row: dict[str, Any]) -> str | None:
    """The field ``row_id`` reads the id from, when it holds a string (only those get a ``#k`` suffix)."""
    for key in _ID_KEYS:
        if key in row and isinstance(row[key], (str, int)) and not isinstance(row[key], bool):
            return key if isinstance(row[key], str) else None
    return None


# -- where a row keeps its images ------------------------------------------------------------------
@dataclass
class _Slot:
    """One image of a row, in placeholder order: ``holder[key]`` is its value (a path, data URL or
    struct); ``part`` is the content part it sits in when inline (where qwen-vl-utils reads
    ``max_pixels``)."""

    holder: Any
    key: Any
    part: dict[str, Any] | None = None


def _slots(row: dict[str, Any], conv: Conversation) -> list[_Slot] | str:
    image_key = next((k for k in ("images", "image") if k in row), None)
    value = row.get(image_key) if image_key else None
    slots: list[_Slot] = []
    if value:
        if isinstance(value, list):
            slots = [_Slot(value, i) for i, v in enumerate(value) if v is not None]
        else:
            slots = [_Slot(row, image_key)]
    else:  # inline, as formats._typed reads them
        for turn in row.get("messages", row.get("conversations")) or []:
            content = turn.get("content") if isinstance(turn, dict) else None
            for part in content if isinstance(content, list) else []:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind == "image_url" or (kind is None and "image_url" in part):
                    slots.append(_Slot(part, "image_url", part))
                elif kind == "image" or (kind is None and "image" in part):
                    source = next((k for k in ("image", "url", "path") if part.get(k)), None)
                    if source is not None:
                        slots.append(_Slot(part, source, part))
    if len(slots) != len(conv.images):
        return f"found {len(slots)} image entries for {len(conv.images)} images"
    return slots


def _replaced(value: Any, *, path: str | None, png: bytes | None, name: str) -> Any:
    """``value`` (an image entry as ``formats.image_ref`` reads it) pointing at the resized image:
    ``path`` for a file, ``png`` for embedded bytes or a data URL. Other fields stay as they were."""
    if isinstance(value, str):
        if png is not None:
            return "data:image/png;base64," + base64.b64encode(png).decode()
        return path
    new = dict(value)
    if new.get("bytes"):
        new["bytes"] = png
        if isinstance(new.get("path"), str):
            new["path"] = name  # the bytes are a PNG of another size now
        return new
    for key in ("path", "url", "image", "image_url"):
        if isinstance(new.get(key), (str, dict)) and new.get(key):
            new[key] = _replaced(new[key], path=path, png=png, name=name)
            return new
    raise ValueError(f"no image in {value!r}")


def _is_cap(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def row_pixel_cap(row: Any, key: str) -> int | None:
    """The per-sample pixel cap a row records under ``key`` (on the row, or on its inline image
    parts; the smallest when several), or None."""
    if not isinstance(row, dict):
        return None
    caps = [row[key]] if _is_cap(row.get(key)) else []
    for name in ("messages", "conversations"):
        turns = row.get(name)
        for turn in turns if isinstance(turns, list) else []:
            content = turn.get("content") if isinstance(turn, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and _is_cap(part.get(key)):
                    caps.append(part[key])
    return min(caps) if caps else None


class _Analyzer:
    """``Scanner.count_chunk``, each row at the pixel cap it records under ``key`` (when given), as its
    framework would read it: the cap replaces max_pixels, applied the way ``resize`` says."""

    def __init__(self, scanner: Scanner, key: str | None) -> None:
        self.base = scanner
        self.key = key
        self._capped: dict[int, Scanner] = {}

    def scanner_for(self, row: Any) -> Scanner:
        cap = row_pixel_cap(row, self.key) if self.key else None
        if cap is None:
            return self.base
        scanner = self._capped.get(cap)
        if scanner is None:
            spec = copy.copy(self.base.spec)  # shares the loaded tokenizer
            settings = spec.family.with_max_pixels(spec.settings, cap)
            if settings is None:
                return self.base
            spec.settings = settings
            scanner = self._capped[cap] = Scanner(spec, self.base.options, self.base.root, url_root=self.base.media.url_root)
        return scanner

    def analyze(self, items: list[tuple[int, Any]]) -> list[tuple[SampleResult, Scanner]]:
        scanners = [self.scanner_for(row) for _, row in items]
        out: list[tuple[SampleResult, Scanner] | None] = [None] * len(items)
        for scanner in {id(s): s for s in scanners}.values():
            at = [k for k, s in enumerate(scanners) if s is scanner]
            for k, result in zip(at, scanner.count_chunk([items[k] for k in at])):
                out[k] = (result, scanner)
        return [o for o in out if o is not None]


@dataclass
class _Plan:
    """The fix for one over-long sample: its new row(s), what the manifest says, image files to write."""

    outcome: str  # changed / split
    strategy: str
    rows: list[dict[str, Any]]
    change: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)  # files to write: {"source", "name", "resized"}
    pieces: list[dict[str, Any]] = field(default_factory=list)  # split: {"id", "turns", "images"[, "cap"]}


class _Repairer:
    def __init__(self, analyzer: _Analyzer, *, max_length: int, on_overlong: tuple[str, ...],
                 out_images: Path | None, out_root: Path, columnar: bool) -> None:
        self.analyzer = analyzer
        self.max_length = max_length
        self.on_overlong = on_overlong
        self.out_images = out_images
        self.out_root = out_root
        self.columnar = columnar  # Parquet / Arrow: a field added to one row is a column for all

    def decide(self, row: Any, result: SampleResult, scanner: Scanner) -> tuple[str, str | None, _Plan | None]:
        """(outcome, reason, plan) for one scanned row; the outcome is kept, changed, split or
        dropped (``repair`` turns a drop into held when ``hold`` selects one of its codes)."""
        errors = [f for f in result.findings if f.severity >= F.Severity.ERROR]
        if not errors:
            return "kept", None, None
        reason = "; ".join(f"{f.code} {f.message}" for f in errors)
        codes = {f.code for f in errors}
        if not codes <= _LENGTH_CODES:
            return "dropped", reason, None
        failures: list[str] = []
        for strategy in self.on_overlong:
            if strategy == "drop":
                break
            plan = self._try(strategy, row, result, scanner)
            if isinstance(plan, _Plan):
                tried = f" (not {'; not '.join(failures)})" if failures else ""
                return plan.outcome, f"{strategy}{tried}: {reason}", plan
            failures.append(f"{strategy}: {plan}")
        tried = "; ".join(failures) if failures else f"--on-overlong {','.join(self.on_overlong)}"
        return "dropped", f"{reason} ({tried})", None

    def _conversation(self, row: Any, scanner: Scanner) -> tuple[str, Conversation] | str:
        fmt = scanner.options.format or detect_format(row)
        if fmt is None or not isinstance(row, dict):
            return "the row has no conversation"
        try:
            conv = to_conversation(row, fmt)
        except RowError as e:
            return str(e)
        if conv.videos:  # splitting or capping would have to carry the videos column and per-video keys
            return "samples with videos are not repaired yet"
        return fmt, conv

    def _try(self, strategy: str, row: Any, result: SampleResult, scanner: Scanner) -> _Plan | str:
        if strategy == "cap-pixels":
            return self._cap_row(row, result, scanner)
        parsed = self._conversation(row, scanner)
        if isinstance(parsed, str):
            return parsed
        fmt, conv = parsed
        turns = _turns(row, fmt, conv)
        if isinstance(turns, str):
            return turns
        if strategy == "split":
            return self._split(row, result, turns)
        return self._truncate(row, result, turns)

    def _cap_row(self, row: Any, result: SampleResult, scanner: Scanner) -> _Plan | str:
        parsed = self._conversation(row, scanner)
        if isinstance(parsed, str):
            return parsed
        fmt, conv = parsed
        if self.analyzer.key is not None:
            return self._cap_key(row, result, conv, fmt)
        return self._cap(row, result, conv, scanner)

    def _scan(self, row: dict[str, Any]) -> tuple[SampleResult, Scanner]:
        ((r, scanner),) = self.analyzer.analyze([(0, row)])
        return r, scanner

    def _fits(self, row: dict[str, Any]) -> SampleResult | None:
        """The scan of ``row`` when it fits ``max_length`` whole with no error, else None."""
        r, _ = self._scan(row)
        if r.tokens is None or r.tokens > self.max_length or any(f.severity >= F.Severity.ERROR for f in r.findings):
            return None
        return r

    # -- split / truncate-turns -------------------------------------------------------------------

    def _split(self, row: dict[str, Any], result: SampleResult, t: _Turns) -> _Plan | str:
        if len(t.rounds) < 2:
            return "one user/assistant round: no turn boundary to split at"
        prefix = list(range(t.prefix))

        def turns_of(rounds: list[tuple[int, int]]) -> list[int]:
            return prefix + [i for s, e in rounds for i in range(s, e)]

        # Rounds are packed greedily at full resolution. A round too long alone is a piece of its
        # own with its images capped, when cap-pixels is also allowed: the smallest change that
        # keeps it (the other pieces keep their images as they were).
        cap = "cap-pixels" in self.on_overlong
        groups: list[list[tuple[int, int]]] = []
        alone: set[int] = set()  # groups whose one round does not fit uncapped
        current: list[tuple[int, int]] = []
        for k, r in enumerate(t.rounds):
            if current and self._fits(_piece(row, t, turns_of([*current, r]))[0]):
                current.append(r)
                continue
            if current:
                groups.append(current)
            current = [r]
            if not self._fits(_piece(row, t, turns_of(current))[0]):
                where = f"round {k + 1} of {len(t.rounds)} (turns {r[0]}-{r[1] - 1})"
                if not cap:
                    return f"{where} does not fit alone"
                alone.add(len(groups))
                groups.append(current)
                current = []
        if current:
            groups.append(current)
        if len(groups) < 2:
            return "the rounds fit together: nothing to split"
        id_key = _id_key(row)
        rows, pieces, files = [], [], []
        for k, group in enumerate(groups, 1):
            turn_ids = turns_of(group)
            new, image_ids = _piece(row, t, turn_ids)
            piece_id = f"{result.id}#{k}"
            if id_key is not None:
                new[id_key] = piece_id
            piece: dict[str, Any] = {"id": piece_id, "turns": turn_ids, "images": image_ids}
            if k - 1 in alone:
                (first, last) = group[0]
                where = f"round {t.rounds.index(group[0]) + 1} of {len(t.rounds)} (turns {first}-{last - 1})"
                scanned, scanner = self._scan(new)
                if {f.code for f in scanned.findings if f.severity >= F.Severity.ERROR} - _LENGTH_CODES:
                    return f"{where} does not fit alone"
                capped = self._cap_row(new, scanned, scanner)
                if isinstance(capped, str):
                    return f"{where} does not fit alone, nor capped ({capped})"
                new = capped.rows[0]
                change = {key: v for key, v in capped.change.items() if key != "strategy"}
                for entry in change.get("images", []):  # the piece's image k is the row's image image_ids[k]
                    entry["image"] = image_ids[entry["image"]]
                piece["cap"] = change
                files += capped.images
            rows.append(new)
            pieces.append(piece)
        change = {"strategy": "split", "rounds": len(t.rounds)}
        if alone:
            change["then"] = "cap-pixels"  # on the pieces with a "cap" entry
        return _Plan(outcome="split", strategy="split", rows=rows, pieces=pieces, change=change, images=files)

    def _truncate(self, row: dict[str, Any], result: SampleResult, t: _Turns) -> _Plan | str:
        prefix = list(range(t.prefix))
        n = len(t.rounds)

        def candidate(k: int) -> tuple[dict[str, Any], list[int], list[int], SampleResult | None]:
            turn_ids = prefix + [i for s, e in t.rounds[:k] for i in range(s, e)]
            new, image_ids = _piece(row, t, turn_ids)
            return new, turn_ids, image_ids, self._fits(new)

        if n < 2:
            return "one user/assistant round: no turn to drop"
        if candidate(1)[3] is None:
            return "the first user/assistant round alone does not fit"
        lo, hi = 1, n  # fits with lo rounds, not with hi (the whole sample)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if candidate(mid)[3] is not None:
                lo = mid
            else:
                hi = mid
        new, turn_ids, image_ids, fit = candidate(lo)
        assert fit is not None
        total_turns = len(row[t.key])
        removed = [i for i in range(total_turns) if i not in set(turn_ids)]
        removed_images = [k for i in removed for k in t.images[i]]
        change = {"strategy": "truncate-turns", "kept_turns": len(turn_ids), "removed_turns": removed,
                  "removed_images": removed_images, "tokens": fit.tokens}
        return _Plan(outcome="changed", strategy="truncate-turns", rows=[new], change=change)

    # -- cap-pixels ---------------------------------------------------------------------------------
    def _cap_key(self, row: dict[str, Any], result: SampleResult, conv: Conversation, fmt: str) -> _Plan | str:
        """Record the budget under ``key`` (the framework resizes at load time) instead of resizing."""
        key = self.analyzer.key
        assert key is not None
        if result.fits_max_pixels is None:
            return "no pixel budget makes the sample fit (its text alone is too long)"
        cap = result.fits_max_pixels
        new = copy.deepcopy(row)
        slots = _slots(new, conv)
        if isinstance(slots, str):
            return slots
        # qwen-vl-utils reads max_pixels on the image's own content part; a struct field in Parquet /
        # Arrow would be a null on every other image, which it would read as max_pixels=None
        on_parts = fmt == "messages" and not self.columnar and bool(slots) and all(s.part for s in slots)
        if on_parts:
            for slot in slots:
                assert slot.part is not None
                slot.part[key] = cap
        if not on_parts or _is_cap(new.get(key)):
            new[key] = cap
        for turn in new.get("messages", new.get("conversations")) or []:  # an older cap on a part
            content = turn.get("content") if isinstance(turn, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and _is_cap(part.get(key)):
                    part[key] = cap
        if self._fits(new) is None:
            return f"max_pixels {cap:,} under {key!r} does not make it fit"
        change = {"strategy": "cap-pixels", "max_pixels": cap, "key": key,
                  "placement": "image parts" if on_parts else "row"}
        return _Plan(outcome="changed", strategy="cap-pixels", rows=[new], change=change)

    def _cap(self, row: dict[str, Any], result: SampleResult, conv: Conversation, scanner: Scanner) -> _Plan | str:
        if result.fits_max_pixels is None or result.text_only_tokens is None:
            return "no pixel budget makes the sample fit (its text alone is too long)"
        new = copy.deepcopy(row)  # same keys, same order; only image entries change
        slots = _slots(new, conv)
        if isinstance(slots, str):
            return slots
        family, settings = scanner.family, scanner.spec.settings
        exif = scanner.options.exif_rotated
        sizes = []
        for ref in conv.images:
            try:
                sizes.append(scanner.media.probe(ref).size(exif_transpose=exif))
            except ImageProblem as p:
                return p.message
        cap = result.fits_max_pixels
        for _ in range(_SHRINK_STEPS):
            targets = [_shrink(w, h, cap, settings) for w, h in sizes]
            tokens = result.text_only_tokens + sum(family.image_tokens(w, h, settings) for w, h in targets)
            bad = any(i.code in F.CATALOGUE and F.CATALOGUE[i.code].severity >= F.Severity.ERROR
                      for w, h in targets for i in family.check_image(w, h, settings))
            if tokens <= self.max_length and not bad:
                break
            cap = int(cap * 0.95)
        else:
            return "no resize found that fits"
        files, listed = [], []
        for k, (slot, ref, (w, h), (tw, th)) in enumerate(zip(slots, conv.images, sizes, targets)):
            if (tw, th) == (w, h):
                continue
            value = slot.holder[slot.key]
            entry: dict[str, Any] = {"image": k, "from": ref.describe(), "size": [w, h], "resized": [tw, th]}
            if ref.kind == "path":
                source = Path(str(ref.value)).expanduser()
                source = source if source.is_absolute() else scanner.root / source
                digest = hashlib.sha256(f"{os.path.realpath(source)}:{exif}".encode()).hexdigest()[:12]
                name = f"{Path(str(ref.value)).stem}-{tw}x{th}-{digest}.png"
                to = os.path.relpath((self.out_images or Path(".")) / name, self.out_root).replace(os.sep, "/")
                slot.holder[slot.key] = _replaced(value, path=to, png=None, name=name)
                files.append({"source": source, "name": name, "resized": [tw, th]})
                entry["to"] = to
            else:  # embedded bytes or a data URL: the resized PNG goes in their place
                data = ref.value if ref.kind == "bytes" else decode_data_url(str(ref.value))
                stem = value.get("path") if isinstance(value, dict) else None
                name = (f"{Path(stem).stem if isinstance(stem, str) and stem else 'image'}-{tw}x{th}-"
                        f"{hashlib.sha256(data).hexdigest()[:12]}.png")
                slot.holder[slot.key] = _replaced(value, path=None, png=_png(data, (tw, th), exif_transpose=exif),
                                                  name=name)
                entry.update(to=name, embedded=True)
            listed.append(entry)
        change = {"strategy": "cap-pixels", "max_pixels": cap, "images": listed}
        return _Plan(outcome="changed", strategy="cap-pixels", rows=[new], change=change, images=files)


def _shrink(width: int, height: int, cap: int, settings: Any) -> tuple[int, int]:
    """The largest size within ``cap`` pixels, keeping the aspect ratio, on the family's grid."""
    if width * height <= cap:
        return width, height
    factor = int(getattr(settings, "factor", 1) or 1)
    scale = math.sqrt(cap / (width * height))
    w = max(factor, math.floor(width * scale / factor) * factor)
    h = max(factor, math.floor(height * scale / factor) * factor)
    return w, h


def _png(source: Path | bytes, size: tuple[int, int], *, exif_transpose: bool) -> bytes:
    """``source`` resized to ``size`` (EXIF rotation applied first when the scan applies it), as PNG."""
    from PIL import Image, ImageOps

    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
        img.load()
        out = ImageOps.exif_transpose(img) if exif_transpose else img
        if out.mode not in ("RGB", "RGBA", "L", "LA"):
            out = out.convert("RGB")
        out = out.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
    return buf.getvalue()


# The ScanOptions fields repair takes: what decides how a sample is read and counted (``framework``: that framework's
# truncation, resize route and defaults, as for scan). The others do not apply to writing one fixed copy (split,
# workers, limit, exact, trust_remote_code, shard, resume, engine, ray_address), and scan's ``output`` (its records)
# is not repair's ``output`` (the fixed dataset).
SCAN_FIELDS = ("max_length", "truncation", "format", "image_root", "max_pixels", "min_pixels", "resize",
               "exif_transpose", "allow_outside_root", "confine", "chat_template", "processor_options", "framework")


def _options(options: ScanOptions | None, kwargs: Mapping[str, Any]) -> ScanOptions:
    """The one :class:`ScanOptions` of a repair, from ``options=`` or from its keywords (checked there once: the
    output is scanned with the same options)."""
    unknown = sorted(set(kwargs) - set(SCAN_FIELDS))
    if unknown:
        raise TypeError(f"repair() got an unexpected keyword argument {unknown[0]!r}")
    if options is None:
        if "max_length" not in kwargs:
            raise TypeError("repair() missing 1 required keyword-only argument: 'max_length'")
        return ScanOptions(**kwargs)
    if kwargs:
        raise TypeError(f"repair() takes options= or keyword options, not both ({', '.join(sorted(kwargs))})")
    plain = ScanOptions()
    ignored = [f.name for f in dataclasses.fields(ScanOptions)
               if f.name not in SCAN_FIELDS and getattr(options, f.name) != getattr(plain, f.name)]
    if ignored:
        raise UsageError(f"repair does not take {', '.join(ignored)} (it takes {', '.join(SCAN_FIELDS)})")
    if options.max_length is None:
        raise UsageError("repair needs max_length: the length every sample has to fit")
    return options


def repair(
    dataset: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | ModelSpec,
    options: ScanOptions | None = None,
    output: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    on_overlong: str | Sequence[str] = DEFAULT_ON_OVERLONG,
    pixel_cap_key: str | None = None,
    hold: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> RepairReport:
    """Write a copy of ``dataset`` in which no sample crashes or trains on nothing at ``max_length``.

    Every input row is accounted for in the manifest (``OUT.manifest.jsonl``): kept, changed (how),
    split (into which new samples), held for review or dropped (why). The input is only read. ``max_length``
    (required) and the media keywords (:data:`SCAN_FIELDS`) are fields of :class:`~vlmcheck.options.ScanOptions`,
    built once from them (or pass one as ``options=``); they mean what they mean for :func:`vlmcheck.scan`: scan
    the output with the same options to check it.

    Args:
        dataset: a .json (array) / .jsonl / .parquet file or a ``save_to_disk`` folder (one split).
        output: the repaired dataset, same format as the input; required unless ``dry_run``.
        dry_run: decide everything, write nothing.
        on_overlong: what to do with a sample whose image span or supervision is cut at
            ``max_length``: strategies tried in order, the first that makes the sample fit whole
            wins (a comma-separated string or a list): ``cap-pixels`` (resize its images to the
            largest pixel budget that fits), ``split`` (into several samples at turn boundaries),
            ``truncate-turns`` (drop trailing turns), ``drop``. Default: all four, in that order.
            With both ``split`` and ``cap-pixels``, a round too long alone becomes a piece with its
            images capped.
        pixel_cap_key: with ``cap-pixels``, record the budget in the sample under this key
            (``max_pixels``: on each inline image part of a ``messages`` row, where qwen-vl-utils
            reads it; else on the row) instead of writing resized images. Rows that already
            record one are counted at it.
        hold: rows that would be dropped for one of these error findings are written unchanged to
            ``OUT.review.jsonl`` (``review_path(output)``, the input's format) for a person to fix,
            instead of being dropped: error codes (``"VC002,VC101"``) or the groups ``broken``
            (every error but the length ones: malformed rows, placeholder mismatches, missing or
            corrupt media, ...), ``overlong`` (VC201/VC202/VC205 that no strategy fixed), ``all``.
            The review file is written (possibly empty) whenever ``hold`` is given.
    """
    options = _options(options, kwargs)
    max_length = options.max_length
    assert max_length is not None  # _options requires it
    image_root = options.image_root
    strategies = parse_on_overlong(on_overlong)
    held_for = parse_hold(hold)
    if not isinstance(dataset, (str, os.PathLike)):  # (sources: hook) objects, lists of files
        raise UsageError(f"repair writes a fixed copy in the dataset's own file format, so it takes one dataset file "
                         f"or folder, not a {type(dataset).__name__}; for an object in memory, keep its good rows "
                         "with vlmcheck.scan(obj, ...).keep(obj)")
    path = Path(dataset)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    kind = dataset_kind(path)
    if kind == "arrow" and (path / "dataset_dict.json").is_file():
        raise UsageError(f"{path} is a DatasetDict; repair one split's folder (e.g. {path / 'train'})")
    out: Path | None = None
    if output is not None:
        out = Path(output)
        if out.exists() and out.resolve() == path.resolve():
            raise UsageError("the output must not be the input: repair never modifies its input")
        if held_for and review_path(out).exists() and review_path(out).resolve() == path.resolve():
            raise UsageError(f"the review file would be the input: name the output of a repaired review file "
                             f"otherwise (e.g. {path.with_name('fixed-' + path.name)})")
        if manifest_path(out).resolve() == path.resolve():
            raise UsageError(f"the manifest would be the input ({manifest_path(out).name}): name the output "
                             f"otherwise (e.g. {path.with_name('fixed-' + path.name)})")
        _check_output_name(out, kind)
        # replaced whole under these names: a symlink or a device there is refused, never replaced
        for name in (manifest_path(out), remainder_path(out), *((out,) if kind != "arrow" else ()),
                     *((review_path(out),) if held_for and kind != "arrow" else ())):
            if str(name) == "-" or output_target(name) is None:
                raise UsageError(f"repair writes a dataset and its manifest to files: {name} is not one")
        if kind == "arrow":
            _check_output_folder(out, path)
            if held_for:  # the review folder is replaced the same way
                _check_output_folder(review_path(out), path)
    elif not dry_run:
        raise UsageError("pass an output path (or dry_run=True)")
    scanner = build_scanner(path, model=model, options=options)
    root = scanner.root
    # The output is scanned with the same --image-root, or by default its own folder.
    # (a save_to_disk folder is its own image root, as for scan)
    out_root = root if image_root is not None else (
        (out if kind == "arrow" else out.parent) if out is not None else root)
    final_images = images_dir(out) if out is not None else None
    if pixel_cap_key is not None and (not pixel_cap_key or scanner.family.with_max_pixels(
            scanner.spec.settings, 1) is None):
        raise UsageError(f"pixel_cap_key: {scanner.spec.model_type} has no pixel budget to cap"
                         if pixel_cap_key else "pixel_cap_key must be a non-empty field name")
    analyzer = _Analyzer(scanner, pixel_cap_key)
    repairer = _Repairer(analyzer, max_length=max_length, on_overlong=strategies, out_images=final_images,
                         out_root=out_root, columnar=kind in ("parquet", "arrow"))
    writing = not dry_run and out is not None
    report = RepairReport(dataset=str(path), output=str(out) if writing else None,
                          manifest=str(manifest_path(out)) if writing and out else None, dry_run=dry_run,
                          review=str(review_path(out)) if writing and out and held_for else None)
    writer = None
    made = make_folders(out.parent) if writing and out is not None else []  # gone again if nothing lands in them
    if writing and out is not None:
        review = open_sink(review_path(out), source=path, kind=kind) if held_for else None
        writer = _Writer(out, open_sink(out, source=path, kind=kind, int_column=pixel_cap_key), review)
    counts: Counter[str] = Counter()
    changed_by: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    held: Counter[str] = Counter()
    written = in_review = 0
    spans: list[tuple[int, int]] | None = [] if kind in ("json", "jsonl") else None
    source = _Bytes(path) if spans is not None else None
    try:
        for chunk in _chunks(nonempty(iter_rows(path, spans=spans), path), spans, source, lines=kind == "jsonl"):
            results = analyzer.analyze([(i, row) for i, row, _, _ in chunk])
            for (index, row, raw, span), (result, row_scanner) in zip(chunk, results):
                if isinstance(row, BadRow) and row.terminal:
                    # the input cannot be read past here: repairing the rows before it would publish a
                    # partial dataset as if it were the whole one
                    if "VC001" not in held_for:
                        where = f" at bytes {span[0]:,}-{span[1]:,}" if span else f" from row {index:,}"
                        raise DatasetError(
                            f"{path} is unreadable{where} ({row.reason}); repair wrote nothing. Fix the file, "
                            "or pass --hold broken to write the rows before it and keep the unreadable rest "
                            f"verbatim in {remainder_path(out) if out is not None else 'OUT.remainder'}")
                    counts["held"] += 1
                    held.update({"VC001"})
                    record: dict[str, Any] = {"index": index, "id": result.id, "outcome": "held", "output_index": None,
                              "codes": ["VC001"], "reason": row.reason, "remainder": True}
                    if span is not None:
                        record["bytes"] = list(span)
                        if writer is not None and out is not None:
                            writer.hold_remainder(path, span, remainder_path(out))
                            record["remainder_file"] = remainder_path(out).name
                    else:
                        record["remainder_rows_from"] = index  # a damaged Parquet / Arrow file: rows from here
                    if writer is not None:
                        writer.add_record(record)
                    continue
                try:
                    with _deep_rows():
                        outcome, reason, plan = repairer.decide(row, result, row_scanner)
                except Exception as e:  # a row no strategy can handle (nested too deeply to copy): dropped, said
                    what = "RecursionError" if isinstance(e, RecursionError) else f"{type(e).__name__}: {e}"
                    outcome, reason, plan = "dropped", f"repair cannot process this row ({what})", None
                error_codes = {f.code for f in result.findings if f.severity >= F.Severity.ERROR}
                if outcome == "dropped" and error_codes & held_for:
                    if isinstance(row, BadRow) and raw is None:
                        reason = f"{reason} (not held: nothing readable to write)"
                    else:
                        outcome = "held"
                counts[outcome] += 1
                record = {"index": index, "id": result.id, "outcome": outcome,
                          "output_index": None, "codes": [f.code for f in result.findings]}
                if span is not None:
                    record["bytes"] = list(span)
                if reason is not None:
                    record["reason"] = reason
                if outcome == "dropped":
                    dropped.update(error_codes)
                elif outcome == "held":
                    held.update(error_codes)
                    record["review_index"] = in_review
                    in_review += 1
                    if writer is not None:
                        writer.hold_row(row, raw)
                rows: list[tuple[Any, bytes | None]] = []
                if outcome == "kept":
                    rows = [(row, raw)]
                elif plan is not None:
                    rows = [(r, None) for r in plan.rows]
                    if plan.outcome == "changed":
                        changed_by[plan.strategy] += 1
                        record["change"] = plan.change
                    else:
                        record["change"] = plan.change
                        record["split_into"] = plan.pieces
                        report.split_rows += len(plan.rows)
                        report.split_capped += sum("cap" in p for p in plan.pieces)
                indices = list(range(written, written + len(rows)))
                written += len(rows)
                if outcome in ("kept", "changed"):
                    record["output_index"] = indices[0]
                elif outcome == "split":
                    for piece, i in zip(record["split_into"], indices):
                        piece["output_index"] = i
                if writer is not None:
                    for r, raw_bytes in rows:
                        writer.add_row(r, raw_bytes)
                    if plan is not None:
                        for im in plan.images:
                            writer.add_image(im["source"], im["name"], tuple(im["resized"]),
                                             exif_transpose=scanner.options.exif_rotated)
                    writer.add_record(record)
        if writer is not None:
            report.images_written = writer.images
            writer.commit()
    finally:
        if source is not None:
            source.close()
        if writer is not None:
            writer.discard()
        remove_made(made)  # only folders left empty: an interrupted or failed repair
    report.counts = {k: counts.get(k, 0) for k in OUTCOMES}
    report.changed_by = {s: changed_by[s] for s in ON_OVERLONG if changed_by.get(s)}
    report.dropped_codes = dict(sorted(dropped.items()))
    report.held_codes = dict(sorted(held.items()))
    report.rows_written = written
    return report


_SUFFIXES = {"json": (".json", ".jsonl", ".ndjson"), "jsonl": (".json", ".jsonl", ".ndjson"),
             "parquet": (".parquet", ".pq")}


class _deep_rows:
    """Room for ``copy.deepcopy`` of a row nested as deep as the JSON parser accepts (~1,000 levels, three
    Python frames a level); only around the repair of one row, and put back after."""

    def __enter__(self) -> None:
        import sys

        self.limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(self.limit, 8000))

    def __exit__(self, *exc: Any) -> None:
        import sys

        sys.setrecursionlimit(self.limit)


def _check_output_name(out: Path, kind: str) -> None:
    """The output is written in the input's format: its name must say so (scan reads it by name)."""
    if kind == "arrow":
        if out.is_file() or out.suffix.lower() in (".json", ".jsonl", ".ndjson", ".parquet", ".pq"):
            raise UsageError(f"the input is a save_to_disk folder, so the output is one too: {out} is a file name")
    elif out.suffix.lower() not in _SUFFIXES[kind] or out.is_dir():
        raise UsageError(f"the output is written as {'Parquet' if kind == 'parquet' else 'JSON'} like the input: "
                         f"name it {' / '.join('*' + x for x in _SUFFIXES[kind])}, not {out.name}")


def _check_output_folder(out: Path, source: Path) -> None:
    """A ``save_to_disk`` output replaces the folder of that name, old contents and all: never one that holds
    the input, nor one that is not a ``save_to_disk`` dataset; and never a folder inside the input."""
    target, source = out.resolve(), source.resolve()
    if source.is_relative_to(target):
        raise UsageError(f"the output {out} holds the input {source}: replacing it would delete the input")
    if target.is_relative_to(source):
        raise UsageError(f"the output {out} is inside the input: repair never modifies its input")
    if out.is_dir() and any(out.iterdir()) and not (out / "state.json").is_file():
        raise UsageError(f"{out} exists and is not a save_to_disk dataset: repair replaces the output folder "
                         "with all it holds, so name a new folder (or an earlier repair output)")


def _chunks(rows: Iterator[Any], spans: list[tuple[int, int]] | None, source: Any, *, lines: bool
            ) -> Iterator[list[tuple[int, Any, bytes | None, tuple[int, int] | None]]]:
    """Rows in chunks, each with its raw bytes (JSON Lines: the line, copied verbatim when kept or held; a
    JSON array: the element, for one that cannot be parsed) and its byte range (JSON, JSON Lines)."""
    chunk: list[tuple[int, Any, bytes | None, tuple[int, int] | None]] = []
    for index, row in enumerate(rows):
        span = spans.pop(0) if spans else None
        raw = None
        if span is not None and source is not None and (lines or (isinstance(row, BadRow) and not row.terminal)):
            raw = source.read(span)
        if raw is not None and span is not None:
            if lines:
                raw = raw.removeprefix(b"\xef\xbb\xbf") if span[0] == 0 else raw
                raw = raw if raw.endswith(b"\n") else raw + b"\n"
        chunk.append((index, row, raw, span))
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Bytes:
    """The bytes of a dataset file by the ranges its reader reports: offsets in the text as read, so in the
    decompressed stream of a compressed file (read forward, as the ranges come in order), never the file's own
    bytes. A range over ``MAX_ROW_BYTES`` is not read (None): the reader passed that row over unread."""

    def __init__(self, path: Path) -> None:
        self.stream = open_binary(path)
        self.seekable = compression(path) is None
        self.pos = 0

    def read(self, span: tuple[int, int]) -> bytes | None:
        start, end = span
        if end - start > MAX_ROW_BYTES:
            return None
        if self.seekable or start < self.pos:
            self.stream.seek(start)
        else:
            while self.pos < start:  # a decompressed stream: forward, in bounded pieces
                got = self.stream.read(min(start - self.pos, 1 << 20))
                if not got:
                    return None
                self.pos += len(got)
        data = self.stream.read(end - start)
        self.pos = start + len(data)
        return data

    def close(self) -> None:
        self.stream.close()


class _Writer:
    """The output, its manifest, its resized images and its review file (``review``: held rows),
    under temporary names until ``commit()``."""

    def __init__(self, out: Path, sink: Sink, review: Sink | None = None) -> None:
        self.sink = sink
        self.review = review
        self.manifest = manifest_path(out)
        self.images_dir = images_dir(out)
        self.images = 0
        self.remainder: tuple[Path, Path] | None = None
        fd, tmp = tempfile.mkstemp(prefix=hidden_prefix(self.manifest), suffix=".tmp", dir=out.parent)
        honour_umask(fd)
        self.log, self.log_tmp = os.fdopen(fd, "wb"), Path(tmp)
        self.image_tmp = Path(tempfile.mkdtemp(prefix=hidden_prefix(self.images_dir), suffix=".tmp",
                                                   dir=out.parent))
        honour_umask(self.image_tmp, folder=True)
        self.done = False

    def add_row(self, row: Any, raw: bytes | None) -> None:
        self.sink.add(row, raw)

    def hold_row(self, row: Any, raw: bytes | None) -> None:
        assert self.review is not None
        self.review.add(row, raw)  # JSON Lines: the very same bytes, even of a line that is not JSON

    def hold_remainder(self, source: Path, span: tuple[int, int], final: Path) -> None:
        """The unreadable rest of the input, byte for byte, under a temporary name until ``commit()``."""
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        honour_umask(fd)
        self.remainder = (Path(tmp), final)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as fp:
            fp.seek(span[0])
            left = span[1] - span[0]
            while left > 0:
                block = fp.read(min(left, 1 << 20))
                if not block:
                    break
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())

    def add_image(self, source: Path, name: str, size: tuple[int, ...], *, exif_transpose: bool) -> None:
        target = self.image_tmp / name
        if not target.exists():
            target.write_bytes(_png(source, (size[0], size[1]), exif_transpose=exif_transpose))
            self.images += 1

    def add_record(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")

    def commit(self) -> None:
        self.sink.close()
        self.log.flush()
        os.fsync(self.log.fileno())
        self.log.close()
        names = sorted(p.name for p in self.image_tmp.iterdir())
        if names:
            self.images_dir.mkdir(exist_ok=True)
            for name in names:
                os.replace(self.image_tmp / name, self.images_dir / name)
        if self.review is not None:
            self.review.close()
        if self.remainder is not None:
            os.replace(*self.remainder)
        # the data last: when it exists, the manifest, images and review file it refers to are complete
        os.replace(self.log_tmp, self.manifest)
        if self.review is not None:
            self.review.publish()
        self.sink.publish()
        self.done = True

    def discard(self) -> None:
        if not self.log.closed:
            self.log.close()
        if not self.done:
            self.log_tmp.unlink(missing_ok=True)
        self.sink.discard()
        if self.review is not None:
            self.review.discard()
        if self.remainder is not None and not self.done:
            self.remainder[0].unlink(missing_ok=True)
        shutil.rmtree(self.image_tmp, ignore_errors=True)


__all__ = [
    "DEFAULT_ON_OVERLONG", "HOLD_GROUPS", "ON_OVERLONG", "OUTCOMES", "RepairReport", "images_dir", "manifest_path",
    "parse_hold", "parse_on_overlong", "remainder_path", "repair", "review_path", "row_pixel_cap",
]


def _signature() -> inspect.Signature:
    """``repair``'s signature as ``help()`` and editors show it: the data, the model, ``max_length``, the rest of
    :data:`SCAN_FIELDS`, then repair's own keywords."""
    own = inspect.signature(repair).parameters
    fields = {f.name: f for f in dataclasses.fields(ScanOptions)}
    head = [own["dataset"], own["model"],
            inspect.Parameter("max_length", inspect.Parameter.KEYWORD_ONLY, annotation="int")]
    given = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=fields[name].default,
                               annotation=fields[name].type) for name in SCAN_FIELDS[1:]]
    tail = [p for name, p in own.items() if name not in ("dataset", "model", "kwargs")]
    return inspect.Signature([*head, *given, *tail], return_annotation="RepairReport")


repair.__signature__ = _signature()  # type: ignore[attr-defined]
