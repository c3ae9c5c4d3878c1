"""Lint reads the families registry: a model named in a config maps to any registered family, and the
pixel-cap rule (VL202) covers every family that declares a pixel budget (before, lint knew three Qwen types)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmcheck import lint
from vlmcheck.families import known_families
from vlmcheck.families.base import PixelBudgetFamily
from vlmcheck.lint.api import family_from_name

CONFIGS = Path(__file__).parent / "configs"
QWEN = (CONFIGS / "llamafactory_qwen2vl_multi_image.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "model_type"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
        ("qwen2_vl", "qwen2_vl"),  # a LLaMA-Factory template
        ("zai-org/GLM-4.1V-9B-Thinking", "glm4v"),
        ("google/gemma-3-4b-it", "gemma3"),
        ("google/paligemma-3b-pt-224", "paligemma"),  # the longest name wins over gemma3
        ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision"),
        ("mistralai/Pixtral-12B-2409", "pixtral"),
        ("Qwen/Qwen2.5-7B-Instruct", None),
    ],
)
def test_family_from_name_reads_the_registry(name: str, model_type: str | None) -> None:
    assert family_from_name(name) == model_type


def test_every_registered_family_is_found_by_its_model_type() -> None:
    for model_type in known_families():
        assert family_from_name(f"org/{model_type}-7b") == model_type


def _lint(tmp_path: Path, model: str, max_pixels: int) -> list[str]:
    config = tmp_path / "run.yaml"
    text = QWEN.replace("Qwen/Qwen2-VL-7B-Instruct", model).replace("image_max_pixels: 1003520",
                                                                    f"image_max_pixels: {max_pixels}")
    config.write_text(text.replace("template: qwen2_vl", "template: default"), encoding="utf-8")
    return [f.code for f in lint(config, device=None).findings]


def test_pixel_cap_rule_covers_every_pixel_budget_family(tmp_path: Path) -> None:
    budget = sorted(name for name, f in known_families().items() if isinstance(f, PixelBudgetFamily))
    assert budget == ["glm4v", "glm4v_moe", "qwen2_5_vl", "qwen2_vl", "qwen3_5", "qwen3_5_moe", "qwen3_vl", "qwen3_vl_moe"]
    # GLM-4.1V: one token per 28x28 px, so 1,003,520 px is 1,280 + 2 tokens, over cutoff_len 1,024
    assert _lint(tmp_path, "zai-org/GLM-4.1V-9B-Thinking", 1003520) == ["VL202"]
    assert _lint(tmp_path, "zai-org/GLM-4.1V-9B-Thinking", 501760) == []
    # a family without a pixel budget (LLaVA resizes to a fixed size) is not flagged
    assert _lint(tmp_path, "llava-hf/llava-1.5-7b-hf", 1003520) == []
