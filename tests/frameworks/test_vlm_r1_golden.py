"""``vlmcheck check`` on VLM-R1 launch scripts, against what VLM-R1's own code did with the same data.

VLM-R1 does not install from the package registry (and pins transformers 4.49.0, trl 0.17.0), so its code was run
beside the project (tests/assets/vlm_r1_golden/make_golden.py, README.md there: the commit and how) on the corpus
vlm_r1_corpus.py writes: ``grpo_jsonl.main`` loaded the data for real, and the trainer's own prompt step built
each row's inputs up to ``generate``. golden.json holds, per row, the prompt's token count and each image's, or
the exception the step raised, and, per scenario, whether ``main`` itself raised (the run stops before training).
Here the same corpus is written again and vlmcheck is run on a launch script in the shape of VLM-R1's
run_scripts/run_grpo_gui.sh with the same flags.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from vlm_r1_corpus import write_corpus, write_rec_corpus

import vlmcheck
from vlmcheck.frameworks import detect, read_launch, vlm_r1

GOLDEN = json.loads((Path(__file__).parent.parent / "assets" / "vlm_r1_golden" / "golden.json").read_text())
SCENARIOS = GOLDEN["scenarios"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm_r1")
    files = write_corpus(root / "data")
    rec = write_rec_corpus(root / "rec")
    files = {**files, "rec_yaml": rec["rec_yaml"], "rec_images": rec["images"]}
    model = root / "Qwen2-VL-tiny"  # VLM-R1 picks its Qwen module from the model's name
    shutil.copytree(qwen2_vl_checkpoint, model)
    return {**files, "model": model}


def script(tmp_path: Path, corpus: dict[str, Path], flags: list[str]) -> Path:
    """A launch script in the shape of VLM-R1's run_scripts/run_grpo_gui.sh, with the golden run's flags (its
    paths mapped onto this corpus)."""
    values: dict[str, str] = {}
    words = list(flags)
    for i, word in enumerate(words[:-1]):
        if word.startswith("--") and not words[i + 1].startswith("--"):
            values[word[2:]] = words[i + 1]
    names = {"train.jsonl": "train", "more.jsonl": "more", "missing.jsonl": "missing"}
    data = ":".join(str(corpus[names[Path(p).name]]) for p in values.pop("data_file_paths").split(":"))
    folders = ":".join(str(corpus["images" if Path(p).name == "images" else "more_images"])
                       for p in values.pop("image_folders").split(":"))
    for key in ("output_dir", "model_name_or_path", "use_cpu", "report_to"):
        values.pop(key, None)
    extra = "".join(f"    --{k} {v} \\\n" for k, v in values.items())
    path = tmp_path / "run_grpo.sh"
    path.write_text(f"""cd src/open-r1-multimodal

export DEBUG_MODE="true"
# export CUDA_VISIBLE_DEVICES=4,5,6,7

RUN_NAME="Qwen2.5-VL-3B-GRPO"
export LOG_PATH="./debug_log_$RUN_NAME.txt"
data_paths="{data}"
image_folders="{folders}"
model_path={corpus['model']}

torchrun --nproc_per_node="8" \\
    --nnodes="1" \\
    --master_port="12346" \\
    src/open_r1/grpo_jsonl.py \\
    --deepspeed local_scripts/zero3.json \\
    --output_dir output/$RUN_NAME \\
    --model_name_or_path $model_path \\
    --data_file_paths $data_paths \\
    --image_folders $image_folders \\
{extra}    --bf16 \\
    --gradient_checkpointing true \\
    --run_name $RUN_NAME \\
    --save_only_model true
