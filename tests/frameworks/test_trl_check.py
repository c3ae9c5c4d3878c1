"""`vlmcheck check` on TRL configs: configs in the shape of TRL's example recipes are read as written, data is found
the way `load_dataset` finds it, and refusals say why. What TRL does with each sample is proved against TRL itself
in test_trl_oracle.py; here, the plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.frameworks import detect, trl

# the shape of a `trl sft --config` recipe: model, data and training keys side by side, most of them not ours
RECIPE = """\
# Model arguments
model_name_or_path: {model}
model_revision: main
dtype: bfloat16
attn_implementation: sdpa

# Data training arguments
dataset_name: {data}
dataset_num_proc: 4

# SFT trainer config
bf16: true
do_eval: false
eval_strategy: 'no'
gradient_accumulation_steps: 8
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
learning_rate: 2.0e-05
log_level: info
logging_steps: 5
lr_scheduler_type: cosine_with_min_lr
lr_scheduler_kwargs:
  min_lr_rate: 0.1
max_length: {max_length}
num_train_epochs: 1
output_dir: data/Qwen2-VL-SFT
per_device_train_batch_size: 4
push_to_hub: false
report_to:
- none
seed: 42
warmup_ratio: 0.03
"""


@pytest.fixture()
def run(tmp_path: Path, qwen2_vl_checkpoint: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (640, 480)).save(tmp_path / "a.png")
    rows = [{"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A cat."}],
             "images": [str(tmp_path / "a.png")]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "images": []}]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "test.jsonl").write_text("not json at all\n")  # another split: never read
    config = tmp_path / "sft.yaml"
    config.write_text(RECIPE.format(model=qwen2_vl_checkpoint, data=data, max_length=100))
    return config


def test_a_recipe_is_read_as_written_and_the_fix_is_in_trl_syntax(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    result = CliRunner().invoke(main, ["check", str(run), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "VC201" in result.output and "set max_length: 421" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["framework"]["verdict"] for r in records] == ["crash", "ok"]
    run.write_text(run.read_text().replace("max_length: 100", "max_length: 421"))
    assert CliRunner().invoke(main, ["check", str(run)]).exit_code == 0


def test_trl_and_llamafactory_configs_go_to_their_own_module(run: Path) -> None:
    import yaml

    from vlmcheck.frameworks import llamafactory

    assert detect(yaml.safe_load(run.read_text()), path=run) is trl
    lf = {"model_name_or_path": "x", "template": "qwen2_vl", "dataset": "mm", "cutoff_len": 1024}
    assert detect(lf, path=run) is llamafactory


def test_a_folder_is_split_by_file_names_as_load_dataset_splits_it(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "d"
    (folder / "data").mkdir(parents=True)
    for name in ("train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001"):
        datasets.Dataset.from_list([{"x": name}]).to_parquet(str(folder / "data" / f"{name}.parquet"))
    loaded = datasets.load_dataset(str(folder))
    for split in ("train", "validation"):
        files = trl.dataset_files(folder, split)
        assert sorted(r["x"] for f in files for r in vlmcheck.data.readers.iter_rows(f)) == sorted(loaded[split]["x"])
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("a", "b"):
        datasets.Dataset.from_list([{"x": name}]).to_json(str(plain / f"{name}.jsonl"))
    assert list(datasets.load_dataset(str(plain)).keys()) == ["train"]  # no split names: all train
    assert len(trl.dataset_files(plain, "train")) == 2


def test_a_save_to_disk_folder_is_refused_as_load_dataset_refuses_it(run: Path, tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"x": 1}]).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="load_from_disk"):  # what `trl sft` meets
        datasets.load_dataset(str(folder))
    with pytest.raises(vlmcheck.UsageError, match="save_to_disk"):
        vlmcheck.check(run, data=folder)


def test_packing_with_images_is_refused_as_sfttrainer_refuses_it(run: Path) -> None:
    run.write_text(run.read_text() + "packing: true\n")
    result = CliRunner().invoke(main, ["check", str(run)])
    assert result.exit_code == 2 and "packing: false" in result.output


# JSON sources as datasets (>= 4.7, which TRL 1.x requires) loads them: {file name: its rows' extra fields}
JSON_SOURCES = {
    "a new column in a later file": {"train-00000.jsonl": [{"q": "a"}], "train-00001.jsonl": [{"q": "a", "n": 1}]},
    "a column missing in a later file": {"train-00000.jsonl": [{"q": "a", "n": 1}], "train-00001.jsonl": [{"q": "b"}]},
    "mixed types in one file": {"train.jsonl": [{"q": "a"}, {"q": ["a"]}, {"q": {"k": 1}}]},
    "a list in a later file after strings": {"train-00000.jsonl": [{"q": "a"}], "train-00001.jsonl": [{"q": ["a"]}]},
    "anything in a later file after mixed types": {"train-00000.jsonl": [{"q": 1}, {"q": "a"}],
                                                    "train-00001.jsonl": [{"q": [1]}]},
    "a JSON array of mixed objects": {"train.json": [{"q": {"a": 1}}, {"q": {"b": "s"}}]},
    "a new column in a later .ndjson file": {"train-00000.ndjson": [{"q": "a"}],
                                             "train-00001.ndjson": [{"q": "a", "n": 1}]},
    # objects of other fields in the first file: JSON text, so a later file may add one; unless a blank line ends
    # the first file, which turns datasets' search for them off (the objects merge, and the new field stops)
    "objects of other fields, a field added later": {"train-00000.jsonl": [{"q": {"a": 1}}, {"q": {"b": 2}}],
                                                     "train-00001.jsonl": [{"q": {"c": 3}}]},
    "the same with a blank line ending the first file": {"train-00000.jsonl": [{"q": {"a": 1}}, {"q": {"b": 2}}],
                                                         "train-00001.jsonl": [{"q": {"c": 3}}]},
    "an object in a later file after text": {"train-00000.jsonl": [{"q": "a"}], "train-00001.jsonl": [{"q": {"k": 1}}]},
}
BLANK_ENDED = {"the same with a blank line ending the first file": "train-00000.jsonl"}


@pytest.mark.parametrize("case", JSON_SOURCES)
def test_a_json_source_stops_the_check_exactly_where_load_dataset_raises(tmp_path: Path, case: str,
                                                                          qwen2_vl_checkpoint: Path) -> None:
    import datasets

    from vlmcheck.errors import DatasetError

    if tuple(int(x) for x in datasets.__version__.split(".")[:2]) < (4, 7):
        pytest.skip("TRL 1.x runs with datasets >= 4.7: an older one here is not the run's loader")
    data = tmp_path / "data"
    data.mkdir()
    chat = [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A cat."}]
    for name, extras in JSON_SOURCES[case].items():
        rows = [{"messages": chat, "images": [], **extra} for extra in extras]
        text = json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows)
        (data / name).write_text(text + ("\n" if BLANK_ENDED.get(case) == name else ""))
    try:
        datasets.load_dataset(str(data), split="train", cache_dir=str(tmp_path / "cache"))
        loads = True
    except Exception:  # DatasetGenerationError, or the cast's own error
        loads = False
    config = tmp_path / "sft.yaml"
    config.write_text(RECIPE.format(model=qwen2_vl_checkpoint, data=data, max_length=4096))
    try:
        vlmcheck.check(config)
        mine = True
    except DatasetError as e:
        assert "before step 1" in str(e)
        mine = False
    assert mine == loads, f"{case}: datasets {'loads' if loads else 'fails'}, vlmcheck {'loads' if mine else 'stops'}"
