"""The options of a scan: one frozen object, validated once, built by the library and the command line alike.

>>> options = ScanOptions(max_length=4096, resize="prescale", max_pixels=1_003_520)
>>> options.exif_rotated  # LLaMA-Factory's pre-scaling opens images without EXIF rotation
False
>>> ScanOptions(framework="llamafactory").truncation
'llamafactory'

:func:`vlmcheck.scan` takes these fields as keyword arguments (``scan(data, model=..., max_length=4096)``) and
builds this object from them; ``vlmcheck scan`` builds it from its flags. Adding an option is one field here
(and its flag): every check that needs only the options is in :meth:`ScanOptions.__post_init__`; what needs the
model or the data (a loaded ``ModelSpec`` cannot take ``max_pixels``; relative image paths need one folder) is
checked where those are opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vlmcheck.data.formats import FORMATS
from vlmcheck.errors import UsageError
from vlmcheck.families.base import RESIZE_MODES
from vlmcheck.layout import TRUNCATIONS
from vlmcheck.sources import parse_shard

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
        if self.max_length is not None and self.max_length <= 0:
            raise UsageError("max_length must be positive")
        for name, value in (("max_pixels", self.max_pixels), ("min_pixels", self.min_pixels)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive")
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
        self._set("shard", parse_shard(self.shard))

    def _apply_framework(self, name: str) -> None:
        """The framework's truncation, resize route and defaults (max length, pixel budgets) for every option
        left unset, from the framework's own module."""
        from vlmcheck.frameworks import scan_defaults

        defaults = scan_defaults(name)
        for key in ("truncation", "resize"):
            value = getattr(self, key)
            if value not in (defaults.get(key), _PLAIN[key]):
                raise UsageError(f"{key}={value!r} contradicts framework {name!r} ({defaults.get(key)})")
            self._set(key, defaults.get(key, value))
        for key in ("max_length", "max_pixels", "min_pixels", "exif_transpose"):
            if getattr(self, key) is None:
                self._set(key, defaults.get(key))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ completes a field

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
