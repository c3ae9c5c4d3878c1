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

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2

from vlmcheck import findings as F
from vlmcheck.chat import RenderLimit, compile_template, render_chat
from vlmcheck.counting import (
    Judge,
    Media,
    has_text,
    printable,
    read_conversation,
    renders_string_content,
    text_spans,
    typed_message,
    unreadable_row,
    utf8_safe,
)
from vlmcheck.data.formats import Conversation
from vlmcheck.data.images import ImageProblem
from vlmcheck.data.remote import is_url
from vlmcheck.data.videos import VideoProblem
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.families import Overrides
from vlmcheck.families.base import Expansion, VideoFamily
from vlmcheck.layout import Layout, build_layout
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.options import ScanOptions, from_keywords, keyword_signature
from vlmcheck.pipeline import Counter, run
from vlmcheck.preview import Previewer
from vlmcheck.renderfast import FastRender
from vlmcheck.report import Report
from vlmcheck.results import SampleResult
from vlmcheck.sources import Source, open_source
from vlmcheck.tokencount import text_encoder

_CHUNK = 512  # one encode_batch call per chunk; larger batches tokenize faster (docs/performance.md)


@dataclass
class Prepared:
    """A sample ready for the tokenizer: its conversation, the rendered text with each placeholder collapsed,
    the features of each image (None: unreadable), the readable images' sizes, each placeholder's runs (in text
    order) and which kind ("image"/"video") each placeholder is."""

    conv: Conversation
    text: str
    counts: list[int | None]
    sizes: list[tuple[int, int]]
    runs: list[tuple[int, ...]]
    kinds: list[str]


@dataclass(frozen=True)
class ScanRecipe:
    """How a worker process builds the arithmetic counter again (picklable)."""

    model_path: str
    overrides: Overrides
    chat_template: str | None
    options: ScanOptions
    root: str
    url_root: str | None = None

    def build(self) -> Scanner:
        spec = load_model(self.model_path, overrides=self.overrides, chat_template=self.chat_template)
        return Scanner(spec, self.options, Path(self.root), url_root=self.url_root)


