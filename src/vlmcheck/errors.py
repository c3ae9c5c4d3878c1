"""Errors vlmcheck raises for misuse. Problems found *in* a dataset are never raised: they are
:class:`vlmcheck.Finding` records in the report.

::

    VlmcheckError
     ├── ModelError          the --model cannot be resolved or read (missing files, no tokenizer)
     │    └── UnknownFamilyError   config.json names a model_type vlmcheck has no module for (--exact counts it)
     ├── DatasetError        the dataset path cannot be opened, or its format cannot be told
     ├── UsageError          option values that contradict each other or are out of range
     └── MissingDependencyError   an optional extra is needed (carries the pip command)
"""

from __future__ import annotations


class VlmcheckError(Exception):
    """Base class of every error vlmcheck raises on purpose."""


class ModelError(VlmcheckError):
    """The model reference cannot be resolved to usable tokenizer/processor files."""


class UnknownFamilyError(ModelError):
    """The checkpoint's ``model_type`` has no family module."""

    def __init__(self, model_type: str, known: list[str]) -> None:
        self.model_type = model_type
        self.known = sorted(known)
        super().__init__(
            f"vlmcheck has no module for model_type {model_type!r}, so it does not know how this family "
            f"counts image tokens and will not guess. Known families: {', '.join(self.known)} "
            "(`vlmcheck families`). For an exact count, run the checkpoint's own processor: "
            "`vlmcheck scan --exact` (scan(..., exact=True); needs transformers), adding --trust-remote-code "
            "if its processor is remote code."
        )


class DatasetError(VlmcheckError):
    """The dataset cannot be opened at all (rows that are bad are findings, not errors)."""


class UsageError(VlmcheckError):
    """Options that cannot work together, or a value out of range."""


class MissingDependencyError(VlmcheckError):
    """An optional dependency is needed for this feature."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{feature} needs {package}: pip install 'vlmcheck[{extra}]'")
