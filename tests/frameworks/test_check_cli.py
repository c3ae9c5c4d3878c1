"""`vlmcheck check CONFIG`: the command's contract (exit codes, outputs, refusals). What LLaMA-Factory does with each
sample is proved against LLaMA-Factory itself in test_llamafactory_check.py; here, the plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlmcheck.cli import main


@pytest.fixture()
def run(tmp_path: Path, qwen2_vl_checkpoint: Path) -> Path:
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    Image.new("RGB", (640, 480)).save(data / "imgs" / "a.png")
    rows = [
        {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
         "images": ["imgs/a.png"]},
        {"messages": [{"role": "user", "content": "hi"}]},  # one turn: LLaMA-Factory skips it
    ]
    (data / "train.json").write_text(json.dumps(rows))
    info = {"mm": {"file_name": "train.json", "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {qwen2_vl_checkpoint}\nstage: sft\ntemplate: qwen2_vl\n"
                      f"dataset: mm\ndataset_dir: {data}\ncutoff_len: 300\n")
    return config


def test_a_cut_image_span_exits_1_with_the_fix_in_llamafactory_syntax(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(main, ["check", str(run), "-o", str(out), "--json", str(summary)])
    assert result.exit_code == 1, result.output
    assert "VC201" in result.output and "set cutoff_len: " in result.output
    assert "what the run does: 1 crash, 1 dropped" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["framework"]["verdict"] for r in records] == ["crash", "dropped"]
    assert records[0]["framework"]["kept_tokens"] == 300
    data = json.loads(summary.read_text())
    assert data["summary"]["framework"]["name"] == "llamafactory"
    assert data["summary"]["framework"]["image_max_pixels"] == 768 * 768  # LLaMA-Factory's default


def test_a_long_enough_cutoff_len_is_clean_but_for_the_dropped_row(run: Path) -> None:
    run.write_text(run.read_text().replace("cutoff_len: 300", "cutoff_len: 4096"))
    result = CliRunner().invoke(main, ["check", str(run), "--fail-on", "error"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["check", str(run), "--fail-on", "warning"])
    assert result.exit_code == 1 and "VC006" in result.output


@pytest.mark.parametrize(("edit", "message"), [
    (("template: qwen2_vl", "template: llama3"), "not modelled"),
    (("stage: sft", "stage: pt"), "pt and ppo"),
    (("stage: sft", "stage: dpo"), "not applicable in the current training stage"),
    (("dataset: mm", "dataset: nope"), "not defined"),
    (("cutoff_len: 300", "cutoff_len: many"), "is the text"),
    (("cutoff_len: 300", "cutoff_len: 300.0"), "is the float"),
    (("cutoff_len: 300", "cutoff_len: 300\nimage_resolution: 512"), "image_resolution is image_max_pixels now"),
])
def test_what_vlmcheck_does_not_model_is_refused_with_exit_2(run: Path, edit: tuple[str, str], message: str) -> None:
    run.write_text(run.read_text().replace(*edit))
    result = CliRunner().invoke(main, ["check", str(run)])
    assert result.exit_code == 2
    assert message in result.output


def test_data_and_path_map_point_a_config_from_another_machine_at_local_files(run: Path, tmp_path: Path) -> None:
    text = run.read_text()
    data = str(tmp_path / "data")
    run.write_text(text.replace(data, "/mnt/cluster/data"))
    assert CliRunner().invoke(main, ["check", str(run)]).exit_code == 2  # dataset_info.json not found
    result = CliRunner().invoke(main, ["check", str(run), "--path-map", f"/mnt/cluster/data={data}"])
    assert result.exit_code == 1 and "VC201" in result.output
    result = CliRunner().invoke(main, ["check", str(run), "--data", data])
    assert result.exit_code == 1 and "VC201" in result.output


def test_output_never_replaces_an_input(run: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(run), "-o", str(run)])
    assert result.exit_code == 2
    assert "model_name_or_path" in run.read_text()


def test_library_twin() -> None:
    import vlmcheck

    assert callable(vlmcheck.check)
    assert "check" in vlmcheck.__all__


def test_lint_data_on_a_llamafactory_config_uses_the_check_path(run: Path, tmp_path: Path) -> None:
    import vlmcheck

    data = tmp_path / "data"
    checked = vlmcheck.check(run)
    report = vlmcheck.lint(run, data=data, device=None)
    assert report.summary["data"]["recommended_max_length"] == checked.summary["recommended_max_length"]
    assert "VL201" in report.counts  # cutoff_len: 300 is below the sample LLaMA-Factory builds


def test_lint_data_with_no_countable_row_is_an_error_not_a_pass(run: Path, tmp_path: Path) -> None:
    import vlmcheck

    data = tmp_path / "data"
    (data / "train.json").write_text("[]")
    with pytest.raises(vlmcheck.UsageError, match="no sample could be counted"):
        vlmcheck.lint(run, data=data, device=None)


def test_a_row_the_judge_cannot_take_is_a_finding_and_the_check_goes_on(monkeypatch, qwen2_vl_checkpoint):
    """Whatever a framework module raises on one row (a shape nobody foresaw) is VC001 on that row, verdict
    unknown; the other rows are judged as before."""
    import vlmcheck
    from vlmcheck.demo.run import LLAMAFACTORY_CONFIG
    from vlmcheck.frameworks import llamafactory

    whole = list(vlmcheck.check(LLAMAFACTORY_CONFIG, model=qwen2_vl_checkpoint).records())
    judge = llamafactory.Run.judge

    def flaky(self, index, row, source):
        if index == 1:
            raise TypeError("unhashable type: 'dict'")
        return judge(self, index, row, source)

    monkeypatch.setattr(llamafactory.Run, "judge", flaky)
    records = list(vlmcheck.check(LLAMAFACTORY_CONFIG, model=qwen2_vl_checkpoint).records())
    assert len(records) == len(whole)
    assert records[1]["findings"] == ["VC001"] and records[1]["framework"]["verdict"] == "unknown"
    assert records[:1] + records[2:] == whole[:1] + whole[2:]


def test_a_fifo_config_or_dataset_is_refused_not_read(run: Path, tmp_path: Path) -> None:
    """A FIFO blocks a read forever: named as the config (check and lint) or as a dataset file, it is refused by
    what it is, not read and not called missing."""
    import os

    fifo_config = tmp_path / "fifo.yaml"
    os.mkfifo(fifo_config)
    for command in ("check", "lint"):
        result = CliRunner().invoke(main, [command, str(fifo_config)])
        assert result.exit_code == 2 and "not a regular file" in result.output, (command, result.output)
    data = Path(run.read_text().split("dataset_dir: ")[1].split("\n")[0])
    (data / "train.json").unlink()
    os.mkfifo(data / "train.json")
    result = CliRunner().invoke(main, ["check", str(run)])
    assert result.exit_code == 2 and "not a regular file" in result.output, result.output
