"""``Report.to_html()``: one self-contained page to attach to a pull request or a launch ticket.

Everything is inline: the charts are SVG (:mod:`vlmcheck.report_charts`), thumbnails are data URLs, the style is one
``<style>`` element and there is no script, so the file opens offline and shows the same thing in any browser. The
page aggregates: its size depends on the number of finding codes and distinct lengths, not on the number of rows.

>>> from vlmcheck.report import Report
>>> page = render_html(Report(summary={"counts": {}, "samples": 0, "dataset": "d.jsonl", "model": "m",
...                                    "model_type": "qwen2_vl", "max_length": None, "truncation": "right",
...                                    "settings": {}, "severity": {}, "samples_with_findings": 0}))
>>> page.startswith("<!doctype html>") and "No findings" in page
True
"""

from __future__ import annotations

import html
import platform
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from vlmcheck.findings import CATALOGUE

if TYPE_CHECKING:
    from vlmcheck.report import Report
    from vlmcheck.report_charts import Chart

DOCS = "https://github.com/vlmcheck/vlmcheck/blob/main/docs/findings.md"
# the libraries whose behaviour a verdict rests on (counting, templates, images, reading data, drawing)
LIBRARIES = ("vlmcheck", "tokenizers", "transformers", "jinja2", "pillow", "pyarrow", "matplotlib")
_MARK = {"error": "✖ error", "warning": "▲ warning", "info": "ℹ info"}

_STYLE = """
:root { color-scheme: light; --ink: #1d1d1f; --muted: #5a5a5f; --line: #d6d6db; --error: #a1001c;
        --warning: #8a5300; --info: #205b9e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 "Liberation Sans", "DejaVu Sans", Arial, sans-serif; color: var(--ink);
       background: #fff; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 10px; border-bottom: 1px solid
var(--line); padding-bottom: 4px; } h3 { font-size: 16px; margin: 26px 0 8px; }
.lede { color: var(--muted); margin: 0 0 12px; word-break: break-all; }
.verdict { font-size: 17px; padding: 10px 14px; border-left: 6px solid var(--ink); background: #f5f5f7; }
.verdict.error { border-color: var(--error); } .verdict.warning { border-color: var(--warning); }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { background: #f5f5f7; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.sev-error { color: var(--error); font-weight: bold; } .sev-warning { color: var(--warning); font-weight: bold; }
.sev-info { color: var(--info); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr)); gap: 18px; }
figure { margin: 10px 0; } figcaption { color: var(--muted); font-size: 13.5px; margin-top: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
details { margin: 4px 0 10px; font-size: 13.5px; } summary { cursor: pointer; color: var(--info); }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; margin: 10px 0; }
.card p { margin: 4px 0; } .fix { color: var(--muted); }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 6px; }
.thumbs figure { margin: 0; width: 172px; } .thumbs img { display: block; max-width: 160px; max-height: 160px;
border: 1px solid var(--line); } .thumbs figure.named img, .thumbs figure.named .noimg { outline: 3px solid
var(--error); outline-offset: 1px; }
.noimg { width: 160px; height: 90px; display: flex; align-items: center; justify-content: center; text-align:
center; padding: 6px; font-size: 12.5px; overflow: hidden; overflow-wrap: anywhere; background: repeating-linear-gradient(45deg, #f5f5f7, #f5f5f7 6px, #e8e8ed
6px, #e8e8ed 12px); border: 1px dashed var(--muted); }
.thumbs figcaption code { overflow-wrap: anywhere; }
code { font-family: "Liberation Mono", "DejaVu Sans Mono", monospace; font-size: 13px; }
.muted { color: var(--muted); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-" if value is None else str(value)


def versions() -> dict[str, str]:
    """Installed versions of the libraries the verdict rests on, and Python's."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, numeric: set[int] = frozenset(),  # type: ignore[assignment]
           caption: str | None = None, raw: bool = False) -> str:
    cap = f"<caption class='muted'>{_e(caption)}</caption>" if caption else ""
    head = "".join(f"<th scope='col'{' class=num' if i in numeric else ''}>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{cell if raw else _e(cell)}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(chart: Chart) -> str:
    headers, rows = chart.table
    data = _table(headers, rows, numeric=set(range(1, len(headers))) if len(headers) <= 3 else set())
    return (f"<figure id='{chart.id}' aria-labelledby='{chart.id}-caption'>{chart.svg}"
            f"<figcaption id='{chart.id}-caption'><strong>{_e(chart.title)}.</strong> {_e(chart.desc)}</figcaption>"
            f"<details><summary>The data of this chart</summary>{data}</details></figure>")


def _settings(s: dict[str, Any]) -> str:
    framework = s.get("framework")
    rows: list[tuple[str, str]] = []
    if framework:
        stage = f"stage {framework['stage']}, " if framework.get("stage") not in (None, "sft") else ""
        rows.append(("framework", f"{framework.get('name')} ({framework.get('versions')}), {stage}template "
                                  f"{framework.get('template')}"))
        rows.append(("config", str(framework.get("config"))))
    rows.append(("dataset", str(s.get("dataset"))))
    rows.append(("model", f"{s.get('model')} ({s.get('model_type')})"))
    length_key = framework["length_key"] if framework else "max_length"
    rows.append((length_key, _n(s.get("max_length"))))
    rows.append(("truncation", str(s.get("truncation"))))
    settings = s.get("settings")
    if isinstance(settings, dict):
        for key, value in settings.items():
            if value is not None and not isinstance(value, dict):
                rows.append((f"processor: {key}", _n(value)))
    elif settings:
        rows.append(("processor", str(settings)))
    if framework:
        for key in ("image_max_pixels", "image_min_pixels", "media_dir"):
            if framework.get(key) is not None:
                rows.append((key, _n(framework[key])))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions().items())))
    if s.get("seconds") is not None:
        rows.append(("scan time", f"{s['seconds']:.2f} s for {_n(s.get('samples'))} samples"))
    return _table(["setting", "value"], rows)


