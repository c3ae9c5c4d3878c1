"""Config lint: settings in a training config that crash or silently ruin a VLM run.

>>> from vlmcheck.lint import lint
>>> report = lint("tests/lint/configs/trl_grpo_indivisible.yaml")  # doctest: +SKIP
>>> [f.code for f in report.findings]  # doctest: +SKIP
['VL102']

Importing this package is light: YAML, torch and vlmcheck.scan are imported only when used.
"""

from __future__ import annotations

from vlmcheck.lint.api import lint
from vlmcheck.lint.catalogue import LINT_RULES, LintRule
from vlmcheck.lint.device import DeviceInfo
from vlmcheck.lint.readers import RunConfig, read_config
from vlmcheck.lint.records import LintFinding, LintReport

__all__ = ["DeviceInfo", "LINT_RULES", "LintFinding", "LintReport", "LintRule", "RunConfig", "lint", "read_config"]
