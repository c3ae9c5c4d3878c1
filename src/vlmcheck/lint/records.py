"""What :func:`vlmcheck.lint` returns: findings (a :class:`vlmcheck.Finding` with the option it is about) and the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vlmcheck.catalogue import Finding, Severity
from vlmcheck.contract import ReportContract
from vlmcheck.lint.catalogue import LINT_RULES, LintRule

DOCS_URL = "https://github.com/vlmcheck/vlmcheck/blob/main/docs/lint.md"


@dataclass
class LintFinding(Finding):
    """One problem in one config: a :class:`vlmcheck.catalogue.Finding` placed by the option it is about
    (``option`` names the option as the framework spells it) rather than by a sample; ``data`` holds the
    numbers the message quotes."""

    option: str | None = None

    @property
    def rule(self) -> LintRule:
        return LINT_RULES[self.code]

    @property
    def docs(self) -> str:
        return f"{DOCS_URL}#{self.rule.anchor}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": str(self.severity),
            "option": self.option,
            "message": self.message,
            "fix": self.fix,
            "data": self.data,
        }

    def __str__(self) -> str:
        where = f"{self.option}: " if self.option else ""
        return f"{self.code} {self.severity}: {where}{self.message}. Fix: {self.fix}"


def make(code: str, message: str, *, fix: str | None = None, option: str | None = None, **data: Any) -> LintFinding:
    """Build a finding for ``code``; the catalogue's fix is used when none is given."""
    if code not in LINT_RULES:
        raise KeyError(f"unknown lint code {code!r}")
    return LintFinding(code=code, message=message, fix=fix or LINT_RULES[code].fix, option=option, data=data)


@dataclass
class LintReport(ReportContract):
    """The result of :func:`vlmcheck.lint`; ``ok``, ``worst``, ``exit_code``: :mod:`vlmcheck.contract`.

    >>> report = LintReport(config="run.yaml", framework="trl")
    >>> report.ok, report.exit_code()
    (True, 0)
    """

    config: str
    framework: str
    findings: list[LintFinding] = field(default_factory=list)
    #: what the linter read: launcher, process count, the options it resolved (framework names)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f.code for f in self.findings).items()))

    def severities(self) -> list[Severity]:
        return [f.severity for f in self.findings]

    @property
    def max_severity(self) -> Severity | None:
        """The same as :meth:`worst` (kept for old callers)."""
        return self.worst()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "framework": self.framework,
            "counts": self.counts,
            "summary": self.summary,
            "findings": [f.to_dict() for f in self.findings],
        }

    def render(self) -> str:
        """The terminal text the CLI prints."""
        head = f"{self.config} ({self.framework})"
        if not self.findings:
            return f"{head}: no problems found\n"
        lines = [f"{head}: {len(self.findings)} finding{'s' if len(self.findings) != 1 else ''}"]
        order = sorted(self.findings, key=lambda f: (-f.severity, f.code))
        for finding in order:
            lines.append(f"  {finding}")
            lines.append(f"    see {finding.docs}")
        return "\n".join(lines) + "\n"
