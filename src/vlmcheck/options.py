"""The options of each command: one frozen object per command, validated once, built by the library and the command
line alike (:class:`ScanOptions` for ``scan`` and ``repair``, :class:`CheckOptions`, :class:`LintOptions`,
:class:`TemplateOptions`).

>>> options = ScanOptions(max_length=4096, resize="prescale", max_pixels=1_003_520)
>>> options.exif_rotated  # LLaMA-Factory's pre-scaling opens images without EXIF rotation
False
>>> ScanOptions(framework="llamafactory").truncation
'llamafactory'

:func:`vlmcheck.scan` takes these fields as keyword arguments (``scan(data, model=..., max_length=4096)``) and
builds this object from them; ``vlmcheck scan`` builds it from its flags. Adding an option is one field here
(and its flag): every check that needs only the options is in :meth:`ScanOptions.__post_init__`; what needs the
model or the data (a loaded ``ModelSpec`` cannot take ``max_pixels``; relative image paths need one folder) is
checked where those are opened. The other commands' objects work the same way: each library function takes its
object's fields as keywords (:func:`from_keywords`, :func:`keyword_signature`) and its command's flags are named
after the fields (``tests/test_options.py`` fails on a field without a flag or a flag without a field).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from vlmcheck.data.formats import FORMATS
from vlmcheck.errors import UsageError
from vlmcheck.families.base import RESIZE_MODES
from vlmcheck.layout import TRUNCATIONS
from vlmcheck.sources import parse_shard

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# what a scan counts without ``framework``: a framework's own truncation or resize route replaces these
_PLAIN = {"truncation": "right", "resize": "processor"}
ENGINES = ("local", "ray")  # where the rows are counted: this process (or ``workers`` processes), or Ray Data


@dataclass(frozen=True)
class ScanOptions:
    """Everything :func:`vlmcheck.scan` takes besides the data and the model (see its docstring for each)."""

    max_length: int | None = None
    truncation: str = "right"
    format: str | None = None
    image_root: str | os.PathLike[str] | None = None
    max_pixels: int | None = None
    min_pixels: int | None = None
    resize: str = "processor"
    exif_transpose: bool | None = None  # None: the resize route's own (see exif_rotated)
    allow_outside_root: bool = False  # kept for callers of 0.x; reading outside the root is the default now
    confine: bool = False  # refuse any media path that resolves outside the image root (VC104)
    chat_template: str | None = None
    split: str | None = None
    processor_options: Mapping[str, Any] | None = None
    workers: int | None = None  # processes; None: one per core for a dataset of 4,096+ rows, else one
    limit: int | None = None
    output: str | os.PathLike[str] | None = None
    exact: bool = False
    trust_remote_code: bool = False
    shard: str | tuple[int, int] | None = None  # "I/N" or (I, N); (I, N) once built
    resume: bool = False
    framework: str | None = None
    engine: str = "local"
    ray_address: str | None = None  # with engine="ray": ray.init(address=...); default RAY_ADDRESS, else local

    def __post_init__(self) -> None:
        if self.framework is not None:
            self._apply_framework(self.framework)
        if self.truncation not in TRUNCATIONS:
            raise UsageError(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {self.truncation!r}")
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")
        if self.format is not None and self.format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        _positive(self, "max_length", "max_pixels", "min_pixels", "limit")
        if self.confine and self.allow_outside_root:
            raise UsageError("confine and allow_outside_root contradict each other: pick one")
        if self.exact and self.processor_options:
            raise UsageError("processor_options apply to the arithmetic scan; with exact=True the checkpoint's own "
                             "processor runs with its own settings")
        if self.exact and (self.shard is not None or self.resume):
            raise UsageError("exact=True scans one dataset file or folder; shard, resume and objects go with the "
                             "arithmetic scan")
        if self.exact and self.resize == "qwen-vl-utils":
            raise UsageError("--exact runs the processor on the images as given and does not run qwen-vl-utils; "
                             "drop --exact (vlmcheck applies qwen-vl-utils' resize itself) or use --resize prescale")
        if self.trust_remote_code and not self.exact:
            raise UsageError("trust_remote_code only applies with exact=True (--exact): the arithmetic scan runs no "
                             "checkpoint code")
        if self.workers is not None and self.workers < 1:
            raise UsageError("workers must be at least 1 (or None: picked for the data and the machine)")
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.engine == "ray" and (self.exact or self.workers not in (None, 1)):
            raise UsageError("engine='ray' runs the arithmetic scan with one actor per CPU of the cluster; exact and "
                             "workers go with the local engine")
        if self.ray_address is not None and self.engine != "ray":
            raise UsageError("ray_address (--ray-address) applies with engine='ray' (--engine ray)")
        if self.resume and self.output is None:
            raise UsageError("resume needs output: the records of the interrupted scan are where it goes on from")
        _fill(self, "shard", parse_shard(self.shard))

    def _apply_framework(self, name: str) -> None:
        """The framework's truncation, resize route and defaults (max length, pixel budgets) for every option
        left unset, from the framework's own module."""
        from vlmcheck.frameworks import scan_defaults

        defaults = scan_defaults(name)
        for key in ("truncation", "resize"):
            value = getattr(self, key)
            if value not in (defaults.get(key), _PLAIN[key]):
                raise UsageError(f"{key}={value!r} contradicts framework {name!r} ({defaults.get(key)})")
            _fill(self, key, defaults.get(key, value))
        for key in ("max_length", "max_pixels", "min_pixels", "exif_transpose"):
            if getattr(self, key) is None:
                _fill(self, key, defaults.get(key))

    @property
    def exif_rotated(self) -> bool:
        """Whether images are seen EXIF-rotated: ``exif_transpose``, else yes for ``resize="processor"``
        (transformers' ``load_image`` rotates paths), no otherwise (LLaMA-Factory, EasyR1 and qwen-vl-utils call
        ``Image.open`` only)."""
        return self.resize == "processor" if self.exif_transpose is None else self.exif_transpose

    @property
    def identity(self) -> str:
        """What a resumed scan must have in common with the one it goes on from: the options that change a
        record (not where records go, how many processes write them or which rows: those are checked apart)."""
        apart = {"workers", "output", "resume", "limit", "shard", "engine", "ray_address"}
        return repr({f.name: getattr(self, f.name) for f in fields(self) if f.name not in apart})


