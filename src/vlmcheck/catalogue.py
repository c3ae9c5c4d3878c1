"""The one findings type and the one catalogue mechanism every code family registers into.

A :class:`Finding` is one problem vlmcheck reports; its code (``VC201``) names a :class:`Rule` in a
:class:`Catalogue`. Each code family keeps its rules in its own module and registers them here:

- ``VC`` scan findings: :mod:`vlmcheck.findings` (docs/findings.md)
- ``VL`` config lint: :mod:`vlmcheck.lint.catalogue` (docs/lint.md)
- ``VT`` template findings: :mod:`vlmcheck.templates.catalogue` (docs/templates.md)
- ``VR`` runtime (collator guards, training callback): :mod:`vlmcheck.integrations.catalogue`
  (docs/findings.md)

:func:`rule` finds any code or name in every registered catalogue (``vlmcheck explain`` reads it), and
:func:`render_codes` writes the docs section of a catalogue, so docs and code cannot drift.

>>> rule = Rule("VX001", "example", Severity.WARNING, "A title", "Why it breaks.", "The fix.")
>>> print(render_codes([rule]).splitlines()[2])
| [VX001](#vx001) | `example` | warning | A title |
>>> lookup("vc202").page
'docs/findings.md'
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from vlmcheck.errors import UsageError


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


@dataclass(frozen=True)
class Catalogue:
    """One code family: its prefix (``VC``), what reports it, the docs page holding its anchors, its rules,
    and (for a family that shares another's page) the paragraph that opens its section there."""

    prefix: str
    reporter: str
    page: str
    rules: tuple[Rule, ...]
    intro: str = ""

    def __post_init__(self) -> None:
        for r in self.rules:
            if not (r.code.startswith(self.prefix) and len(r.code) == len(self.prefix) + 3 and r.code[-3:].isdigit()):
                raise ValueError(f"{r.code} does not read {self.prefix} + three digits")

    @property
    def codes(self) -> dict[str, Rule]:
        return {r.code: r for r in self.rules}

    def render(self, *, heading: str = "##") -> str:
        return render_codes(self.rules, heading=heading)


@dataclass(frozen=True)
class Entry:
    """What :func:`lookup` returns: the rule and the catalogue (page) it belongs to."""

    rule: Rule
    catalogue: Catalogue

    @property
    def page(self) -> str:
        return self.catalogue.page


# The built-in code families, imported by name on the first lookup they are needed for, so that this
# module stays below the commands that own them.
_BUILTIN = (
    "vlmcheck.findings",
    "vlmcheck.lint.catalogue",
    "vlmcheck.templates.catalogue",
    "vlmcheck.integrations.catalogue",
)
_BUILTIN_PREFIXES = ("VC", "VL", "VT", "VR")  # the order help and docs list them in, whatever was imported first
_CATALOGUES: dict[str, Catalogue] = {}
_RULES: dict[str, Entry] = {}
_NAMES: dict[str, Entry] = {}


def register(catalogue: Catalogue) -> Catalogue:
    """Add a code family; a code or name already taken by another family is an error."""
    known = _CATALOGUES.get(catalogue.prefix)
    if known is not None and known != catalogue:
        raise ValueError(f"the {catalogue.prefix} codes are already registered")
    for r in catalogue.rules:
        for key, table in ((r.code, _RULES), (r.name, _NAMES)):
            taken = table.get(key)
            if taken is not None and taken.rule != r:
                raise ValueError(f"{key} is already a {taken.catalogue.prefix} code or name")
    _CATALOGUES[catalogue.prefix] = catalogue
    for r in catalogue.rules:
        _RULES[r.code] = _NAMES[r.name] = Entry(r, catalogue)
    return catalogue


def _load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def catalogues() -> list[Catalogue]:
    """Every registered code family: the built-in ones in a fixed order, then the others as registered."""
    _load_builtin()
    order = {p: i for i, p in enumerate(_BUILTIN_PREFIXES)}
    return sorted(_CATALOGUES.values(), key=lambda c: order.get(c.prefix, len(order)))


def families() -> str:
    """Every registered code family and what reports it, for help and docs text:
    ``"VC scan, VL lint, VT template, VR runtime"``."""
    return ", ".join(f"{c.prefix} {c.reporter}" for c in catalogues())


def lookup(code: str) -> Entry:
    """The entry of a code (``VC201``, any case) or a name (``image-span-cut``) in any registered catalogue.
    Raises :class:`UsageError` for an unknown one, naming the codes of its family."""
    wanted = code.strip()
    for attempt in range(2):
        found = _RULES.get(wanted.upper()) or _NAMES.get(wanted.lower())
        if found is not None:
            return found
        if attempt == 0:
            _load_builtin()
    prefix = wanted[:2].upper()
    known = [c for c in _RULES if c.startswith(prefix)]
    families = ", ".join(f"{c.prefix} ({c.reporter})" for c in _CATALOGUES.values())
    hint = f"; {prefix} codes are {', '.join(known)}" if known else f"; codes start with {families}"
    raise UsageError(f"unknown code {code!r}{hint}")


def rule(code: str) -> Rule:
    """The rule of ``code`` (exact spelling), in whichever catalogue registered it; KeyError when none did."""
    found = _RULES.get(code)
    if found is None:
        _load_builtin()
        found = _RULES.get(code)
    if found is None:
        raise KeyError(f"unknown finding code {code!r}")
    return found.rule


@dataclass
class Finding:
    """One problem vlmcheck reports, of any code family. ``index``/``id`` place it in a dataset (``None``:
    the whole dataset or run); ``data`` holds the numbers the message quotes.

    >>> str(Finding("VC203", "over by 12 tokens", "raise max_length", index=3))
    'VC203 warning: sample 3: over by 12 tokens. Fix: raise max_length'
    """

    code: str
    message: str
    fix: str
    index: int | None = None
    id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def rule(self) -> Rule:
        return rule(self.code)

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.rule.name,
            "severity": str(self.severity),
            "index": self.index,
            "id": self.id,
            "message": self.message,
            "fix": self.fix,
            "data": self.data,
        }

    def where(self) -> str:
        where = f"sample {self.index}" if self.index is not None else "dataset"
        if self.id is not None and str(self.id) != str(self.index):
            where += f" (id {self.id!r})"
        return where

    def __str__(self) -> str:
        return f"{self.code} {self.severity}: {self.where()}: {self.message}. Fix: {self.fix}"


def make(code: str, message: str, *, fix: str | None = None, **data: Any) -> Finding:
    """A finding for any registered ``code``, with its rule's fix unless ``fix`` is given."""
    return Finding(code=code, message=message, fix=fix or rule(code).fix, data=data)

