"""`vlmcheck.check` on LLaMA-Factory runs that join several datasets with ``mix_strategy: interleave_under`` /
``interleave_over`` (with and without ``interleave_probs``), proved per sample against LLaMA-Factory 0.9.5.

The oracle runner (llamafactory_oracle_runner.py) orders the rows with LLaMA-Factory's own ``merge_dataset`` (which
calls ``datasets.interleave_datasets`` with the run's seed) on stand-in datasets that hold each row's place, prepares
every row in that order, and checks that ``get_dataset`` on the whole config gives exactly those rows in that order.
vlmcheck must judge the same rows in the same order (a row that oversampling repeats is judged each time) with the
same verdicts. The strategies LLaMA-Factory cannot run (``interleave_once`` on datasets 4.0.0, probabilities that
do not sum to 1) must be refused by both.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs, write_data
from test_llamafactory_check import assert_agreement, check_configs, run_oracle

import vlmcheck


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_mix")
    data = write_data(root, seed=57, rows=12)
    # shorter sources: seeded draws of 5 rows (the corpus's sg has a row on which LLaMA-Factory raises, and a raising
    # row stops get_dataset before the whole order can be compared, so these joins use the other datasets)
    info = json.loads((data / "dataset_info.json").read_text())
    info["chat_few"] = {**info["chat"], "num_samples": 5}
    info["oa_few"] = {**info["oa"], "num_samples": 5}
    (data / "dataset_info.json").write_text(json.dumps(info))
    model = {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "media_dir": str(data / "images")}
    configs = write_configs(root, data, {
        # round robin until the shortest (chat_few: a seeded draw of 5 rows) runs out
        "under": {**model, "dataset": "alp_many,chat_few,oa", "mix_strategy": "interleave_under", "cutoff_len": 700},
        # round robin until the longest runs out: the shorter ones start again from their first row
        "over": {**model, "dataset": "oa_few,chat", "mix_strategy": "interleave_over", "cutoff_len": 500,
                 "image_max_pixels": 262_144},
        # a seeded draw of the source for each row, stopping when one runs out
        "under-probs": {**model, "dataset": "chat,alp,oa", "mix_strategy": "interleave_under",
                        "interleave_probs": "0.5,0.3,0.2", "seed": 11, "cutoff_len": 600},
        # ... or when all have, as a YAML list; max_samples before the merge; the eval datasets merged the same way
        "over-probs": {**model, "dataset": "chat_few,oa", "eval_dataset": "alp,oa_few", "mix_strategy": "interleave_over",
                       "interleave_probs": [0.8, 0.2], "max_samples": 7, "cutoff_len": 900},
        # eval_on_each_dataset: the eval datasets stay apart, the training ones are merged; a name listed twice
        # is one source
        "each": {**model, "dataset": "oa,alp_many,oa", "eval_dataset": "chat,alp", "mix_strategy": "interleave_over",
                 "eval_on_each_dataset": True, "cutoff_len": 400},
    })
    refused = write_configs(root, data, {
        "once": {**model, "dataset": "sg,alp", "mix_strategy": "interleave_once"},
        "bad-probs": {**model, "dataset": "sg,alp", "mix_strategy": "interleave_under", "interleave_probs": "0.5,0.6"},
    })
    return {"oracle": run_oracle(llamafactory_python, configs + refused, cwd=data), "mine": check_configs(configs, data),
            "refused": refused, "data": data}


def test_every_sample_agrees_with_llamafactory(proof: dict[str, Any]) -> None:
    oracle = {k: v for k, v in proof["oracle"].items() if k not in ("once", "bad-probs")}
    assert_agreement({**proof, "oracle": oracle}, at_least=100)


def test_llamafactory_gave_exactly_these_rows(proof: dict[str, Any]) -> None:
    for name, result in proof["oracle"].items():
        if name in ("once", "bad-probs"):
            continue
        assert result["get_dataset"].get("same_as_rows"), (name, result["get_dataset"])
        assert result["get_dataset"].get("same_as_eval_rows", True), (name, result["get_dataset"])


def test_the_strategies_change_which_rows_train(proof: dict[str, Any]) -> None:
    """Not vacuous: each config's row order differs from the concatenation, and oversampling repeats rows."""
    for name, result in proof["oracle"].items():
        if name in ("once", "bad-probs"):
            continue
        train = [(r["dataset"], r["row"]) for r in result["rows"] if r.get("split", "train") == "train"]
        assert train != sorted(train, key=lambda place: [d for d, _ in train].index(place[0])), name
    over = Counter((r["dataset"], r["row"]) for r in proof["oracle"]["over"]["rows"])
    assert max(over.values()) > 1
    under = {r["dataset"] for r in proof["oracle"]["under"]["rows"]}
    assert under == {"alp_many", "chat_few", "oa"} and len(proof["oracle"]["under"]["rows"]) == 3 * 5


def test_what_llamafactory_refuses_vlmcheck_refuses(proof: dict[str, Any]) -> None:
    errors = {"once": "is not supported", "bad-probs": "probabilities do not sum to 1"}
    for config in proof["refused"]:
        assert errors[config.stem] in proof["oracle"][config.stem].get("config_error", "").lower(), proof["oracle"][config.stem]
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(proof["data"])
            with pytest.raises(vlmcheck.UsageError, match=f"(?i){errors[config.stem]}"):
                vlmcheck.check(config)


def test_a_source_that_is_never_drawn_is_said_not_scanned_forever(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """interleave_over with probability 0 for a dataset: datasets draws forever waiting for it to be exhausted
    (its ``interleave_datasets`` never returns: LLaMA-Factory hangs before step 1). vlmcheck says so at once."""
    data = write_data(tmp_path, seed=3, rows=4)
    [config] = write_configs(tmp_path, data, {"never": {
        "model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "dataset": "chat,alp",
        "mix_strategy": "interleave_over", "interleave_probs": "1.0,0.0"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        with pytest.raises(vlmcheck.DatasetError, match="never drawn"):
            vlmcheck.check(config)
