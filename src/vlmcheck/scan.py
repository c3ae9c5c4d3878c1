"""``scan()``: exact token accounting for every sample of a dataset, before training.

>>> report = scan("train.jsonl", model="Qwen/Qwen2-VL-7B-Instruct", max_length=4096)  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'VC201': 12, 'VC101': 1}

For each sample: render the conversation with the checkpoint's chat template, count each image's
placeholder tokens from its header, tokenize with the real tokenizer, locate the assistant tokens,
and simulate the framework's truncation at ``max_length``. Problems become findings; the scan
always finishes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vlmcheck import findings as F
from vlmcheck.chat import RenderLimit, compile_template, render_chat
from vlmcheck.data.files import FileProblem, check_path_text
from vlmcheck.data.formats import (
    FORMATS,
    Conversation,
    ImageRef,
    RowError,
    VideoRef,
    detect_format,
    row_id,
    to_conversation,
)
from vlmcheck.data.images import ImageInfo, ImageProblem, decode_data_url, probe_bytes, probe_path
from vlmcheck.data.readers import BadRow
from vlmcheck.data.remote import is_url, probe_url
from vlmcheck.data.remote import join as join_url
from vlmcheck.data.videos import VideoInfo, VideoProblem, probe_video_bytes, probe_video_path
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.families import Overrides
from vlmcheck.families.base import RESIZE_MODES, Expansion, VideoFamily
from vlmcheck.layout import TRUNCATIONS, Layout, build_layout, kept_ranges, overlap
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.preview import Previewer
from vlmcheck.records import RecordWriter
from vlmcheck.report import Report, ReportBuilder
from vlmcheck.results import SampleResult
from vlmcheck.sources import Source, open_source, shard_label
from vlmcheck.util import AtomicOutput, output_target

ENGINES = ("local", "ray")
_CHUNK = 512  # one encode_batch call per chunk; larger batches tokenize faster (docs/performance.md)
# conversation, collapsed text, features per image, image sizes, placeholder runs per image or video
# (in text order), and which of the two each placeholder is
_Prepared = tuple[Conversation, str, list[int | None], list[tuple[int, int]], list[tuple[int, ...]], list[str]]


@dataclass(frozen=True)
class ScanOptions:
    max_length: int | None = None
    truncation: str = "right"
    format: str | None = None
    image_root: str | None = None
    exif_transpose: bool = True
    allow_outside_root: bool = False  # kept for callers of 0.x; reading outside the root is the default now
    confine: bool = False  # refuse any media path that resolves outside the image root (VC104)
    check_integrity: bool = True
    split: str | None = None


class Scanner:
    """Analyzes samples for one model and one set of options. Built once per worker process."""

    url_root: str | None = None  # a dataset at an fsspec URL: its relative image paths are under that URL

    def __init__(self, spec: ModelSpec, options: ScanOptions, root: Path) -> None:
        if spec.chat_template is None:
            raise UsageError(
                f"{spec.path} has no chat template (chat_template.jinja/.json or tokenizer_config.json); "
                "pass --chat-template FILE"
            )
        self.spec = spec
        self.family = spec.family
        self.options = options
        self.root = root
        self.real_root = os.path.realpath(root)
        self.url_root = options.image_root if is_url(options.image_root) else None  # (sources: hook)
        self._real_dirs: dict[str, str] = {}
        self.tokenizer = spec.tokenizer
        self.image_token_id = spec.token_id(self.family.image_token)
        self.expansion = self.family.expansion(spec.settings)
        self._placeholder_re = re.compile(re.escape(self.family.placeholder))
        # Families that count videos (video_placeholder, video_token, expand_video) get both kinds of
        # placeholder replaced in one pass, in text order.
        self.video_token_id: int | None = None
        self.video_expansion = ""
        patterns = [f"(?P<image>{re.escape(self.family.placeholder)})"]
        if isinstance(self.family, VideoFamily):
            self.video_token_id = spec.token_id(self.family.video_token)
            self.video_expansion = self.family.video_expansion(spec.settings)
            patterns.append(f"(?P<video>{re.escape(self.family.video_placeholder)})")
        self._media_re = re.compile("|".join(patterns))
        self.eos = spec.special_tokens.get("eos_token")
        self._budget_unit = self._pixel_unit()
        self.previews = Previewer(local_path=self._local_path, exif_transpose=options.exif_transpose,
                                  max_length=options.max_length, truncation=options.truncation)
        self._check_template()
        self.typed_text = not self._renders_string_content()

    def _check_template(self) -> None:
        """The template must compile and render a plain two-turn conversation: one that cannot (a syntax
        error, ``1/0``, a type error, endless recursion or loops) is a broken checkpoint, said before the
        scan (exit 2), not a finding on every row. A ``raise_exception`` on this conversation is left to the
        rows: some templates rightly refuse a conversation without an image or a system turn."""
        assert self.spec.chat_template is not None
        where = f"the chat template of {self.spec.path}"
        try:
            compile_template(self.spec.chat_template)
        except jinja2.TemplateSyntaxError as e:
            raise UsageError(f"{where} does not compile: {e} (line {e.lineno}); fix it or pass --chat-template FILE"
                             ) from None
        except Exception as e:
            raise UsageError(f"{where} does not compile ({type(e).__name__}: {str(e)[:200]})") from None
        probe = Conversation(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                       {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}],
                             images=[])
        try:
            self._render(probe)
        except RenderLimit as e:
            raise UsageError(f"{where} does not finish on a two-turn conversation: {e}") from None
        except jinja2.TemplateError:
            pass
        except Exception as e:
            what = "RecursionError" if isinstance(e, RecursionError) else f"{type(e).__name__}: {str(e)[:200]}"
            raise UsageError(f"{where} fails on a plain two-turn conversation ({what}); fix it or pass "
                             "--chat-template FILE") from None

    def _pixel_unit(self) -> int | None:
        factor = getattr(self.spec.settings, "factor", None)
        return int(factor) ** 2 if factor else None

    # -- images ---------------------------------------------------------------------------
    def _probe(self, ref: ImageRef) -> ImageInfo:
        check = self.options.check_integrity
        if ref.kind == "bytes":
            return probe_bytes(ref.value, check_integrity=check)
        if ref.kind == "data_url":
            return probe_bytes(decode_data_url(ref.value), check_integrity=check)
        if ref.kind == "pil":  # the processor is handed this object as it is: its size, never EXIF-rotated
            return ImageInfo(ref.value.width, ref.value.height, format=ref.value.format)
        if ref.kind == "url":
            raise ImageProblem("VC101", f"remote image {ref.value} is not downloaded by vlmcheck; "
                                        "download the images and point the dataset at local files")
        if ref.kind == "remote":  # fsspec: ranged reads of the header
            return probe_url(ref.value, check_integrity=check)
        if self.url_root is not None and ref.value and not os.path.isabs(str(ref.value)):
            return probe_url(join_url(self.url_root, str(ref.value)), check_integrity=check)
        return probe_path(self._local_path(str(ref.value), "image"), check_integrity=check)

    def _local_path(self, raw: str, what: str) -> Path:
        """A dataset path, relative to the image root; with ``confine``, one that must resolve under it (VC104)."""
        if not raw:
            raise ImageProblem("VC101", f"empty {what} path")
        try:
            check_path_text(raw)
        except FileProblem as p:
            raise ImageProblem("VC101", p.message) from None
        path = Path(raw)
        if raw.startswith("~") and not self.options.confine:
            path = path.expanduser()
        if not path.is_absolute():
            path = self.root / path
        if self.options.confine:
            try:
                real = self._realpath(path)
            except (OSError, ValueError) as e:
                raise ImageProblem("VC101", f"{raw[:200]} cannot be resolved: {e}") from None
            if os.path.commonpath([real, self.real_root]) != self.real_root:
                raise ImageProblem("VC104", f"{raw} resolves to {real}, outside the image root {self.real_root}")
        return path

    def _realpath(self, path: Path) -> str:
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

    def _images(self, conv: Conversation, found: list[F.Finding]
                ) -> tuple[list[int | None], list[tuple[int, int]], list[Expansion | None]]:
        counts: list[int | None] = []
        sizes: list[tuple[int, int]] = []
        expansions: list[Expansion | None] = []
        settings = self.spec.settings
        per_sample = getattr(self.family, "sample_settings", None)
        if per_sample is not None:  # a processor that counts by the sample's image count (LLaVA-OneVision)
            settings = per_sample(settings, images=len(conv.images))
        for k, ref in enumerate(conv.images, 1):
            label = f"image {k} of {len(conv.images)} ({ref.describe()[:120]})"
            try:
                info = self._probe(ref)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                counts.append(None)
                expansions.append(None)
                continue
            width, height = info.size(exif_transpose=self.options.exif_transpose)
            issues = self.family.check_image(width, height, settings)
            for issue in issues:
                found.append(F.make(issue.code, f"{label}: {issue.message}", image=k, **issue.data))
            if any(F.CATALOGUE[issue.code].severity >= F.Severity.ERROR for issue in issues):
                # the processor raises on this image: the sample has no length to judge, and no
                # count must leak into VC201/VC202 or the length recommendations
                counts.append(None)
                expansions.append(None)
                continue
            sizes.append((width, height))
            expansion = self.family.expand(width, height, settings)
            expansions.append(expansion)
            counts.append(expansion.features)
        return counts, sizes, expansions

    # -- videos ---------------------------------------------------------------------------
    def _probe_video(self, ref: VideoRef) -> VideoInfo:
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
            return probe_video_path(self._local_path(str(ref.value), "video"))
        except ImageProblem as p:  # the path/data-URL checks shared with images
            raise VideoProblem({"VC101": "VC111", "VC102": "VC112"}.get(p.code, p.code), p.message) from None

    def _videos(self, conv: Conversation, found: list[F.Finding]) -> tuple[list[int | None], list[Expansion | None]]:
        counts: list[int | None] = []
        expansions: list[Expansion | None] = []
        for k, ref in enumerate(conv.videos, 1):
            label = f"video {k} of {len(conv.videos)} ({ref.describe()[:120]})"
            try:
                if not isinstance(self.family, VideoFamily):
                    raise VideoProblem("VC114", f"vlmcheck does not count videos for {self.family.title} yet")
                info = self._probe_video(ref)
                expansion = self.family.expand_video(info, self.spec.settings, ref.options)
            except VideoProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", video=k, **p.data))
                counts.append(None)
                expansions.append(None)
                continue
            expansions.append(expansion)
            counts.append(expansion.features)
        return counts, expansions

    # -- text -----------------------------------------------------------------------------
    def _render(self, conv: Conversation) -> str:
        assert self.spec.chat_template is not None
        return render_chat(self.spec.chat_template, conv.messages, special_tokens=self.spec.special_tokens)

    def _collapse(self, text: str, expansions: list[Expansion | None],
                  video_expansions: list[Expansion | None] | None = None
                  ) -> tuple[str, list[tuple[int, ...]], list[str]]:
        """Replace the k-th image placeholder with image k's collapsed expansion and the j-th video
        placeholder with video j's, as the processor's ``get_text_with_replacements`` does; returns the
        text, each placeholder's runs and its kind ("image"/"video"), in text order."""
        runs: list[tuple[int, ...]] = []
        kinds: list[str] = []
        videos = video_expansions or []

        def replace(match: re.Match[str]) -> str:
            kind = match.lastgroup or "image"
            k = kinds.count(kind)
            kinds.append(kind)
            pool = expansions if kind == "image" else videos
            expansion = pool[k] if k < len(pool) else None
            if expansion is None:  # unreadable image/video, or a placeholder without one
                runs.append((1,))
                return self.expansion if kind == "image" else self.video_expansion
            runs.append(expansion.runs)
            return expansion.text

        return self._media_re.sub(replace, text), runs, kinds

    def _supervised_chars(self, conv: Conversation, text: str) -> list[tuple[int, int]]:
        """Character spans of assistant content in ``text``, found in message order so that a
        reply quoting the prompt is not matched inside the prompt."""
        return self._text_spans(conv, text)[0]

    def _text_spans(self, conv: Conversation, text: str) -> tuple[list[tuple[int, int]], list[str]]:
        """The assistant spans (as ``_supervised_chars``), and the roles of message text the rendered
        ``text`` does not hold: what the template dropped (a template that trims whitespace drops nothing)."""
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
                    if self.eos and text.startswith(self.eos, end):
                        end += len(self.eos)
                    spans.append((at, end))
                cursor = end
        return spans, missing

    def _renders_string_content(self) -> bool:
        """Whether the template renders a message whose content is a plain string. Processor templates
        (llava-hf's, for one) render only typed parts and drop a string in silence; TRL's
        ``prepare_multimodal_messages`` turns strings into text parts before them, and so does the scan."""
        marker = "vlmcheck-probe-3f9a"

        def renders(content: Any) -> bool:
            messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
            try:
                return marker in self._render(Conversation(messages=messages, images=[]))
            except Exception:
                return False

        return renders(marker) or not renders([{"type": "text", "text": marker}])

    # -- one batch --------------------------------------------------------------------------
    def analyze(self, items: list[tuple[int, Any]]) -> list[SampleResult]:
        results: list[SampleResult] = []
        pending: list[tuple[SampleResult, _Prepared]] = []
        for index, item in items:
            try:
                result, prepared = self._prepare(index, item)
            except Exception as e:  # a row no rule foresaw: a finding on that row, never the end of the scan
                result, prepared = unreadable_row(index, item, e), None
            results.append(result)
            if prepared is not None:
                pending.append((result, prepared))
            elif result.findings and self.previews.wants(result):  # (preview: hook)
                result.preview = self.previews.make(result)
        if pending:
            encodings = self._encode_each([p[1][1] for p in pending])
            for (result, (conv, text, counts, sizes, runs, kinds)), enc in zip(pending, encodings):
                if isinstance(enc, Exception):
                    why = ("the text holds a lone surrogate (invalid Unicode), which no tokenizer encodes"
                           if _utf8(text) != text else f"the tokenizer cannot encode this sample's text: {enc}")
                    result.findings.append(F.make("VC001", why))
                    continue
                try:
                    layout = self._finish(result, conv, text, counts, sizes, runs, enc.ids, enc.offsets, kinds=kinds)
                except Exception as e:
                    results[results.index(result)] = unreadable_row(result.index, None, e, id=result.id)
                    continue
                if result.findings and self.previews.wants(result):  # (preview: hook)
                    result.preview = self.previews.make(result, images=conv.images, layout=layout, kinds=kinds)
        return [printable(result) for result in results]

    def _encode_each(self, texts: list[str]) -> list[Any]:
        """``_encode``, and where the batch fails (text with a lone surrogate, which the Rust tokenizer
        cannot take), each text alone, so that only the bad one becomes a finding."""
        try:
            return self._encode(texts)
        except Exception:
            out: list[Any] = []
            for text in texts:
                try:
                    out.append(self._encode([text])[0])
                except Exception as e:
                    out.append(e)
            return out

    def _encode(self, texts: list[str]) -> list[Any]:
        """Tokenize with special tokens, as processors do, except text that already starts with BOS
        (templates that write ``<bos>`` themselves, like Gemma's): ``processor.apply_chat_template``
        and TRL's collators tokenize that with ``add_special_tokens=False``, so BOS is not doubled."""
        bos = self.spec.special_tokens.get("bos_token") or None
        has_bos = [bos is not None and t.startswith(bos) for t in texts]
        if not any(has_bos):
            return self.tokenizer.encode_batch(texts, add_special_tokens=True)
        out: list[Any] = [None] * len(texts)
        for special in (False, True):  # special tokens only for text without its own BOS
            indices = [i for i, own in enumerate(has_bos) if own != special]
            if indices:
                encoded = self.tokenizer.encode_batch([texts[i] for i in indices], add_special_tokens=special)
                for i, enc in zip(indices, encoded):
                    out[i] = enc
        return out

    def _prepare(self, index: int, item: Any) -> tuple[SampleResult, _Prepared | None]:
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        if isinstance(item, BadRow):
            result.findings.append(F.make("VC001", item.reason))
            return result, None
        if isinstance(item, dict):  # a malformed row is still reported under its id
            result.id = row_id(item) or result.id
        fmt = self.options.format or detect_format(item)
        if fmt is None and isinstance(item, dict) and ("messages" in item or "conversations" in item):
            fmt = "sharegpt"  # has the field, in the wrong shape: let the reader name what is wrong
        if fmt is None:
            keys = sorted(item)[:8] if isinstance(item, dict) else type(item).__name__
            result.findings.append(F.make("VC001", f"no conversation found (fields: {keys})"))
            return result, None
        try:
            conv = to_conversation(item, fmt)
        except RowError as e:
            result.findings.append(F.make("VC001", str(e)))
            return result, None
        if conv.id is not None:
            result.id = conv.id
        if self.typed_text:
            conv.messages = [typed_message(m) for m in conv.messages]
        found = result.findings
        counts, sizes, expansions = self._images(conv, found)
        result.image_tokens = counts
        if conv.mismatch is not None:
            tags, images = conv.mismatch
            found.append(F.make("VC002", f"{tags} image placeholder(s) in the text but {images} image(s)",
                                placeholders=tags, images=images))
        result.video_tokens, video_expansions = self._videos(conv, found)
        if conv.video_mismatch is not None:
            tags, videos = conv.video_mismatch
            found.append(F.make("VC002", f"{tags} video placeholder(s) in the text but {videos} video(s)",
                                placeholders=tags, videos=videos))
        if not any(m.get("role") == "assistant" and has_text(m.get("content")) for m in conv.messages):
            found.append(F.make("VC003", "no assistant turn with content: every label is masked"))
        try:
            text, runs, kinds = self._collapse(self._render(conv), expansions, video_expansions)
        except RenderLimit as e:
            found.append(F.make("VC001", f"the chat template does not finish on this conversation: {e}"))
            return result, None
        except jinja2.TemplateError as e:
            found.append(F.make("VC001", f"the chat template rejects this conversation: {e}"))
            return result, None
        except Exception as e:  # 1/0, a type error, recursion: the template fails on this row, in training too
            what = "RecursionError" if isinstance(e, RecursionError) else f"{type(e).__name__}: {str(e)[:200]}"
            found.append(F.make("VC001", f"the chat template fails on this conversation ({what})"))
            return result, None
        return result, (conv, text, counts, sizes, runs, kinds)

    def _finish(self, result: SampleResult, conv: Conversation, text: str, counts: list[int | None],
                sizes: list[tuple[int, int]], runs: list[tuple[int, ...]], ids: list[int],
                offsets: list[tuple[int, int]], *, kinds: list[str] | None = None) -> Layout:
        supervised_chars, dropped = self._text_spans(conv, text)
        layout = build_layout(ids, offsets, image_token_id=self.image_token_id, image_runs=runs,
                              supervised_chars=supervised_chars, text=text,
                              video_token_id=self.video_token_id)
        if dropped:
            roles = ", ".join(sorted(set(dropped)))
            result.findings.append(F.make(
                "VC004", f"the chat template drops the text of {len(dropped)} message part(s) ({roles}): the "
                         "sample trains without it, and its length is counted without it",
                roles=sorted(set(dropped)), parts=len(dropped)))
        if not layout.supervised_tokens and not any(f.code == "VC003" for f in result.findings):
            result.findings.append(F.make(
                "VC003", "the rendered conversation has no assistant tokens: every label is masked"))
        kinds = list(kinds or [])
        kinds += ["image"] * (len(layout.images) - len(kinds))  # placeholders the tokenizer made of plain text
        placeholders = kinds.count("image")
        video_placeholders = kinds.count("video")
        videos = result.video_tokens
        if placeholders != len(counts) and conv.mismatch is None:
            result.findings.append(F.make(
                "VC002", f"the rendered text has {placeholders} image placeholder(s) for {len(counts)} image(s)",
                placeholders=placeholders, images=len(counts),
            ))
        if video_placeholders != len(videos) and conv.video_mismatch is None:
            result.findings.append(F.make(
                "VC002", f"the rendered text has {video_placeholders} video placeholder(s) for {len(videos)} video(s)",
                placeholders=video_placeholders, videos=len(videos),
            ))
        if any(c is None for c in counts) or any(c is None for c in videos):
            return layout  # lengths are unknown while an image or video is unreadable
        result.tokens = layout.total
        result.supervised_tokens = layout.supervised_tokens
        image_tokens = [n for n, kind in zip(layout.image_tokens, kinds) if kind == "image"]
        result.text_only_tokens = layout.total - sum(image_tokens)  # video tokens stay: no pixel cap moves them
        if self.options.max_length is not None and placeholders == len(counts) and video_placeholders == len(videos):
            result.fits_max_pixels = self._fit_budget(sizes, result.text_only_tokens)
            self._truncation(result, layout, self.options.max_length, kinds=kinds)
        return layout

    def _truncation(self, result: SampleResult, layout: Layout, max_length: int, *,
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
                    fix=self._cut_fix(layout.total, result.fits_max_pixels),
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

    def _cut_fix(self, total: int, fits_max_pixels: int | None) -> str:
        fix = f"raise max_length to {total:,}"
        if fits_max_pixels is not None:
            fix += f", or cap max_pixels at {fits_max_pixels:,} (the sample then fits whole)"
        return fix + ", or drop the sample"

    def _fit_budget(self, sizes: list[tuple[int, int]], text_tokens: int) -> int | None:
        """Largest pixel budget (a multiple of factor**2) under which the sample fits whole."""
        unit = self._budget_unit
        max_length = self.options.max_length
        if unit is None or max_length is None or not sizes:
            return None
        settings = self.spec.settings
        current = getattr(settings, "pre_max_pixels", None) or getattr(settings, "max_pixels", None)
        if current is None:
            return None

        def fits(budget: int) -> bool:
            s = self.family.with_max_pixels(settings, budget)
            try:
                return text_tokens + sum(self.family.image_tokens(w, h, s) for w, h in sizes) <= max_length
            except (ZeroDivisionError, ValueError):
                # the budget resizes a side to 0 px: the real pipeline fails there too
                return False

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


def _utf8(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate from the data (JSON can escape one): shown as \udXXX
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(result: SampleResult) -> SampleResult:
    """``result`` with an id and messages every output can encode: a lone surrogate in a row's id or
    text must not crash the report, the records or the terminal."""
    result.id = _utf8(result.id)
    for finding in result.findings:
        finding.message = _utf8(finding.message)
        if finding.id is not None:
            finding.id = _utf8(str(finding.id))
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


# -- worker processes ---------------------------------------------------------------------------
_WORKER: Scanner | None = None


def _init_worker(model_path: str, overrides: Overrides, chat_template: str | None, options: ScanOptions,
                 root: str) -> None:
    global _WORKER
    spec = load_model(model_path, overrides=overrides, chat_template=chat_template)
    _WORKER = Scanner(spec, options, Path(root))


def _work(items: list[tuple[int, Any]]) -> list[SampleResult]:
    assert _WORKER is not None
    return _WORKER.analyze(items)


def nonempty(rows: Iterator[Any], path: Path | str) -> Iterator[Any]:
    """``rows``, or a :class:`DatasetError` when there is none: an empty dataset is not a clean one."""
    import itertools

    first = next(rows, _NOTHING)
    if first is _NOTHING:
        raise DatasetError(f"{path} holds no rows: there is nothing to check (an empty file, array or split)")
    return itertools.chain([first], rows)


_NOTHING = object()


def row_chunks(rows: Iterator[Any], size: int, limit: int | None) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        chunk.append((index, row))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _results(scanner: Scanner, spec: ModelSpec, chunks: Iterator[list[tuple[int, Any]]], workers: int,
             options: ScanOptions, root: Path) -> Iterator[SampleResult]:
    if workers <= 1:
        for chunk in chunks:
            yield from scanner.analyze(chunk)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    args = (str(spec.path), spec.overrides, spec.chat_template, options, str(root))
    with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
        # Bounded in-flight queue: Pool.imap would read the whole dataset ahead of the workers.
        inflight: deque[tuple[list[tuple[int, Any]], Any]] = deque()

        def done() -> list[SampleResult]:
            chunk, pending = inflight.popleft()
            try:
                return list(pending.get())
            except Exception:
                # a chunk that cannot travel to a worker or back (a row nested too deeply to pickle): this
                # process analyzes it, where every row error is a finding
                return scanner.analyze(chunk)

        for chunk in chunks:
            inflight.append((chunk, pool.apply_async(_work, (chunk,))))
            if len(inflight) >= 4 * workers:
                yield from done()
        while inflight:
            yield from done()


def build_scanner(
    path: Path | Source,
    *,
    model: str | os.PathLike[str] | ModelSpec,
    max_length: int | None,
    truncation: str = "right",
    format: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    resize: str = "processor",
    exif_transpose: bool | None = None,
    allow_outside_root: bool = False,
    confine: bool = False,
    chat_template: str | None = None,
    split: str | None = None,
    processor_options: Mapping[str, Any] | None = None,
) -> Scanner:
    """Validate the options :func:`scan` and :func:`vlmcheck.repair` share, load the model and
    return the per-sample analyzer. Raises :class:`UsageError`/:class:`DatasetError` for misuse."""
    if truncation not in TRUNCATIONS:
        raise UsageError(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")
    if resize not in RESIZE_MODES:
        raise UsageError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {resize!r}")
    if format is not None and format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if max_length is not None and max_length <= 0:
        raise UsageError("max_length must be positive")
    for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive")
    if confine and allow_outside_root:
        raise UsageError("confine and allow_outside_root contradict each other: pick one")
    if isinstance(model, ModelSpec):
        # a loaded model carries its processor settings and template: these would be ignored
        given = [name for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels),
                                          ("chat_template", chat_template),
                                          ("processor_options", processor_options or None)) if value is not None]
        if given or resize != "processor":
            raise UsageError(f"{', '.join(given) or 'resize'} cannot change a loaded ModelSpec; pass the "
                             "model path, or load_model(model, overrides=Overrides(...), chat_template=...)")
        spec = model
    else:
        overrides = Overrides(max_pixels=max_pixels, min_pixels=min_pixels, resize=resize,
                              extra=dict(processor_options or {}))
        spec = load_model(model, overrides=overrides, chat_template=chat_template)
    if isinstance(path, Source):  # (sources: hook) files, globs, objects: the source knows its folder
        default_root = path.root
        if default_root is None and image_root is None:
            raise UsageError(f"the datasets ({path.name}) lie in different folders, so relative image paths have "
                             "no one folder to start from: pass image_root (--image-root)")
    elif not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    else:
        default_root = path if path.is_dir() else path.parent
    where = image_root if image_root is not None else default_root
    root = Path(".") if is_url(where) else Path(where or ".")  # (sources: hook) a URL root stays a URL
    if exif_transpose is None:
        exif_transpose = resize == "processor"
    options = ScanOptions(max_length=max_length, truncation=truncation, format=format,
                          image_root=str(where) if is_url(where) else str(root), exif_transpose=exif_transpose,
                          allow_outside_root=allow_outside_root, confine=confine, split=split)
    return Scanner(spec, options, root)


def scan(
    dataset: Any,
    *,
    model: str | os.PathLike[str] | ModelSpec,
    max_length: int | None = None,
    truncation: str = "right",
    format: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    resize: str = "processor",
    exif_transpose: bool | None = None,
    allow_outside_root: bool = False,
    confine: bool = False,
    chat_template: str | None = None,
    split: str | None = None,
    workers: int = 1,
    limit: int | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    exact: bool = False,
    trust_remote_code: bool = False,
    processor_options: Mapping[str, Any] | None = None,
    shard: str | tuple[int, int] | None = None,
    resume: bool = False,
    framework: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> Report:
    """Scan ``dataset`` for samples that would crash or not train under ``model`` at ``max_length``.

    Raises only for misuse (unknown family, missing dataset, bad option); every problem in the
    data is a finding in the returned :class:`~vlmcheck.report.Report`.

    Args:
        dataset: a .json / .jsonl (also .gz/.bz2/.xz/.zst) / .parquet file, a WebDataset .tar shard, a
            ``save_to_disk`` folder, a folder of data files, a glob, a list of paths; or an object: a
            ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict`` (with ``split``), a list of dicts, a
            pandas DataFrame, a pyarrow Table (:mod:`vlmcheck.sources`).
        model: a checkpoint folder, a Hugging Face model id, or a :class:`ModelSpec`.
        max_length: the framework's ``max_length`` / ``cutoff_len``; None skips truncation checks.
        truncation: ``right`` (transformers, TRL), ``left`` / ``delete`` (ms-swift),
            ``llamafactory`` (LLaMA-Factory's per-turn split of cutoff_len).
        resize: how ``max_pixels``/``min_pixels`` apply: ``processor``, ``prescale``
            (LLaMA-Factory ``image_max_pixels``, EasyR1/verl) or ``qwen-vl-utils`` (ms-swift).
        exif_transpose: whether images are seen EXIF-rotated. Default: yes for ``processor``
            (transformers' ``load_image`` applies it to paths), no for ``prescale`` and
            ``qwen-vl-utils`` (LLaMA-Factory, EasyR1 and qwen-vl-utils call ``Image.open`` only).
        output: write one JSON record per sample to this .jsonl file (atomically).
        progress: called as ``progress(done, total_or_None)`` while scanning.
        shard: ``"I/N"`` or ``(I, N)``: scan only rows whose index is I modulo N (I counts from 0); the
            summaries of all N shards merge into the whole's (:func:`vlmcheck.merge`).
        resume: with ``output``, go on from where an interrupted scan with the same settings stopped.
        processor_options: call-time processor options the family reads (``vlmcheck families``
            lists them), e.g. ``{"do_pan_and_scan": True}`` for Gemma 3, ``{"fps": 2,
            "do_sample_frames": True}`` for Qwen videos; an option the family does not read is an error.
        exact: count with the checkpoint's own transformers processor, sample by sample
            (:mod:`vlmcheck.exact`): any family transformers has a processor for, slower.
        trust_remote_code: with ``exact``, run a checkpoint's own processor code (``auto_map``).
        framework: ``llamafactory``, ``trl`` or ``swift``: that framework's truncation, resize route and defaults
            (max length, pixel budgets) for every setting left unset, without a config (``vlmcheck check`` reads
            the config itself, with the framework's own templates).
        engine: ``local`` (this process, or ``workers`` processes) or ``ray``: the same per-sample analysis on Ray
            Data actors, with the same records and summary (:mod:`vlmcheck.integrations.ray_engine`; needs
            ``vlmcheck[ray]``).
        ray_address: with ``engine="ray"``, the cluster to connect to (``ray.init(address=...)``); default: Ray's
            own (``RAY_ADDRESS``, else a local cluster).
    """
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "ray" and (exact or workers != 1):
        raise UsageError("engine='ray' runs the arithmetic scan with one actor per CPU of the cluster; exact and "
                         "workers go with the local engine")
    if ray_address is not None and engine != "ray":
        raise UsageError("ray_address (--ray-address) applies with engine='ray' (--engine ray)")
    if engine == "ray":
        from vlmcheck.integrations.ray_engine import ray

        ray()  # without Ray, the install hint before any work
    if framework is not None:
        # the framework's truncation, resize route and defaults (max length, pixel budgets), from its own module
        from vlmcheck.frameworks import scan_defaults

        defaults = scan_defaults(framework)
        for key, value in (("truncation", truncation), ("resize", resize)):
            if value not in (defaults.get(key), {"truncation": "right", "resize": "processor"}[key]):
                raise UsageError(f"{key}={value!r} contradicts framework {framework!r} ({defaults.get(key)})")
        truncation = defaults.get("truncation", truncation)
        resize = defaults.get("resize", resize)
        max_length = max_length if max_length is not None else defaults.get("max_length")
        max_pixels = max_pixels if max_pixels is not None else defaults.get("max_pixels")
        min_pixels = min_pixels if min_pixels is not None else defaults.get("min_pixels")
        exif_transpose = exif_transpose if exif_transpose is not None else defaults.get("exif_transpose")
    if exact and processor_options:
        raise UsageError("processor_options apply to the arithmetic scan; with exact=True the checkpoint's own "
                         "processor runs with its own settings")
    if exact and (shard is not None or resume or not isinstance(dataset, (str, os.PathLike))):
        raise UsageError("exact=True scans one dataset file or folder; shard, resume and objects go with the "
                         "arithmetic scan")
    if exact:  # (exact: hook)
        from vlmcheck.exact import scan_exact

        return scan_exact(
            dataset, model=model, max_length=max_length, truncation=truncation, format=format,
            image_root=image_root, max_pixels=max_pixels, min_pixels=min_pixels, resize=resize,
            exif_transpose=exif_transpose, allow_outside_root=allow_outside_root, confine=confine, chat_template=chat_template,
            split=split, workers=workers, limit=limit, output=output, progress=progress,
            trust_remote_code=trust_remote_code,
        )
    if trust_remote_code:
        raise UsageError("trust_remote_code only applies with exact=True (--exact): the arithmetic scan runs no "
                         "checkpoint code")
    if workers < 1:
        raise UsageError("workers must be at least 1")
    if resume and output is None:
        raise UsageError("resume needs output: the records of the interrupted scan are where it goes on from")
    source = open_source(dataset, split=split, shard=shard)  # (sources: hook)
    scanner = build_scanner(
        source, model=model, max_length=max_length, truncation=truncation, format=format, image_root=image_root,
        max_pixels=max_pixels, min_pixels=min_pixels, resize=resize, exif_transpose=exif_transpose,
        allow_outside_root=allow_outside_root, confine=confine, chat_template=chat_template, split=split,
        processor_options=processor_options,
    )
    spec, options, root = scanner.spec, scanner.options, scanner.root
    if output is not None:
        source.check_output(output)
        output_target(output)  # a symlink or device is refused before the scan, not after it
    total = source.count(limit=limit) if progress else None
    builder = ReportBuilder(dataset=source.name, model=str(spec.path), model_type=spec.model_type,
                            options=options, settings=spec.settings)
    identity = {"dataset": source.name, "model": str(spec.path), "options": repr(options),
                "settings": repr(spec.settings), "shard": shard_label(source.shard), "limit": limit}
    writer = RecordWriter(output, builder, resume=resume, identity=identity)
    started = time.perf_counter()

    def tick(results: Iterator[SampleResult]) -> Iterator[SampleResult]:
        for result in results:
            yield result
            if progress is not None:
                progress(builder.scanned, total)

    if engine == "ray":  # (ray: hook) the same Scanner.analyze on Ray actors, results back in row order
        from vlmcheck.integrations.ray_engine import ray_results

        results = ray_results(dataset, source, scanner, start=writer.start, limit=limit, address=ray_address,
                              chunk=_CHUNK)
        if writer.start == 0:
            results = nonempty(results, source.name)
    else:
        chunks = source.chunks(_CHUNK, start=writer.start, limit=limit)
        if writer.start == 0:
            chunks = nonempty(chunks, source.name)
        results = _results(scanner, spec, chunks, workers, options, root)
    writer.write(tick(results), started=started)
    report = builder.build(seconds=writer.seconds(time.perf_counter()))
    if source.shard is not None:
        report.summary["shard"] = shard_label(source.shard)
    return report


def write_records(results: Iterator[SampleResult], builder: ReportBuilder,
                  output: str | os.PathLike[str] | None) -> None:
    """Feed every result to the report and, with ``output``, to a JSON Lines file that appears whole or not at
    all; the report keeps the records (:mod:`vlmcheck.records`)."""
    RecordWriter(output, builder).write(results, started=time.perf_counter())


class _AtomicLines(AtomicOutput):
    """JSON Lines through :class:`~vlmcheck.util.AtomicOutput`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)

    def write(self, record: dict[str, Any]) -> None:
        self.fp.write(json.dumps(record, ensure_ascii=False) + "\n")
