"""What the framework modules' runs do alike, written once: reading a launch config's values (path maps, nested
sections, whole numbers), the version of a library the run will have, whether ``datasets`` can
load a JSON source, starting a row's result, probing its images and expanding them with the family, and finding
the largest pixel budget at which a sample fits.

A framework's own facts (its messages, its defaults, its cut) stay in its module; this module holds only the
mechanics that every run repeats. A run class inherits :class:`ProcessorRun` and keeps its own ``judge``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmcheck import findings as F
from vlmcheck.data.compressed import data_suffix
from vlmcheck.data.hfjson import MIXED_AS_JSON, LoadPlan, TypeClash, as_loaded, json_schema
from vlmcheck.data.images import ImageProblem
from vlmcheck.data.readers import BadRow, dataset_kind
from vlmcheck.data.readers import iter_rows as read_rows
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.families import Expansion, Family
from vlmcheck.results import SampleResult

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from vlmcheck.model import ModelSpec


# -- the libraries of the run ------------------------------------------------------------------------------------
# the suffixes datasets' load_dataset reads with its JSON builder (packaged_modules _EXTENSION_TO_MODULE)
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")

def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def run_version(package: str, *, newest: str, below: tuple[int, ...], low: tuple[int, ...] = ()) -> tuple[str, bool]:
    """A library's version in the run: the one installed beside vlmcheck when the framework accepts it (``low`` <=
    it < ``below``: the run's own, when both share an environment), else ``newest``, the newest the framework
    accepts (what pip installs with it); and whether it was assumed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(package)
    except PackageNotFoundError:
        return newest, True
    if not low <= version_tuple(installed) < below:  # not the run's: the framework cannot run with it
        return newest, True
    return installed, False


def json_loadable(files: Sequence[Path], *, datasets_version: str, loader: str) -> LoadPlan:
    """``datasets.load_dataset("json")`` of ``files`` (one source: one table), as ``datasets_version`` loads it
    (see vlmcheck.data.hfjson): where it cannot, DatasetError (``loader`` raises and the run stops before step
    1); else what the load does to the rows' values (read them with ``loaded_rows``). Files that are not JSON are
    left out."""
    plan = LoadPlan()
    files = [f for f in files if data_suffix(f) in JSON_SUFFIXES and dataset_kind(f) in ("json", "jsonl")]
    if not files:
        return plan
    try:
        schema = json_schema(files, version_tuple(datasets_version) >= MIXED_AS_JSON, plan)
    except RecursionError:  # nested past what vlmcheck follows: not judged here
        return LoadPlan()
    except TypeClash as e:
        where = files[0] if len(files) == 1 else files[0].parent
        raise DatasetError(f"{where}, {e}: datasets {datasets_version} cannot load it as one table, so {loader} "
                           "raises and the run stops before step 1") from None
    plan.columns = tuple(schema) if isinstance(schema, dict) else None
    return plan


def loaded_rows(file: Path, plan: LoadPlan, index: int = 0) -> Iterator[Any]:
    """The rows of ``file`` (the ``index``-th file of its source) as the load returns them (hfjson.as_loaded)."""
    for number, row in enumerate(read_rows(file)):
        yield as_loaded(row, plan, (index, number)) if plan else row


# -- config values ------------------------------------------------------------------------------------------------
def mapped(value: str, mapping: Mapping[str, str]) -> str:
    """``value`` with its longest ``--path-map`` prefix rewritten (a config written on another machine)."""
    for src, dst in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        if value == src or value.startswith(src.rstrip("/") + "/"):
            return dst.rstrip("/") + value[len(src.rstrip("/")):]
    return value


