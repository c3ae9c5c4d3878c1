"""The result of a scan: per-code counts, the length distribution, recommendations, findings.

Memory stays bounded on any dataset size: lengths, tokens per image, images per sample and pixel
budgets are kept as histograms of distinct values (:class:`Distributions`), only the first ``keep``
findings are held (``--output`` has every sample) and a few samples per code are kept for previews.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vlmcheck.contract import ReportContract
from vlmcheck.findings import CATALOGUE, Finding, Severity
from vlmcheck.preview import PREVIEWS_PER_CODE

if TYPE_CHECKING:
    from vlmcheck.results import SampleResult

KEEP_LEVELS = (("100%", 1.0), ("99.9%", 0.999), ("99%", 0.99))
_NEVER = -1  # a sample no pixel budget makes fit
NO_IMAGE = 2**62  # the pixel budget of a sample without images that fits: any budget keeps it


def _quantile_up(hist: Counter[int], q: float) -> int | None:
    """Smallest value v with at least ceil(q * n) samples <= v."""
    n = sum(hist.values())
    if not n:
        return None
    need = math.ceil(q * n - 1e-9)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= need:
            return value
    return max(hist)


def _quantile_down(hist: Counter[int], q: float) -> int | None:
    """Largest value v with at least ceil(q * n) samples >= v."""
    n = sum(hist.values())
    if not n:
        return None
    need = math.ceil(q * n - 1e-9)
    seen = 0
    for value in sorted(hist, reverse=True):
        seen += hist[value]
        if seen >= need:
            return value
    return min(hist)


@dataclass
class Distributions:
    """Exact histograms behind the report's charts, as ``{value: samples}``; a 1M-row scan keeps a few
    thousand distinct values, never one entry per sample."""

    lengths: Counter[int] = field(default_factory=Counter)  # tokens per sample (samples with a length)
    image_tokens: Counter[int] = field(default_factory=Counter)  # tokens per counted image
    images_per_sample: Counter[int] = field(default_factory=Counter)
    # largest max_pixels under which a sample fits max_length whole (NO_IMAGE: no image, fits anyway)
    budgets: Counter[int] = field(default_factory=Counter)
    unfixable: int = 0  # samples too long at any pixel budget
    # a few samples per finding code (see :mod:`vlmcheck.preview`), in scan order
    previews: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Report(ReportContract):
    """What :func:`vlmcheck.scan` returns; ``ok``, ``worst``, ``exit_code``: :mod:`vlmcheck.contract`.

    >>> report = Report(summary={"counts": {}})
    >>> report.ok
    True
    """

    summary: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    # what the charts of :meth:`to_html` draw; not part of ``to_dict`` (the JSON stays a summary)
    distributions: Distributions | None = field(default=None, repr=False, compare=False)
    # the per-sample records (vlmcheck.records.RecordStore): the --output file or a spool
    store: Any = field(default=None, repr=False, compare=False)

    @property
    def counts(self) -> dict[str, int]:
        """Findings per code, e.g. ``{"VC201": 3}``."""
        return dict(self.summary["counts"])

    def severities(self) -> list[Severity]:
        return [CATALOGUE[c].severity for c in self.summary["counts"]]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "findings": [f.to_dict() for f in self.findings]}

    def render(self, *, show: int = 20) -> str:
        return render_text(self, show=show)

    def to_html(self) -> str:
        """One self-contained HTML page (charts as inline SVG, thumbnails embedded; opens offline); docs/report.md.
        Needs matplotlib (``pip install 'vlmcheck[html]'``).

        >>> Path("report.html").write_text(report.to_html(), encoding="utf-8")  # doctest: +SKIP
        """
        from vlmcheck.report_html import render_html

        return render_html(self)

    # -- per-sample results (vlmcheck.records) ------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """Each sample's record, in row order: the same dicts as the ``--output`` JSON Lines."""
        from vlmcheck.records import records

        return records(self)

    def to_pandas(self) -> Any:
        """The records as a pandas DataFrame, one row per sample."""
        from vlmcheck.records import to_pandas

        return to_pandas(self)

    def indices(self, *, fail_on: str | Severity = Severity.ERROR) -> list[int]:
        """Row indices of the samples with no finding at or above ``fail_on``."""
        from vlmcheck.records import indices

        return indices(self, fail_on=fail_on)

    def keep(self, data: Any, *, fail_on: str | Severity = Severity.ERROR) -> Any:
        """The good rows of ``data``, the object that was scanned, as the same type (``Dataset.select``,
        ``DataFrame.iloc``, ``Table.take``, a list).

        >>> train = report.keep(ds)  # doctest: +SKIP
        """
        from vlmcheck.records import keep

        return keep(self, data, fail_on=fail_on)


