"""What vlmcheck learns about one sample: the record every counter (the arithmetic scan, the processor scan, a
framework's judge) produces and the report and ``--output`` consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmcheck import findings as F


@dataclass
class SampleResult:
    """What the scan learned about one sample (one line of ``--output``)."""

    index: int
    id: str
    tokens: int | None
    image_tokens: list[int | None]
    supervised_tokens: int | None
    findings: list[F.Finding] = field(default_factory=list)
    # largest max_pixels under which the sample fits max_length whole (None: never / not applicable)
    fits_max_pixels: int | None = None
    text_only_tokens: int | None = None
    video_tokens: list[int | None] = field(default_factory=list)
    # what the training framework does with the sample (``vlmcheck check``): kept tokens, verdict, ...
    framework: dict[str, Any] | None = None
    # what the HTML report shows of this sample (thumbnails, token layout; :mod:`vlmcheck.preview`): made by the
    # scan for the first few samples of each finding code only, never written to ``--output``
    preview: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record = {
            "index": self.index,
            "id": self.id,
            "tokens": self.tokens,
            "image_tokens": self.image_tokens,
            "supervised_tokens": self.supervised_tokens,
            "findings": [f.code for f in self.findings],
        }
        if self.video_tokens:
            record["video_tokens"] = self.video_tokens
        if self.framework is not None:
            record["framework"] = self.framework
        return record
