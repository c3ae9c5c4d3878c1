"""What the two counters share, by composition: the arithmetic scan (:mod:`vlmcheck.scan`, counts from image
headers with a family module) and the processor scan (:mod:`vlmcheck.exact`, counts with the checkpoint's own
processor) both read a row into a conversation, reach its media, find its supervised text and judge its cut the
same way, so the two reports and ``--output`` files agree on everything but the counts.

- :func:`read_conversation`: a row to a :class:`~vlmcheck.data.formats.Conversation`, or VC001 on the row;
- :class:`Media`: the image root, media paths (VC101, VC104) and header probes (VC101-VC105, VC111-VC114);
- :func:`text_spans`: the assistant text in the rendered conversation, and what the template dropped;
- :class:`Judge`: the truncation findings (VC201-VC205) and the ``max_pixels`` under which a sample fits;
- :func:`unreadable_row`, :func:`printable`: a row nothing foresaw, and records every output can encode.

>>> judge = Judge(options, spec)  # doctest: +SKIP
>>> judge.truncation(result, layout, 4096)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmcheck import findings as F
from vlmcheck.data.files import FileProblem, check_path_text
from vlmcheck.data.formats import (
    Conversation,
    ImageRef,
    RowError,
    VideoRef,
    detect_format,
    row_id,
    to_conversation,
)
from vlmcheck.data.images import ImageInfo, ImageProblem, decode_data_url, probe_bytes
from vlmcheck.data.probecache import ProbeCache
from vlmcheck.data.readers import BadRow
from vlmcheck.data.remote import join as join_url
from vlmcheck.data.remote import probe_url
from vlmcheck.data.videos import VideoInfo, VideoProblem, probe_video_bytes, probe_video_path
from vlmcheck.layout import Layout, kept_ranges, overlap
from vlmcheck.results import SampleResult

if TYPE_CHECKING:
    from vlmcheck.model import ModelSpec
    from vlmcheck.options import ScanOptions


# -- rows ------------------------------------------------------------------------------------------------------
def read_conversation(result: SampleResult, item: Any, *, format: str | None) -> Conversation | None:
    """The conversation of row ``item`` (``format`` forced, else detected), its id set on ``result``; or None
    with VC001 on ``result`` when the row holds none."""
    if isinstance(item, BadRow):
        result.findings.append(F.make("VC001", item.reason))
        return None
    if isinstance(item, dict):  # a malformed row is still reported under its id
        result.id = row_id(item) or result.id
    fmt = format or detect_format(item)
    if fmt is None and isinstance(item, dict) and ("messages" in item or "conversations" in item):
        fmt = "sharegpt"  # has the field, in the wrong shape: let the reader name what is wrong
    if fmt is None:
        keys = sorted(item)[:8] if isinstance(item, dict) else type(item).__name__
        result.findings.append(F.make("VC001", f"no conversation found (fields: {keys})"))
        return None
    try:
        conv = to_conversation(item, fmt)
    except RowError as e:
        result.findings.append(F.make("VC001", str(e)))
        return None
    if conv.id is not None:
        result.id = conv.id
    return conv


def unreadable_row(index: int, item: Any, error: BaseException, *, id: str | None = None) -> SampleResult:
    """The record of a row that raised where vlmcheck expected none: VC001 with the error, so the row is
    flagged and the scan goes on."""
    result = SampleResult(index=index, id=id or str(index), tokens=None, image_tokens=[], supervised_tokens=None)
    if id is None and isinstance(item, dict):
        try:
            result.id = row_id(item) or result.id
        except Exception:
            pass
    what = "nested too deeply" if isinstance(error, RecursionError) else f"{type(error).__name__}: {str(error)[:200]}"
    result.findings.append(F.make("VC001", f"this row cannot be read ({what})"))
    return result


def utf8_safe(text: str) -> str:
    """``text``, with a lone surrogate from the data (JSON can escape one) shown as ``\\udXXX``."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(result: SampleResult) -> SampleResult:
    """``result`` with an id and messages every output can encode: a lone surrogate in a row's id or
    text must not crash the report, the records or the terminal."""
    result.id = utf8_safe(result.id)
    for finding in result.findings:
        finding.message = utf8_safe(finding.message)
        if finding.id is not None:
            finding.id = utf8_safe(str(finding.id))
    return result


