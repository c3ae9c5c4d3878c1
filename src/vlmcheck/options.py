"""The options of a scan, in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScanOptions:
    max_length: int | None = None
    truncation: str = "right"
    format: str | None = None
    image_root: str | None = None
    exif_transpose: bool = True
    allow_outside_root: bool = False  # kept for callers of 0.x; reading outside the root is the default now
    confine: bool = False  # refuse any media path that resolves outside the image root (VC104)
    split: str | None = None
