"""`vlmcheck.check` on LLaMA-Factory's preference stages (``stage: dpo`` / ``rm``), proved per sample against its own
pairwise data path.

The oracle is LLaMA-Factory 0.9.5 in its own environment (llamafactory_oracle_runner.py): ``get_train_args`` reads
each config, ``get_dataset_converter`` converts the ranking rows (lf_corpus.py: sharegpt, alpaca and openai layouts,
rows it drops, a chosen turn with the user's role), ``_get_dataset_processor(stage="rm")`` (what the dpo and rm
workflows ask for: ``PairwiseDatasetProcessor``) prepares each row, and ``get_dataset`` on the whole config must give
the same rows. For every row both must agree on kept / dropped / raising, the longer sequence's untruncated total,
the chosen answer's labels, each image's feature count, what the one ``infer_seqlen`` cut keeps of the longer
sequence and of each answer's labels, the image tokens left and so the crash verdict. A tiny random Qwen-VL model
behind LLaMA-Factory's pairwise collator (chosen and rejected batched together, as its trainers batch them) raises
on the samples called a crash and runs the whole ones. Templates: qwen2_vl (defaults and three cutoff_len values,
packing set, an eval dataset), qwen3_vl (the reasoning template's one-turn rules with and without
enable_thinking / preserve_thinking), paligemma (its image prefix joins the prompt and is cut here) and glm4v
(efficient_eos: the EOS joins each answer).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs, write_data
from test_llamafactory_check import (
    _compare,
    assert_agreement,
    check_configs,
    forward_outcomes,
    outcome,
    run_oracle,
)

import vlmcheck
from vlmcheck.frameworks import llamafactory as lf

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path, qwen2_vl_checkpoint: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    from glm4v_checkpoint import glm4v_checkpoint
    from paligemma_checkpoint import paligemma_checkpoint

    root = tmp_path_factory.mktemp("lf_dpo")
    data = write_data(root, seed=23, rows=18)
    media = {"media_dir": str(data / "images")}
    qwen2 = {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "stage": "dpo"}
    qwen3 = {"model_name_or_path": str(qwen3_vl_think_checkpoint), "template": "qwen3_vl", "stage": "dpo"}
    configs = write_configs(root, data, {
        "dpo-defaults": {**qwen2, "dataset": "sg_pref,alp_pref"},
        "dpo-tight": {**qwen2, "dataset": "oa_pref,sg_pref", "cutoff_len": 384, "image_max_pixels": 1_003_520,
                      **media},
        "rm-mid": {**qwen2, "stage": "rm", "dataset": "alp_pref,oa_pref", "cutoff_len": 700,
                   "image_max_pixels": 262_144, "image_min_pixels": 4096, **media},
        # val_size: split at random before preprocessing; together the parts hold every kept pair
        "rm-val": {**qwen2, "stage": "rm", "dataset": "sg_pref,alp_pref", "val_size": 0.25, "cutoff_len": 1000},
        # packing is not the pairwise processor's, but data_args still takes one from cutoff_len
        "dpo-packed": {**qwen2, "dataset": "sg_pref,alp_pref", "eval_dataset": "oa_pref", "packing": True,
                       "cutoff_len": 513, "max_samples": 12, **media},
        "dpo-think": {**qwen3, "dataset": "sg_pref,oa_pref", "cutoff_len": 600, **media},
        "dpo-nothink": {**qwen3, "dataset": "alp_pref,sg_pref", "cutoff_len": 900, "enable_thinking": False,
                        "image_max_pixels": 2_000_000},
        "dpo-preserve": {**qwen3, "dataset": "sg_pref,oa_pref", "cutoff_len": 800, "enable_thinking": False,
                         "preserve_thinking": True, **media},
        "dpo-paligemma": {"model_name_or_path": str(paligemma_checkpoint()), "template": "paligemma",
                          "stage": "dpo", "dataset": "sg_pref,alp_pref", "cutoff_len": 400},
        "dpo-glm4v": {"model_name_or_path": str(glm4v_checkpoint()), "template": "glm4v", "stage": "dpo",
                      "dataset": "oa_pref,alp_pref", "cutoff_len": 500, **media},
    })
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=3)
    return {"oracle": oracle, "mine": check_configs(configs, data)}


def _compare_pair(oracle_row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """``_compare`` (the chosen sequence's counts, the longer one's length, image tokens left, crash) and the
    rejected sequence's own numbers."""
    found = _compare(oracle_row, record)
    if found or not oracle_row["kept"] or oracle_row["error"]:
        return found
    where = f"{oracle_row['dataset']}[{oracle_row['row']}]"
    pair = record["framework"]["pair"]
    pairs = {"chosen tokens": (oracle_row["chosen_tokens"], pair["chosen_tokens"]),
             "rejected tokens": (oracle_row["rejected_tokens"], pair["rejected_tokens"]),
             "kept rejected labels": (oracle_row["kept_rejected_supervised"], pair["kept_rejected_supervised"])}
    return [f"{where}: {what}: LLaMA-Factory {a}, vlmcheck {b}" for what, (a, b) in pairs.items() if a != b]


