"""``val_size`` that datasets refuses to split, proved against LLaMA-Factory 0.9.5's own entry point
(``get_train_args`` ... ``get_dataset``, see test_llamafactory_unkept.py).

``split_dataset`` splits the merged training rows before any is prepared, with ``train_test_split(test_size=
int(val_size) if val_size > 1 else val_size)``; datasets raises on a count not under the rows, a fraction not under
1, or a split whose rounded-up test share leaves no training row, and the run stops before step 1. vlmcheck check
refuses those runs (DatasetError) and judges the others. A whole number of 1 or less stays a count (``val_size: 1``
splits off one row), a decimal over 1 is cut to its whole part; the rows counted are the merged ones (``max_samples``
applied, several datasets joined or interleaved). Found by differential campaign 6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_llamafactory_unkept import run_entry

import vlmcheck
from vlmcheck.errors import DatasetError

pytestmark = pytest.mark.slow

SPLIT = "train_test_split"  # the words of vlmcheck's refusal; LLaMA-Factory's error is datasets' ValueError


def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": f"{tag} question {i}?"},
                               {"from": "gpt", "value": f"{tag} answer {i}."}]} for i in range(n)]


# case: (settings, whether LLaMA-Factory stops: what the case is built to show)
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "a count equal to the rows": ({"dataset": "four", "val_size": 4}, True),
    "a count under the rows": ({"dataset": "four", "val_size": 3}, False),
    "the fraction 1.0": ({"dataset": "four", "val_size": 1.0}, True),
    "the whole number 1 (one row)": ({"dataset": "four", "val_size": 1}, False),
    "a fraction leaving no training row": ({"dataset": "four", "val_size": 0.99}, True),
    "a fraction leaving one": ({"dataset": "four", "val_size": 0.7}, False),
    "a decimal over 1 cut to the rows": ({"dataset": "three", "val_size": 3.7}, True),
    "a decimal over 1 cut under them": ({"dataset": "three", "val_size": 2.5}, False),
    "two datasets joined, a count of both": ({"dataset": "four,three", "val_size": 7}, True),
    "two datasets joined, a count under both": ({"dataset": "four,three", "val_size": 6}, False),
    "max_samples counted": ({"dataset": "four", "max_samples": 2, "val_size": 2}, True),
    "interleaved until the first ends": ({"dataset": "four,three", "mix_strategy": "interleave_under",
                                          "val_size": 6}, True),
    "interleaved until the last ends": ({"dataset": "four,three", "mix_strategy": "interleave_over",
                                         "val_size": 7}, False),
}


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("lf_val_split")
    data = folder / "data"
    data.mkdir()
    info = {}
    for name, n in (("four", 4), ("three", 3)):
        (data / f"{name}.json").write_text(json.dumps(_rows(n, name)))
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    configs = {}
    for k, (name, (settings, _)) in enumerate(CASES.items()):
        config = folder / f"case{k}.yaml"
        config.write_text(yaml.safe_dump({"stage": "sft", "do_train": True, "finetuning_type": "lora",
                                          "model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl",
                                          "dataset_dir": str(data), "output_dir": "saves/x", **settings}))
        configs[name] = config
    return {"configs": configs, "data": data, "runs": run_entry(configs, data, folder / "cache")}


@pytest.mark.parametrize("name", list(CASES))
def test_a_split_datasets_refuses_stops_the_run(entry: dict[str, Any], name: str) -> None:
    theirs, stops = entry["runs"][name], CASES[name][1]
    assert ("raises" in theirs) == stops, theirs  # the case is what it says
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(entry["data"])
        if stops:
            assert "ValueError" in theirs["raises"] and ("test_size" in theirs["raises"]), theirs
            with pytest.raises(DatasetError) as refused:
                vlmcheck.check(entry["configs"][name])
            assert SPLIT in str(refused.value) and "before step 1" in str(refused.value), refused.value
            return
        records = list(vlmcheck.check(entry["configs"][name]).records())
    assert theirs["samples"] and all(r["framework"]["verdict"] == "ok" for r in records), (theirs, records)
