"""The HTML report's charts: matplotlib figures as inline SVG, each with a text alternative and its data as a table.

Charts read the report's exact histograms (:class:`vlmcheck.report.Distributions`), never one value per sample, so
drawing them takes the same time for 1,000 rows as for 1,000,000. Every series differs by hatch or line style as
well as colour, so the charts read in greyscale. Needs matplotlib (imported here only).

>>> from collections import Counter
>>> chart = length_chart(Counter({100: 3, 900: 1}), max_length=500)
>>> chart.table[1][0], chart.table[1][-1]
(['100 - 120', '3', '75.0%'], ['898 - 900', '1', '100.0%'])
>>> 'role="img"' in chart.svg and "<title" in chart.svg
True
"""

from __future__ import annotations

import html
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BLUE = "#3b6ea8"
_ORANGE = "#c8682c"
_GREEN = "#3d8b4f"
_GREY = "#8c8c8c"
_RC: Any = {  # matplotlib types its keys as literals
    "svg.fonttype": "none",  # text stays text: smaller, selectable, no embedded glyphs
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same text widths everywhere
    "font.size": 9,
    "hatch.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_SVG_OPEN = re.compile(r"<svg\b[^>]*>")
_ID = re.compile(r'\sid="([^"]+)"')
_REF = re.compile(r'(\sid="|url\(#|href="#)([^")]+)')


@dataclass
class Chart:
    """One figure: its SVG (with ``<title>``/``<desc>``), a caption and the data it draws as (headers, rows)."""

    id: str
    title: str
    desc: str
    svg: str
    table: tuple[list[str], list[list[str]]]


def _n(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _svg(fig: Any, *, chart_id: str, title: str, desc: str) -> str:
    """The figure as an inline ``<svg>`` element labelled by its title and description."""
    import matplotlib

    buffer = io.StringIO()
    # one salt per chart: the ids of clip paths and hatch patterns stay stable and unique within the page
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: not allowed inside HTML
    # matplotlib numbers its elements per figure (figure_1, patch_1, ...): prefix every id and every reference to
    # one with the chart's id, so that ids stay unique in a page of many charts
    ids = set(_ID.findall(text))
    text = _REF.sub(lambda m: m.group(1) + (f"{chart_id}-{m.group(2)}" if m.group(2) in ids else m.group(2)), text)
    opening = _SVG_OPEN.search(text)
    assert opening is not None
    tag = opening.group(0)
    tag = re.sub(r'\s(width|height)="[^"]*"', "", tag)
    tag = tag[:-1] + (f' role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
                      f'class="chart" id="{chart_id}-svg">')
    label = (f'<title id="{chart_id}-title">{html.escape(title)}</title>'
             f'<desc id="{chart_id}-desc">{html.escape(desc)}</desc>')
    return text[:opening.start()] + tag + label + text[opening.end():]


def _make(fig: Any, chart_id: str, title: str, desc: str, headers: list[str], rows: list[list[str]]) -> Chart:
    return Chart(id=chart_id, title=title, desc=desc, svg=_svg(fig, chart_id=chart_id, title=title, desc=desc),
                 table=(headers, rows))


def _bins(hist: Counter[int], bins: int) -> list[tuple[int, int, int]]:
    """``(low, high, samples)`` for equal-width integer bins over the histogram's range."""
    low, high = min(hist), max(hist)
    step = max(1, -(-(high - low + 1) // bins))
    counts = [0] * (-(-(high - low + 1) // step))
    for value, count in hist.items():
        counts[(value - low) // step] += count
    return [(low + i * step, min(low + (i + 1) * step - 1, high), c) for i, c in enumerate(counts)]


def length_chart(lengths: Counter[int], *, max_length: int | None, key: str = "max_length",
                 chart_id: str = "length-histogram") -> Chart:
    """Tokens per sample: a histogram, the cumulative share on a second axis, and the max-length line."""

    n = sum(lengths.values())
    bins = _bins(lengths, 40)
    over = sum(c for v, c in lengths.items() if max_length is not None and v > max_length)
    fig = _figure(7.2, 3.0)
    with _rc():
        ax = fig.add_subplot()
        ax.bar([lo for lo, _, _ in bins], [c for _, _, c in bins], width=[hi - lo + 1 for lo, hi, _ in bins],
               align="edge", color=_BLUE, alpha=0.55, edgecolor=_BLUE, hatch="///", label="samples per bin")
        ax.set_xlabel("tokens per sample")
        ax.set_ylabel("samples")
        _axes(ax, x_ticks=8)
        cum = ax.twinx()
        xs, ys, seen = [], [], 0
        for value in sorted(lengths):
            seen += lengths[value]
            xs.append(value)
            ys.append(100 * seen / n)
        cum.step(xs, ys, where="post", color="black", linewidth=1.4, label="cumulative % of samples")
        cum.set_ylim(0, 102)
        cum.set_ylabel("cumulative % of samples")
        cum.spines["right"].set_visible(True)
        if max_length is not None:
            ax.axvline(max_length, color=_ORANGE, linestyle="--", linewidth=1.8, label=f"{key} {max_length:,}")
            ax.annotate(f"{key} {max_length:,}\n{over:,} of {n:,} samples ({_pct(over, n)}) cut",
                        xy=(max_length, 1), xycoords=("data", "axes fraction"), xytext=(4, -4),
                        textcoords="offset points", va="top", fontsize=8.5, color="black",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})
        handles = ax.get_legend_handles_labels()[0] + cum.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    where = (f" The dashed line is {key}={max_length:,}: {over:,} of {n:,} samples ({_pct(over, n)}) are longer "
             "and get cut." if max_length is not None else " No max length was set.")
    desc = (f"Histogram of tokens per sample for {n:,} samples, from {min(lengths):,} to {max(lengths):,} tokens, "
            f"with the cumulative share of samples as a solid line.{where}")
    rows, seen = [], 0
    for lo, hi, count in bins:
        seen += count
        if count:
            rows.append([f"{lo:,} - {hi:,}", f"{count:,}", _pct(seen, n)])
    return _make(fig, chart_id, "Tokens per sample", desc, ["tokens", "samples", "cumulative"], rows)


def coverage_length_chart(lengths: Counter[int], *, max_length: int | None, key: str = "max_length",
                          chart_id: str = "coverage-length") -> Chart:
    """The share of samples kept whole at each max length."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    n = sum(lengths.values())
    xs, ys, seen = [], [], 0
    for value in sorted(lengths):
        seen += lengths[value]
        xs.append(value)
        ys.append(100 * seen / n)
    fig = _figure(3.6, 2.8)
    with _rc():
        ax = fig.add_subplot()
        ax.step([0, *xs], [0, *ys], where="post", color=_BLUE, linewidth=1.6)
        ax.set_ylim(0, 102)
        ax.set_xlabel(f"{key} (tokens)")
        ax.set_ylabel("% of samples kept whole")
        ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        kept = None
        if max_length is not None:
            kept = sum(c for v, c in lengths.items() if v <= max_length)
            ax.axvline(max_length, color=_ORANGE, linestyle="--", linewidth=1.5)
            ax.plot([max_length], [100 * kept / n], marker="o", color="black")
            ax.annotate(f"{_pct(kept, n)} at {max_length:,}", xy=(max_length, 100 * kept / n), xytext=(6, -12),
                        textcoords="offset points", fontsize=8.5)
    now = (f" At {key}={max_length:,}, {kept:,} of {n:,} ({_pct(kept, n)}) are kept whole."
           if kept is not None and max_length is not None else "")
    desc = f"Share of the {n:,} samples with a length that fit whole under each {key}.{now}"
    rows = [[f"{v:,}", _pct(c, n)] for v, c in _levels(xs, ys, n)]
    return _make(fig, chart_id, f"Samples kept whole by {key}", desc, [key, "kept whole"], rows)


def _levels(xs: list[int], ys: list[float], n: int) -> list[tuple[int, float]]:
    """The smallest x reaching each round share: the table behind a coverage curve."""
    out = []
    for share in (50, 75, 90, 95, 99, 99.9, 100):
        for x, y in zip(xs, ys):
            if y >= share - 1e-9:
                out.append((x, y * n / 100))
                break
    return list(dict.fromkeys(out))


def coverage_pixels_chart(budgets: Counter[int], *, unfixable: int, samples: int, current: int | None,
                          max_length: int, no_image: int, key: str = "max_pixels",
                          length_key: str = "max_length", chart_id: str = "coverage-pixels") -> Chart:
    """The share of samples kept whole at ``max_length`` under each pixel cap (log scale).

    ``budgets``: the largest cap under which each sample fits (``no_image``: a sample without images that fits);
    ``unfixable``: samples too long at any cap; ``samples``: all samples with a length."""
    from matplotlib.ticker import FuncFormatter

    always = budgets.get(no_image, 0)
    values = sorted(v for v in budgets if v != no_image)
    xs: list[float] = []
    ys: list[float] = []
    seen = always + sum(budgets[v] for v in values)
    for v in values:  # kept(cap) for cap in (previous value, v]: the samples whose largest fitting cap is >= cap
        xs.append(v)
        ys.append(100 * seen / samples)
        seen -= budgets[v]
    fig = _figure(3.6, 2.8)
    with _rc():
        ax = fig.add_subplot()
        if xs:
            ax.step([xs[0] / 1.5, *xs], [ys[0], *ys], where="pre", color=_GREEN, linewidth=1.6)
        else:
            ax.axhline(100 * always / samples, color=_GREEN, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_ylim(0, 102)
        ax.set_xlabel(f"{key} (pixels per image, log scale)")
        ax.set_ylabel(f"% kept whole at {length_key}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"))
        if current:
            kept_now = always + sum(c for v, c in budgets.items() if v != no_image and v >= current)
            ax.axvline(current, color=_ORANGE, linestyle="--", linewidth=1.5)
            ax.plot([current], [100 * kept_now / samples], marker="o", color="black")
            ax.annotate(f"now: {current:,}", xy=(current, 100 * kept_now / samples), xytext=(-8, -14),
                        textcoords="offset points", ha="right", fontsize=8.5)
    desc = (f"Share of the {samples:,} samples with a length kept whole at {length_key}={max_length:,} under each "
            f"{key}: the curve falls as the cap rises. {unfixable:,} sample(s) are too long at any cap.")
    rows = [[f"{int(x):,}", _pct(y * samples / 100, samples)] for x, y in zip(xs, ys)][:60]
    if current:
        desc += f" The dashed line is the current cap, {current:,}."
    return _make(fig, chart_id, f"Samples kept whole by {key}", desc, [f"{key} at most", "kept whole"], rows)


def distribution_chart(hist: Counter[int], *, what: str, unit: str, chart_id: str, bins: int = 30,
                       discrete: bool = False) -> Chart:
    """A histogram of one per-image or per-sample count (tokens per image, images per sample)."""
    from matplotlib.ticker import MaxNLocator

    n = sum(hist.values())
    groups = [(v, v, hist[v]) for v in sorted(hist)] if discrete else _bins(hist, bins)
    fig = _figure(3.6, 2.8)
    with _rc():
        ax = fig.add_subplot()
        if discrete:
            ax.bar([lo for lo, _, _ in groups], [c for _, _, c in groups], width=0.7, color=_ORANGE, alpha=0.6,
                   edgecolor=_ORANGE, hatch="\\\\\\")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.bar([lo for lo, _, _ in groups], [c for _, _, c in groups], width=[hi - lo + 1 for lo, hi, _ in groups],
                   align="edge", color=_ORANGE, alpha=0.6, edgecolor=_ORANGE, hatch="\\\\\\")
            _axes(ax, x_ticks=4)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(what)
        ax.set_ylabel(unit)
    desc = (f"Histogram of {what} over {n:,} {unit}: from {min(hist):,} to {max(hist):,}, "
            f"most often {max(hist, key=lambda v: hist[v]):,}.")
    rows = [[f"{lo:,}" if lo == hi else f"{lo:,} - {hi:,}", f"{c:,}"] for lo, hi, c in groups if c]
    return _make(fig, chart_id, what[:1].upper() + what[1:], desc, [what, unit], rows)


def layout_chart(previews: Sequence[dict[str, Any]], *, code: str, chart_id: str) -> Chart | None:
    """Each previewed sample's token layout as one bar: text, image/video spans, supervised spans and what the
    cut removes. None when no preview has a layout with a known length."""
    from matplotlib.patches import Patch

    shown = [p for p in previews if p.get("layout") and p.get("tokens") is not None]
    if not shown:
        return None
    fig = _figure(7.2, 0.75 + 0.55 * len(shown))
    rows: list[list[str]] = []
    sentences = []
    with _rc():
        ax = fig.add_subplot()
        for i, p in enumerate(shown):
            layout = p["layout"]
            y = len(shown) - 1 - i
            total = layout["total"]
            ax.barh(y, total, left=0, height=0.5, color="#f2f2f2", edgecolor="#555555", linewidth=0.8)
            media = []
            for start, end, kind, k in layout["media"]:
                ax.barh(y, end - start, left=start, height=0.5, color=_BLUE if kind == "image" else _ORANGE,
                        alpha=0.7, edgecolor="black", linewidth=0.5, hatch="///" if kind == "image" else "ooo")
                media.append(f"{kind} {k} {start:,}-{end:,}")
            for start, end in layout["supervised"]:  # at least 0.5% wide, to stay visible
                ax.barh(y - 0.19, max(end - start, total / 200), left=start, height=0.12, color=_GREEN,
                        edgecolor=_GREEN)
            kept = layout["kept"]
            lost = _complement(kept, total) if kept is not None else [(0, total)]
            for start, end in lost:
                ax.barh(y, end - start, left=start, height=0.62, color="none", edgecolor="#b00020", hatch="xx",
                        linewidth=0)
            for _, end in kept or []:
                if end < total:
                    ax.plot([end, end], [y - 0.38, y + 0.38], color="#b00020", linestyle="--", linewidth=1.6)
            cut = "dropped whole" if kept is None else (
                "nothing cut" if not lost else "cut: " + ", ".join(f"{s:,}-{e:,}" for s, e in lost))
            supervised = ", ".join(f"{s:,}-{e:,}" for s, e in layout["supervised"]) or "none"
            rows.append([_sample_label(p), f"{total:,}", "; ".join(media) or "none", supervised, cut])
            sentences.append(f"{_sample_label(p)}: {total:,} tokens, {len(media)} media span(s), {cut}")
        ax.set_yticks(range(len(shown)), [_sample_label(p) for p in reversed(shown)])
        ax.set_xlabel("token position")
        _axes(ax, x_ticks=8)
        ax.set_ylim(-0.6, len(shown) - 0.4)
        legend = [
            Patch(facecolor="#f2f2f2", edgecolor="#555555", label="text"),
            Patch(facecolor=_BLUE, alpha=0.7, edgecolor="black", hatch="///", label="image span"),
            Patch(facecolor=_GREEN, edgecolor=_GREEN, label="supervised (thin bar)"),
            Patch(facecolor="none", edgecolor="#b00020", hatch="xx", label="cut off"),
        ]
        if any(m[2] == "video" for p in shown for m in p["layout"]["media"]):
            legend.insert(2, Patch(facecolor=_ORANGE, alpha=0.7, edgecolor="black", hatch="ooo", label="video span"))
        fig.legend(handles=legend, loc="outside upper center", ncol=len(legend), fontsize=8, frameon=False)
    desc = f"Token layout of {len(shown)} sample(s) with {code}. " + "; ".join(sentences) + "."
    return _make(fig, chart_id, f"{code}: token layout", desc,
                 ["sample", "tokens", "media spans", "supervised spans", "truncation"], rows)


def _complement(kept: list[list[int]], total: int) -> list[tuple[int, int]]:
    out, cursor = [], 0
    for start, end in sorted(kept):
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < total:
        out.append((cursor, total))
    return out


def _sample_label(preview: dict[str, Any]) -> str:
    index, sample_id = preview.get("index"), preview.get("id")
    label = f"sample {index}"
    if sample_id is not None and str(sample_id) != str(index):
        label += f" ({str(sample_id)[:24]})"
    return label


def _axes(ax: Any, *, x_comma: bool = True, x_ticks: int = 6) -> None:
    """Whole-number counts on y, at most ``x_ticks`` comma-grouped ticks on x."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if x_comma:
        ax.xaxis.set_major_locator(MaxNLocator(x_ticks, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))


def _rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(_RC)