def _verdict(s: dict[str, Any]) -> str:
    sev = s.get("severity") or {}
    parts = [f"{sev[k]:,} {k}{'s' if sev[k] != 1 else ''}" for k in ("error", "warning", "info") if k in sev]
    level = "error" if "error" in sev else "warning" if "warning" in sev else "clean"
    text = (f"{', '.join(parts)} in {_n(s.get('samples_with_findings'))} of {_n(s.get('samples'))} samples"
            if parts else f"No findings in {_n(s.get('samples'))} samples")
    extra = ""
    if s.get("samples_without_length"):
        extra = (f" {s['samples_without_length']:,} sample(s) have no length: a row or image could not be read, "
                 "or the processor refuses an image.")
    return f"<p class='verdict {level}'><strong>{_e(text)}.</strong>{_e(extra)}</p>"


def _findings(s: dict[str, Any]) -> str:
    counts = s.get("counts") or {}
    if not counts:
        return "<p>No findings.</p>"
    rows = []
    ordered = sorted(counts, key=lambda c: (-CATALOGUE[c].severity, c))
    for code in ordered:
        rule = CATALOGUE[code]
        sev = str(rule.severity)
        rows.append([
            f"<a href='{DOCS}#{rule.anchor}'>{_e(code)}</a>",
            f"<span class='sev-{sev}'>{_e(_MARK[sev])}</span>",
            f"{counts[code]:,}",
            f"{_e(rule.title)} <code class='muted'>{_e(rule.name)}</code>",
            _e(rule.fix),
            f"<a href='#samples-{rule.anchor}'>examples</a>",
        ])
    return _table(["code", "severity", "samples", "what", "fix", ""], rows, numeric={2}, raw=True)