def typed_message(message: dict[str, Any]) -> dict[str, Any]:
    """A string content as one text part, as TRL's ``prepare_multimodal_messages`` does."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content}]}
    return message


def has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(isinstance(p, dict) and str(p.get("text") or "").strip() for p in content or [])


# -- text ------------------------------------------------------------------------------------------------------
def text_spans(conv: Conversation, text: str, *, eos: str | None) -> tuple[list[tuple[int, int]], list[str]]:
    """Character spans of assistant content in the rendered ``text`` (with the ``eos`` the template writes after
    it), found in message order so that a reply quoting the prompt is not matched inside the prompt; and the roles
    of message text ``text`` does not hold: what the template dropped (a template that trims whitespace drops
    nothing)."""
    spans: list[tuple[int, int]] = []
    missing: list[str] = []
    cursor = 0
    for message in conv.messages:
        content = message.get("content")
        pieces = [content] if isinstance(content, str) else [
            p["text"] for p in content or [] if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        for piece in pieces:
            if not piece:
                continue
            at = text.find(piece, cursor)
            if at < 0:
                core = piece.strip()
                at = text.find(core, cursor) if core else -1
                if at < 0:
                    if core:
                        missing.append(str(message.get("role")))
                    continue
                piece = core
            end = at + len(piece)
            if message.get("role") == "assistant":
                if eos and text.startswith(eos, end):
                    end += len(eos)
                spans.append((at, end))
            cursor = end
    return spans, missing


def renders_string_content(render: Callable[[Conversation], str]) -> bool:
    """Whether the template ``render`` runs renders a message whose content is a plain string. Processor templates
    (llava-hf's, for one) render only typed parts and drop a string in silence; TRL's
    ``prepare_multimodal_messages`` turns strings into text parts before them, and so do both counters."""
    marker = "vlmcheck-probe-3f9a"

    def renders(content: Any) -> bool:
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
        try:
            return marker in render(Conversation(messages=messages, images=[]))
        except Exception:
            return False

    return renders(marker) or not renders([{"type": "text", "text": marker}])


# -- media -----------------------------------------------------------------------------------------------------
class Media:
    """A dataset's images and videos as the scan reaches them: paths under the image ``root`` (or ``url_root``,
    an fsspec URL), confined to it with ``options.confine``, and read from their headers."""

    def __init__(self, options: ScanOptions, root: Path, url_root: str | None = None) -> None:
        self.options = options
        self.root = root
        self.real_root = os.path.realpath(root)
        self.url_root = url_root  # a dataset at an fsspec URL: its relative image paths are under that URL
        self._real_dirs: dict[str, str] = {}
        self._joined: dict[str, Path] = {}  # a dataset's path text -> the path under the root (local_path)
        self.probes = ProbeCache()  # each image file version probed once (vlmcheck.data.probecache)

    def probe(self, ref: ImageRef) -> ImageInfo:
        if ref.kind == "bytes":
            return probe_bytes(ref.value)
        if ref.kind == "data_url":
            return probe_bytes(decode_data_url(ref.value))
        if ref.kind == "pil":  # the processor is handed this object as it is: its size, never EXIF-rotated
            return ImageInfo(ref.value.width, ref.value.height, format=ref.value.format)
        if ref.kind == "url":
            raise ImageProblem("VC101", f"remote image {ref.value} is not downloaded by vlmcheck; "
                                        "download the images and point the dataset at local files")
        if ref.kind == "remote":  # fsspec: ranged reads of the header
            return probe_url(ref.value)
        if self.url_root is not None and ref.value and not os.path.isabs(str(ref.value)):
            return probe_url(join_url(self.url_root, str(ref.value)))
        return self.probes.probe_path(self.local_path(str(ref.value), "image"))

    def local_path(self, raw: str, what: str) -> Path:
        """A dataset path, relative to the image root; with ``confine``, one that must resolve under it (VC104)."""
        path = self._joined.get(raw)
        if path is None:
            if not raw:
                raise ImageProblem("VC101", f"empty {what} path")
            try:
                check_path_text(raw)
            except FileProblem as p:
                raise ImageProblem("VC101", p.message) from None
            path = Path(raw)
            if raw.startswith("~") and not self.options.confine:
                path = path.expanduser()  # reads $HOME: not kept below
            if not path.is_absolute():
                path = self.root / path
            if not raw.startswith("~"):
                # the same text gives the same path: datasets name each file many times (and Path() is slow)
                if len(self._joined) >= _JOINED:
                    self._joined.clear()
                self._joined[raw] = path
        if self.options.confine:
            try:
                real = self.realpath(path)
            except (OSError, ValueError) as e:
                raise ImageProblem("VC101", f"{raw[:200]} cannot be resolved: {e}") from None
            if os.path.commonpath([real, self.real_root]) != self.real_root:
                raise ImageProblem("VC104", f"{raw} resolves to {real}, outside the image root {self.real_root}")
        return path

    def realpath(self, path: Path) -> str:
        """``os.path.realpath(path)``, resolving each image folder once: realpath costs one lstat per
        path component, and a dataset's images share a few folders."""
        parent, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            return os.path.realpath(path)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            if len(self._real_dirs) >= 4096:
                self._real_dirs.clear()
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        return os.path.join(real_parent, name)

    def probe_video(self, ref: VideoRef) -> VideoInfo:
        if ref.kind == "bytes":
            return probe_video_bytes(ref.value)
        if ref.kind == "url":
            raise VideoProblem("VC111", f"remote video {ref.value} is not downloaded by vlmcheck; download the "
                                        "videos and point the dataset at local files")
        if ref.kind == "frames":
            raise VideoProblem("VC114", "a video given as a list of frame images is not counted yet")
        try:
            if ref.kind == "data_url":
                return probe_video_bytes(decode_data_url(ref.value))
            return probe_video_path(self.local_path(str(ref.value), "video"))
        except ImageProblem as p:  # the path/data-URL checks shared with images
            raise VideoProblem({"VC101": "VC111", "VC102": "VC112"}.get(p.code, p.code), p.message) from None


