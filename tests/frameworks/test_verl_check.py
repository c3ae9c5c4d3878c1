"""`vlmcheck check` on verl launch scripts and Hydra YAML: read as written, without a flag translated by hand. What
verl does with each prompt is proved against verl itself in test_verl_oracle.py; here, the reading."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.frameworks import detect, verl


def write_parquet(path: Path) -> Path:
    import datasets

    buf = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buf, format="PNG")
    rows = [{"prompt": [{"role": "user", "content": "<image>Find x."}], "images": [{"bytes": buf.getvalue(), "path": None}],
             "extra_info": {"index": 7}}]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image())).to_parquet(str(path))
    return path


def test_a_launch_script_is_read_with_its_shell_variables(tmp_path: Path) -> None:
    script = """set -x
ENGINE=${1:-vllm}
export DATA=$HOME/data/geo3k

python3 -m verl.trainer.main_ppo \\
    algorithm.adv_estimator=grpo \\
    data.train_files=$DATA/train.parquet \\
    data.max_prompt_length=1024 \\
    data.filter_overlong_prompts=True \\
    data.truncation='error' \\
    actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct \\
    actor_rollout_ref.rollout.name=$ENGINE \\
    +actor_rollout_ref.rollout.engine_kwargs.vllm.disable_mm_preprocessor_cache=True \\
    trainer.logger=['console','wandb'] \\
    trainer.total_epochs=15 $@
"""
    raw = verl.read_launch(script, path=tmp_path / "run.sh", env={"HOME": "/home/me"})
    assert raw is not None and detect(raw, path=tmp_path / "run.sh") is verl
    assert raw["data"] == {"train_files": "/home/me/data/geo3k/train.parquet", "max_prompt_length": 1024,
                           "filter_overlong_prompts": True, "truncation": "error"}
    assert raw["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert raw["actor_rollout_ref"]["rollout"]["engine_kwargs"]["vllm"]["disable_mm_preprocessor_cache"] is True
    assert raw["trainer"]["logger"] == ["console", "wandb"]
    assert verl.read_launch("echo hello\n", path=tmp_path / "x.sh") is None


def test_a_script_and_a_hydra_yaml_give_the_same_verdicts(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    parquet = write_parquet(tmp_path / "data" / "train.parquet")
    script = tmp_path / "run.sh"
    script.write_text(f"python3 -m verl.trainer.main_ppo data.train_files={parquet} data.max_prompt_length=256 "
                      f"actor_rollout_ref.model.path={qwen2_vl_checkpoint}\n")
    yaml_config = tmp_path / "config.yaml"
    yaml_config.write_text(f"data:\n  train_files: {parquet}\n  max_prompt_length: 256\n"
                           f"actor_rollout_ref:\n  model:\n    path: {qwen2_vl_checkpoint}\n")
    fixes = []
    for config in (script, yaml_config):
        result = CliRunner().invoke(main, ["check", str(config)])
        assert result.exit_code == 1, result.output
        assert "VC206" in result.output
        fixes += re.findall(r"set data\.max_prompt_length=(\d+)", result.output)
    assert len(fixes) == 2 and fixes[0] == fixes[1]
    need = int(fixes[0])
    script.write_text(script.read_text().replace("=256", f"={need - 1}"))
    assert CliRunner().invoke(main, ["check", str(script)]).exit_code == 1
    script.write_text(script.read_text().replace(f"={need - 1}", f"={need}"))  # the fix, applied as written
    assert CliRunner().invoke(main, ["check", str(script)]).exit_code == 0


def test_what_verl_refuses_or_vlmcheck_does_not_model_is_exit_2(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    parquet = write_parquet(tmp_path / "train.parquet")
    base = f"data:\n  train_files: {parquet}\nactor_rollout_ref:\n  model:\n    path: {qwen2_vl_checkpoint}\n"
    config = tmp_path / "c.yaml"
    for extra, words in (("  custom_cls:\n    path: my.py\n", "custom_cls"),
                         ("  mm_processor_kwargs:\n    max_pixels: 200704\n", "mm_processor_kwargs")):
        config.write_text(base.replace("data:\n", "data:\n" + extra))
        result = CliRunner().invoke(main, ["check", str(config)])
        assert result.exit_code == 2 and words in result.output
    (tmp_path / "train.csv").write_text("a\n")
    config.write_text(base.replace(str(parquet), str(tmp_path / "train.csv")))
    assert "Unsupported file format" in CliRunner().invoke(main, ["check", str(config)]).output


def test_records_carry_the_prompt_tokens_and_verls_row_index(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    parquet = write_parquet(tmp_path / "train.parquet")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train_files: {parquet}\nactor_rollout_ref:\n  model:\n    path: {qwen2_vl_checkpoint}\n")
    out = tmp_path / "r.jsonl"
    vlmcheck.check(config, output=out)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["id"] == "7" and record["framework"]["prompt_tokens"] == record["tokens"]


@pytest.mark.parametrize("text", ["#!/bin/bash\necho nothing\n"])
def test_a_script_that_launches_nothing_known_is_exit_2(tmp_path: Path, text: str) -> None:
    script = tmp_path / "other.sh"
    script.write_text(text)
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and "no training command" in result.output


@pytest.mark.parametrize("case", ["mixed types in the file", "a new column past 10 MiB"])
def test_a_json_file_stops_the_check_where_load_dataset_cannot_load_it(tmp_path: Path, case: str,
                                                                        qwen2_vl_checkpoint: Path) -> None:
    """verl loads each .json / .jsonl file with load_dataset("json") and leaves datasets unpinned: the one installed
    here is taken for the run's, and its load_dataset is the oracle."""
    import datasets

    from vlmcheck.errors import DatasetError

    row = {"prompt": [{"role": "user", "content": "What is 1+1?"}], "data_source": "x"}
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        if case == "mixed types in the file":
            f.write(json.dumps({**row, "meta": "a"}) + "\n" + json.dumps({**row, "meta": ["a"]}) + "\n")
        else:
            size = 0
            while size <= 10 << 20:
                size += f.write(json.dumps({**row, "pad": "x" * 900}) + "\n")
            f.write(json.dumps({**row, "pad": "x", "meta": "new"}) + "\n")
    try:
        datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
        theirs = True
    except Exception:
        theirs = False
    script = tmp_path / "run.sh"
    script.write_text(f"python3 -m verl.trainer.main_ppo data.train_files={path} data.max_prompt_length=4096 "
                      f"actor_rollout_ref.model.path={qwen2_vl_checkpoint}\n")
    try:
        vlmcheck.check(script)
        mine = True
    except DatasetError as e:
        assert "before step 1" in str(e)
        mine = False
    assert (mine, theirs) == ((True, True) if case == "mixed types in the file" else (False, False))
