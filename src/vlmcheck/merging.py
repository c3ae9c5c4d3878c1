"""``merge()``: the report of a whole dataset from the summaries of its shards.

A summary keeps exact counts (findings per code, samples, images) and histograms (tokens per sample, the largest
``max_pixels`` that keeps each sample whole), never only percentiles, so the merged length distribution and the
``recommended_max_length`` / ``recommended_max_pixels`` are those of one scan over all the rows.

>>> report = merge(["shard0.json", "shard1.json"])  # doctest: +SKIP
>>> report.summary["samples"]  # doctest: +SKIP
1000000

The same step restores an interrupted scan from its snapshot (:mod:`vlmcheck.records`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vlmcheck.catalogue import rule
from vlmcheck.data.files import FileProblem, read_text
from vlmcheck.data.nesting import parse
from vlmcheck.errors import UsageError
from vlmcheck.findings import CATALOGUE, Finding
from vlmcheck.report import CutAt, Report, ReportBuilder, read_histograms

# what every merged summary must agree on: the same model, settings and cut
_SAME = ("model", "model_type", "max_length", "truncation", "settings", "command")
_DERIVED = ("tokens", "recommended_max_length", "recommended_max_pixels", "severity", "seconds",
            "samples_per_second", "histograms", "shard")


def absorb(builder: ReportBuilder, report: Mapping[str, Any]) -> None:
    """Add a report's exact counts (``report.to_dict()``, as ``--json`` writes it) to ``builder``."""
    s = report["summary"]
    hist = s.get("histograms")
    if not isinstance(hist, dict):
        raise UsageError(f"the summary of {s.get('dataset')!r} has no histograms (written by an older vlmcheck?): "
                         "rescan it to merge it")
    builder.scanned += s["samples"]
    builder.with_findings += s["samples_with_findings"]
    builder.unknown_length += s["samples_without_length"]
    builder.counts.update(s["counts"])
    builder.images += s["images"]
    builder.image_tokens += s["image_tokens"]["total"]
    builder.max_image_tokens = max(builder.max_image_tokens, s["image_tokens"]["max"])
    lengths, budgets = read_histograms(hist)
    builder.lengths.update(lengths)
    builder.budgets.update(budgets)
    framework = s.get("framework") or {}
    builder.verdicts.update(framework.get("verdicts") or {})
    for f in report.get("findings", []):
        builder.findings.append(Finding(code=f["code"], message=f["message"], fix=f["fix"], index=f["index"],
                                        id=f["id"], data=f.get("data") or {}))


def _read(item: str | os.PathLike[str] | Mapping[str, Any] | Report) -> dict[str, Any]:
    if isinstance(item, Report):
        return item.to_dict()
    if isinstance(item, Mapping):
        return dict(item)
    try:
        value = parse(json.loads, read_text(Path(item)), where=str(item))
    except FileProblem as e:
        if e.kind == "missing":
            raise UsageError(f"summary not found: {item}") from None
        raise UsageError(f"cannot read the summary: {e.message}") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{item} is not a summary JSON file (scan --json): {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get("summary"), dict):
        raise UsageError(f"{item} is not a summary JSON file (scan --json writes one)")
    return value


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_summary(report: Mapping[str, Any], name: str) -> None:
    """Raise UsageError unless ``report`` holds what :func:`absorb` and :func:`merge` add up, as ``to_dict()``
    writes it: counts that are whole numbers >= 0, finding codes vlmcheck knows, histograms by whole numbers,
    a shard ``I/N``. A summary edited by hand or cut short is refused, never merged into a wrong total."""
    def bad(what: str) -> UsageError:
        return UsageError(f"{name} is not a summary vlmcheck wrote: {what}; rescan that dataset (or shard)")

    s = report.get("summary")
    if not isinstance(s, Mapping):
        raise bad("no summary object")
    for key in ("samples", "samples_with_findings", "samples_without_length", "images"):
        if not _count(s.get(key)):
            raise bad(f"summary.{key} is {s.get(key)!r}, not a whole number >= 0")
    if s["samples_with_findings"] > s["samples"] or s["samples_without_length"] > s["samples"]:
        raise bad(f"more samples with findings or without a length than the {s['samples']} samples")
    image_tokens = s.get("image_tokens")
    if not isinstance(image_tokens, Mapping) or not all(_count(image_tokens.get(k)) for k in ("total", "max")):
        raise bad(f"summary.image_tokens is {image_tokens!r:.80}, not {{'total': n, 'max': n}}")
    counts = s.get("counts")
    if not isinstance(counts, Mapping):
        raise bad("summary.counts is not a mapping of codes to counts")
    for code, n in counts.items():
        if code not in CATALOGUE or not _count(n):
            raise bad(f"summary.counts has {code!r}: {n!r} (a scan code and a whole number >= 0 each)")
    hist = s.get("histograms")
    if isinstance(hist, Mapping):  # absorb says what a summary without any means
        for part, words in (("tokens", ()), ("fits_max_pixels", ("never", "any"))):
            counted = hist.get(part)
            if not isinstance(counted, Mapping):
                raise bad(f"summary.histograms.{part} is missing")
            for key, n in counted.items():
                if not (key in words or (isinstance(key, str) and key.isdigit())) or not _count(n):
                    raise bad(f"summary.histograms.{part} has {key!r}: {n!r}")
    seconds = s.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not math.isfinite(seconds) or seconds < 0):
        raise bad(f"summary.seconds is {seconds!r}")
    for key in ("dataset", "model", "model_type"):
        if not isinstance(s.get(key), str):
            raise bad(f"summary.{key} is {s.get(key)!r}, not a string")
    if not (s.get("max_length", 0) is None or (_count(s.get("max_length")) and s["max_length"] > 0)):
        raise bad(f"summary.max_length is {s.get('max_length', '(missing)')!r}, not a whole number > 0 or null")
    if not isinstance(s.get("truncation", 0), (str, type(None))):
        raise bad(f"summary.truncation is {s.get('truncation', '(missing)')!r}")
    shard = s.get("shard")
    if shard is not None:
        i, sep, n = shard.partition("/") if isinstance(shard, str) else ("", "", "")
        if not (sep and i.isdigit() and n.isdigit() and int(i) < int(n)):
            raise bad(f"summary.shard is {shard!r}, not I/N with 0 <= I < N")
    framework = s.get("framework")
    if framework is not None:
        verdicts = framework.get("verdicts") if isinstance(framework, Mapping) else None
        if verdicts is not None and not (isinstance(verdicts, Mapping) and all(_count(v) for v in verdicts.values())):
            raise bad("summary.framework.verdicts is not a mapping of verdicts to counts")
    findings = report.get("findings", [])
    if not isinstance(findings, list):
        raise bad("findings is not a list")
    for f in findings:
        try:
            ok = (isinstance(f, Mapping) and isinstance(f["message"], str) and isinstance(f["fix"], str)
                  and (f["index"] is None or _count(f["index"])) and "id" in f
                  and isinstance(f.get("data") or {}, Mapping) and isinstance(rule(f["code"]).code, str))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise bad(f"a finding is {str(f)[:80]}")


