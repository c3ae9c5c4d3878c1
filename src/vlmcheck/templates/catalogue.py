"""The template findings catalogue (VT codes): label masks that disagree with the tokenizer.

Same shape as :class:`vlmcheck.findings.Finding` (code, message, fix, index, id, data), kept here so the
template check stays self-contained. Codes never change meaning once released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmcheck.findings import Rule, Severity

_RULES = [
    Rule("VT001", "tokenization-mismatch", Severity.ERROR,
         "The framework's length arithmetic disagrees with the tokenizer; the whole sample is masked",
         "LLaVA's preprocess functions add up per-round token counts and compare the sum with the length "
         "of the whole tokenized conversation. When they differ they print \"WARNING: tokenization "
         "mismatch: X vs. Y. (ignored)\" and set every label to IGNORE_INDEX: the sample trains on "
         "nothing, and when every sample is like it the loss is 0.0.",
         "Use the conversation template (--version) and tokenizer setting (legacy) the message names."),
    Rule("VT002", "labels-misaligned", Severity.ERROR,
         "The label mask is shifted against the assistant tokens",
         "The framework supervises tokens of the prompt, or leaves tokens of the answer unsupervised: "
         "the model learns to predict the template, or never learns the first tokens of an answer.",
         "Use the template and tokenizer settings the message names."),
    Rule("VT003", "all-labels-masked", Severity.ERROR,
         "Every label of the sample is masked",
         "Its loss is 0 (or NaN when the whole batch is like it); it trains on nothing.",
         "Fix the template or drop the sample."),
    Rule("VT004", "per-turn-token-drift", Severity.WARNING,
         "Encoding turns separately gives different tokens than encoding the whole conversation",
         "Frameworks that encode each turn and concatenate (LLaMA-Factory templates, TRL/Unsloth response "
         "masking) train on a token sequence that inference never produces: a space or newline at a turn "
         "boundary merges differently, or a BOS is added per turn.",
         "Tokenize the whole rendered conversation and mask by character offsets, or move the boundary "
         "whitespace into the template."),
]

CATALOGUE: dict[str, Rule] = {r.code: r for r in _RULES}


@dataclass
class TemplateFinding:
    """One template problem in one sample; ``data`` holds the numbers the message quotes."""

    code: str
    message: str
    fix: str
    index: int | None = None
    id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def rule(self) -> Rule:
        return CATALOGUE[self.code]

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.rule.name, "severity": str(self.severity), "index": self.index,
                "id": self.id, "message": self.message, "fix": self.fix, "data": self.data}

    def __str__(self) -> str:
        where = f"sample {self.index}" if self.index is not None else "dataset"
        if self.id is not None and str(self.id) != str(self.index):
            where += f" (id {self.id!r})"
        return f"{self.code} {self.severity}: {where}: {self.message}. Fix: {self.fix}"