class Cut(Protocol):
    """What a report reads of a run's options (a :class:`~vlmcheck.options.ScanOptions`, or a :class:`CutAt`):
    where its samples are cut."""

    @property
    def max_length(self) -> int | None: ...

    @property
    def truncation(self) -> str: ...


@dataclass(frozen=True)
class CutAt:
    """A cut told by a framework's run (``vlmcheck check``: its own name for its truncation) or by the
    summaries a report is merged from."""

    max_length: int | None
    truncation: str


class ReportBuilder:
    def __init__(self, *, dataset: str, model: str, model_type: str, options: Cut, settings: Any,
                 keep: int = 10_000) -> None:
        self.dataset = dataset
        self.model = model
        self.model_type = model_type
        self.options = options
        self.settings = settings
        self.keep = keep
        self.scanned = 0
        self.with_findings = 0
        self.counts: Counter[str] = Counter()
        self.lengths: Counter[int] = Counter()
        self.budgets: Counter[int] = Counter()
        self.images = 0
        self.image_tokens = 0
        self.image_tokens_hist: Counter[int] = Counter()
        self.max_image_tokens = 0
        self.unknown_length = 0
        self.findings: list[Finding] = []
        self.verdicts: Counter[str] = Counter()
        self.image_counts: Counter[int] = Counter()
        self.previews: dict[str, list[dict[str, Any]]] = {}
        self.store: Any = None  # set by the record writer

    def add(self, result: SampleResult) -> None:
        self.scanned += 1
        self.image_counts[len(result.image_tokens)] += 1
        if result.findings:
            self._preview(result)
        if result.framework is not None:
            self.verdicts[str(result.framework.get("verdict"))] += 1
        for f in result.findings:
            f.index, f.id = result.index, result.id
            self.counts[f.code] += 1
            if len(self.findings) < self.keep:
                self.findings.append(f)
        if result.findings:
            self.with_findings += 1
        known = [n for n in result.image_tokens if n is not None]
        self.image_tokens_hist.update(known)
        self.images += len(result.image_tokens)
        self.image_tokens += sum(known)
        self.max_image_tokens = max([self.max_image_tokens, *known])
        if result.tokens is None:
            self.unknown_length += 1
            return
        self.lengths[result.tokens] += 1
        max_length = self.options.max_length
        if max_length is not None:
            if result.fits_max_pixels is not None:
                self.budgets[result.fits_max_pixels] += 1
            elif not any(result.image_tokens):
                # no image: a pixel budget cannot change whether it fits
                self.budgets[NO_IMAGE if result.tokens <= max_length else _NEVER] += 1
            else:
                self.budgets[_NEVER] += 1

    def add_run_finding(self, finding: Finding) -> None:
        """A finding of the whole run (``index`` None), judged from all the samples' verdicts."""
        finding.index = finding.id = None
        self.counts[finding.code] += 1
        self.findings.insert(0, finding)

    def _preview(self, result: SampleResult) -> None:
        """Keep the first few samples of each finding code; a scan's own preview (thumbnails, token layout)
        when it made one, else what the result says."""
        codes = [c for c in dict.fromkeys(f.code for f in result.findings)
                 if len(self.previews.setdefault(c, [])) < PREVIEWS_PER_CODE]
        if not codes:
            return
        preview = dict(result.preview or {})
        preview.update(index=result.index, id=result.id, tokens=result.tokens,
                       supervised_tokens=result.supervised_tokens,
                       findings=[{"code": f.code, "message": f.message, "fix": f.fix} for f in result.findings])
        preview.setdefault("images", [{"k": k, "tokens": n} for k, n in enumerate(result.image_tokens, 1)])
        if result.framework is not None:
            preview["framework"] = {k: v for k, v in result.framework.items() if not isinstance(v, (list, dict))}
        for code in codes:
            self.previews[code].append(preview)

    def build(self, *, seconds: float) -> Report:
        lengths = self.lengths
        n = sum(lengths.values())
        stats: dict[str, Any] = {}
        if n:
            stats = {
                "min": min(lengths), "p50": _quantile_up(lengths, 0.5), "p90": _quantile_up(lengths, 0.9),
                "p99": _quantile_up(lengths, 0.99), "max": max(lengths),
                "mean": round(sum(v * c for v, c in lengths.items()) / n, 1),
            }
        keep_length = {label: _quantile_up(lengths, q) for label, q in KEEP_LEVELS}
        keep_pixels: dict[str, Any] | None = None
        budgets = Counter(self.budgets)  # build() may run again (snapshots for resume)
        never = budgets.pop(_NEVER, 0)
        if self.options.max_length is not None and budgets:
            # over the samples a pixel cap can make fit; the others are counted apart
            keep_pixels = {"unfixable_samples": never}
            for label, q in KEEP_LEVELS:
                value = _quantile_down(budgets, q)
                keep_pixels[label] = None if value is None else min(value, current_pixel_cap(self.settings))
        severity = Counter(str(CATALOGUE[c].severity) for c in self.counts for _ in range(self.counts[c]))
        summary = {
            "dataset": self.dataset,
            "model": self.model,
            "model_type": self.model_type,
            "samples": self.scanned,
            "samples_with_findings": self.with_findings,
            "samples_without_length": self.unknown_length,
            "counts": dict(sorted(self.counts.items())),
            "severity": dict(severity),
            "max_length": self.options.max_length,
            "truncation": self.options.truncation,
            "settings": _settings_dict(self.settings),
            "images": self.images,
            "image_tokens": {"total": self.image_tokens, "max": self.max_image_tokens},
            "tokens": stats,
            "recommended_max_length": keep_length,
            "recommended_max_pixels": keep_pixels,
            "seconds": round(seconds, 3),
            "samples_per_second": round(self.scanned / seconds, 1) if seconds > 0 else None,
            # exact counts, not percentiles: summaries of shards merge into the whole's (vlmcheck.merging)
            "histograms": histograms(self.lengths, self.budgets),
        }
        distributions = Distributions(
            lengths=Counter(lengths), image_tokens=Counter(self.image_tokens_hist),
            images_per_sample=Counter(self.image_counts), budgets=budgets, unfixable=never,
            previews={code: list(p) for code, p in self.previews.items()},
        )
        return Report(summary=summary, findings=list(self.findings), distributions=distributions,
                      store=self.store)