class Scanner:
    """The arithmetic counter: counts samples for one model and one set of options from image headers, the
    family module and the real tokenizer (a :class:`~vlmcheck.pipeline.Counter`). Built once per worker process.
    """

    chunk_size = _CHUNK

    def __init__(self, spec: ModelSpec, options: ScanOptions, root: Path, *, url_root: str | None = None) -> None:
        if spec.chat_template is None:
            raise UsageError(
                f"{spec.path} has no chat template (chat_template.jinja/.json or tokenizer_config.json); "
                "pass --chat-template FILE"
            )
        self.spec = spec
        self.family = spec.family
        self.options = options
        self.root = root
        self.media = Media(options, root, url_root)  # (sources: hook) a dataset at a URL: its images too
        self.judge = Judge(options, spec)
        self.tokenizer = spec.tokenizer
        self.encoder = text_encoder(spec.tokenizer)  # each stretch between special tokens tokenized once
        self.image_token_id = spec.token_id(self.family.image_token)
        self.expansion = self.family.expansion(spec.settings)
        self._placeholder_re = re.compile(re.escape(self.family.placeholder))
        # Families that count videos (video_placeholder, video_token, expand_video) get both kinds of
        # placeholder replaced in one pass, in text order.
        self.video_token_id: int | None = None
        self.video_expansion = ""
        patterns = [re.escape(self.family.placeholder)]
        if isinstance(self.family, VideoFamily):
            self.video_token_id = spec.token_id(self.family.video_token)
            self.video_expansion = self.family.video_expansion(spec.settings)
            patterns.append(re.escape(self.family.video_placeholder))
        # Without named groups: (?P<image>..)|(?P<video>..) is tried at every character (about 40 us on a
        # 1,000-character text), a plain alternation of literals is searched for by its first characters (<1 us).
        # The image placeholder is tried first at each position, so a match equal to it is an image.
        self._media_re = re.compile("|".join(patterns))
        self.eos = spec.special_tokens.get("eos_token")
        self.previews = Previewer(local_path=self.media.local_path, exif_transpose=options.exif_rotated,
                                  max_length=options.max_length, truncation=options.truncation)
        self._check_template()
        self.typed_text = not renders_string_content(self._render)

    @property
    def model_name(self) -> str:
        return str(self.spec.path)

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def settings(self) -> Any:
        return self.spec.settings

    def recipe(self) -> ScanRecipe:
        return ScanRecipe(str(self.spec.path), self.spec.overrides, self.spec.chat_template, self.options,
                          str(self.root), self.media.url_root)

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

    def _realpath(self, path: Path) -> str:
        return self.media.realpath(path)

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
                info = self.media.probe(ref)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                counts.append(None)
                expansions.append(None)
                continue
            width, height = info.size(exif_transpose=self.options.exif_rotated)
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
    def _videos(self, conv: Conversation, found: list[F.Finding]) -> tuple[list[int | None], list[Expansion | None]]:
        counts: list[int | None] = []
        expansions: list[Expansion | None] = []
        for k, ref in enumerate(conv.videos, 1):
            label = f"video {k} of {len(conv.videos)} ({ref.describe()[:120]})"
            try:
                if not isinstance(self.family, VideoFamily):
                    raise VideoProblem("VC114", f"vlmcheck does not count videos for {self.family.title} yet")
                info = self.media.probe_video(ref)
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
    @cached_property
    def fast_render(self) -> FastRender:
        """A recognised chat template's written-out render (:mod:`vlmcheck.renderfast`); Jinja otherwise."""
        return FastRender(self.spec.chat_template, special_tokens=self.spec.special_tokens)

    def _render(self, conv: Conversation) -> str:
        assert self.spec.chat_template is not None
        text = self.fast_render.render(conv.messages)
        if text is not None:
            return text
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
            kind = "image" if match.group() == self.family.placeholder else "video"
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

    # -- one batch --------------------------------------------------------------------------
    def count_chunk(self, items: list[tuple[int, Any]]) -> list[SampleResult]:
        results: list[SampleResult] = []
        pending: list[tuple[SampleResult, Prepared]] = []
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
            encodings = self._encode_each([p[1].text for p in pending])
            for (result, prepared), enc in zip(pending, encodings):
                conv, text, kinds = prepared.conv, prepared.text, prepared.kinds
                if isinstance(enc, Exception):
                    why = ("the text holds a lone surrogate (invalid Unicode), which no tokenizer encodes"
                           if utf8_safe(text) != text else f"the tokenizer cannot encode this sample's text: {enc}")
                    result.findings.append(F.make("VC001", why))
                    continue
                try:
                    layout = self._finish(result, prepared, enc.ids, enc.offsets)
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
            return self.encoder.encode_batch(texts, add_special_tokens=True)
        out: list[Any] = [None] * len(texts)
        for special in (False, True):  # special tokens only for text without its own BOS
            indices = [i for i, own in enumerate(has_bos) if own != special]
            if indices:
                encoded = self.encoder.encode_batch([texts[i] for i in indices], add_special_tokens=special)
                for i, enc in zip(indices, encoded):
                    out[i] = enc
        return out

    def _prepare(self, index: int, item: Any) -> tuple[SampleResult, Prepared | None]:
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        conv = read_conversation(result, item, format=self.options.format)
        if conv is None:
            return result, None
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
        return result, Prepared(conv, text, counts, sizes, runs, kinds)

    def _finish(self, result: SampleResult, prepared: Prepared, ids: list[int], offsets: list[tuple[int, int]]
                ) -> Layout:
        conv, text, counts, sizes, runs = prepared.conv, prepared.text, prepared.counts, prepared.sizes, prepared.runs
        supervised_chars, dropped = text_spans(conv, text, eos=self.eos)
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
        kinds = list(prepared.kinds)
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
            result.fits_max_pixels = self.judge.fit_budget(sizes, result.text_only_tokens)
            self.judge.truncation(result, layout, self.options.max_length, kinds=kinds)
        return layout


