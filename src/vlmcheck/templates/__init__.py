"""Template checks: do a framework's label masks fit the tokenizer? (``vlmcheck template``)

>>> from vlmcheck.templates import check_template
>>> report = check_template(rows, tokenizer="ckpt/", template=["v1", "trl"])  # doctest: +SKIP
>>> report.masked_away  # samples each framework would silently train on nothing  # doctest: +SKIP
{'v1': 0, 'trl': 0}
"""

from __future__ import annotations

from vlmcheck.templates.catalogue import CATALOGUE, TemplateFinding
from vlmcheck.templates.check import FRAMEWORKS, SampleVerdict, TemplateReport, check_template
from vlmcheck.tokenizer import Tok

__all__ = ["CATALOGUE", "FRAMEWORKS", "SampleVerdict", "TemplateFinding", "TemplateReport", "Tok", "check_template"]
