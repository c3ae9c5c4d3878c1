"""LLaMA-Factory's templates that put other models' chat strings on a modelled plugin (``glm4_5v``,
``llava_next_llama3`` / ``_mistral`` / ``_qwen`` / ``_yi``, ``granite3_vision``, ``yi_vl``, ``paligemma_chat``,
``mimo_vl``, ``mistral_small``; Qwen3.5's ``qwen3_5`` / ``qwen3_5_nothink`` / ``qwen3_6`` and ``qwen3_vl`` on a Qwen3-VL
MoE checkpoint: Qwen3-VL's plugin on the model types that share its processor), proved per sample against LLaMA-Factory 0.9.5's own pipeline as
test_llamafactory_templates.py proves the base templates.

What differs from the base templates is text and tokenizer handling: each template's own strings and default system
prompt, a BOS prefix or none, an EOS slot after the answer or none, ``efficient_eos`` (``yi_vl``), the system prompt
inside the first user turn (Llama2Template: ``llava_next_mistral``, ``paligemma_chat``), ``replace_eos`` (a stop
word becomes the EOS and a special token: ``llava_next_llama3``, ``llava_next_qwen``, ``paligemma_chat``,
``mimo_vl``), stop words added as special tokens, the reasoning template's empty thought block (``mimo_vl``,
``glm4_5v``). Each runs on a fixture checkpoint of its plugin's model type (the plugin counts the image tokens; the
strings are tokenized by that checkpoint's tokenizer, as LLaMA-Factory tokenizes them for whatever model it is
given): two configs each, a cutoff_len that cuts images and one with mask_history (and thinking off for the
reasoning templates), on the generated corpus (lf_corpus.py).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs, write_data
from test_llamafactory_check import assert_agreement, check_configs, run_oracle

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py


def _checkpoints(qwen2_vl: Path) -> dict[str, Path]:
    from glm4v_checkpoint import glm4v_checkpoint
    from llava_checkpoint import llava_checkpoint
    from llava_next_checkpoint import llava_next_checkpoint
    from paligemma_checkpoint import paligemma_checkpoint
    from pixtral_checkpoint import pixtral_checkpoint
    from qwen3_sharing_checkpoint import sharing_checkpoint

    return {"llava_next": llava_next_checkpoint(), "llava": llava_checkpoint(), "paligemma": paligemma_checkpoint(),
            "glm4v": glm4v_checkpoint(), "mistral3": pixtral_checkpoint("mistral-small-3.1"), "qwen2_vl": qwen2_vl,
            "qwen3_5": sharing_checkpoint("qwen3_5"), "qwen3_vl_moe": sharing_checkpoint("qwen3_vl_moe")}


# template -> (checkpoint kind, a cutoff_len that cuts some images, a larger one)
VARIANTS: dict[str, tuple[str, int, int]] = {
    "glm4_5v": ("glm4v", 400, 900),
    "llava_next_llama3": ("llava_next", 1500, 3000),
    "llava_next_mistral": ("llava_next", 1500, 3000),
    "llava_next_qwen": ("llava_next", 1500, 3000),
    "llava_next_yi": ("llava_next", 1500, 3000),
    "granite3_vision": ("llava_next", 1500, 3000),
    "yi_vl": ("llava", 700, 1400),
    "paligemma_chat": ("paligemma", 300, 700),
    "mimo_vl": ("qwen2_vl", 400, 900),
    "mistral_small": ("mistral3", 800, 2000),
    # Qwen3.5's templates (Qwen3-VL's plugin) on a qwen3_5 checkpoint; Qwen3-VL's own on its MoE's
    "qwen3_5": ("qwen3_5", 400, 900),
    "qwen3_5_nothink": ("qwen3_5", 400, 900),
    "qwen3_6": ("qwen3_5", 400, 900),
    "qwen3_vl": ("qwen3_vl_moe", 400, 900),
}
REASONING = ("glm4_5v", "mimo_vl", "qwen3_5", "qwen3_6", "qwen3_vl")


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_variants")
    data = write_data(root, seed=41, rows=10)
    checkpoints = _checkpoints(qwen2_vl_checkpoint)
    configs: dict[str, dict[str, Any]] = {}
    for template, (kind, small, large) in VARIANTS.items():
        model = {"model_name_or_path": str(checkpoints[kind]), "template": template}
        configs[f"{template}-a"] = {**model, "dataset": "sg,alp", "cutoff_len": small}
        configs[f"{template}-b"] = {**model, "dataset": "chat,oa", "cutoff_len": large, "mask_history": True,
                                    "image_max_pixels": 262_144, "media_dir": str(data / "images"),
                                    **({"enable_thinking": False} if template in REASONING else {})}
    paths = write_configs(root, data, configs)
    return {"oracle": run_oracle(llamafactory_python, paths, cwd=data), "mine": check_configs(paths, data)}


def test_every_sample_agrees_with_llamafactory(proof: dict[str, Any]) -> None:
    assert_agreement(proof, at_least=350)


def test_the_per_row_oracle_is_get_dataset(proof: dict[str, Any]) -> None:
    for name, result in proof["oracle"].items():
        check = result["get_dataset"]
        assert result["llamafactory"] == "0.9.5"
        if any(r["error"] for r in result["rows"]):
            assert "error" in check, f"{name}: rows raise but get_dataset does not"
        else:
            assert check.get("same_as_rows") is True, f"{name}: {check}"


def test_the_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """Not vacuous: every template keeps samples whole and cuts some (crashing on a cut image span, except
    PaliGemma's prefix, which the sft cut never reaches)."""
    outcomes: dict[str, Counter[str]] = {t: Counter() for t in VARIANTS}
    for name, result in proof["oracle"].items():
        counter = outcomes[name.rsplit("-", 1)[0]]
        for r in result["rows"]:
            if r["error"] or not r["kept"]:
                counter["raises or dropped"] += 1
            else:
                counter["crash" if r["crash"] else "cut" if r["kept_tokens"] < r["tokens"] else "whole"] += 1
    for template, counter in outcomes.items():
        assert counter["whole"] >= 5, (template, counter)
        assert counter["crash" if template != "paligemma_chat" else "cut"] >= 1, (template, counter)