def histograms(lengths: Counter[int], budgets: Counter[int]) -> dict[str, dict[str, int]]:
    """Tokens per sample and the largest max_pixels that keeps each sample whole, as exact counts by value
    (``never``: no budget makes it fit; ``any``: it has no image and fits)."""
    names = {_NEVER: "never", NO_IMAGE: "any"}
    return {"tokens": {str(k): lengths[k] for k in sorted(lengths)},
            "fits_max_pixels": {names.get(k, str(k)): budgets[k] for k in sorted(budgets)}}


def read_histograms(hist: dict[str, dict[str, int]]) -> tuple[Counter[int], Counter[int]]:
    """The counters :func:`histograms` wrote: (tokens per sample, fitting max_pixels)."""
    values = {"never": _NEVER, "any": NO_IMAGE}
    return (Counter({int(k): int(v) for k, v in hist["tokens"].items()}),
            Counter({values[k] if k in values else int(k): int(v) for k, v in hist["fits_max_pixels"].items()}))


def current_pixel_cap(settings: Any) -> int:
    """The pixel cap in force: a settings object's, or a settings dict's (``summary["settings"]``)."""
    if isinstance(settings, dict):
        return int(settings.get("pre_max_pixels") or settings.get("max_pixels") or NO_IMAGE)
    return int(getattr(settings, "pre_max_pixels", None) or getattr(settings, "max_pixels", None) or NO_IMAGE)


