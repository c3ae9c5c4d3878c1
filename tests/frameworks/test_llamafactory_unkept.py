"""A run none of whose rows LLaMA-Factory's dataset processor keeps, proved against its own entry point
(``get_train_args``, ``load_tokenizer``, ``get_template_and_fix_tokenizer``, ``get_dataset``; llamafactory_env.py).

LLaMA-Factory 0.9.5's ``_get_preprocessed_dataset`` prints the first prepared sample of each dataset it prepares
(``training_args.should_log``: true on the main process) and, finding none, raises ``RuntimeError('Cannot find
valid samples, check `data/README.md` for the data format.')``: the run stops in ``get_dataset``, before the trainer
is built. That holds whoever drops the rows: the converter (no answer) or the dataset processor, which drops a
ranking row its converter read as one answer ('Dropped invalid example') and, with ``packing``, a sample still over
``cutoff_len`` after the cut ('Dropped lengthy example': PaliGemma's image prefix). A ranking dataset whose every row
is read as one answer to a one-turn prompt gives its ``_prompt`` no turn, which cannot be merged with another
dataset's prompts ('The features can't be aligned'). Each such run vlmcheck check refuses (DatasetError, exit 2)
with LLaMA-Factory's reason; beside them, runs that keep one row go on in both, with the same samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from llamafactory_env import oracle_python
from PIL import Image

import vlmcheck
from vlmcheck.errors import DatasetError

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
VALID = "Cannot find valid samples"
ALIGNED = "The features can't be aligned"

ENTRY = textwrap.dedent('''
    import json, sys, tempfile
    import datasets, yaml
    from llamafactory_oracle_runner import entry_train_dataset

    datasets.disable_caching()
    out = {}
    for config in sys.argv[1:]:
        args = yaml.safe_load(open(config))
        args.update(output_dir=tempfile.mkdtemp(), overwrite_cache=True, report_to="none")
        try:
            train = entry_train_dataset(args)
            out[config] = {"samples": [len(r.get("input_ids") or r["chosen_input_ids"]) for r in train]}
        except BaseException as e:  # the run stops before step 1
            out[config] = {"raises": f"{type(e).__name__}: {str(e)[:300]}"}
    print("ENTRY" + json.dumps(out))
''')


def run_entry(configs: dict[str, Path], data: Path, cache: Path) -> dict[str, Any]:
    """LLaMA-Factory's entry point (ENTRY) on each config, launched from ``data``: its training samples' lengths, or
    what it raises."""
    done = subprocess.run([str(oracle_python()), "-c", ENTRY, *map(str, configs.values())], capture_output=True,
                          text=True, timeout=1500, cwd=data,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
                               "PYTHONPATH": str(HERE), "HF_DATASETS_CACHE": str(cache)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ENTRY")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1][len("ENTRY"):])
    return {name: result[str(config)] for name, config in configs.items()}


def _turn(who: str, text: str) -> dict[str, str]:
    return {"from": who, "value": text}


USER, GPT = "human", "gpt"
# ranking rows: a one-turn prompt with chosen / rejected turn objects (kept); with strings (read as one answer to
# no prompt: dropped by the pairwise processor); a three-turn prompt with strings (a prompt of two turns: dropped)
KEPT_PAIRS = [
    {"messages": [_turn(USER, "<image>Which one?")], "chosen": _turn(GPT, "The left one."),
     "rejected": _turn(GPT, "The right one."), "images": ["images/photo.png"]},
    {"messages": [_turn(USER, "Why?")], "chosen": _turn(GPT, "Because it is red."), "rejected": _turn(GPT, "No.")},
]
STRING_PAIRS = [
    {"messages": [_turn(USER, "<image>Which one?")], "chosen": "The left one.", "rejected": "The right one.",
     "images": ["images/photo.png"]},
    {"messages": [_turn(USER, "Why?")], "chosen": "Because it is red.", "rejected": "No."},
]
LONG_STRING_PAIRS = [
    {"messages": [_turn(USER, "Hello."), _turn(GPT, "Hi."), _turn(USER, "Which one?")], "chosen": "The left one.",
     "rejected": "The right one."},
]
# the converter skips the first (a prompt of two turns), the pairwise processor drops the second
MIXED_PAIRS = [
    {"messages": [_turn(USER, "Hello."), _turn(GPT, "Hi.")], "chosen": "Fine.", "rejected": "Bad."},
    {"messages": [_turn(USER, "Why?")], "chosen": "Because it is red.", "rejected": "No."},
]
# alpaca ranking rows whose chosen is not text: read as one answer (output) and dropped by the pairwise processor
ALPACA_PAIRS = [
    {"instruction": "Which one?", "output": "The left one.", "chosen": None, "rejected": "The right one."},
    {"instruction": "Why?", "output": "Because it is red.", "chosen": 3, "rejected": "No."},
]
IMAGE_ROWS = [
    {"conversations": [_turn(USER, "<image>What is it?"), _turn(GPT, "A purple field.")],
     "images": ["images/photo.png"]},
    {"conversations": [_turn(USER, "<image><image>Two of them?"), _turn(GPT, "Yes, twice.")],
     "images": ["images/photo.png", "images/photo.png"]},
]
ODD_ROWS = [{"conversations": [_turn(USER, "Hello.")]},
            {"conversations": [_turn(USER, "Hello."), _turn(GPT, "Hi."), _turn(USER, "Bye.")]}]

RANKING = {"formatting": "sharegpt", "ranking": True,
           "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"}}
TEXT_RANKING = {**RANKING, "columns": {k: v for k, v in RANKING["columns"].items() if k != "images"}}
DATASETS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "kept_pairs": (KEPT_PAIRS, RANKING),
    "string_pairs": (STRING_PAIRS, RANKING),
    "long_string_pairs": (LONG_STRING_PAIRS, TEXT_RANKING),
    "mixed_pairs": (MIXED_PAIRS, TEXT_RANKING),
    "alpaca_pairs": (ALPACA_PAIRS, {"ranking": True, "columns": {"prompt": "instruction", "response": "output",
                                                                  "chosen": "chosen", "rejected": "rejected"}}),
    "image_rows": (IMAGE_ROWS, {"formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                       "images": "images"}}),
    "odd_rows": (ODD_ROWS, {"formatting": "sharegpt", "columns": {"messages": "conversations"}}),
}

# case: (model, settings, what LLaMA-Factory does: "runs", or the words of the error that stops it)
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    # the pairwise processor drops every row: alone, in the eval dataset, in one of each eval dataset
    "dpo, every pair read as one answer": ("qwen2_vl", {"stage": "dpo", "dataset": "string_pairs"}, VALID),
    "rm, every pair read as one answer": ("qwen2_vl", {"stage": "rm", "dataset": "string_pairs"}, VALID),
    "dpo, alpaca pairs without a chosen string": ("qwen2_vl", {"stage": "dpo", "dataset": "alpaca_pairs"}, VALID),
    "dpo, the converter skips one row and the processor drops the other": (
        "qwen2_vl", {"stage": "dpo", "dataset": "mixed_pairs"}, VALID),
    "dpo, every eval pair dropped": ("qwen2_vl", {"stage": "dpo", "dataset": "kept_pairs",
                                                   "eval_dataset": "string_pairs"}, VALID),
    "dpo, one eval dataset of each dropped": ("qwen2_vl", {"stage": "dpo", "dataset": "kept_pairs",
                                                            "eval_dataset": "kept_pairs,long_string_pairs",
                                                            "eval_on_each_dataset": True}, VALID),
    # dropped pairs beside kept ones: the merged dataset keeps a row (two-turn prompts merge with one-turn ones)
    "dpo, dropped pairs beside kept ones": ("qwen2_vl", {"stage": "dpo", "dataset": "kept_pairs,long_string_pairs"},
                                            "runs"),
    # pairs read as one answer to a one-turn prompt: their _prompt is a list of nulls, beside others' turns
    "dpo, unprompted pairs beside kept ones": ("qwen2_vl", {"stage": "dpo", "dataset": "kept_pairs,string_pairs"},
                                               ALIGNED),
    "dpo, unprompted pairs beside alpaca pairs": ("qwen2_vl", {"stage": "dpo",
                                                               "dataset": "string_pairs,alpaca_pairs"}, ALIGNED),
    # packing: every sample's image prefix (256 tokens an image, never cut) over cutoff_len - 1; then one under it
    "packing, every sample over cutoff_len": ("paligemma", {"dataset": "image_rows", "packing": True,
                                                            "cutoff_len": 200}, VALID),
    "packing, one sample under cutoff_len": ("paligemma", {"dataset": "image_rows", "packing": True,
                                                           "cutoff_len": 400}, "runs"),
    "neat_packing, every sample over cutoff_len": ("paligemma", {"dataset": "image_rows", "neat_packing": True,
                                                                 "cutoff_len": 150}, VALID),
    # the converter drops every row (odd turn counts): the case vlmcheck already refused
    "sft, every row an odd number of turns": ("qwen2_vl", {"dataset": "odd_rows"}, VALID),
}


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    from paligemma_checkpoint import paligemma_checkpoint

    folder = tmp_path_factory.mktemp("lf_unkept")
    data = folder / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (640, 480), (120, 40, 160)).save(data / "images" / "photo.png")
    info = {}
    for name, (rows, entry) in DATASETS.items():
        (data / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {"file_name": f"{name}.json", **entry}
    (data / "dataset_info.json").write_text(json.dumps(info))
    models = {"qwen2_vl": (qwen2_vl_checkpoint, "qwen2_vl"), "paligemma": (paligemma_checkpoint(), "paligemma")}
    configs = {}
    for k, (name, (model, settings, _)) in enumerate(CASES.items()):
        path, template = models[model]
        config = folder / f"case{k}.yaml"
        config.write_text(yaml.safe_dump({"stage": "sft", "do_train": True, "finetuning_type": "lora",
                                          "model_name_or_path": str(path), "template": template,
                                          "dataset_dir": str(data), "output_dir": "saves/x", **settings}))
        configs[name] = config
    return {"configs": configs, "data": data, "runs": run_entry(configs, data, folder / "cache")}


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_without_samples_is_refused_as_llamafactory_stops_it(entry: dict[str, Any], name: str) -> None:
    theirs, expected = entry["runs"][name], CASES[name][2]
    config = entry["configs"][name]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(entry["data"])
        if expected != "runs":
            assert expected in theirs.get("raises", ""), theirs  # the case is what it says
            with pytest.raises(DatasetError) as refused:
                vlmcheck.check(config)
            assert expected in str(refused.value) and "before step 1" in str(refused.value), refused.value
            return
        assert "samples" in theirs and theirs["samples"], theirs
        records = list(vlmcheck.check(config).records())
    kept = [r for r in records if r["framework"]["verdict"] != "dropped"]
    assert len(kept) == len(theirs["samples"]), (records, theirs)  # packing: one sample, one sequence
    assert any(r["framework"]["verdict"] == "dropped" for r in records), records


def test_the_refusal_names_the_first_dropped_row_and_why(entry: dict[str, Any]) -> None:
    """The message carries the reason of the processor's drop and the numbers of a packed one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(entry["data"])
        with pytest.raises(DatasetError) as pairs:
            vlmcheck.check(entry["configs"]["dpo, every pair read as one answer"])
        with pytest.raises(DatasetError) as packed:
            vlmcheck.check(entry["configs"]["packing, every sample over cutoff_len"])
    assert "row 0 of 'string_pairs'" in str(pairs.value) and "Dropped invalid example" in str(pairs.value)
    assert "256 tokens" in str(packed.value) and "cutoff_len=199" in str(packed.value), packed.value
