"""`vlmcheck lint` in-process: exit 0 clean, 1 at/above --fail-on, 2 usage."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vlmcheck.cli.lint import lint_command

CONFIGS = Path(__file__).parent / "configs"


def run(*args: str):
    return CliRunner().invoke(lint_command, list(args))


def test_clean_exits_0() -> None:
    result = run(str(CONFIGS / "verl_clean.sh"))
    assert result.exit_code == 0, result.output
    assert result.output == f"{CONFIGS / 'verl_clean.sh'} (verl): no problems found\n"


def test_error_exits_1_with_code_and_fix() -> None:
    result = run(str(CONFIGS / "vlmr1_grpo_n1.sh"))
    assert result.exit_code == 1
    assert "VL101 error: num_generations: num_generations=1" in result.output
    assert "Fix: sample a group per prompt: `--num_generations 8`" in result.output
    assert "docs/lint.md#vl101" in result.output


def test_fail_on_threshold() -> None:
    # only a warning (VL202): exit 0 by default, 1 with --fail-on warning
    path = str(CONFIGS / "llamafactory_qwen2vl_multi_image.yaml")
    assert run(path).exit_code == 0
    assert run(path, "--fail-on", "warning").exit_code == 1
    # only info (VL001 + VL101 is error) -> check an info-only config
    assert run(str(CONFIGS / "trl_grpo_clean.yaml"), "--fail-on", "info").exit_code == 0


def test_options_map_to_keywords() -> None:
    path = str(CONFIGS / "trl_grpo_indivisible.yaml")
    assert run(path).exit_code == 1
    assert run(path, "--num-processes", "2").exit_code == 0
    result = run(path, "--json")
    data = json.loads(result.output)
    assert data["counts"] == {"VL102": 1} and data["findings"][0]["data"]["generation_batch_size"] == 6


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(str(tmp_path / "missing.yaml")).exit_code == 2
    assert run(str(CONFIGS / "verl_clean.sh"), "--framework", "keras").exit_code == 2
    assert run(str(CONFIGS / "verl_clean.sh"), "--fail-on", "fatal").exit_code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    result = run(str(broken))
    assert result.exit_code == 2 and "not valid YAML" in result.output
