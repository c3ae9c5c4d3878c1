"""``explain()``: one code's catalogue entry (scan VC, lint VL, template VT, runtime VR) as text, for
``vlmcheck explain CODE``. Every code family registers into :mod:`vlmcheck.catalogue`; this reads it.

>>> print(explain("vc202").splitlines()[0])
VC202 supervision-truncated (error)
"""

from __future__ import annotations

import textwrap

from vlmcheck.catalogue import Rule
from vlmcheck.catalogue import lookup as _find

WIDTH = 100


def lookup(code: str) -> tuple[Rule, str]:
    """The rule for a code (``VC201``, any case) or a name (``image-span-cut``), and its docs page. Raises
    :class:`vlmcheck.errors.UsageError` for an unknown one, naming the codes of that family."""
    entry = _find(code)
    return entry.rule, entry.page


def explain(code: str) -> str:
    """The catalogue entry of ``code``: severity, what breaks, the fix and the docs anchor."""
    rule, page = lookup(code)
    lines = [f"{rule.code} {rule.name} ({rule.severity})", rule.title]
    # paragraphs() opens with the title and the why in markdown; then versions (lint) and the fix
    for paragraph in [rule.why, *rule.paragraphs()[1:]]:
        lines += ["", *textwrap.wrap(paragraph, width=WIDTH, break_on_hyphens=False, break_long_words=False)]
    lines += ["", f"Docs: {page}#{rule.anchor}"]
    return "\n".join(lines) + "\n"
