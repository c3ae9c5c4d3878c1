"""Training frameworks: one module per framework, each the one home of that framework's facts.

A framework module knows how its launch config is read and what it defaults, where its data comes from and how
rows map to conversations, how a row becomes tokens (its own templates and per-turn tokenization), how images are
sized before the processor sees them, how it truncates, and what happens at the cut. ``vlmcheck check CONFIG``
(:func:`vlmcheck.check`) picks the module that claims the config.

A module provides ``claims(raw) -> bool`` (is this config mine?) and ``open_run(raw, *, path, model, data,
path_map, env)`` returning a :class:`Run`. Families (``vlmcheck.families``) never import this package: a framework
reads a family's counting, not the other way round (an import-linter contract in ``scripts/check`` holds this).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from vlmcheck.errors import UsageError
from vlmcheck.findings import Finding
from vlmcheck.frameworks import easyr1, llamafactory, llava, swift, trl, unsloth, verl, vlm_r1
from vlmcheck.model import ModelSpec
from vlmcheck.results import SampleResult


class Run(Protocol):
    """One training run as its framework will prepare it."""

    name: str
    versions: str
    length_key: str  # the framework's own name for the max length (cutoff_len, max_length, ...)
    pixels_key: str  # and for the image pixel budget
    max_length: int | None
    spec: ModelSpec

    def inputs(self) -> list[Path]: ...

    def rows(self) -> Iterator[tuple[Any, Any]]: ...

    def judge(self, index: int, row: Any, source: Any) -> SampleResult: ...

    def shown_settings(self) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class Concludes(Protocol):
    """A run whose framework stops as a whole on what its rows add up to (ms-swift's data loader giving up on
    skipped rows): ``conclude`` reads every row's record once (in row order) and returns findings of the whole
    run."""

    def conclude(self, records: Iterable[Mapping[str, Any]]) -> list[Finding]: ...


# The registry: one line per framework module. VLM-R1 first: its flags (model_name_or_path, dataset_name) look
# like a TRL config, and it claims only what its own launch reader read. EasyR1 before verl: its configs look like
# verl's, and it claims them by the keys only it has. Unsloth first: it reads only Python scripts and notebooks that
# import unsloth, which no other module reads.
MODULES: tuple[ModuleType, ...] = (unsloth, vlm_r1, llamafactory, trl, easyr1, verl, swift, llava)
FRAMEWORKS = tuple(m.NAME for m in MODULES)


def read_launch(text: str, *, path: Path) -> dict[str, Any] | None:
    """The settings of a launch script (a shell script passing overrides, as verl's examples do), read by the
    framework module that knows its syntax; None when none does."""
    for module in MODULES:
        reader = getattr(module, "read_launch", None)
        if reader is not None:
            raw = reader(text, path=path)
            if raw is not None:
                return dict(raw)
    return None


def detect(config: dict[str, Any], *, path: Path) -> ModuleType:
    """The framework module a launch config belongs to."""
    for module in MODULES:
        if module.claims(config):
            return module
    raise UsageError(
        f"{path}: cannot tell which framework this config is for (known: {', '.join(FRAMEWORKS)}); "
        "a LLaMA-Factory config has model_name_or_path with template / cutoff_len / dataset_dir; a TRL (`trl sft` "
        "/ `grpo` / `dpo`) config model_name_or_path with dataset_name / datasets; a verl config data.train_files "
        "(or a launch script); an ms-swift launch script a `swift sft` line; a LLaVA launch script a llava/train/train_mem.py line; an "
        "EasyR1 config worker.actor.model.model_path (or a script running verl.trainer.main config=...); a "
        "VLM-R1 launch script a src/open_r1/grpo_jsonl.py line; an Unsloth script or notebook (.py, .ipynb) "
        "imports unsloth"
    )


def scan_defaults(name: str) -> dict[str, Any]:
    """What ``vlmcheck scan --framework NAME`` applies without a config: the framework's truncation, its resize
    route and its defaults (max length, pixel budgets), from the framework's own module."""
    for module in MODULES:
        if module.NAME == name:
            defaults = module.SCAN_DEFAULTS
            if defaults is None:
                break
            return dict(defaults)
    else:
        raise UsageError(f"unknown framework {name!r} (known: {', '.join(FRAMEWORKS)})")
    raise UsageError(getattr(module, "SCAN_REFUSAL", None) or f"{name} trains on prompts judged against its prompt "
                     "budget, which a bare scan does not model: run vlmcheck check on its launch config")