def build_scanner(path: Path | Source, *, model: str | os.PathLike[str] | ModelSpec, options: ScanOptions) -> Scanner:
    """Load the model and return the arithmetic counter for the dataset at ``path`` (its image root), as
    :func:`scan` and :func:`vlmcheck.repair` use it. Raises :class:`UsageError`/:class:`DatasetError` for misuse
    that needs the model or the data to see (the options alone are checked by :class:`ScanOptions`)."""
    if isinstance(model, ModelSpec):
        # a loaded model carries its processor settings and template: these would be ignored
        given = [name for name, value in (("max_pixels", options.max_pixels), ("min_pixels", options.min_pixels),
                                          ("chat_template", options.chat_template),
                                          ("processor_options", options.processor_options or None))
                 if value is not None]
        if given or options.resize != "processor":
            raise UsageError(f"{', '.join(given) or 'resize'} cannot change a loaded ModelSpec; pass the "
                             "model path, or load_model(model, overrides=Overrides(...), chat_template=...)")
        spec = model
    else:
        overrides = Overrides(max_pixels=options.max_pixels, min_pixels=options.min_pixels, resize=options.resize,
                              extra=dict(options.processor_options or {}))
        spec = load_model(model, overrides=overrides, chat_template=options.chat_template)
    root, url_root = image_root(path, options)
    return Scanner(spec, options, root, url_root=url_root)


def image_root(path: Path | Source, options: ScanOptions) -> tuple[Path, str | None]:
    """The folder relative media paths of the dataset at ``path`` start from (``options.image_root``, else the
    dataset's own folder), and the fsspec URL they start from instead when the dataset or the image root is one."""
    image_root = options.image_root
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
    if is_url(where):  # (sources: hook) a URL root stays a URL
        return Path("."), str(where)
    return Path(where or "."), None


def scan(dataset: Any, *, model: str | os.PathLike[str] | ModelSpec, options: ScanOptions | None = None,
         progress: Callable[[int, int | None], None] | None = None, **kwargs: Any) -> Report:
    """Scan ``dataset`` for samples that would crash or not train under ``model`` at ``max_length``.

    Raises only for misuse (unknown family, missing dataset, bad option); every problem in the
    data is a finding in the returned :class:`~vlmcheck.report.Report`.

    Every keyword but ``model`` and ``progress`` is a field of :class:`~vlmcheck.options.ScanOptions`, built
    once from them (or pass one as ``options=``).

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
        workers: processes that count the rows (forked; each tokenizes on one thread). None (the default): one
            per core when the dataset has 4,096 rows or more (:data:`vlmcheck.pipeline.AUTO_MIN_ROWS`), else
            this process alone; with ``exact``, this process alone. The records are the same for any number.
        engine: ``local`` (this process, or ``workers`` processes) or ``ray``: the same per-sample counting on
            Ray Data actors, with the same records and summary (:mod:`vlmcheck.integrations.ray_engine`; needs
            ``vlmcheck[ray]``).
        ray_address: with ``engine="ray"``, the cluster to connect to (``ray.init(address=...)``); default: Ray's
            own (``RAY_ADDRESS``, else a local cluster).
    """
    options = from_keywords(ScanOptions, options, kwargs, caller="scan")
    if options.exact and not isinstance(dataset, (str, os.PathLike)):
        raise UsageError("exact=True scans one dataset file or folder; shard, resume and objects go with the "
                         "arithmetic scan")
    if options.engine == "ray":
        from vlmcheck.integrations.ray_engine import ray

        ray()  # without Ray, the install hint before any work
    source = open_source(dataset, split=options.split, shard=options.shard)  # (sources: hook)
    counter: Counter
    if options.exact:  # (exact: hook) the checkpoint's own processor counts, in the same pipeline
        from vlmcheck.exact import exact_counter

        counter = exact_counter(source, model=model, options=options)
    else:
        counter = build_scanner(source, model=model, options=options)
    engine = None
    if options.engine == "ray":  # (ray: hook) the same counter on Ray Data actors, results back in row order
        from vlmcheck.integrations.ray_engine import ray_engine

        engine = ray_engine(dataset, source, address=options.ray_address)
    workers = options.workers
    if workers is None and options.exact:
        workers = 1  # the processor scan: no pool unless asked (forking a loaded processor is the user's call)
    return run(counter, source, output=options.output, resume=options.resume, workers=workers,
               limit=options.limit, progress=progress, engine=engine)


# the data, the model, then every option, as help() and editors show it
scan.__signature__ = keyword_signature(scan, ScanOptions, after="model")  # type: ignore[attr-defined]
