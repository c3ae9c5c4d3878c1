"""One view over every framework's options: which option plays which part, and its default.

Rules ask for a *concept* (``num_generations``, ``max_length``, ``max_pixels`` ...) and get back the
option as that framework spells it (so the fix can name it), its value, and whether the config set
it or the framework's default applies. The tables and defaults are the framework modules' own
(``LINT_OPTIONS`` in ``vlmcheck.frameworks.<name>``, each default citing where it comes from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlmcheck.frameworks import easyr1, llamafactory, swift, trl, unsloth, verl, vlm_r1
from vlmcheck.frameworks import options as known
from vlmcheck.frameworks.options import UNSET
from vlmcheck.lint.readers import RunConfig

_MISSING = UNSET


@dataclass(frozen=True)
class Opt:
    """An option's value. ``name`` is the framework's own spelling."""

    name: str
    value: Any
    explicit: bool


# concept -> (option name, default). _MISSING: no default we can rely on (the rule is skipped unless
# the config sets it).
_Table = dict[str, tuple[str, Any]]

_MODULES = (trl, unsloth, swift, llamafactory, verl, easyr1, vlm_r1)
TABLES: dict[str, _Table] = {m.NAME: m.LINT_OPTIONS for m in _MODULES}

# What kind of run a config is (GRPO, SFT), decided by each framework's module.
RUN_KINDS: dict[str, Callable[..., str | None]] = {m.NAME: m.lint_run_kind for m in _MODULES}

# Aliases a framework accepts for the same option, from the framework modules.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {"swift": swift.LINT_ALIASES, "trl": trl.LINT_ALIASES}



def known_options(framework: str) -> Callable[[str], bool] | None:
    """A predicate telling whether an option name is one the framework accepts (None: not checked)."""
    ta = known.TRANSFORMERS_TRAINING_ARGUMENTS | known.TRANSFORMERS_4_ONLY
    if framework in ("trl", "unsloth"):
        names = ta | known.TRL
        return names.__contains__
    if framework == "vlm-r1":
        names = ta | known.TRL | known.VLM_R1
        return names.__contains__
    if framework == "llamafactory":
        names = ta | known.LLAMAFACTORY | known.LLAMAFACTORY_0_9_5
        return names.__contains__
    if framework == "swift":
        names = ta | known.TRL | known.SWIFT
        return names.__contains__
    if framework == "verl":
        return known.VERL.__contains__
    if framework == "easyr1":
        # worker.* holds deep per-worker dataclasses; data / algorithm / trainer are checked
        def easyr1(name: str) -> bool:
            return not name.startswith(("data.", "algorithm.", "trainer.")) or name in known.EASYR1

        return easyr1
    return None


class View:
    """A :class:`RunConfig` read through its framework's table."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.framework = run.framework
        self.table = TABLES.get(run.framework, {})

    def opt(self, concept: str) -> Opt | None:
        """The option for ``concept``: set in the config, else the framework's default, else None."""
        entry = self.table.get(concept)
        if entry is None:
            return None
        name, default = entry
        for candidate in (name, *ALIASES.get(self.framework, {}).get(name, ())):
            if candidate in self.run.options:
                return Opt(candidate, self.run.options[candidate], True)
        if default is _MISSING:
            return None
        return Opt(name, default, False)

    def name(self, concept: str) -> str:
        """The framework's spelling of ``concept`` (for fixes), even when unset."""
        entry = self.table.get(concept)
        return entry[0] if entry else concept

    @property
    def kind(self) -> str | None:
        """The kind of run (``grpo``, ``sft``, None: another or unknown), as the framework's module decides."""
        decide = RUN_KINDS.get(self.framework)
        run = self.run
        return decide(entry=run.entry, calls=run.calls, options=run.options) if decide is not None else None

    @property
    def is_grpo(self) -> bool:
        """Whether the run samples groups for GRPO-style advantages."""
        return self.kind == "grpo"

    @property
    def is_sft(self) -> bool:
        return self.kind == "sft"
