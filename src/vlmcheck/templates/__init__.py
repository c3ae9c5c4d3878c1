"""Template checks: do a framework's label masks fit the tokenizer? (``vlmcheck template``)

>>> from vlmcheck.templates import check_template
>>> report = check_template(rows, tokenizer="ckpt/", template="v1")  # doctest: +SKIP
>>> report.summary["masked"]  # doctest: +SKIP
0
"""

from __future__ import annotations

from vlmcheck.templates.catalogue import CATALOGUE, TemplateFinding
from vlmcheck.templates.check import FRAMEWORKS, SampleVerdict, TemplateReport, Tok, check_template

__all__ = ["CATALOGUE", "FRAMEWORKS", "SampleVerdict", "TemplateFinding", "TemplateReport", "Tok", "check_template"]
