"""Training frameworks: one module per framework, each the one home of that framework's facts.

A framework module knows how its launch config is read and what it defaults, where its data comes from and how
rows map to conversations, how a row becomes tokens (its own templates and per-turn tokenization), how images are
sized before the processor sees them, how it truncates, and what happens at the cut. ``vlmcheck check CONFIG``
(:func:`vlmcheck.check`) picks the module from the config.

Families (``vlmcheck.families``) never import this package: a framework reads a family's counting, not the other
way round (an import-linter contract in ``scripts/check`` holds this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmcheck.errors import UsageError

FRAMEWORKS = ("llamafactory",)


def detect(config: dict[str, Any], *, path: Path) -> str:
    """The framework a launch config belongs to, from the keys only that framework uses."""
    if any(key in config for key in ("cutoff_len", "template", "dataset_dir", "image_max_pixels")) and (
        "model_name_or_path" in config
    ):
        return "llamafactory"
    raise UsageError(
        f"{path}: cannot tell which framework this config is for (known: {', '.join(FRAMEWORKS)}); "
        "a LLaMA-Factory config has model_name_or_path with template / cutoff_len / dataset_dir"
    )
