"""`vlmcheck check` on `swift sft` launch scripts: read as written. What ms-swift does with each row is proved against
ms-swift itself in test_swift_oracle.py; here, the reading and the command's contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import detect, swift


def test_a_launch_line_is_read_with_its_environment(tmp_path: Path) -> None:
    script = """#!/bin/bash
export NPROC_PER_NODE=2
IMAGES=$HOME/images
MAX_PIXELS=1003520 \\
CUDA_VISIBLE_DEVICES=0,1 \\
swift sft \\
    --model Qwen/Qwen2.5-VL-7B-Instruct \\
    --dataset 'data/a.jsonl' data/b.jsonl \\
    --system 'You are a careful reader.' \\
    --max_length 2048 \\
    --train_type lora \\
    --output_dir $IMAGES/out
"""
    raw = swift.read_launch(script, path=tmp_path / "train.sh", env={"HOME": "/home/me"})
    assert raw is not None and detect(raw, path=tmp_path / "train.sh") is swift
    assert raw["env"]["MAX_PIXELS"] == "1003520" and raw["env"]["NPROC_PER_NODE"] == "2"
    assert raw["options"]["dataset"] == ["data/a.jsonl", "data/b.jsonl"]
    assert raw["options"]["system"] == "You are a careful reader."
    assert raw["options"]["max_length"] == "2048" and raw["options"]["output_dir"] == "/home/me/images/out"
    assert swift.read_launch("swift infer --model x\n", path=tmp_path / "x.sh") is None


@pytest.mark.parametrize(("command", "named"), [
    ("swift rlhf --rlhf_type rm --model m --dataset d.jsonl", "swift rlhf --rlhf_type rm"),
    ("NPROC_PER_NODE=8 swift rlhf \\\n  --rlhf_type=kto --model m", "swift rlhf --rlhf_type kto"),
    ("swift rlhf --rlhf_type ppo --model m --dataset d.jsonl", "swift rlhf --rlhf_type ppo"),
    ("swift pt --model m --dataset d.jsonl", "swift pt"),
])
def test_a_stage_vlmcheck_does_not_model_is_named_in_the_refusal(tmp_path: Path, command: str, named: str) -> None:
    path = tmp_path / "train.sh"
    path.write_text(command + "\n")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2 and f"`{named}` is not modelled" in result.output, result.output


def test_a_grpo_command_is_read_after_an_unmodelled_one(tmp_path: Path) -> None:
    """The first command vlmcheck models is the run: `swift rlhf --rlhf_type grpo` (ms-swift's examples write
    ``--rlhf_type grpo`` among the other options), after a KTO line it skips."""
    script = ("swift rlhf --rlhf_type kto --model m --dataset d.jsonl\n"
              "NPROC_PER_NODE=4 swift rlhf --model Qwen/Qwen2.5-VL-7B-Instruct --dataset a.jsonl --rlhf_type=grpo "
              "--num_generations 8 --reward_funcs accuracy format\n")
    raw = swift.read_launch(script, path=tmp_path / "train.sh", env={})
    assert raw is not None and raw["stage"] == "grpo" and raw["env"]["NPROC_PER_NODE"] == "4"
    assert raw["options"]["reward_funcs"] == ["accuracy", "format"]


@pytest.fixture()
def grpo(tmp_path: Path, qwen2_vl_checkpoint: Path) -> Path:
    """A GRPO script whose settings ms-swift takes (test_swift_grpo.py proves them against its argument checks)."""
    Image.new("RGB", (640, 480)).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}], "images": [str(tmp_path / "a.png")],
           "solution": "a cat"}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    path = tmp_path / "grpo.sh"
    path.write_text(f"swift rlhf --rlhf_type grpo --model {qwen2_vl_checkpoint} --dataset {tmp_path / 'train.jsonl'} "
                    "--reward_funcs accuracy --num_generations 4 --per_device_train_batch_size 4\n")
    return path


@pytest.mark.parametrize(("extra", "words"), [
    ("--use_vllm true --vllm_mode colocate", "--use_vllm true is not modelled"),
    ("--use_vllm", "--use_vllm true is not modelled"),  # a bare boolean is true
    ("--multi_turn_scheduler thinking_tips_scheduler", "--multi_turn_scheduler is not modelled"),
    ("--num_generations 0", "GRPO needs 2 or more"),
    ("--template gemma3_vision", "with the gemma3_vision template is not modelled"),
    ("--loss_scale all", "--loss_scale all is not modelled"),
    ("--system 'Look at <image> first.'", "--system holding <image> under GRPO"),
    ("--num_generations", "--num_generations is given no value"),
    ("--num_gen 4", "write --num_generations"),  # ms-swift's parser expands an abbreviation; vlmcheck refuses it
])
def test_what_vlmcheck_does_not_model_under_grpo_is_refused_with_exit_2(grpo: Path, extra: str, words: str) -> None:
    grpo.write_text(grpo.read_text().rstrip("\n") + f" {extra}\n")
    result = CliRunner().invoke(main, ["check", str(grpo)])
    assert result.exit_code == 2 and words in result.output, result.output


def test_a_grpo_run_without_a_reward_is_refused(grpo: Path) -> None:
    """GRPOTrainer.__init__ raises 'You must specify reward_funcs or reward_model' when no reward function, reward
    model or teacher is given (a teacher makes GRPO on-policy distillation, which needs none)."""
    grpo.write_text(grpo.read_text().replace("--reward_funcs accuracy ", ""))
    result = CliRunner().invoke(main, ["check", str(grpo)])
    assert result.exit_code == 2 and "You must specify reward_funcs or reward_model" in result.output, result.output
    for source in ("--reward_model my/rm", "--teacher_model my/teacher"):
        grpo.write_text(grpo.read_text().rstrip("\n").split(" --reward_model")[0].split(" --teacher_model")[0]
                        + f" {source}\n")
        assert CliRunner().invoke(main, ["check", str(grpo), "--fail-on", "error"]).exit_code == 0


@pytest.mark.parametrize(("nproc", "nnodes", "refused"), [("", "", True), ("2", "", False), ("3", "", True),
                                                           ("", "2", False), ("3", "2", False)])
def test_the_generation_batch_counts_every_process_torchrun_starts(grpo: Path, nproc: str, nnodes: str,
                                                                   refused: bool) -> None:
    """GRPOConfig's generation batch is per_device_train_batch_size x world size x steps per generation, the world
    being NPROC_PER_NODE x NNODES (cli/main.py starts torchrun with them): 4 x 1 and 4 x 3 are no multiples of 8."""
    prefix = "".join(f"{k}={v} " for k, v in (("NPROC_PER_NODE", nproc), ("NNODES", nnodes)) if v)
    grpo.write_text(prefix + grpo.read_text().replace("--num_generations 4", "--num_generations 8"))
    raw = swift.read_launch(grpo.read_text(), path=grpo, env={})
    assert raw is not None
    world = int(nproc or 1) * int(nnodes or 1)
    if refused:
        with pytest.raises(UsageError, match=rf"generation_batch_size \({4 * world}\) must be evenly divisible by "
                                             r"num_generations \(8\)"):
            swift.read_config(raw, path=grpo)
    else:
        config = swift.read_config(raw, path=grpo)
        assert config.grpo is not None and (config.grpo.world_size, config.grpo.generation_batch_size) == (
            world, 4 * world)


def test_a_grpo_prompt_is_judged_without_its_answer(grpo: Path, tmp_path: Path) -> None:
    """The rollout generates the answer: the last assistant message is removed, the prompt ends with the
    generation prompt, nothing is supervised; the solution column stays for the reward function."""
    import vlmcheck

    row = json.loads((tmp_path / "train.jsonl").read_text())
    answered = {**row, "messages": [*row["messages"], {"role": "assistant", "content": "A cat " * 50}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(answered) + "\n")
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(grpo, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["tokens"] == records[1]["tokens"] and records[0]["supervised_tokens"] is None
    assert [r["framework"]["verdict"] for r in records] == ["ok", "ok"]
    framework = report.summary["framework"]
    assert (framework["truncation_strategy"], framework["loss_scale"], framework["generation_batch_size"]) == (
        "left", "last_round", 4)


@pytest.fixture()
def script(tmp_path: Path, qwen2_vl_checkpoint: Path) -> Path:
    Image.new("RGB", (640, 480)).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
           "images": [str(tmp_path / "a.png")]}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    path = tmp_path / "train.sh"
    path.write_text(f"swift sft --model {qwen2_vl_checkpoint} --dataset {tmp_path / 'train.jsonl'} "
                    "--max_length 100\n")
    return path


def test_the_fix_is_a_swift_option_and_applying_it_clears_the_run(script: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(script), "--fail-on", "warning"])
    assert result.exit_code == 1 and "VC204" in result.output
    need = int(re.findall(r"set --max_length (\d+)", result.output)[0])
    script.write_text(script.read_text().replace("--max_length 100", f"--max_length {need}"))
    assert CliRunner().invoke(main, ["check", str(script), "--fail-on", "warning"]).exit_code == 0


@pytest.mark.parametrize(("extra", "words"), [
    ("--max_pixels many", "--max_pixels"),
    ("--template llava1_5_hf", "not modelled"),
    ("--truncation_strategy split", "pre-training"),
    ("--loss_scale last_round", "--loss_scale"),
])
def test_what_vlmcheck_does_not_model_is_refused_with_exit_2(script: Path, extra: str, words: str) -> None:
    script.write_text(script.read_text().replace("--max_length 100", f"--max_length 100 {extra}"))
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and words in result.output


def test_hub_datasets_and_sampling_are_refused(script: Path) -> None:
    text = script.read_text()
    script.write_text(re.sub(r"--dataset \S+", "--dataset AI-ModelScope/LaTeX_OCR#20000", text))
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and "#N" in result.output


def test_a_row_with_grounding_objects_is_not_counted(script: Path, tmp_path: Path) -> None:
    """ms-swift writes a row's objects into its <ref-object> / <bbox> tags (boxes rescaled per template), which
    vlmcheck does not model: VC007, never the tags counted as text."""
    import vlmcheck

    row = {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                        {"role": "assistant", "content": "<bbox>"}],
           "images": [str(tmp_path / "a.png")], "objects": {"ref": ["the cat"], "bbox": [[10, 20, 30, 40]]}}
    plain = {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}],
             "images": [str(tmp_path / "a.png")]}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(plain) + "\n")
    script.write_text(script.read_text().replace("--max_length 100", "--max_length 1000"))
    out = tmp_path / "records.jsonl"
    vlmcheck.check(script, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["framework"]["verdict"], r["findings"]) for r in records] == [("unknown", ["VC007"]), ("ok", [])]


def test_a_row_with_videos_or_audio_is_not_counted(script: Path, tmp_path: Path) -> None:
    """ms-swift writes a video's or an audio's tokens too, which vlmcheck does not model: such a row is VC007 and
    no count, never a count without them."""
    import vlmcheck

    rows = [{"messages": [{"role": "user", "content": f"<{kind}>What is it?"}, {"role": "assistant", "content": "A."}],
             f"{kind}s": [str(tmp_path / f"a.{ext}")]} for kind, ext in (("video", "mp4"), ("audio", "wav"))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    vlmcheck.check(script, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["tokens"], r["framework"]["verdict"], r["findings"]) for r in records] == [(None, "unknown", ["VC007"])] * 2


def test_val_dataset_rows_are_judged_and_turn_the_split_off(script: Path, tmp_path: Path) -> None:
    """--val_dataset's rows go through the same template (evaluation) and set --split_dataset_ratio to 0
    (DataArguments.__post_init__), so a one-row training file no longer has a row held out of it."""
    import vlmcheck

    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "val.jsonl").write_text(json.dumps(short) + "\n")
    script.write_text(script.read_text().replace("--max_length 100", "--max_length 100 --split_dataset_ratio 0.01"))
    with pytest.raises(vlmcheck.DatasetError, match="holds it out"):
        vlmcheck.check(script)
    script.write_text(script.read_text().replace("--split_dataset_ratio", f"--val_dataset {tmp_path / 'val.jsonl'} "
                                                 "--split_dataset_ratio"))
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(script, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["framework"]["verdict"] for r in records] == ["dropped", "ok"]  # the image row is over 100 tokens
    assert [r["framework"].get("split") for r in records] == [None, "eval"]
    assert report.summary["framework"]["eval_datasets"] == [str(tmp_path / "val.jsonl")]


@pytest.mark.parametrize(("flags", "stops"), [
    ("--split_dataset_ratio 0.01", True),
    ("--split_dataset_ratio 0.01 --eval_strategy no", False),  # no evaluation: no split (SftArguments)
    ("--split_dataset_ratio 0.01 --save_strategy no", False),  # --eval_strategy follows --save_strategy
    ("--split_dataset_ratio 0.01 --streaming", False),  # a bare flag is true; streaming never splits
    ("--split_dataset_ratio 0.01 --streaming false", True),
])
def test_the_split_is_the_one_swift_makes(script: Path, flags: str, stops: bool) -> None:
    """A one-row file under a split stops the run (the held-out row leaves no training row); ms-swift turns the
    split off without evaluation or when streaming."""
    import vlmcheck

    script.write_text(script.read_text().replace("--max_length 100", f"--max_length 100 {flags}"))
    if stops:
        with pytest.raises(vlmcheck.DatasetError, match="holds it out"):
            vlmcheck.check(script)
    else:
        assert vlmcheck.check(script).summary["framework"]["verdicts"] == {"dropped": 1}


@pytest.mark.parametrize(("flags", "words"), [
    ("--split_dataset_ratio 1", "no training rows"),
    ("--strict maybe", "not a boolean"),
    ("--columns '[1, 2]'", "JSON object"),
])
def test_settings_swift_cannot_train_with_are_refused(script: Path, flags: str, words: str) -> None:
    script.write_text(script.read_text().replace("--max_length 100", f"--max_length 100 {flags}"))
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and words in result.output, result.output


def test_a_bare_boolean_flag_is_true(script: Path, tmp_path: Path) -> None:
    """``--disable_auto_column_mapping`` alone turns ms-swift's renames off: the 'image' column is not renamed and
    the row has no image (as with ``true``)."""
    import vlmcheck

    row = {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A cat."}],
           "image": str(tmp_path / "a.png")}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    counts = {}
    for flag in ("", "--disable_auto_column_mapping", "--disable_auto_column_mapping true"):
        script.write_text(re.sub(r"--max_length 100.*", f"--max_length 1000 {flag}", script.read_text()))
        out = tmp_path / "records.jsonl"
        vlmcheck.check(script, output=out)
        counts[flag] = json.loads(out.read_text())["image_tokens"]
    assert counts["--disable_auto_column_mapping"] == counts["--disable_auto_column_mapping true"] == []
    assert len(counts[""]) == 1  # renamed to images: one image


@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.JSONL", "train.ndjson"])
def test_a_file_swift_has_no_loader_for_stops_the_run(script: Path, tmp_path: Path, name: str) -> None:
    """ms-swift names the datasets builder after the extension as written (jsonl -> json): a compressed file, an
    upper-case extension or .ndjson has none, and the load raises."""
    import gzip

    import vlmcheck

    text = (tmp_path / "train.jsonl").read_text()
    (tmp_path / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    script.write_text(script.read_text().replace(str(tmp_path / "train.jsonl"), str(tmp_path / name)))
    with pytest.raises(vlmcheck.DatasetError, match="no"):
        vlmcheck.check(script)


@pytest.mark.parametrize(("flag", "shown"), [("--tuner_type full", "full"), ("--train_type full", "full"), ("", "lora")])
def test_the_tuner_type_is_read_under_its_new_and_old_names(script: Path, flag: str, shown: str) -> None:
    script.write_text(script.read_text().replace("--max_length 100", f"--max_length 100 {flag}"))
    result = CliRunner().invoke(main, ["check", str(script), "--json", "-", "--fail-on", "error"])
    framework = json.loads(result.output)["summary"]["framework"]
    assert framework["tuner_type"] == shown, framework


@pytest.mark.parametrize("agent", ["", "--agent_template react_en"])
def test_tools_and_tool_turns_are_not_counted_on_a_template_that_writes_them(script: Path, tmp_path: Path,
                                                                              agent: str) -> None:
    """Qwen's templates write a row's tools into the system prompt (the hermes agent template), and ms-swift maps
    observation / function_response turns to tool results: vlmcheck models neither, so both are VC007 (a template
    without an agent template skips a row with tools: test_swift_columns.py, against ms-swift)."""
    import vlmcheck

    qa = [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}]
    image = [str(tmp_path / "a.png")]
    rows = [{"messages": qa, "images": image, "tools": '[{"type": "function", "function": {"name": "zoom"}}]'},
            {"messages": [*qa, {"role": "observation", "content": "zoomed"}, {"role": "assistant", "content": "Ok"}],
             "images": image, "tools": None},
            {"messages": qa, "images": image, "tools": "[]"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script.write_text(script.read_text().replace("--max_length 100", f"--max_length 1000 {agent}"))
    out = tmp_path / "records.jsonl"
    vlmcheck.check(script, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["framework"]["verdict"], r["findings"]) for r in records] == [
        ("unknown", ["VC007"]), ("unknown", ["VC007"]), ("ok", [])]