def _recommendations(s: dict[str, Any]) -> str:
    framework = s.get("framework")
    length_key = framework["length_key"] if framework else "max_length"
    pixels_key = framework["pixels_key"] if framework else "max_pixels"
    rows = []
    keep = s.get("recommended_max_length") or {}
    if any(v is not None for v in keep.values()):
        rows.append([f"{length_key} that keeps samples whole", *(_n(keep.get(k)) for k in ("100%", "99.9%", "99%"))])
    pixels = s.get("recommended_max_pixels")
    if pixels:
        rows.append([f"{pixels_key} that keeps samples whole at {length_key}={_n(s.get('max_length'))}",
                     *(_n(pixels.get(k)) for k in ("100%", "99.9%", "99%"))])
    if not rows:
        return ""
    note = ""
    if pixels and pixels.get("unfixable_samples"):
        note = (f"<p class='muted'>The {pixels_key} row counts the samples a pixel cap can fix; "
                f"{pixels['unfixable_samples']:,} are too long at any {pixels_key}.</p>")
    return _table(["setting", "100% of samples", "99.9%", "99%"], rows, numeric={1, 2, 3}) + note


def _charts(report: Report) -> str:
    from vlmcheck import report_charts as C
    from vlmcheck.report import NO_IMAGE, current_pixel_cap

    d = report.distributions
    s = report.summary
    if d is None:
        return "<p class='muted'>This report was not built by a scan: it has no distributions to draw.</p>"
    framework = s.get("framework")
    length_key = framework["length_key"] if framework else "max_length"
    pixels_key = framework["pixels_key"] if framework else "max_pixels"
    out = ["<h2 id='lengths'>Lengths</h2>"]
    if not d.lengths:
        out.append("<p>No sample has a known length.</p>")
    else:
        out.append(_figure(C.length_chart(d.lengths, max_length=s.get("max_length"), key=length_key)))
        grid = [_figure(C.coverage_length_chart(d.lengths, max_length=s.get("max_length"), key=length_key))]
        max_length = s.get("max_length")
        if max_length is not None and (d.budgets or d.unfixable):
            current = current_pixel_cap(s.get("settings"))
            if framework and framework.get("image_max_pixels"):
                current = int(framework["image_max_pixels"])
            grid.append(_figure(C.coverage_pixels_chart(
                d.budgets, unfixable=d.unfixable, samples=sum(d.lengths.values()),
                current=current if current < NO_IMAGE else None, max_length=max_length, no_image=NO_IMAGE,
                key=pixels_key, length_key=length_key)))
        out.append(f"<div class='grid'>{''.join(grid)}</div>")
    out.append(_recommendations(s))
    out.append("<h2 id='images'>Images</h2>")
    grid = []
    if d.image_tokens:
        grid.append(_figure(C.distribution_chart(d.image_tokens, what="tokens per image", unit="images",
                                                 chart_id="image-tokens")))
    if d.images_per_sample:
        grid.append(_figure(C.distribution_chart(d.images_per_sample, what="images per sample", unit="samples",
                                                 chart_id="images-per-sample", discrete=True)))
    out.append(f"<div class='grid'>{''.join(grid)}</div>" if grid else "<p>No image was counted.</p>")
    return "".join(out)


def _thumbs(preview: dict[str, Any]) -> str:
    items = []
    count = preview.get("image_count", len(preview.get("images", [])))
    for image in preview.get("images", []):
        k = image.get("k")
        tokens = image.get("tokens")
        label = f"image {k} of {count}" + (f", {tokens:,} tokens" if isinstance(tokens, int) else "")
        source = image.get("source")
        alt = label + (f" ({source})" if source else "")
        named = " (named by a finding)" if image.get("named") else ""
        if image.get("thumbnail"):
            body = f"<img src='{image['thumbnail']}' alt='{_e(alt)}' loading='eager'>"
        elif image.get("note"):
            body = f"<div class='noimg' role='img' aria-label='{_e(alt)}: {_e(image['note'])}'>{_e(image['note'])}</div>"
        else:
            continue
        klass = " class='named'" if image.get("named") else ""
        items.append(f"<figure{klass}>{body}<figcaption>{_e(label + named)}"
                     f"{'<br><code>' + _e(source) + '</code>' if source else ''}</figcaption></figure>")
    return f"<div class='thumbs'>{''.join(items)}</div>" if items else ""