_JOINED = 1 << 16  # path texts Media.local_path keeps (a few MiB); cleared when full
_BUDGET_ENTRIES = 1 << 16  # answers kept by Judge's budget search (a few MiB); cleared when full


# -- the cut ---------------------------------------------------------------------------------------------------
class Judge:
    """What truncation at ``options.max_length`` does to a sample's layout (VC201-VC205), and, for a family
    vlmcheck knows (``spec``), the largest ``max_pixels`` under which the sample fits whole."""

    def __init__(self, options: ScanOptions, spec: ModelSpec | None) -> None:
        self.options = options
        self.spec = spec
        factor = getattr(spec.settings, "factor", None) if spec is not None else None
        self.budget_unit = int(factor) ** 2 if factor else None
        self._cache_budgets = os.environ.get("VLMCHECK_BUDGET_CACHE", "1").strip().lower() not in (
            "0", "false", "no", "off")
        self._budget_settings: dict[int, Any] = {}  # pixel budget -> the settings with it
        self._token_cache: dict[tuple[int, int, int], int | None] = {}  # (width, height, budget) -> tokens

    def truncation(self, result: SampleResult, layout: Layout, max_length: int, *,
                   kinds: list[str] | None = None) -> None:
        if layout.total <= max_length:
            return
        kept = kept_ranges(layout, max_length, self.options.truncation)
        over = layout.total - max_length
        if kept is None:
            result.findings.append(F.make(
                "VC204", f"{layout.total:,} tokens > max_length={max_length:,}: dropped by truncation_strategy=delete",
                tokens=layout.total, max_length=max_length))
            return
        cut_any = False
        kinds = kinds or ["image"] * len(layout.runs)
        numbers = {kind: kinds.count(kind) for kind in ("image", "video")}
        seen = {"image": 0, "video": 0}
        for kind, image_runs in zip(kinds, layout.runs):
            seen[kind] += 1
            k, n = seen[kind], numbers[kind]
            size = sum(e - s for s, e in image_runs)
            survive = sum(overlap(run, kept) for run in image_runs)
            if survive < size and kind == "video":
                cut_any = True
                result.findings.append(F.make(
                    "VC205",
                    f"video {k} of {n} needs {size:,} tokens, only {survive:,} survive truncation at "
                    f"max_length={max_length:,} ({self.options.truncation}); the sample is {layout.total:,} tokens",
                    fix=f"raise max_length to {layout.total:,}, sample fewer frames (fps, max_frames) or fewer "
                        "pixels per frame, or drop the sample",
                    video=k, video_tokens=size, kept=survive, tokens=layout.total, max_length=max_length))
            elif survive < size:
                cut_any = True
                result.findings.append(F.make(
                    "VC201",
                    f"image {k} of {n} needs {size:,} tokens, only {survive:,} survive truncation at "
                    f"max_length={max_length:,} ({self.options.truncation}); the sample is {layout.total:,} tokens",
                    fix=self.cut_fix(layout.total, result.fits_max_pixels),
                    image=k, image_tokens=size, kept=survive, tokens=layout.total, max_length=max_length))
        supervised = layout.supervised_tokens
        kept_supervised = sum(overlap(r, kept) for r in layout.supervised)
        if supervised and not kept_supervised:
            result.findings.append(F.make(
                "VC202",
                f"all {supervised:,} supervised tokens fall past the cut at max_length={max_length:,} "
                f"(sample is {layout.total:,} tokens)",
                supervised=supervised, tokens=layout.total, max_length=max_length))
        elif not cut_any and over > 0:
            result.findings.append(F.make(
                "VC203",
                f"{layout.total:,} tokens > max_length={max_length:,}: {over:,} text tokens cut, "
                f"{supervised - kept_supervised:,} of {supervised:,} supervised tokens lost",
                tokens=layout.total, max_length=max_length, supervised_lost=supervised - kept_supervised))

    def cut_fix(self, total: int, fits_max_pixels: int | None) -> str:
        fix = f"raise max_length to {total:,}"
        if fits_max_pixels is not None:
            fix += f", or cap max_pixels at {fits_max_pixels:,} (the sample then fits whole)"
        return fix + ", or drop the sample"

    def fit_budget(self, sizes: list[tuple[int, int]], text_tokens: int) -> int | None:
        """Largest pixel budget (a multiple of factor**2) under which the sample fits whole."""
        unit = self.budget_unit
        max_length = self.options.max_length
        if unit is None or max_length is None or not sizes or self.spec is None:
            return None
        settings = self.spec.settings
        current = getattr(settings, "pre_max_pixels", None) or getattr(settings, "max_pixels", None)
        if current is None:
            return None
        room = max_length - text_tokens
        tokens = self._budget_tokens

        def fits(budget: int) -> bool:
            total = 0
            for w, h in sizes:
                n = tokens(w, h, budget)
                if n is None:  # the budget resizes a side to 0 px: the real pipeline fails there too
                    return False
                total += n
            return total <= room

        hi = current // unit
        if fits(hi * unit):
            return hi * unit
        # qwen-vl-utils asserts max_pixels >= min_pixels: never recommend a budget below the floor
        floor = getattr(settings, "pre_min_pixels", None) or 1
        lo = max(1, -(-floor // unit))
        if lo >= hi or not fits(lo * unit):
            return None
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if fits(mid * unit):
                lo = mid
            else:
                hi = mid
        return lo * unit

    def _budget_tokens(self, width: int, height: int, budget: int) -> int | None:
        """One image's tokens under pixel budget ``budget`` (None: that budget gives a side of 0 px).

        Kept per (size, budget): the search above asks the same few budgets of every sample (it always starts
        from the same bounds) and datasets repeat image sizes, and each answer costs a settings copy and a
        resize. The answer is a function of its key (the spec's settings are fixed), so kept answers are the
        ones computing gives; ``VLMCHECK_BUDGET_CACHE=0`` computes every one (tests/test_fit_budget_cache.py).
        """
        key = (width, height, budget)
        if key in self._token_cache:
            return self._token_cache[key]
        assert self.spec is not None
        family = self.spec.family
        settings = self._budget_settings.get(budget)
        if settings is None:
            settings = family.with_max_pixels(self.spec.settings, budget)
            if self._cache_budgets:
                if len(self._budget_settings) >= _BUDGET_ENTRIES:
                    self._budget_settings.clear()
                self._budget_settings[budget] = settings
        try:
            n: int | None = family.image_tokens(width, height, settings)
        except (ZeroDivisionError, ValueError):
            n = None
        if self._cache_budgets:
            if len(self._token_cache) >= _BUDGET_ENTRIES:
                self._token_cache.clear()
            self._token_cache[key] = n
        return n
