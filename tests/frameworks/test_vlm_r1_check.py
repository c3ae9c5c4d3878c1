"""`vlmcheck check` on VLM-R1 launch scripts: read as written (quoted ``:``-separated shell variables, ``--flag
value``, ``--flag=value``, bare flags, dashed names), told apart from TRL's configs, and what VLM-R1 refuses
refused. What VLM-R1 does with each row is proved in test_vlm_r1_golden.py; here, the reading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from vlm_r1_corpus import write_corpus

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.frameworks import detect, read_launch, trl, vlm_r1


def rec_script(tmp_path: Path, data: str, folders: str, model: str) -> Path:
    """The shape of VLM-R1's run_scripts/run_grpo_rec.sh."""
    path = tmp_path / "run_scripts" / "run_grpo_rec.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'''PROJECT_ROOT="$( cd "$( dirname "${{BASH_SOURCE[0]}}" )/.." && pwd )"
export REPO_HOME="${{PROJECT_ROOT}}"
echo "REPO_HOME: $REPO_HOME"
# Change the data_paths and image_folders to your own data
data_paths="{data}"
image_folders="{folders}"
model_path="{model}"
is_reward_customized_from_vlm_module=True
echo "data_paths: $data_paths"

export EXP_NAME="Qwen2.5-VL-3B-Instruct-rec" # TODO: change this to your own experiment name
TASK_TYPE="rec"
cd ${{REPO_HOME}}/src/open-r1-multimodal

export DEBUG_MODE="true" # Enable Debug if you want to see the rollout of model during RL
export LOG_PATH="${{REPO_HOME}}/runs/${{EXP_NAME}}/log/debug_log.$(date +%Y-%m-%d-%H-%M-%S).txt"

torchrun --nproc_per_node="8" \\
    --nnodes="1" \\
    --master_port="12349" \\
  src/open_r1/grpo_jsonl.py \\
    --use_vllm False \\
    --output_dir ${{REPO_HOME}}/checkpoints/rl/${{EXP_NAME}} \\
    --model_name_or_path $model_path \\
    --data_file_paths $data_paths \\
    --image_folders $image_folders \\
    --is_reward_customized_from_vlm_module $is_reward_customized_from_vlm_module \\
    --task_type $TASK_TYPE \\
    --per_device_train_batch_size 8 \\
    --bf16 \\
    --max_completion_length=2048 \\
    --reward_funcs accuracy format \\
    --dataset-name this_is_not_used \\
    --deepspeed ${{REPO_HOME}}/src/open-r1-multimodal/local_scripts/zero3.json \\

echo "Training completed for ${{EXP_NAME}}"
''')
    return path


@pytest.fixture
def model(tmp_path: Path, qwen2_vl_checkpoint: Path) -> Path:
    target = tmp_path / "Qwen2.5-VL-3B-Instruct"
    shutil.copytree(qwen2_vl_checkpoint, target)
    return target


def test_a_rec_script_is_read_with_its_quoted_variables(tmp_path: Path, model: Path) -> None:
    files = write_corpus(tmp_path / "data")
    data = f"{files['train']}:{files['more']}"
    folders = f"{files['images']}:{files['more_images']}"
    script = rec_script(tmp_path, data, folders, str(model))
    raw = read_launch(script.read_text(), path=script)
    assert raw is not None and detect(raw, path=script) is vlm_r1
    assert trl.claims(raw)  # a TRL config would be claimed the same way: VLM-R1 comes first
    assert (raw["data_file_paths"], raw["image_folders"], raw["task_type"]) == (data, folders, "rec")
    assert raw["bf16"] == "true" and raw["max_completion_length"] == "2048" and raw["use_vllm"] == "False"
    assert raw["dataset_name"] == "this_is_not_used"
    config = vlm_r1.read_config(raw, path=script)
    assert config.files == ((files["train"], files["images"]), (files["more"], files["more_images"]))
    assert config.question_template.startswith("{Question} ") and "JSON format" in config.question_template
    assert config.max_prompt_length == 512  # the default; not enforced
    report = vlmcheck.check(script)
    assert report.summary["framework"]["name"] == "vlm-r1" and report.summary["samples"] == 11
    assert "no prompt is cut or filtered" in report.summary["framework"]["notes"][0]


def test_what_vlm_r1_refuses_is_exit_2(tmp_path: Path, model: Path, qwen2_vl_checkpoint: Path) -> None:
    files = write_corpus(tmp_path / "data")
    cases = [
        ((str(files["train"]), str(files["images"]), str(qwen2_vl_checkpoint)),
         [], "Unsupported model"),  # a name without Qwen2-VL / Qwen2.5-VL: VLM-R1's Qwen module raises
        ((f"{files['train']}:{files['more']}", str(files["images"]), str(model)),
         [], "Number of data files must match"),
        ((f"{files['train']}:{files['more']}", f"{files['images']}:{files['more_images']}", str(model)),
         ["--data", str(files["train"])], "as many ':'-separated files"),
    ]
    for (data, folders, name), extra, words in cases:
        script = rec_script(tmp_path, data, folders, name)
        result = CliRunner().invoke(main, ["check", str(script), *extra])
        assert result.exit_code == 2 and words in result.output, result.output


def test_a_bad_row_stops_the_run_and_the_check_goes_on(tmp_path: Path, model: Path) -> None:
    files = write_corpus(tmp_path / "data")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "image": {"path": "x.png"}, "conversations": []}\n{"id": 2}\nnot json\n'
                   + files["more"].read_text())
    script = rec_script(tmp_path, str(bad), str(files["more_images"]), str(model))
    out = tmp_path / "r.jsonl"
    report = vlmcheck.check(script, output=out)
    verdicts = [r["framework"]["verdict"] for r in map(__import__("json").loads, out.read_text().splitlines())]
    assert verdicts == ["stops", "stops", "stops", "ok"]
    assert report.counts["VC001"] == 3
