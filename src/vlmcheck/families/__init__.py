"""Model families, one module each, named after ``config.json``'s ``model_type``.

>>> from vlmcheck.families import get_family
>>> get_family("qwen2_vl").title
'Qwen2-VL'
"""

from __future__ import annotations

import importlib

from vlmcheck.errors import UnknownFamilyError
from vlmcheck.families.base import Expansion, Family, ImageIssue, Overrides, single_run

# The built-in families: one module each under vlmcheck/families/, exporting FAMILY (or FAMILIES,
# a tuple, when one module serves several model_types that share a processor).
_BUILTIN = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava",
    "gemma3",
    "llava_next",
    "llava_onevision",
    "internvl",
    "paligemma",
    "mllama",
    "pixtral",
    "glm4v",
    "idefics3",
    "smolvlm",
)


def _load_builtin() -> dict[str, Family]:
    loaded: dict[str, Family] = {}
    for name in _BUILTIN:
        module = importlib.import_module(f"vlmcheck.families.{name}")
        for family in getattr(module, "FAMILIES", None) or (module.FAMILY,):
            loaded[family.name] = family
    return loaded


_FAMILIES: dict[str, Family] = _load_builtin()


def register_family(family: Family, *, replace: bool = False) -> None:
    """Add a family (a third-party module, or a fork's model_type) to the registry."""
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"family {family.name!r} is already registered; pass replace=True")
    _FAMILIES[family.name] = family


def get_family(model_type: str) -> Family:
    """The family for ``model_type``; unknown types raise an error listing the known ones."""
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise UnknownFamilyError(model_type, list(_FAMILIES)) from None


def known_families() -> dict[str, Family]:
    return dict(_FAMILIES)


def vision_tokens(*, features_only: bool = False) -> tuple[str, ...]:
    """Every registered family's media special tokens, in registry order without repeats.

    ``features_only`` keeps the tokens a model counts against its image/video features (a generated
    one breaks the forward); otherwise markers such as ``<|vision_start|>`` and ``[IMG_BREAK]`` are
    included too. The rollout sanitizer reads this, so a newly registered family is covered.
    """
    seen: dict[str, None] = {}
    for family in _FAMILIES.values():
        for token in family.feature_tokens if features_only else family.vision_tokens:
            seen.setdefault(token, None)
    return tuple(seen)


__all__ = ["Expansion", "Family", "ImageIssue", "Overrides", "families", "get_family", "known_families", "register_family", "single_run", "vision_tokens"]


def families() -> list[dict[str, object]]:
    """What `vlmcheck families` prints: each family, how exact its count is, the settings it reads."""
    return [
        {"model_type": f.name, "title": f.title, "exactness": f.exactness, "settings": list(f.settings_read),
         "placeholder": f.placeholder, "image_token": f.image_token, "options": list(getattr(f, "options", ()))}
        for f in _FAMILIES.values()
    ]
