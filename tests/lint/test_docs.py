"""docs/lint.md is generated from the catalogue; this fails when the two drift.
Regenerate with: python -m vlmcheck.lint > docs/lint.md"""

from __future__ import annotations

import re
from pathlib import Path

from vlmcheck.lint.catalogue import LINT_RULES, render_markdown

DOC = Path(__file__).parents[2] / "docs" / "lint.md"


def test_docs_match_catalogue() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), "run: python -m vlmcheck.lint > docs/lint.md"


def test_codes_are_stable_and_anchored() -> None:
    for code, rule in LINT_RULES.items():
        assert re.fullmatch(r"VL\d{3}", code) and rule.code == code
        assert f'<a id="{rule.anchor}"></a>' in render_markdown()
        assert rule.fix and rule.versions and rule.why