def merge(summaries: Sequence[str | os.PathLike[str] | Mapping[str, Any] | Report], *,
          keep: int = 10_000) -> Report:
    """One report from the summaries of several scans (``scan --json`` files, their dicts, or reports).

    Shards of one dataset (``scan --shard I/N``) must all be there, once each; scans of different datasets
    merge too, when they agree on the model, its settings and the cut. The merged report's ``seconds`` adds up
    the scans' own.
    """
    reports = [_read(s) for s in summaries]
    if not reports:
        raise UsageError("merge needs at least one summary")
    for k, (item, report) in enumerate(zip(summaries, reports), 1):
        if not isinstance(item, Report):
            check_summary(report, str(item) if isinstance(item, (str, os.PathLike)) else f"summary {k}")
    first = reports[0]["summary"]
    for other in reports[1:]:
        s = other["summary"]
        for key in _SAME:
            if s.get(key) != first.get(key):
                raise UsageError(f"cannot merge a scan of {s.get('dataset')!r} with one of {first.get('dataset')!r}: "
                                 f"their {key} differ ({s.get(key)!r} and {first.get(key)!r})")
    shards = [r["summary"].get("shard") for r in reports]
    if any(shards):
        if not all(shards):
            raise UsageError("some summaries are shards (scan --shard) and some are not: merge the shards of one scan")
        counts = {s.split("/")[1] for s in shards if s}
        if len(counts) > 1 or len({r["summary"]["dataset"] for r in reports}) > 1:
            raise UsageError("the shards come from different scans (their datasets or shard counts differ)")
        n = int(counts.pop())
        have = sorted(int(s.split("/")[0]) for s in shards if s)
        if have != list(range(n)):
            missing = sorted(set(range(n)) - set(have))
            doubled = sorted({i for i in have if have.count(i) > 1})
            raise UsageError(f"merging {n} shards needs each of 0..{n - 1} once: "
                             + (f"missing {', '.join(f'{i}/{n}' for i in missing)}" if missing else "")
                             + ("; " if missing and doubled else "")
                             + (f"given twice {', '.join(f'{i}/{n}' for i in doubled)}" if doubled else ""))
    datasets = list(dict.fromkeys(r["summary"]["dataset"] for r in reports))
    settings = first.get("settings")
    builder = ReportBuilder(
        dataset=", ".join(datasets), model=first["model"], model_type=first["model_type"],
        options=CutAt(max_length=first["max_length"], truncation=first["truncation"]),
        settings=SimpleNamespace(**settings) if isinstance(settings, dict) else settings, keep=keep)
    for report in reports:
        absorb(builder, report)
    # the whole scan held its first `keep` findings in row order; each shard holds its own first ones
    builder.findings.sort(key=lambda f: f.index if f.index is not None else -1)
    del builder.findings[keep:]
    merged = builder.build(seconds=sum(float(r["summary"].get("seconds") or 0) for r in reports))
    summary = merged.summary
    summary["settings"] = settings
    for key, value in first.items():  # what a command added (framework, command, ...) and all share
        if key not in summary and key not in _DERIVED:
            summary[key] = value
    if "framework" in summary:
        summary["framework"] = {**summary["framework"], "verdicts": dict(sorted(builder.verdicts.items()))}
    return merged