""")
    return path


def records(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "records.jsonl"
    vlmcheck.check(path, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_script_is_read_as_vlm_r1s(tmp_path: Path, corpus: dict[str, Path]) -> None:
    path = script(tmp_path, corpus, SCENARIOS["rec_small_pixels"]["flags"])
    raw = read_launch(path.read_text(), path=path)
    assert raw is not None and detect(raw, path=path) is vlm_r1  # not TRL, whose configs share the flag names
    config = vlm_r1.read_config(raw, path=path)
    assert (config.max_pixels, config.min_pixels, config.task_type) == (200704, 3136, "rec")
    assert config.model_name == str(corpus["model"]) and config.files == ((corpus["train"], corpus["images"]),)
    assert raw["bf16"] == "true" and raw["num_generations"] == "8"


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if "rows" in SCENARIOS[n] and n != "grpo_rec"))
def test_prompt_and_image_counts_agree_with_vlm_r1(name: str, tmp_path: Path, corpus: dict[str, Path]) -> None:
    scenario = SCENARIOS[name]
    ours = records(script(tmp_path, corpus, scenario["flags"]), tmp_path)
    assert [int(r["id"]) for r in ours] == [g["id"] for g in scenario["rows"]]
    for record, golden in zip(ours, scenario["rows"]):
        verdict = record["framework"]["verdict"]
        if golden["error"] is None:
            assert (record["tokens"], record["image_tokens"]) == (golden["tokens"], golden["images"]), (name, record)
            assert verdict == "ok", record
        else:  # VLM-R1's step raised on the row: the run stops there
            assert verdict == "crash", (record, golden)
            if golden["error"].startswith("ValueError: absolute aspect ratio"):
                assert "VC107" in record["findings"]
            else:  # the trainer's one-grid-per-prompt assertion
                assert golden["error"].startswith("AssertionError") and "VC002" in record["findings"]
        assert "VC003" not in record["findings"]
    assert all(r["framework"]["verdict"] != "filtered" for r in ours)  # max_prompt_length is not enforced


def test_a_missing_image_stops_the_run(tmp_path: Path, corpus: dict[str, Path]) -> None:
    scenario = SCENARIOS["missing_image"]
    assert scenario["stops"].startswith("AssertionError: Image paths do not exist")
    (record,) = records(script(tmp_path, corpus, scenario["flags"]), tmp_path)
    assert record["framework"]["verdict"] == "stops" and record["findings"] == ["VC101"]


def test_grpo_rec_agrees_with_vlm_r1(tmp_path: Path, corpus: dict[str, Path]) -> None:
    """run_grpo_rec.sh's launch of grpo_rec.py: its YAML datasets (``first:8`` of one file, all of another) and
    --image_root, the rec question for every row, and what its __getitem__ and the trainer's prompt step did with
    each row (golden scenario ``grpo_rec``): counts, the strip the processor refuses, and the text-only row whose
    missing image fails the trainer's assertion."""
    scenario = SCENARIOS["grpo_rec"]
    path = tmp_path / "run_grpo_rec.sh"
    path.write_text(f"""cd src/open-r1-multimodal
export DEBUG_MODE="true"
RUN_NAME="Qwen2.5-VL-3B-GRPO-REC"
torchrun --nproc_per_node="8" \\
    --nnodes="1" \\
    src/open_r1/grpo_rec.py \\
    --deepspeed local_scripts/zero3.json \\
    --output_dir output/$RUN_NAME \\
    --model_name_or_path {corpus['model']} \\
    --dataset_name {corpus['rec_yaml']} \\
    --image_root {corpus['rec_images']} \\
    --max_prompt_length 1024 \\
    --num_generations 8 \\
    --per_device_train_batch_size 1 \\
    --bf16 \\
    --report_to wandb
""")
    ours = records(path, tmp_path)
    assert len(ours) == len(scenario["rows"])  # first:8 of rec.json, then rec_more.jsonl
    for record, golden in zip(ours, scenario["rows"]):
        verdict = record["framework"]["verdict"]
        if golden["error"] is None:
            assert (record["tokens"], record["image_tokens"], verdict) == (golden["tokens"], golden["images"], "ok")
        elif golden["error"].startswith("ValueError: absolute aspect ratio"):
            assert verdict == "crash" and "VC107" in record["findings"], record
        else:
            assert golden["error"] == "AssertionError: The key image is not found in the input"
            assert verdict == "crash" and record["findings"] == ["VC001"], record