@dataclass(frozen=True)
class CheckOptions:
    """Everything :func:`vlmcheck.check` takes besides the config (see its docstring for each).

    ``check`` runs no scan: the framework module the config names decides how rows become tokens, so a check has
    none of :class:`ScanOptions`' counting options; ``limit`` and ``output`` mean what they mean for a scan.

    >>> CheckOptions(path_map={"/mnt/data": "./data"}, limit=100).limit
    100
    """

    model: str | os.PathLike[str] | None = None
    data: str | os.PathLike[str] | None = None
    path_map: Mapping[str, str] | None = None
    limit: int | None = None
    output: str | os.PathLike[str] | None = None
    engine: str = "local"
    ray_address: str | None = None  # with engine="ray": ray.init(address=...); default RAY_ADDRESS, else local

    def __post_init__(self) -> None:
        _positive(self, "limit")
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise UsageError("ray_address (--ray-address) applies with engine='ray' (--engine ray)")
        for src, dst in (self.path_map or {}).items():
            if not src or not dst:  # an empty FROM is a prefix of every path: it would rewrite them all
                raise UsageError(f"path_map {src!r} -> {dst!r}: both the prefix and its replacement must be given")


@dataclass(frozen=True)
class LintOptions:
    """Everything :func:`vlmcheck.lint` takes besides the config and the hardware (see its docstring for each).

    >>> LintOptions(framework="trl", num_processes=8).num_processes
    8
    """

    data: str | os.PathLike[str] | None = None
    model: str | os.PathLike[str] | None = None
    framework: str | None = None
    num_processes: int | None = None

    def __post_init__(self) -> None:
        from vlmcheck.lint.readers import known_framework

        known_framework(self.framework)
        _positive(self, "num_processes")


@dataclass(frozen=True)
class TemplateOptions:
    """Everything :func:`vlmcheck.templates.check_template` takes besides the rows and the tokenizer (see its
    docstring for each). ``template`` is one name or several, kept once each, in order.

    >>> TemplateOptions(template=["trl", "llamafactory", "trl"]).template
    ('trl', 'llamafactory')
    """

    template: str | Sequence[str]
    chat_template: str | None = None
    max_length: int | None = None
    legacy: bool | None = None
    instruction_part: str | None = None
    response_part: str | None = None
    model_name_or_path: str | None = None
    mm_use_im_start_end: bool = False
    llava_fork: str = "llava"  # "llava_next": LLaVA-NeXT's train.py (its tokenizer routes and conversations)

    def __post_init__(self) -> None:
        if self.llava_fork not in ("llava", "llava_next"):
            raise UsageError(f"llava_fork must be llava or llava_next, not {self.llava_fork!r}")
        names = (self.template,) if isinstance(self.template, str) else tuple(dict.fromkeys(self.template))
        if not names:
            raise UsageError("name at least one template")
        _fill(self, "template", names)
        _positive(self, "max_length")


def _positive(options: Any, *names: str) -> None:
    """Sizes and counts (lengths, pixel budgets, rows, processes) are positive when given."""
    for name in names:
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive")


def _fill(options: Any, name: str, value: Any) -> None:
    object.__setattr__(options, name, value)  # frozen: only __post_init__ completes a field


Options = TypeVar("Options", bound="DataclassInstance")


def from_keywords(cls: type[Options], options: Options | None, given: Mapping[str, Any], *,
                  caller: str) -> Options:
    """The one options object of a library call: ``options=`` as given, else built (and so validated) from the
    call's keywords, which must be fields of ``cls``; never both."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    if options is not None:
        if given:
            raise TypeError(f"{caller}() takes options= or keyword options, not both ({', '.join(sorted(given))})")
        return options
    missing = [name for name, f in known.items()
               if f.default is MISSING and f.default_factory is MISSING and name not in given]
    if missing:
        raise TypeError(f"{caller}() missing 1 required keyword-only argument: {missing[0]!r}")
    return cls(**given)


def keyword_signature(function: Callable[..., Any], cls: type[DataclassInstance], *,
                      after: str) -> inspect.Signature:
    """``function``'s signature as ``help()`` and editors show it: its own parameters, with every field of
    ``cls`` as a keyword after the parameter ``after``, in place of its ``**kwargs``."""
    own = inspect.signature(function)
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in params].index(after) + 1
    given = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                               default=inspect.Parameter.empty if f.default is MISSING else f.default)
             for f in fields(cls)]
    return own.replace(parameters=[*params[:at], *given, *params[at:]])