def _samples(report: Report) -> str:
    from vlmcheck import report_charts as C

    d = report.distributions
    counts = report.summary.get("counts") or {}
    if d is None or not d.previews:
        return ""
    out = ["<h2 id='samples'>Samples, by finding</h2>",
           "<p class='muted'>The first samples of each finding code, with their images (a red outline marks the "
           "image a finding names) and their token layout: text, image spans, the supervised tokens and what "
           "truncation removes.</p>"]
    ordered = sorted((c for c in d.previews if c in CATALOGUE), key=lambda c: (-CATALOGUE[c].severity, c))
    for code in ordered:
        previews = d.previews[code]
        rule = CATALOGUE[code]
        out.append(f"<section aria-labelledby='samples-{rule.anchor}'><h3 id='samples-{rule.anchor}'>{_e(code)} "
                   f"<code>{_e(rule.name)}</code>: {len(previews)} of {counts.get(code, len(previews)):,} "
                   f"sample(s)</h3><p>{_e(rule.why)}</p>")
        chart = C.layout_chart(previews, code=code, chart_id=f"layout-{rule.anchor}")
        if chart is not None:
            out.append(_figure(chart))
        for p in previews:
            messages = "".join(
                f"<p><span class='sev-{rule.severity}'>{_e(code)}</span> {_e(item['message'])}"
                f"<br><span class='fix'>fix: {_e(item['fix'])}</span></p>"
                for item in p.get("findings", []) if item["code"] == code)
            others = sorted({item["code"] for item in p.get("findings", [])} - {code})
            also = f"<p class='muted'>also: {_e(', '.join(others))}</p>" if others else ""
            length = (f"{p['tokens']:,} tokens" if isinstance(p.get("tokens"), int) else "no length")
            frame = p.get("framework") or {}
            if frame.get("verdict"):
                length += f"; the framework's verdict: {frame['verdict']}"
                if isinstance(frame.get("kept_tokens"), int):
                    length += f", keeps {frame['kept_tokens']:,} tokens"
            out.append(f"<div class='card'><p><strong>{_e(C.sample_label(p))}</strong> "
                       f"<span class='muted'>{_e(length)}</span></p>{messages}{also}{_thumbs(p)}</div>")
        out.append("</section>")
    return "".join(out)


def render_html(report: Report) -> str:
    """The report as one HTML page (see the module docstring)."""
    s = report.summary
    command = s.get("command", "scan")
    title = f"vlmcheck {command}: {s.get('dataset')}"
    body = [
        f"<header><h1>vlmcheck {_e(command)} report</h1>"
        f"<p class='lede'>{_e(s.get('dataset'))} · {_n(s.get('samples'))} samples · {_e(s.get('model_type'))}"
        f" at {_e('max_length=' + _n(s.get('max_length')) if s.get('max_length') else 'no max length')}</p>"
        f"{_verdict(s)}</header>",
        "<nav aria-label='sections'><p><a href='#findings'>Findings</a> · <a href='#lengths'>Lengths</a> · "
        "<a href='#images'>Images</a> · <a href='#samples'>Samples</a> · <a href='#settings'>Settings</a></p></nav>",
        f"<h2 id='findings'>Findings</h2>{_findings(s)}",
        _charts(report),
        _samples(report),
        f"<h2 id='settings'>What the verdict rests on</h2>{_settings(s)}",
    ]
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>\n")
