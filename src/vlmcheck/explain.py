"""``explain()``: one code's catalogue entry (scan VC, lint VL, template VT) as text, for ``vlmcheck explain CODE``.

>>> print(explain("vc202").splitlines()[0])
VC202 supervision-truncated (error)
"""

from __future__ import annotations

import textwrap

from vlmcheck.catalogue import Rule
from vlmcheck.errors import UsageError

WIDTH = 100


def catalogues() -> list[tuple[dict[str, Rule], str]]:
    """Every code catalogue with the docs page that holds its anchors."""
    from vlmcheck.findings import CATALOGUE
    from vlmcheck.lint.catalogue import LINT_RULES
    from vlmcheck.templates.catalogue import CATALOGUE as TEMPLATE_CODES

    return [(CATALOGUE, "docs/findings.md"), (dict(LINT_RULES), "docs/lint.md"), (TEMPLATE_CODES, "docs/templates.md")]


def lookup(code: str) -> tuple[Rule, str]:
    """The rule for a code (``VC201``, any case) or a name (``image-span-cut``), and its docs page. Raises
    :class:`UsageError` for an unknown one, naming the codes of that family."""
    wanted = code.strip()
    for rules, page in catalogues():
        for rule in rules.values():
            if wanted.upper() == rule.code or wanted.lower() == rule.name:
                return rule, page
    prefix = wanted[:2].upper()
    known = [c for rules, _ in catalogues() for c in rules if c.startswith(prefix)]
    hint = f"; {prefix} codes are {', '.join(known)}" if known else "; codes start with VC (scan), VL (lint) or VT (template)"
    raise UsageError(f"unknown code {code!r}{hint}")


def explain(code: str) -> str:
    """The catalogue entry of ``code``: severity, what breaks, the fix and the docs anchor."""
    rule, page = lookup(code)
    lines = [f"{rule.code} {rule.name} ({rule.severity})", rule.title]
    # paragraphs() opens with the title and the why in markdown; then versions (lint) and the fix
    for paragraph in [rule.why, *rule.paragraphs()[1:]]:
        lines += ["", *textwrap.wrap(paragraph, width=WIDTH, break_on_hyphens=False, break_long_words=False)]
    lines += ["", f"Docs: {page}#{rule.anchor}"]
    return "\n".join(lines) + "\n"
