"""The one contract every report keeps: scan and check (:class:`vlmcheck.report.Report`), lint
(:class:`vlmcheck.lint.records.LintReport`), template (:class:`vlmcheck.templates.check.TemplateReport`) and
repair (:class:`vlmcheck.repairing.RepairReport`).

- ``worst()``: the most severe finding's :class:`Severity`, ``None`` when there is none;
- ``ok``: nothing at or above ``error`` (warnings and info leave a report ok);
- ``exit_code(fail_on)``: 1 when ``worst()`` is at or above ``fail_on`` (default ``error``), else 0; the CLI
  exits with it, and with 2 for a usage error;
- ``to_dict()``: the JSON that ``--json PATH`` writes (``--json -``: standard output);
- ``render()``: the text the CLI prints.

A report says which severities it holds (``severities()``); :class:`ReportContract` derives the rest.

>>> class Two(ReportContract):
...     def severities(self):
...         return [Severity.WARNING, Severity.INFO]
>>> report = Two()
>>> report.worst(), report.ok, report.exit_code(), report.exit_code("warning")
(<Severity.WARNING: 20>, True, 0, 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from vlmcheck.catalogue import Severity

__all__ = ["FAIL_ON", "Reporting", "ReportContract", "Severity"]

#: the ``--fail-on`` levels, mildest first
FAIL_ON = ("info", "warning", "error")


@runtime_checkable
class Reporting(Protocol):
    """What every command's report offers (see the module docstring for what each member means)."""

    @property
    def ok(self) -> bool: ...

    def worst(self) -> Severity | None: ...

    def exit_code(self, fail_on: Severity | str = Severity.ERROR) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def render(self) -> str: ...


class ReportContract:
    """Mixin: ``worst``, ``ok`` and ``exit_code`` from the severities a report holds (``severities()``)."""

    def severities(self) -> Iterable[Severity]:
        raise NotImplementedError

    def worst(self) -> Severity | None:
        """The most severe finding's severity; ``None`` when there is no finding."""
        return max(self.severities(), default=None)

    @property
    def ok(self) -> bool:
        """Nothing at or above ``error``."""
        return self.exit_code(Severity.ERROR) == 0

    def exit_code(self, fail_on: Severity | str = Severity.ERROR) -> int:
        """1 when a finding is at or above ``fail_on``, else 0 (the CLI's exit code)."""
        level = Severity.parse(fail_on) if isinstance(fail_on, str) else fail_on
        worst = self.worst()
        return int(worst is not None and worst >= level)
