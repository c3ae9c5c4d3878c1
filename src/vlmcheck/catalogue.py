"""What the three code catalogues share: the severity, the code record and the markdown of the codes.

Each catalogue keeps its own codes and data: scan findings (VC, :mod:`vlmcheck.findings`), config lint
(VL, :mod:`vlmcheck.lint.catalogue`) and template findings (VT, :mod:`vlmcheck.templates.catalogue`).

>>> rule = Rule("VX001", "example", Severity.WARNING, "A title", "Why it breaks.", "The fix.")
>>> print(render_codes([rule]).splitlines()[2])
| [VX001](#vx001) | `example` | warning | A title |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    """Ordered so that ``--fail-on warning`` means "warning or worse"."""

    INFO = 10
    WARNING = 20
    ERROR = 30

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}; use one of: info, warning, error") from None


@dataclass(frozen=True)
class Rule:
    """One entry of a catalogue: ``why`` says what breaks, ``fix`` is the default fix of its findings."""

    code: str
    name: str
    severity: Severity
    title: str
    why: str
    fix: str

    @property
    def anchor(self) -> str:
        return self.code.lower()

    def paragraphs(self) -> list[str]:
        """The body of the code's docs section."""
        return [f"**{self.title}.** {self.why}", f"Fix: {self.fix}"]


def render_codes(rules: Iterable[Rule], *, heading: str = "##") -> str:
    """A table of the codes, then one section per code under its anchor (``#vc201``)."""
    rules = list(rules)
    lines = ["| code | name | severity | what |", "|---|---|---|---|"]
    lines += [f"| [{r.code}](#{r.anchor}) | `{r.name}` | {r.severity} | {r.title} |" for r in rules]
    for r in rules:
        lines += ["", f'<a id="{r.anchor}"></a>', f"{heading} {r.code} `{r.name}` ({r.severity})"]
        for paragraph in r.paragraphs():
            lines += ["", paragraph]
    return "\n".join(lines)
