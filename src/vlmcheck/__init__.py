"""vlmcheck: find the samples that will crash or silently ruin a VLM fine-tuning run, before step 1.

>>> import vlmcheck
>>> report = vlmcheck.scan("data.jsonl", model="Qwen/Qwen2-VL-7B-Instruct", max_length=4096)  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'VC201': 3}

Importing vlmcheck never imports torch; integrations load transformers/TRL lazily.
"""

from __future__ import annotations

import sys as _sys
from types import ModuleType as _ModuleType
from typing import Any

from vlmcheck.errors import (
    DatasetError,
    MissingDependencyError,
    ModelError,
    UnknownFamilyError,
    UsageError,
    VlmcheckError,
)
from vlmcheck.findings import CATALOGUE, Finding, Severity

__version__ = "0.1.0"

# Names resolved on first use, so that `import vlmcheck` stays light.
_LAZY: dict[str, str] = {
    "scan": "vlmcheck.scan",
    "ScanOptions": "vlmcheck.options",  # scan(data, model=..., options=ScanOptions(...)): one object, checked once
    "check": "vlmcheck.checking",  # module named apart so that vlmcheck.check stays the function
    "Report": "vlmcheck.report",
    "load_model": "vlmcheck.model",
    "ModelSpec": "vlmcheck.model",
    # -- integrations (guards, callbacks): helper block --------------------------------------
    "SpanGuardCollator": "vlmcheck.integrations.guards",
    "SpanMismatchError": "vlmcheck.integrations.guards",
    "VisionSpec": "vlmcheck.integrations.guards",
    "explain_vision_mismatch": "vlmcheck.integrations.guards",
    "guard_batch": "vlmcheck.integrations.guards",
    "truncate_batch": "vlmcheck.integrations.guards",
    "vision_spec": "vlmcheck.integrations.guards",
    "VisionTokenSuppressor": "vlmcheck.integrations.rollout",
    "bad_words_ids": "vlmcheck.integrations.rollout",
    "check_rollout": "vlmcheck.integrations.rollout",
    "sanitize_completion_ids": "vlmcheck.integrations.rollout",
    "vision_token_ids": "vlmcheck.integrations.rollout",
    "vllm_sampling_kwargs": "vlmcheck.integrations.rollout",
    "TrainingHealthCallback": "vlmcheck.integrations.callbacks",
    # -- end of integrations block ------------------------------------------------------------
    # -- lint: helper block --------------------------------------------------------------------
    "lint": "vlmcheck.lint",  # imported eagerly at the end of this file; see there
    "LintFinding": "vlmcheck.lint",
    "LintReport": "vlmcheck.lint",
    # -- end of lint block ----------------------------------------------------------------------
    "check_template": "vlmcheck.templates",  # template: issue 6
    "merge": "vlmcheck.merging",  # sources: issue 17
    # -- repair: helper block ------------------------------------------------------------------
    "repair": "vlmcheck.repairing",  # module named apart so that vlmcheck.repair stays the function
    "RepairReport": "vlmcheck.repairing",
    # -- end of repair block --------------------------------------------------------------------
}

__all__ = sorted(
    [
        "CATALOGUE",
        "DatasetError",
        "Finding",
        "MissingDependencyError",
        "ModelError",
        "Severity",
        "UnknownFamilyError",
        "UsageError",
        "VlmcheckError",
        "__version__",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmcheck' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


# -- lint: eager import ----------------------------------------------------------------------------
# `vlmcheck.lint` is both a subpackage and its function: importing any vlmcheck.lint.* module binds the
# attribute to the package, which a lazy name would never override. Importing the function here (the
# package is light: no torch, no YAML until used) makes `vlmcheck.lint(...)` the function for good.
from vlmcheck.lint import lint as lint  # noqa: E402


# -- `vlmcheck.scan` is both a module and its function -----------------------------------------------
# Importing the submodule first (`from vlmcheck.scan import ScanOptions`, the CLI) makes the import
# system bind the package attribute `scan` to the module, and the lazy `__getattr__` is then never
# asked. The package's class keeps the public object under such a name instead.
class _Package(_ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, _ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name, value)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