def test_every_preference_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    assert_agreement(proof, at_least=300, compare=_compare_pair)


def test_the_per_row_oracle_is_get_dataset(proof: dict[str, Any]) -> None:
    proved = 0
    for name, result in proof["oracle"].items():
        check = result["get_dataset"]
        assert result["llamafactory"] == "0.9.5"
        if any(r["error"] for r in result["rows"]):  # a row raises: so does the whole load
            assert "error" in check, f"{name}: rows raise but get_dataset does not"
            continue
        assert check.get("same_as_rows") is True, f"{name}: {check}"
        assert check.get("same_as_eval_rows", True) is True, f"{name}: {check}"
        proved += 1
    assert proved >= 3
    assert proof["oracle"]["dpo-defaults"]["cutoff_len"] == 2048
    assert proof["oracle"]["dpo-packed"]["cutoff_len"] == 512


def test_the_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """Not vacuous: crashes, drops, cut text, whole samples, multi-image rows, answers of different lengths whose
    shared cut costs the shorter one labels, and PaliGemma's prefix cut."""
    outcomes: Counter[str] = Counter()
    for name, result in proof["oracle"].items():
        for r in result["rows"]:
            outcomes[outcome(r)] += 1
            if r["kept"] and not r["error"]:
                outcomes["multi-image"] += len(r["image_features"]) > 1
                outcomes["rejected longer"] += r["rejected_tokens"] > r["chosen_tokens"]
                outcomes[f"{name.split('-')[-1]} crash"] += r["crash"]
    assert outcomes["crash"] >= 10 and outcomes["dropped"] >= 10 and outcomes["whole"] >= 60, outcomes
    assert outcomes["text cut"] >= 5 and outcomes["multi-image"] >= 20 and outcomes["rejected longer"] >= 30, outcomes
    assert outcomes["paligemma crash"] >= 1 and outcomes["glm4v crash"] >= 1, outcomes


def test_a_tiny_real_model_crashes_on_the_cut_pairs_only(proof: dict[str, Any]) -> None:
    """LLaMA-Factory's pairwise collator (chosen and rejected together, each with the images) and a random-weight
    Qwen-VL model: every pair judged a crash raises, every whole one runs."""
    ran = forward_outcomes(proof)
    assert ran["crash"] >= 6 and ran["whole"] >= 6, ran


def test_what_llamafactory_refuses_outside_sft_is_refused(tmp_path: Path) -> None:
    """get_train_args refuses these for a preference stage; _get_merged_dataset refuses a dataset of the other
    kind (checked on the corpus's dataset_info by reading it as a run does)."""
    base = {"model_name_or_path": "m", "template": "qwen2_vl", "dataset": "a", "stage": "dpo"}
    for key in ("train_on_prompt", "mask_history", "neat_packing", "predict_with_generate"):
        with pytest.raises(vlmcheck.UsageError, match=key):
            lf.read_config({**base, key: True}, path=tmp_path / "x.yaml")
    for stage in ("pt", "ppo"):
        with pytest.raises(vlmcheck.UsageError, match="stage"):
            lf.read_config({**base, "stage": stage}, path=tmp_path / "x.yaml")
    data = write_data(tmp_path, seed=1, rows=2)
    dpo = lf.read_config({**base, "dataset": "sg_pref", "dataset_dir": str(data)}, path=tmp_path / "x.yaml")
    assert dpo.pairwise and not dpo.packing
    assert [a.name for a in lf.read_dataset_info(dpo)] == ["sg_pref"]
    with pytest.raises(vlmcheck.UsageError, match="not applicable"):
        lf.read_dataset_info(lf.read_config({**base, "dataset": "sg", "dataset_dir": str(data)},
                                            path=tmp_path / "x.yaml"))
    with pytest.raises(vlmcheck.UsageError, match="not applicable"):
        lf.read_dataset_info(lf.read_config({**base, "stage": "sft", "dataset": "alp_pref",
                                             "dataset_dir": str(data)}, path=tmp_path / "x.yaml"))
