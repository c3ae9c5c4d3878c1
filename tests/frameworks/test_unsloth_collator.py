"""Unsloth's vision collator: the image size and max length it settles on and how it resizes each image, against
Unsloth's own UnslothVisionDataCollator run on real images (tests/assets/unsloth_golden)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlmcheck.frameworks import unsloth

GOLDEN = json.loads((Path(__file__).parents[1] / "assets" / "unsloth_golden" / "resize_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{c['resize']}-{c['resize_dimension']}")
def test_resize_and_max_length_are_unsloths(case: dict[str, Any]) -> None:
    resize = tuple(case["resize"]) if isinstance(case["resize"], list) else case["resize"]
    size, limit = unsloth.collator_settings(resize=resize, model_image_size=case["model_image_size"],
                                            max_seq_length=case["max_seq_length"],
                                            model_max_seq_length=case["model_max_seq_length"])
    want = case["collator"]
    assert (list(size) if isinstance(size, tuple) else size) == want["image_size"]
    assert limit == want["max_seq_length"] and (limit is not None) == want["truncation"]
    got = [list(unsloth.resized(w, h, size=size, resize_dimension=case["resize_dimension"]))
           for w, h in case["sizes"]]
    assert got == case["resized"]


def test_bad_settings_are_refused_as_unsloth_refuses_them() -> None:
    with pytest.raises(ValueError, match="resize accepts"):
        unsloth.collator_settings(resize="big")
    with pytest.raises(ValueError, match="resize_dimension"):
        unsloth.resized(900, 900, size=512, resize_dimension=2)
