"""Each framework's real config format -> the findings vlmcheck must report (and none for clean ones).

The configs under configs/ are written from each framework's documented options and example
launch scripts; device=None keeps the hardware rules out (tested separately with a fake device).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmcheck.errors import UsageError
from vlmcheck.findings import Severity
from vlmcheck.lint import DeviceInfo, lint, read_config

CONFIGS = Path(__file__).parent / "configs"


def codes(name: str, **kwargs) -> list[str]:
    kwargs.setdefault("device", None)
    return sorted(f.code for f in lint(CONFIGS / name, **kwargs).findings)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # the setups from the field
        ("vlmr1_grpo_n1.sh", ["VL101", "VL104"]),
        ("llamafactory_qwen2vl_multi_image.yaml", ["VL202"]),
        ("trl_grpo_indivisible.yaml", ["VL102"]),
        ("easyr1_n1.yaml", ["VL101"]),
        ("easyr1_geo3k.sh", ["VL102", "VL103"]),
        ("verl_grpo_n_default.sh", ["VL001", "VL101"]),
        ("swift_grpo.sh", ["VL102", "VL103", "VL202"]),
        ("trl_ddp_lora_reentrant.sh", ["VL401"]),
        ("llamafactory_ddp_lora_reentrant.yaml", ["VL401"]),
        ("trl_sft_vlm_features.yaml", ["VL301", "VL302", "VL303", "VL304"]),
        ("unsloth_vision.py", ["VL305"]),
        ("trl_typos.yaml", ["VL001", "VL002"]),
        # clean configs of each framework
        ("vlmr1_clean.sh", []),
        ("llamafactory_clean.yaml", []),
        ("trl_grpo_clean.yaml", []),
        ("trl_sft_clean.yaml", []),
        ("easyr1_clean.yaml", []),
        ("verl_clean.sh", []),
        ("swift_clean.sh", []),
        ("unsloth_clean.py", []),
    ],
)
def test_findings(name: str, expected: list[str]) -> None:
    assert codes(name) == expected


def test_readers_normalise_each_form() -> None:
    vlmr1 = read_config(CONFIGS / "vlmr1_grpo_n1.sh")
    assert (vlmr1.framework, vlmr1.launcher, vlmr1.num_processes) == ("vlm-r1", "torchrun", 8)
    assert vlmr1.options["num_generations"] == 1 and vlmr1.options["bf16"] is True
    assert vlmr1.options["reward_funcs"] == ["accuracy", "format"]
    assert vlmr1.options["model_name_or_path"] == "Qwen/Qwen2.5-VL-3B-Instruct"  # $model_path substituted

    verl = read_config(CONFIGS / "verl_grpo_n_default.sh")
    assert verl.framework == "verl" and verl.options["data.train_batch_size"] == 512
    assert "actor_rollout_ref.rollout.engine_kwargs.vllm.disable_mm_preprocessor_cache" in verl.added

    easyr1 = read_config(CONFIGS / "easyr1_geo3k.sh")  # config=easyr1_clean.yaml + overrides
    assert easyr1.framework == "easyr1"
    assert easyr1.options["worker.rollout.n"] == 5  # from the YAML
    assert easyr1.options["worker.rollout.temperature"] == 0  # the override wins

    swift = read_config(CONFIGS / "swift_grpo.sh")
    assert (swift.framework, swift.entry, swift.num_processes) == ("swift", "rlhf", 4)
    assert swift.env["MAX_PIXELS"] == "1003520"

    trl = read_config(CONFIGS / "trl_ddp_lora_reentrant.sh")
    assert (trl.launcher, trl.num_processes) == ("accelerate", 4)
    assert trl.options["gradient_checkpointing_kwargs"] == {"use_reentrant": True}
    assert trl.options["use_peft"] is True

    unsloth = read_config(CONFIGS / "unsloth_vision.py")
    assert unsloth.framework == "unsloth" and unsloth.options["max_length"] == 4096
    assert unsloth.calls["UnslothVisionDataCollator"] == {}


def test_messages_carry_numbers_and_fix_in_framework_names() -> None:
    (f,) = lint(CONFIGS / "trl_grpo_indivisible.yaml", device=None).findings
    assert f.option == "num_generations" and f.data["generation_batch_size"] == 6
    assert "2 x 1 x 3 = 6" in f.message and "[2, 3, 6]" in f.fix and "gradient_accumulation_steps: 4" in f.fix
    (f,) = [f for f in lint(CONFIGS / "verl_grpo_n_default.sh", device=None).findings if f.code == "VL101"]
    assert "verl's default" in f.message and f.fix.endswith("`actor_rollout_ref.rollout.n=5`")
    (f,) = [f for f in lint(CONFIGS / "vlmr1_grpo_n1.sh", device=None).findings if f.code == "VL101"]
    assert "`--num_generations 8`" in f.fix
    (f,) = lint(CONFIGS / "llamafactory_ddp_lora_reentrant.yaml", device=None).findings
    assert "marked as ready twice" in f.message and "`use_reentrant_gc: false`" in f.fix
    assert "`ddp_find_unused_parameters: false`" in f.fix


def test_process_count_changes_the_verdict() -> None:
    # 2 x 3 = 6 per process is not a multiple of 4; on 2 processes the generation batch is 12
    assert codes("trl_grpo_indivisible.yaml", num_processes=2) == []
    # a single process is not DDP
    assert codes("llamafactory_ddp_lora_reentrant.yaml", num_processes=1) == []


def test_hardware_rules_use_the_device_they_are_given() -> None:
    v100 = DeviceInfo(count=4, names=("Tesla V100-SXM2-32GB",) * 4, bf16=False, capability=(7, 0))
    a100 = DeviceInfo(count=8, names=("NVIDIA A100-SXM4-80GB",) * 8, bf16=True, capability=(8, 0))
    on_v100 = codes("vlmr1_grpo_n1.sh", device=v100)
    assert "VL402" in on_v100 and "VL403" in on_v100  # --bf16, and 8 processes on 4 GPUs
    assert "VL402" not in codes("vlmr1_grpo_n1.sh", device=a100)
    assert "VL403" not in codes("vlmr1_grpo_n1.sh", device=a100)
    # TRL >= 0.19 turns bf16 on unless fp16: a TRL config without bf16 still asks for it
    assert "VL402" in codes("trl_grpo_clean.yaml", device=v100)
    assert "VL403" in codes("verl_clean.sh", device=v100)  # n_gpus_per_node=8


def test_real_device_probe() -> None:
    # the real probe: torch on a CPU-only machine sees no GPU, so the hardware rules stay silent
    from vlmcheck.lint.device import probe_device

    device = probe_device()
    report = lint(CONFIGS / "vlmr1_grpo_n1.sh")  # device="auto"
    hardware = {f.code for f in report.findings} & {"VL402", "VL403"}
    if device is None:
        assert hardware == set()
    else:  # on a GPU machine: bf16 verdict follows the real GPU
        assert ("VL402" in hardware) == (not device.bf16)


def test_unknown_keys_and_bad_values_never_crash(tmp_path: Path) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text(
        "output_dir: x\nnum_generations: [1, 2]\nper_device_train_batch_size: {a: 1}\ntemperature: hot\n"
        "gradient_checkpointing: maybe\nuse_peft: 3\nnot_an_option: 1\nmax_length: 2.5\n"
    )
    report = lint(odd, device=None)
    assert report.framework == "trl"
    assert {"VL001", "VL002"} >= set(report.counts)
    assert report.counts["VL002"] >= 3


def test_temperature_zero_and_single_generation_in_trl(tmp_path: Path) -> None:
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text("output_dir: x\nnum_generations: 1\ntemperature: 0.0\nper_device_train_batch_size: 4\n")
    assert codes(str(cfg)) == ["VL101", "VL103"]


def test_a_script_setting_held_in_a_name_is_read(tmp_path: Path) -> None:
    # the settings a script passes through a module-level name, in a script and in a notebook cell, are the
    # ones the run uses (the lint reader once read only literals written inside the call)
    source = ("from trl import GRPOConfig\nn = 1\ntemperature = 0.0\n"
              "args = GRPOConfig(output_dir='x', num_generations=n, temperature=temperature,\n"
              "                  per_device_train_batch_size=4)\n")
    script = tmp_path / "grpo.py"
    script.write_text(source)
    notebook = tmp_path / "grpo.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["!pip install trl\n", source]}]}))
    assert codes(str(script)) == codes(str(notebook)) == ["VL101", "VL103"]
    assert read_config(script).options["num_generations"] == 1


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        lint(tmp_path / "missing.yaml")
    script = tmp_path / "run.sh"
    script.write_text("echo hello\n")
    with pytest.raises(UsageError, match="no training command"):
        lint(script)
    with pytest.raises(UsageError, match="unknown framework"):
        lint(CONFIGS / "trl_grpo_clean.yaml", framework="keras")
    with pytest.raises(UsageError, match="needs --model"):
        lint(CONFIGS / "trl_grpo_clean.yaml", data=str(tmp_path / "data.jsonl"))


def test_report_shape() -> None:
    report = lint(CONFIGS / "swift_grpo.sh", device=None)
    assert report.max_severity == Severity.ERROR and not report.ok
    assert report.exit_code("error") == 1 and report.exit_code(Severity.ERROR) == 1
    d = report.to_dict()
    assert d["framework"] == "swift" and d["counts"] == {"VL102": 1, "VL103": 1, "VL202": 1}
    first = d["findings"][0]
    assert set(first) == {"code", "name", "severity", "option", "message", "fix", "data"}
