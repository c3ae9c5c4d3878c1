"""``scan(..., exact=True)``: count every sample with the checkpoint's own transformers processor.

>>> report = scan("train.jsonl", model="org/any-vlm", max_length=4096, exact=True)  # doctest: +SKIP

The arithmetic scan (:mod:`vlmcheck.scan`) counts from image headers with a family module. This one
works for any checkpoint transformers can build a processor for, including model types vlmcheck has
no module for: per sample it renders the conversation with ``processor.apply_chat_template``, opens
the images as transformers' ``load_image`` does, calls the processor and reads ``input_ids``. Image
spans are the runs of the model's image token; supervised tokens come from the tokenizer's offsets.
Row handling, media probes, truncation findings and the pipeline around the counter are the arithmetic
scan's own code (:mod:`vlmcheck.counting`, :mod:`vlmcheck.pipeline`), so the report and ``--output`` are
the same shape. Slower (every image is decoded and resized), but
the processor is the oracle.

Needs transformers (``pip install 'vlmcheck[exact]'``), imported only here.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from vlmcheck import findings as F
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
)
from vlmcheck.data.formats import Conversation, ImageRef
from vlmcheck.data.images import ImageProblem, decode_data_url
from vlmcheck.data.videos import VideoProblem
from vlmcheck.errors import (
    DatasetError,
    MissingDependencyError,
    ModelError,
    UnknownFamilyError,
    UsageError,
)
from vlmcheck.families import Overrides
from vlmcheck.families.qwen2_vl import prescale
from vlmcheck.layout import Layout, build_layout
from vlmcheck.model import ModelSpec, load_model, read_checkpoint_json, resolve_model_path
from vlmcheck.options import ScanOptions
from vlmcheck.results import SampleResult
from vlmcheck.sources import Source

# Rows per task sent to a worker: a processor call costs milliseconds to seconds (it decodes and
# resizes every image), so chunks stay small for an even load and a live progress count.
_CHUNK = 32


@dataclass(frozen=True)
class ExactSettings:
    """What the report shows for an exact scan: the processor class that counted, and for a family
    vlmcheck knows its pixel budget (the budget its max_pixels fixes are computed against)."""

    processor_class: str
    min_pixels: int | None = None
    max_pixels: int | None = None
    pre_min_pixels: int | None = None
    pre_max_pixels: int | None = None
    resize: str = "processor"


# -- building the processor ----------------------------------------------------------------------
def load_processor(
    path: Path, *, trust_remote_code: bool = False, max_pixels: int | None = None, min_pixels: int | None = None,
) -> Any:
    """``AutoProcessor.from_pretrained(path)``, offline, with ``max_pixels``/``min_pixels`` passed as
    processor kwargs (as Qwen's model cards do).

    Without torchvision, transformers cannot build a processor whose video processor needs it
    (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...: "Qwen2VLVideoProcessor requires the Torchvision library").
    Images never need it, so the same processor class is then built without its video processor.

    Building one takes seconds (the tokenizer); the last few are kept per process, keyed by the
    folder's files as they are now, so repeated scans of one checkpoint build it once.
    """
    return _cached_processor(str(path), _folder_state(path), trust_remote_code, max_pixels, min_pixels)


def _folder_state(path: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_file()))
    except OSError:
        return ()


@lru_cache(maxsize=4)
def _cached_processor(path: str, _state: tuple[tuple[str, int, int], ...], trust_remote_code: bool,
                      max_pixels: int | None, min_pixels: int | None) -> Any:
    return _build_processor(Path(path), trust_remote_code=trust_remote_code, max_pixels=max_pixels,
                            min_pixels=min_pixels)


def _build_processor(path: Path, *, trust_remote_code: bool, max_pixels: int | None, min_pixels: int | None) -> Any:
    try:
        from transformers import logging as transformers_logging
    except ImportError:
        raise MissingDependencyError("transformers", "exact", "--exact (the checkpoint's own processor)") from None
    # Loading warnings ("You are using a model of type acme_vl to instantiate...") are about models,
    # not about how a processor counts; errors still raise.
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return _build(path, trust_remote_code=trust_remote_code, max_pixels=max_pixels, min_pixels=min_pixels)
    finally:
        transformers_logging.set_verbosity(level)


def _build(path: Path, *, trust_remote_code: bool, max_pixels: int | None, min_pixels: int | None) -> Any:
    from transformers import AutoProcessor

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    kwargs.update({k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v is not None})
    try:
        processor = AutoProcessor.from_pretrained(str(path), **kwargs)
    except Exception as e:  # ImportError for a missing backend; some auto classes raise ValueError
        if "torchvision" not in str(e).lower():
            raise _load_error(path, e, trust_remote_code) from None
        processor = _without_video_processor(path, e, kwargs, trust_remote_code)
    if not hasattr(processor, "image_processor") or getattr(processor, "tokenizer", None) is None:
        raise ModelError(f"{path} gives a {type(processor).__name__}, not a processor with an image processor "
                         "and a tokenizer; --exact needs a vision-language processor")
    for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
        if value is not None and not _mentions(processor.image_processor.to_dict(), value):
            raise UsageError(f"{type(processor.image_processor).__name__} does not take {name}: it is not in its "
                             f"settings after from_pretrained(..., {name}={value}); set the size in "
                             "preprocessor_config.json, or drop --" + name.replace("_", "-"))
    return processor


def _without_video_processor(path: Path, error: Exception, kwargs: dict[str, Any], trust_remote_code: bool) -> Any:
    """The processor class AutoProcessor resolved, built without its video processor."""
    base = _processor_class_in(error)
    image_only = _without_video(base) if base is not None else None
    if image_only is None:  # torchvision is needed by more than a video processor (Pixtral)
        raise ModelError(f"the processor of {path} needs torchvision to build: pip install torchvision")
    try:
        return image_only.from_pretrained(str(path), **kwargs)
    except Exception as again:
        if "torchvision" in str(again).lower():
            raise ModelError(f"{base.__name__} of {path} needs torchvision even without its video processor "
                             f"({_first_line(again)}): pip install torchvision") from None
        raise _load_error(path, again, trust_remote_code) from None


def _load_error(path: Path, error: Exception, trust_remote_code: bool) -> ModelError:
    if isinstance(error, ImportError):
        return ModelError(f"the processor of {path} needs a package that is not installed: {_first_line(error)}")
    if not trust_remote_code and "trust_remote_code" in str(error):
        return ModelError(f"the processor of {path} is remote code (auto_map); read it, then pass "
                          "--trust-remote-code (trust_remote_code=True) to run it")
    return ModelError(f"transformers could not build the processor of {path}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _processor_class_in(error: BaseException) -> Any:
    """The processor class whose ``from_pretrained`` raised: the innermost ``cls`` on the traceback
    that is a ``ProcessorMixin`` (what AutoProcessor resolved, local or remote code)."""
    from transformers import ProcessorMixin

    found = None
    tb = error.__traceback__
    while tb is not None:
        cls = tb.tb_frame.f_locals.get("cls")
        if isinstance(cls, type) and issubclass(cls, ProcessorMixin):
            found = cls
        tb = tb.tb_next
    return found


def _without_video(base: Any) -> Any:
    """``base`` whose ``__init__`` has no video parameter; it passes ``None`` for them.

    transformers 5.x reads a processor's parts from ``inspect.signature(cls.__init__)`` and its
    accepted config keys from ``cls.__init__.__code__.co_varnames``, so the subclass needs a real
    function with the base's other parameter names (``image_seq_length``, ``chat_template``, ...),
    not a ``*args`` wrapper; hence it is compiled from the base's signature.
    """
    params = list(inspect.signature(base.__init__).parameters.values())[1:]
    if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.KEYWORD_ONLY) for p in params):
        return None
    # the video sub-processors (transformers' own reading of the signature), not video_token & co
    video = [name for name in base.get_attributes() if "video" in name]
    kept = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in video]
    if not video:
        return None
    namespace: dict[str, Any] = {"_base_init": base.__init__}
    head = ["self"]
    for p in kept:
        if p.default is p.empty:
            head.append(p.name)
        else:
            namespace[f"_default_{p.name}"] = p.default
            head.append(f"{p.name}=_default_{p.name}")
    call = ["self", *(f"{p.name}={p.name}" for p in kept), *(f"{name}=None" for name in video), "**kwargs"]
    source = f"def __init__({', '.join(head)}, **kwargs):\n    _base_init({', '.join(call)})\n"
    exec(compile(source, f"<vlmcheck image-only {base.__name__}>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{base.__qualname__}.__init__"
    return type(base.__name__, (base,), {"__init__": init, "__module__": base.__module__,
                                         "__doc__": f"{base.__name__} without its video processor (vlmcheck)."})


def _mentions(value: Any, wanted: int) -> bool:
    if isinstance(value, dict):
        return any(_mentions(v, wanted) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, wanted) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value == wanted


def _read_config(folder: Path) -> dict[str, Any]:
    return read_checkpoint_json(folder / "config.json")  # the one checkpoint reader: {} where there is none


def _feature_token_id(config: dict[str, Any], processor: Any) -> int:
    """The token the model counts image features by: config.json's ``image_token_id`` (or the older
    ``image_token_index``), which the model's forward compares with its features; else the
    processor's. They differ for Gemma-3, whose processor's ``image_token_id`` is the begin marker."""
    for key in ("image_token_id", "image_token_index"):
        value = config.get(key, (config.get("text_config") or {}).get(key))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    token_id = getattr(processor, "image_token_id", None)
    if isinstance(token_id, int):
        return token_id
    token = getattr(processor, "image_token", None)
    if isinstance(token, str):
        converted = processor.tokenizer.convert_tokens_to_ids(token)
        if isinstance(converted, int):
            return converted
    raise ModelError(f"cannot tell the image token of {type(processor).__name__}: no image_token_id in "
                     "config.json and none on the processor")


# -- the per-sample analyzer -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Setup:
    """What a worker needs to rebuild the counter (picklable): its :class:`~vlmcheck.pipeline.Recipe`."""

    path: str
    trust_remote_code: bool
    overrides: Overrides
    chat_template: str | None
    options: ScanOptions
    root: str

    def build(self) -> ExactScanner:
        return ExactScanner(self)


class ExactScanner:
    """The processor counter: counts samples with the checkpoint's real processor (a
    :class:`~vlmcheck.pipeline.Counter`). Built once per worker process.

    Shares with the arithmetic :class:`~vlmcheck.scan.Scanner` (:mod:`vlmcheck.counting`, so the two cannot
    drift): the row handling, the media probes (VC101-VC105, VC111-VC113), the supervised character spans, the
    truncation findings (VC201-VC204) and, for a family vlmcheck knows (``known``), its image checks and the
    ``max_pixels`` fix.
    """

    chunk_size = _CHUNK

    def __init__(self, setup: _Setup) -> None:  # no tokenizer.json, no family needed
        self.setup = setup
        self.options = setup.options
        self.root = Path(setup.root)
        self.media = Media(setup.options, self.root)
        folder = Path(setup.path)
        self.config = _read_config(folder)
        self.model_type = str(self.config.get("model_type") or "unknown")
        self.known = _known_spec(folder, setup.overrides)
        self.judge = Judge(setup.options, self.known)
        self.processor = load_processor(folder, trust_remote_code=setup.trust_remote_code,
                                        **_processor_pixels(setup.overrides))
        self.tok = self.processor.tokenizer
        self.chat_template = setup.chat_template
        if setup.chat_template is None and getattr(self.processor, "chat_template", None) is None:
            raise UsageError(f"{folder} has no chat template the processor can use (chat_template.jinja/.json "
                             "or tokenizer_config.json); pass --chat-template FILE")
        self.image_token_id = _feature_token_id(self.config, self.processor)
        self.eos = getattr(self.tok, "eos_token", None)
        self.with_offsets = bool(getattr(self.tok, "is_fast", True))  # slow tokenizers have none
        self.typed_text = not renders_string_content(self._render)

    @property
    def model_name(self) -> str:
        return self.setup.path

    def recipe(self) -> _Setup:
        return self.setup

    @property
    def settings(self) -> ExactSettings:
        s = self.known.settings if self.known is not None else None
        return ExactSettings(
            processor_class=type(self.processor).__name__,
            min_pixels=getattr(s, "min_pixels", None), max_pixels=getattr(s, "max_pixels", None),
            pre_min_pixels=getattr(s, "pre_min_pixels", None), pre_max_pixels=getattr(s, "pre_max_pixels", None),
            resize=self.setup.overrides.resize,
        )

    def count_chunk(self, items: list[tuple[int, Any]]) -> list[SampleResult]:
        results = []
        for index, item in items:
            try:
                results.append(self._sample(index, item))
            except Exception as e:  # a row no rule foresaw: a finding on it, never the end of the scan
                results.append(unreadable_row(index, item, e))
        return [printable(result) for result in results]

    # -- one sample ------------------------------------------------------------------------------------
    def _sample(self, index: int, item: Any) -> SampleResult:
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        conv = self._conversation(result, item)
        if conv is None:
            return result
        if self.typed_text:
            conv.messages = [typed_message(m) for m in conv.messages]
        found = result.findings
        images, sizes = self._open_images(conv, found)
        result.image_tokens = [None] * len(images)
        if conv.videos:
            # The container checks the arithmetic scan makes (missing, unreadable, truncated: VC111-VC113) hold
            # here too; the count does not: transformers' video processors need torchvision, so the processor
            # call cannot include the videos, and a length without them would be wrong in silence.
            for k, ref in enumerate(conv.videos, 1):
                label = f"video {k} of {len(conv.videos)} ({ref.describe()[:120]})"
                try:
                    self.media.probe_video(ref)
                except VideoProblem as p:
                    found.append(F.make(p.code, f"{label}: {p.message}", video=k))
            found.append(F.make("VC114", f"{len(conv.videos)} video(s): --exact does not count videos (the "
                                         "processor's video path needs torchvision); scan without --exact counts "
                                         "Qwen-VL videos from their headers", videos=len(conv.videos)))
            result.image_tokens = self._image_counts(images)
            return result
        if conv.mismatch is not None:
            tags, n = conv.mismatch
            found.append(F.make("VC002", f"{tags} image placeholder(s) in the text but {n} image(s)",
                                placeholders=tags, images=n))
        if not any(m.get("role") == "assistant" and has_text(m.get("content")) for m in conv.messages):
            found.append(F.make("VC003", "no assistant turn with content: every label is masked"))
        try:
            text = self._render(conv)
        except Exception as e:  # jinja2.TemplateError from the template, ValueError from transformers
            found.append(F.make("VC001", f"the chat template rejects this conversation: {e}"))
            result.image_tokens = self._image_counts(images)
            return result
        dropped = text_spans(conv, text, eos=self.eos)[1]
        if dropped:
            roles = ", ".join(sorted(set(dropped)))
            found.append(F.make(
                "VC004", f"the chat template drops the text of {len(dropped)} message part(s) ({roles}): the "
                         "sample trains without it, and its length is counted without it",
                roles=sorted(set(dropped)), parts=len(dropped)))
        if conv.mismatch is not None or any(im is None for im in images):
            # the processor would raise; each readable image is still counted on its own
            result.image_tokens = self._image_counts(images)
            return result
        try:
            out = self._process(text, [im for im in images if im is not None])
        except Exception as e:
            self._processor_finding(found, e)
            result.image_tokens = self._image_counts(images)
            return result
        self._finish_exact(result, conv, text, out, images, sizes)
        return result

    def _conversation(self, result: SampleResult, item: Any) -> Conversation | None:
        return read_conversation(result, item, format=self.options.format)

    def _open_images(self, conv: Conversation, found: list[F.Finding]
                     ) -> tuple[list[Image.Image | None], list[tuple[int, int]]]:
        """Each image as the processor gets it (None when it cannot be read), and the sizes of the
        readable ones. Header problems are the arithmetic scan's findings; a file whose header reads
        but whose pixels do not decode is VC102/VC103 too."""
        images: list[Image.Image | None] = []
        sizes: list[tuple[int, int]] = []
        for k, ref in enumerate(conv.images, 1):
            label = f"image {k} of {len(conv.images)} ({ref.describe()[:120]})"
            try:
                info = self.media.probe(ref)
                image = self._decode(ref)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                images.append(None)
                continue
            width, height = info.size(exif_transpose=self.options.exif_rotated)
            sizes.append((width, height))
            if self.known is not None:
                for issue in self.known.family.check_image(width, height, self.known.settings):
                    found.append(F.make(issue.code, f"{label}: {issue.message}", image=k, **issue.data))
            images.append(image)
        return images, sizes

    def _decode(self, ref: ImageRef) -> Image.Image:
        """transformers' ``load_image``: decode, EXIF-transpose (when the framework does), RGB. With
        ``--resize prescale`` the image is first scaled to the pixel budget, as LLaMA-Factory and
        EasyR1 do."""
        if ref.kind == "bytes":
            source: Any = io.BytesIO(ref.value)
        elif ref.kind == "data_url":
            source = io.BytesIO(decode_data_url(ref.value))
        else:
            path = Path(str(ref.value)).expanduser()
            source = path if path.is_absolute() else self.root / path
        try:
            with Image.open(source) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) if self.options.exif_rotated else opened.copy()
        except Image.DecompressionBombError as e:
            raise ImageProblem("VC105", f"PIL refuses to decode it: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            code = "VC103" if "truncated" in str(e) else "VC102"
            raise ImageProblem(code, f"the pixels do not decode: {e}") from None
        overrides = self.setup.overrides
        if overrides.resize == "prescale":
            width, height = prescale(image.width, image.height, overrides.min_pixels, overrides.max_pixels)
            if (width, height) != image.size:
                image = image.resize((width, height))
        return image.convert("RGB") if image.mode != "RGB" else image

    def _render(self, conv: Conversation) -> str:
        text = self.processor.apply_chat_template(conv.messages, tokenize=False, chat_template=self.chat_template)
        return text if isinstance(text, str) else text[0]

    def _process(self, text: str, images: list[Image.Image]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"return_text_replacement_offsets": True}
        bos = getattr(self.tok, "bos_token", None)
        if bos and text.startswith(bos):
            # a template that writes BOS itself (Gemma): apply_chat_template and TRL's collators then
            # tokenize without special tokens, so BOS is not doubled
            kwargs["add_special_tokens"] = False
        if self.with_offsets:
            kwargs["return_offsets_mapping"] = True
        with warnings.catch_warnings():
            # deprecations of processor kwargs (Qwen's max_pixels) are transformers' API, not the data's
            warnings.simplefilter("ignore", FutureWarning)
            # one sample's images nested in a list, as collators pass them: LLaVA-OneVision counts an
            # image by how many its sample has
            return dict(self.processor(text=[text], images=[images] if images else None, **kwargs))

    def _processor_finding(self, found: list[F.Finding], error: Exception) -> None:
        message = " ".join(str(error).split())[:300] or type(error).__name__
        if "aspect ratio" in message:
            code = "VC107"
        elif "number of images" in message or "images passed" in message:
            code = "VC002"
        else:
            code = "VC001"
        if any(f.code == code for f in found):
            return  # already reported from the image header or the row
        found.append(F.make(code, f"the processor ({type(self.processor).__name__}) rejects this sample: "
                                  f"{type(error).__name__}: {message}"))

    def _image_counts(self, images: list[Image.Image | None]) -> list[int | None]:
        """Image tokens of each readable image on its own (a sample the processor cannot take whole)."""
        counts: list[int | None] = []
        token = getattr(self.processor, "image_token", None)
        for image in images:
            if image is None or not isinstance(token, str):
                counts.append(None)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    ids = _ids(self.processor(text=[token], images=[[image]])["input_ids"])
            except Exception:
                counts.append(None)
                continue
            counts.append(sum(1 for t in ids if t == self.image_token_id))
        return counts

    # -- layout -------------------------------------------------------------------------------------
    def _finish_exact(self, result: SampleResult, conv: Conversation, text: str, out: dict[str, Any],
                      images: list[Image.Image | None], sizes: list[tuple[int, int]]) -> None:
        ids = _ids(out["input_ids"])
        offsets = _pairs(_first(out.get("offset_mapping")))
        replacements = _first(out.get("text_replacement_offsets"))
        layout, supervised_known = self.layout(conv, text, ids, offsets, replacements, images)
        assert layout.total == len(ids)
        placeholders = len(layout.images)
        if placeholders != len(images) and conv.mismatch is None:
            result.findings.append(F.make(
                "VC002", f"the rendered text has {placeholders} image placeholder(s) for {len(images)} image(s)",
                placeholders=placeholders, images=len(images),
            ))
        if placeholders == len(images):
            result.image_tokens = list(layout.image_tokens)
        result.tokens = layout.total
        result.supervised_tokens = layout.supervised_tokens if supervised_known else None
        if supervised_known and not layout.supervised_tokens and not any(f.code == "VC003" for f in result.findings):
            result.findings.append(F.make(
                "VC003", "the rendered conversation has no assistant tokens: every label is masked"))
        result.text_only_tokens = layout.total - sum(layout.image_tokens)
        if self.options.max_length is not None and placeholders == len(images):
            result.fits_max_pixels = self.judge.fit_budget(sizes, result.text_only_tokens)
            self.judge.truncation(result, layout, self.options.max_length)

    def layout(self, conv: Conversation, text: str, ids: list[int], offsets: list[tuple[int, int]] | None,
               replacements: list[dict[str, Any]] | None, images: list[Image.Image | None]
               ) -> tuple[Layout, bool]:
        """The sample's :class:`Layout` from the processor's ``input_ids``, and whether its supervised
        spans are known.

        ``build_layout`` takes a tokenization where each run of image tokens is one token: the runs
        of ``input_ids`` are collapsed, each to its first token's position. With the processor's
        ``text_replacement_offsets`` (transformers' ``ProcessorMixin.__call__``) the expanded text and
        each image's character span are known exactly; for processors with their own ``__call__``
        the expanded text is the decoded ``input_ids``, used only when encoding it gives them back.
        """
        runs = _runs(ids, self.image_token_id)
        supervised_known = True
        if replacements is not None and offsets is not None:
            expanded, shift, spans = _expand(text, replacements)
            groups = _group_by_span(runs, offsets, spans)
            supervised = [(shift(a), shift(b)) for a, b in text_spans(conv, text, eos=self.eos)[0]]
        else:
            expanded = self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            again = self.tok([expanded], add_special_tokens=False, return_offsets_mapping=self.with_offsets)
            if self.with_offsets and _ids(again["input_ids"]) == ids:
                offsets = [(int(a), int(b)) for a, b in _first(again["offset_mapping"])]
                supervised = text_spans(conv, expanded, eos=self.eos)[0]
            else:
                offsets = [(0, 0)] * len(ids)
                supervised, supervised_known = [], False
            groups = _group_by_count(runs, self._image_counts(images) if len(runs) != len(images) else None)
        image_runs = [tuple(e - s for s, e in group) for group in groups]
        run_end = {s: e for group in groups for s, e in group}
        collapsed_ids: list[int] = []
        collapsed_offsets: list[tuple[int, int]] = []
        i = 0
        while i < len(ids):
            end = run_end.get(i, i + 1)
            collapsed_ids.append(ids[i])
            collapsed_offsets.append((offsets[i][0], offsets[end - 1][1]))
            i = end
        layout = build_layout(collapsed_ids, collapsed_offsets, image_token_id=self.image_token_id,
                              image_runs=image_runs, supervised_chars=supervised, text=expanded)
        return layout, supervised_known


def _ids(value: Any) -> list[int]:
    """The first row of a batch of ids (lists, or numpy arrays for processors that return them)."""
    row = value[0] if len(value) and hasattr(value[0], "__len__") else value
    return [int(t) for t in row]


def _pairs(value: Any) -> list[tuple[int, int]] | None:
    return None if value is None else [(int(a), int(b)) for a, b in value]


def _first(value: Any) -> Any:
    if value is None:
        return None
    return value[0] if len(value) else None


def _runs(ids: list[int], token_id: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = None
    for i, t in enumerate([*ids, None]):
        if t == token_id and start is None:
            start = i
        elif t != token_id and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _expand(text: str, replacements: list[dict[str, Any]]
            ) -> tuple[str, Callable[[int], int], list[tuple[int, int]]]:
    """The processor's expanded text, a map from rendered to expanded character positions (as
    transformers' ``_adjust_assistant_masks_indices`` shifts assistant spans), and each image's
    span in the expanded text."""
    pieces, cursor = [], 0
    ends: list[int] = []
    gained = [0]
    spans: list[tuple[int, int]] = []
    for r in replacements:
        (s, e), (ns, ne) = r["span"], r["new_span"]
        pieces += [text[cursor:s], r["replacement"]]
        cursor = e
        ends.append(e)
        gained.append(ne - e)
        if r.get("type") == "image":
            spans.append((ns, ne))
    pieces.append(text[cursor:])

    def shift(char: int) -> int:
        return char + gained[bisect_right(ends, char)]

    return "".join(pieces), shift, spans


def _group_by_span(runs: list[tuple[int, int]], offsets: list[tuple[int, int]],
                   spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Runs grouped by the image whose expanded span holds them (a run outside every span, which
    the processor did not write for an image, is a group of its own)."""
    groups: list[list[tuple[int, int]]] = []
    owner: dict[int, int] = {}
    starts = [s for s, _ in spans]
    for run in runs:
        char = offsets[run[0]][0]
        k = bisect_right(starts, char) - 1
        if 0 <= k and char < spans[k][1]:
            if k in owner:
                groups[owner[k]].append(run)
                continue
            owner[k] = len(groups)
        groups.append([run])
    return groups


def _group_by_count(runs: list[tuple[int, int]], counts: list[int | None] | None) -> list[list[tuple[int, int]]]:
    """Runs grouped into images by each image's own token count (tiles, crops and rows give an image
    several runs); one run per image when the counts do not add up."""
    if counts is None or any(c is None for c in counts) or sum(e - s for s, e in runs) != sum(
            c for c in counts if c is not None):
        return [[run] for run in runs]
    groups: list[list[tuple[int, int]]] = []
    pending = iter(runs)
    for count in counts:
        group, total = [], 0
        while total < (count or 0):
            run = next(pending)
            group.append(run)
            total += run[1] - run[0]
        if total != count:
            return [[run] for run in runs]
        groups.append(group)
    return groups


def _known_spec(folder: Path, overrides: Overrides) -> ModelSpec | None:
    """vlmcheck's own reading of the checkpoint, for a family it knows (image checks, max_pixels fixes)."""
    try:
        return load_model(folder, overrides=overrides)
    except UnknownFamilyError:
        return None
    except ModelError:
        return None  # e.g. no tokenizer.json: the processor does not need one


def _processor_pixels(overrides: Overrides) -> dict[str, int | None]:
    if overrides.resize == "processor":
        return {"max_pixels": overrides.max_pixels, "min_pixels": overrides.min_pixels}
    return {}


def exact_counter(source: Source, *, model: str | os.PathLike[str] | ModelSpec, options: ScanOptions) -> ExactScanner:
    """The counter of :func:`vlmcheck.scan` with ``exact=True``: the same options and report, counted by the
    checkpoint's own processor (``AutoProcessor.from_pretrained``) sample by sample.

    ``max_pixels``/``min_pixels`` are passed to ``from_pretrained`` with ``resize="processor"``, and
    scale each image first with ``resize="prescale"``; ``qwen-vl-utils`` is not run.
    ``trust_remote_code`` runs a checkpoint's own processor code (``auto_map``); off by default.
    """
    chat_template = options.chat_template
    if isinstance(model, ModelSpec):
        given = [n for n, v in (("max_pixels", options.max_pixels), ("min_pixels", options.min_pixels))
                 if v is not None]
        if given or options.resize != "processor":
            raise UsageError(f"{', '.join(given) or 'resize'} cannot change a loaded ModelSpec; pass the model path")
        folder, overrides = model.path, model.overrides
        chat_template = chat_template if chat_template is not None else model.chat_template
    else:
        folder = resolve_model_path(model)
        overrides = Overrides(max_pixels=options.max_pixels, min_pixels=options.min_pixels, resize=options.resize)
    if options.image_root is None and not isinstance(source.root, Path):
        raise DatasetError(f"dataset not found: {source.name} (exact=True reads a local dataset file or folder)")
    root = Path(options.image_root) if options.image_root is not None else source.root
    assert isinstance(root, Path)
    return ExactScanner(_Setup(path=str(folder), trust_remote_code=options.trust_remote_code, overrides=overrides,
                               chat_template=chat_template, options=options, root=str(root)))