def _settings_dict(settings: Any) -> dict[str, Any] | str:
    if is_dataclass(settings) and not isinstance(settings, type):
        return asdict(settings)
    return repr(settings)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-" if value is None else str(value)


HISTOGRAM_MIN_SAMPLES = 10  # fewer samples than this: the quantiles say it all


def text_histogram(lengths: Counter[int], *, max_length: int | None, key: str = "max_length", bins: int = 8,
                   width: int = 30) -> list[str]:
    """Tokens per sample as a few text bars, the bin holding ``max_length`` marked; nothing under
    :data:`HISTOGRAM_MIN_SAMPLES` samples.

    >>> print("\\n".join(text_histogram(Counter({100: 6, 180: 3, 400: 1}), max_length=300, bins=3, width=6)))
      100 - 200   ######  9
      201 - 301           0  <- max_length 300
      302 - 400   #       1  over
    """
    n = sum(lengths.values())
    if n < HISTOGRAM_MIN_SAMPLES:
        return []
    low, high = min(lengths), max(lengths)
    step = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for value, count in lengths.items():
        counts[min((value - low) // step, bins - 1)] += count
    while counts and counts[-1] == 0:
        counts.pop()
    edges = [(low + i * step, min(low + (i + 1) * step - 1, high)) for i in range(len(counts))]
    wa = max(len(f"{a:,}") for a, _ in edges)
    wb = max(len(f"{b:,}") for _, b in edges)
    most = max(counts)
    lines = []
    for (a, b), count in zip(edges, counts):
        bar = "#" * (math.ceil(width * count / most) if count else 0)
        line = f"  {a:>{wa},} - {b:>{wb},}   {bar:<{width}}  {count:,}"
        if max_length is not None and a <= max_length <= b and max_length < high:
            line += f"  <- {key} {max_length:,}"
        elif max_length is not None and a > max_length:
            line += "  over"
        lines.append(line)
    return lines


def render_text(report: Report, *, show: int = 20) -> str:
    s = report.summary
    lines = []
    limit = f"max_length={_n(s['max_length'])} ({s['truncation']} truncation)" if s["max_length"] else "no max_length"
    framework = s.get("framework")
    length_key = framework["length_key"] if framework else "max_length"
    pixels_key = framework["pixels_key"] if framework else "max_pixels"
    if framework:
        stage = f"stage {framework['stage']}, " if framework.get("stage") not in (None, "sft") else ""
        lines.append(f"vlmcheck check: {framework['config']}: {framework['name']} ({framework['versions']}), "
                     f"{stage}template {framework['template']}, {_n(s['samples'])} "
                     f"sample{'s' if s['samples'] != 1 else ''} of {s['dataset']}, "
                     f"{s['model_type']} at {length_key}={_n(s['max_length'])}")
        # the framework's own names for its pixel settings (LLaMA-Factory's image_max_pixels, ms-swift's MAX_PIXELS)
        max_key = framework.get("max_pixels_key", pixels_key)
        min_key = framework.get("min_pixels_key", max_key.replace("max", "min").replace("MAX", "MIN"))
        if "images" in framework:  # a framework that sizes images without a pixel budget says how (LLaVA)
            lines.append(f"  images: {framework['images']}")
        else:
            lines.append(f"  images: {max_key} {_n(framework['image_max_pixels'])}, {min_key} "
                         f"{_n(framework['image_min_pixels'])}, then the processor; media from "
                         f"{framework['media_dir']}")
        verdicts = framework.get("verdicts") or {}
        lines.append("  what the run does: " + ", ".join(f"{_n(v)} {k}" for k, v in verdicts.items()))
    else:
        lines.append(f"vlmcheck scan: {s['dataset']}: {_n(s['samples'])} samples, {s['model_type']} at {limit}")
    settings = s["settings"]
    if isinstance(settings, dict):
        shown = ", ".join(f"{k} {_n(v)}" for k, v in settings.items()
                          if v is not None and k != "resize" and not isinstance(v, dict))  # video: in the JSON
        lines.append(f"  processor: {shown}; resize by {settings.get('resize', 'processor')}")
    lines.append("")
    if s["counts"]:
        lines.append("Findings")
        for code, count in s["counts"].items():
            rule = CATALOGUE[code]
            lines.append(f"  {code}  {str(rule.severity):<7}  {rule.name:<22} {count:>7,}  {rule.title}")
        if show:
            lines.append("")
            lines.append(f"First {min(show, len(report.findings))} of {sum(s['counts'].values()):,} findings")
        ordered = sorted(report.findings, key=lambda f: (-f.severity, f.index if f.index is not None else -1))
        for f in ordered[:show]:
            where = "the run" if f.index is None else (
                f"sample {f.index}" + (f" (id {f.id!r})" if f.id is not None and f.id != str(f.index) else ""))
            lines.append(f"  {f.code} {where}: {f.message}")
            lines.append(f"        fix: {f.fix}")
        lines.append("")
    else:
        lines.append("No findings.")
        lines.append("")
    tokens = s["tokens"]
    if tokens:
        lines.append(
            f"Tokens per sample: min {_n(tokens['min'])}, median {_n(tokens['p50'])}, p90 {_n(tokens['p90'])}, "
            f"p99 {_n(tokens['p99'])}, max {_n(tokens['max'])}"
        )
        if report.distributions is not None:
            lines += text_histogram(report.distributions.lengths, max_length=s["max_length"], key=length_key)
        keep = s["recommended_max_length"]
        lines.append(f"{length_key} that keeps samples whole: " + ", ".join(f"{k} -> {_n(v)}" for k, v in keep.items()))
    pixels = s.get("recommended_max_pixels")
    if pixels:
        levels = ", ".join(f"{label} -> {_n(pixels[label])}" for label, _ in KEEP_LEVELS)
        line = f"{pixels_key} that keeps samples whole at {length_key}={_n(s['max_length'])}: {levels}"
        if pixels["unfixable_samples"]:
            line += (f" (of the samples it can fix; {pixels['unfixable_samples']:,} are too long at any "
                     f"{pixels_key})")
        lines.append(line)
    if s["samples_without_length"]:
        lines.append(f"{s['samples_without_length']:,} sample(s) have no length: a row or image could not be read, or the processor refuses an image")
    sev = s["severity"]
    verdict = ", ".join(f"{sev[k]:,} {k}{'s' if sev[k] != 1 else ''}" for k in ("error", "warning", "info") if k in sev)
    lines.append("")
    outcome = (f"{verdict} in {s['samples_with_findings']:,} of {s['samples']:,} samples" if verdict
               else f"clean, no findings in {s['samples']:,} samples")
    lines.append(f"Result: {outcome} ({s['seconds']:.2f} s, {_n(s['samples_per_second'])} samples/s)")
    return "\n".join(lines) + "\n"
