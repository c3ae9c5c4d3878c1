"""vlmcheck's view of a TRL config agrees with what TRL's own config classes accept or reject.

TRL 1.16 GRPOConfig.__post_init__ raises when generation_batch_size (per_device_train_batch_size x
processes x steps_per_generation, default gradient_accumulation_steps) is not a multiple of
num_generations, and when num_generations < 2. use_cpu=True skips transformers' bf16-hardware check
so the batch checks are what is compared (world size is 1 in a test process).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

trl = pytest.importorskip("trl")

from vlmcheck.frameworks import options as known  # noqa: E402
from vlmcheck.frameworks.options import TRANSFORMERS_4_ONLY  # noqa: E402
from vlmcheck.lint import lint  # noqa: E402

CONFIGS = Path(__file__).parent / "configs"


def trl_rejects(options: dict, tmp_path: Path) -> bool:
    kwargs = {k: v for k, v in options.items() if k not in ("model_name_or_path",)}
    kwargs["output_dir"] = str(tmp_path / "out")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trl.GRPOConfig(use_cpu=True, **kwargs)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    ("bs", "ga", "n", "extra"),
    [
        (2, 3, 4, {}),  # 6 % 4
        (2, 2, 4, {}),
        (8, 1, 8, {}),
        (3, 1, 8, {}),
        (4, 1, 1, {}),  # groups of one
        (2, 1, 2, {}),
        (4, 2, 3, {}),  # 8 % 3
        (2, 4, 4, {"steps_per_generation": 3}),  # 6 % 4 although GA x bs divides
        (2, 1, 4, {"generation_batch_size": 8}),
        (2, 1, 4, {"generation_batch_size": 6}),  # rejected: 6 % 4 (and vlmcheck says so)
    ],
)
def test_grpo_batch_verdict_matches_grpoconfig(bs: int, ga: int, n: int, extra: dict, tmp_path: Path) -> None:
    options = {"per_device_train_batch_size": bs, "gradient_accumulation_steps": ga, "num_generations": n,
               "model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", **extra}
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": "x", **options}))
    report = lint(cfg, device=None, num_processes=1)
    flagged = {"VL101", "VL102"} & set(report.counts)
    assert bool(flagged) == trl_rejects(options, tmp_path), report.render()


def test_shipped_grpo_configs_match_grpoconfig(tmp_path: Path) -> None:
    for name, rejected in (("trl_grpo_indivisible.yaml", True), ("trl_grpo_clean.yaml", False)):
        options = yaml.safe_load((CONFIGS / name).read_text())
        options.pop("output_dir")
        assert trl_rejects(options, tmp_path) is rejected
        assert (not lint(CONFIGS / name, device=None, num_processes=1).ok) is rejected


def test_known_trl_options_are_the_installed_ones() -> None:
    # options.py was generated from TRL 1.16 / transformers 5.23; if TRL moves, regenerate it
    from transformers import TrainingArguments

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    installed = names(trl.GRPOConfig) | names(trl.SFTConfig) | names(trl.ModelConfig) | names(trl.ScriptArguments)
    ta = names(TrainingArguments)
    assert known.TRANSFORMERS_TRAINING_ARGUMENTS == ta
    assert known.TRL == installed - ta
    assert not (TRANSFORMERS_4_ONLY & ta), "these are back in TrainingArguments; drop them from the 4.x list"


def test_sft_config_accepts_what_the_trainer_rejects(tmp_path: Path) -> None:
    # SFTConfig itself accepts packing/padding_free/keep_end (SFTTrainer raises for vision datasets):
    # vlmcheck reports them from the config alone. keep_end is deprecated in 1.16 (FutureWarning).
    with pytest.warns(FutureWarning, match="keep_end"):
        config = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, packing=True, padding_free=True,
                               truncation_mode="keep_end", max_length=2048)
    assert config.packing and config.padding_free
    codes = set(lint(CONFIGS / "trl_sft_vlm_features.yaml", device=None).counts)
    assert {"VL301", "VL302", "VL304"} <= codes


def test_max_seq_length_is_not_an_sftconfig_option(tmp_path: Path) -> None:
    # VL001 for `max_seq_length` agrees with TRL 1.16: SFTConfig has no such field
    with pytest.raises(TypeError):
        trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, max_seq_length=2048)
    assert "VL001" in lint(CONFIGS / "trl_typos.yaml", device=None).counts