def locate(value: str, near: Path, mapping: Mapping[str, str], *, up: int = 0) -> Path:
    """A path from a config or script as the framework opens it: after the ``--path-map`` rewrites, from the
    working directory it is launched in, else beside ``near`` (the config file) or in one of the ``up`` folders
    above that; as written when it is nowhere (the scan then reports it missing)."""
    path = Path(mapped(value, mapping)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    base = near.parent
    for _ in range(up + 1):
        if (base / path).exists():
            return base / path
        base = base.parent
    return path


def section(raw: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The nested mapping at ``keys`` (``data``, ``worker.actor.model``); empty where any step is not one."""
    node: Any = raw
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def whole_number(value: Any, key: str, path: Path) -> int:
    """``int(value)`` as a config value; ``key`` is how the framework spells the setting in the message."""
    if isinstance(value, bool):
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: YAML's .inf (nan is a ValueError)
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}") from None


def truthy(value: Any) -> bool:
    """A boolean override as Hydra and OmegaConf read it (``true``, ``1``, ``yes``; a YAML boolean as it is)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


# -- pixel budgets ------------------------------------------------------------------------------------------------
def largest_budget(*, lo: int, hi: int, unit: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``k * unit`` with ``lo <= k <= hi`` for which ``fits`` holds, when fitting shrinks as the budget
    grows (the fix a finding suggests for ``max_pixels``); None when even ``lo * unit`` does not fit."""
    if hi < lo or not fits(lo * unit):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * unit):
            lo = mid
        else:
            hi = mid - 1
    return lo * unit


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class Probed:
    """A row's images as the family sees them: what each expands to, their sizes, and the labels of those that
    cannot be opened or that the processor refuses (each has a finding)."""

    expansions: list[Expansion] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def image_label(k: int, n: int, image: Any) -> str:
    return f"image {k} of {n}"


class ProcessorRun:
    """What every run that feeds a checkpoint's processor has alike: the model it binds, the settings it shows,
    the settings it describes, the start of a row's result and the image probe. A subclass sets ``name``,
    ``versions``, ``length_key``, ``pixels_key`` and ``config`` (whose ``path`` is the launch config) and writes
    ``settings_shown``: what its ``describe()`` adds between the config and the keys."""

    name: str
    versions: str
    length_key: str
    pixels_key: str
    config: Any
    spec: ModelSpec
    family: Family
    settings: Any
    tokenizer: Tokenizer
    image_token_id: int

    def use_model(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.family = spec.family
        self.settings = spec.settings
        self.tokenizer = spec.tokenizer
        self.image_token_id = spec.token_id(self.family.image_token)

    def shown_settings(self) -> Any:
        return self.settings

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "config": str(self.config.path),
                **self.settings_shown(), "length_key": self.length_key, "pixels_key": self.pixels_key}

    def settings_shown(self) -> dict[str, Any]:
        raise NotImplementedError

    def start(self, index: int, row: Any, *, unloadable: str, **frame: Any) -> tuple[SampleResult, dict[str, Any]]:
        """A row's result before its judging: ``frame`` is the framework's verdict record (``verdict`` ``ok``).
        A row the reader could not load (``unloadable``: what the framework then does) or that is not an object
        is judged already: its verdict is ``stops``. The row's ``id`` names it when it has one."""
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        record: dict[str, Any] = {"name": self.name, **frame, "verdict": "ok"}
        result.framework = record
        if isinstance(row, BadRow):
            result.findings.append(F.make("VC001", f"{row.reason}; {unloadable}"))
            record["verdict"] = "stops"
        elif not isinstance(row, Mapping):
            result.findings.append(F.make("VC001", f"the row is a {type(row).__name__}, not an object"))
            record["verdict"] = "stops"
        elif isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        return result, record

    def probe(self, images: Sequence[Any], found: list[F.Finding], *, size: Callable[[Any], tuple[int, int]],
              label: Callable[[int, int, Any], str] = image_label, seen: str = "", then: str = "") -> Probed:
        """Each image's size (``size``: the framework's own way of opening it) checked and expanded by the family;
        a finding for each that cannot be opened or that the processor refuses. ``seen`` and ``then`` are put
        around the family's message (``" (as the trainer scales it)"``, ``"; the processor raises ..."``)."""
        out = Probed()
        for k, image in enumerate(images, 1):
            name = label(k, len(images), image)
            try:
                width, height = size(image)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{name}: {p.message}", image=k, **p.data))
                out.refused.append(name)
                continue
            except (OSError, ValueError) as e:
                found.append(F.make("VC102", f"{name}: cannot be opened: {str(e)[:200]}", image=k))
                out.refused.append(name)
                continue
            issues = self.family.check_image(width, height, self.settings)
            for issue in issues:
                found.append(F.make(issue.code, f"{name}{seen}: {issue.message}{then}", image=k, **issue.data))
            if any(F.CATALOGUE[i.code].severity >= F.Severity.ERROR for i in issues):
                out.refused.append(name)
                continue
            out.expansions.append(self.family.expand(width, height, self.settings))
            out.sizes.append((width, height))
        return out

    def expanded_ids(self, text: str, expansions: Sequence[Expansion], *, special: bool = False) -> list[int]:
        """The tokenizer's ids for ``text`` with the k-th placeholder written as image k's expansion (each run of
        features written once: one image token per run, expanded by the caller)."""
        pieces = text.split(self.family.placeholder)
        collapsed = pieces[0] + "".join(e.text + piece for e, piece in zip(expansions, pieces[1:]))
        return list(self.tokenizer.encode(collapsed, add_special_tokens=special).ids)
