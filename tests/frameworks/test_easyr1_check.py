"""`vlmcheck check` on EasyR1 launch scripts and YAML: read as written (a script's ``config=`` YAML with its
overrides merged over it, paths relative to the repository root), told apart from verl's, fixes in EasyR1's own
override syntax. What EasyR1 does with each row is proved in test_easyr1_golden.py; here, the reading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from easyr1_corpus import write_corpus

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.frameworks import detect, easyr1, read_launch, verl

# the shape of EasyR1's examples/config.yaml (data, algorithm, worker, trainer), relative paths as it writes them
CONFIG = """data:
  train_files: hiyouga/geometry3k@train
  val_files: hiyouga/geometry3k@test
  prompt_key: problem
  answer_key: answer
  image_key: images
  video_key: videos
  image_dir: null
  video_fps: 2.0
  max_prompt_length: 2048
  max_response_length: 2048
  rollout_batch_size: 512  # equivalent to verl's data.train_batch_size
  mini_rollout_batch_size: null
  val_batch_size: 1024
  format_prompt: ./examples/format_prompt/math.jinja
  override_chat_template: null
  shuffle: true
  seed: 1
  min_pixels: 262144
  max_pixels: 4194304
  filter_overlong_prompts: true

algorithm:
  adv_estimator: grpo

worker:
  actor:
    global_batch_size: 128
    model:
      model_path: Qwen/Qwen2.5-7B-Instruct
  rollout:
    n: 5
    limit_images: 0

trainer:
  total_epochs: 15
  logger: ["file", "wandb"]
"""


def repo(tmp_path: Path, checkpoint: Path, *, filter: bool = True) -> tuple[Path, Path]:
    """An EasyR1 checkout's layout: examples/config.yaml, examples/format_prompt/math.jinja, a launch script in
    examples/ that names them relative to the repository root."""
    data = write_corpus(tmp_path / "data")
    (tmp_path / "examples" / "format_prompt").mkdir(parents=True)
    (tmp_path / "examples" / "format_prompt" / "math.jinja").write_text(data["format"].read_text())
    (tmp_path / "examples" / "config.yaml").write_text(
        CONFIG.replace("filter_overlong_prompts: true", f"filter_overlong_prompts: {str(filter).lower()}"))
    script = tmp_path / "examples" / "qwen2_5_vl_7b_geo3k_grpo.sh"
    script.write_text(f"""#!/bin/bash

set -x

MODEL_PATH={checkpoint}  # replace it with your local file path

python3 -m verl.trainer.main \\
    config=examples/config.yaml \\
    data.train_files={data['geo']}@train \\
    data.val_files={data['geo']}@test \\
    worker.actor.model.model_path=${{MODEL_PATH}} \\
    trainer.experiment_name=qwen2_5_vl_7b_geo_grpo \\
    trainer.n_gpus_per_node=8
""")
    return script, data["geo"]


def test_a_launch_script_reads_its_config_yaml_and_merges_its_overrides(tmp_path: Path,
                                                                        qwen2_vl_checkpoint: Path) -> None:
    script, geo = repo(tmp_path, qwen2_vl_checkpoint)
    raw = read_launch(script.read_text(), path=script)
    assert raw is not None and detect(raw, path=script) is easyr1
    assert raw["data"]["train_files"] == f"{geo}@train"
    assert raw["data"]["prompt_key"] == "problem" and raw["data"]["max_pixels"] == 4194304  # from the YAML
    assert raw["worker"]["actor"]["model"]["model_path"] == str(qwen2_vl_checkpoint)  # the override wins
    assert raw["worker"]["actor"]["global_batch_size"] == 128  # the YAML's siblings kept
    config = easyr1.read_config(raw, path=script)
    assert config.files == (geo,)
    assert config.format_prompt is not None and "{{ content | trim }}" in config.format_prompt  # beside the repo root
    assert config.max_prompt_length == 2048 and config.filter_overlong_prompts


def test_easyr1_and_verl_configs_are_told_apart(tmp_path: Path) -> None:
    import yaml

    assert detect(yaml.safe_load(CONFIG), path=tmp_path / "config.yaml") is easyr1
    only_data = {"data": {"train_files": "x.parquet", "format_prompt": "f.jinja"}}
    assert detect(only_data, path=tmp_path / "c.yaml") is easyr1
    verl_yaml = {"data": {"train_files": "x.parquet", "max_prompt_length": 1024, "train_batch_size": 512},
                 "actor_rollout_ref": {"model": {"path": "m"}}}
    assert detect(verl_yaml, path=tmp_path / "c.yaml") is verl
    assert detect({"data": {"train_files": "x.parquet"}}, path=tmp_path / "c.yaml") is verl
    verl_script = "python3 -m verl.trainer.main_ppo data.train_files=x.parquet actor_rollout_ref.model.path=m\n"
    raw = read_launch(verl_script, path=tmp_path / "run.sh")
    assert raw is not None and detect(raw, path=tmp_path / "run.sh") is verl
    assert easyr1.read_launch(verl_script, path=tmp_path / "run.sh") is None
    assert verl.read_launch("python3 -m verl.trainer.main data.train_files=x\n", path=tmp_path / "r.sh") is None


def test_defaults_fill_what_the_config_leaves_unset(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_corpus(tmp_path / "data")
    raw = {"data": {"train_files": str(data["geo"])}, "worker": {"actor": {"model": {
        "model_path": str(qwen2_vl_checkpoint)}}}}
    config = easyr1.read_config(raw, path=tmp_path / "c.yaml")
    assert (config.prompt_key, config.image_key, config.max_prompt_length) == ("prompt", "images", 512)
    assert (config.min_pixels, config.max_pixels, config.filter_overlong_prompts) == (262144, 4194304, True)
    assert config.format_prompt is None
    raw["data"]["format_prompt"] = "./nowhere/math.jinja"  # EasyR1 prints "not found" and runs without it
    config = easyr1.read_config(raw, path=tmp_path / "c.yaml")
    assert config.format_prompt is None and "not found" in config.notes[0]
    raw["data"]["train_files"] = "hiyouga/geometry3k@train"
    result = CliRunner().invoke(main, ["check", str(write(tmp_path, raw))])
    assert result.exit_code == 2 and "--data" in result.output


def write(tmp_path: Path, raw: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(raw))
    return path


def test_the_fix_is_an_easyr1_override_and_applying_it_passes(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                              monkeypatch: object) -> None:
    script, geo = repo(tmp_path, qwen2_vl_checkpoint, filter=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]  # as EasyR1's scripts are run: from the repo root
    rows = tmp_path / "two.parquet"
    import datasets

    datasets.Dataset.from_parquet(str(geo)).select([0, 1]).to_parquet(str(rows))
    script.write_text(script.read_text().replace(f"{geo}@train", f"{rows}@train")
                      + "    data.max_prompt_length=1024\n")
    text = script.read_text().replace("trainer.n_gpus_per_node=8\n", "trainer.n_gpus_per_node=8 \\\n")
    script.write_text(text)
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 1, result.output
    assert "VC201" in result.output  # the right cut goes through the image: the forward raises
    (need,) = set(re.findall(r"set data\.max_prompt_length=(\d+)", result.output))
    # EasyR1's own length for this row with the format prompt (its 1280x960 image is inside both pixel budgets)
    golden = json.loads((Path(__file__).parent.parent / "assets" / "easyr1_golden" / "golden.json").read_text())
    assert int(need) == golden["scenarios"]["geo_format_no_pixels"]["rows"][1]["tokens"] == 1607
    script.write_text(text.replace("data.max_prompt_length=1024", f"data.max_prompt_length={need}"))
    assert CliRunner().invoke(main, ["check", str(script)]).exit_code == 0
    report = vlmcheck.check(script)
    assert report.summary["framework"]["name"] == "easyr1"
    assert report.summary["framework"]["verdicts"] == {"ok": 2}


def test_the_max_pixels_fix_is_the_largest_budget_that_keeps_the_row(tmp_path: Path,
                                                                      qwen2_vl_checkpoint: Path) -> None:
    data = write_corpus(tmp_path / "data")
    raw = {"data": {"train_files": str(data["geo"]), "prompt_key": "problem", "max_prompt_length": 2048},
           "worker": {"actor": {"model": {"model_path": str(qwen2_vl_checkpoint)}}}}
    report = vlmcheck.check(write(tmp_path, raw), limit=3)  # row 2: a 3000x2000 photo, filtered at 2,048
    (fix,) = [f.fix for f in report.findings if f.code == "VC204" and f.index == 2]
    budget = int(re.search(r"data\.max_pixels=(\d+)", fix or "").group(1))  # type: ignore[union-attr]
    for pixels, verdict in ((budget, "ok"), (budget + 28 * 28, "filtered")):
        raw["data"]["max_pixels"] = pixels  # type: ignore[index]
        out = tmp_path / "r.jsonl"
        vlmcheck.check(write(tmp_path, raw), limit=3, output=out)
        record = [json.loads(line) for line in out.read_text().splitlines()][2]
        assert record["framework"]["verdict"] == verdict, (pixels, record)


# a folder's JSON files (RLHFDataset: load_dataset("json", data_dir=folder)): their rows' extra fields
EASYR1_SOURCES = {
    "mixed types in one file": {"a.jsonl": [{"meta": "x"}, {"meta": ["x"]}]},
    "a new column in a later file": {"a.jsonl": [{"meta": "x"}], "b.jsonl": [{"meta": "x", "n": 1}]},
    "a column missing in a later file": {"a.jsonl": [{"meta": "x", "n": 1}], "b.jsonl": [{"meta": "y"}]},
}


@pytest.mark.parametrize("case", EASYR1_SOURCES)
def test_a_json_folder_stops_the_check_where_load_dataset_cannot_load_it(tmp_path: Path, case: str,
                                                                          qwen2_vl_checkpoint: Path) -> None:
    """EasyR1 leaves datasets unpinned: the one installed here is taken for the run's, and its load_dataset is the
    oracle."""
    import datasets

    from vlmcheck.errors import DatasetError

    folder = tmp_path / "data"
    folder.mkdir()
    for name, extras in EASYR1_SOURCES[case].items():
        rows = [{"prompt": "What is 1+1?", "answer": "2", **extra} for extra in extras]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        datasets.load_dataset("json", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache"))
        theirs = True
    except Exception:
        theirs = False
    raw = {"data": {"train_files": str(folder)}, "worker": {"actor": {"model": {
        "model_path": str(qwen2_vl_checkpoint)}}}}
    try:
        vlmcheck.check(write(tmp_path, raw))
        mine = True
    except DatasetError as e:
        assert "before step 1" in str(e)
        mine = False
    assert mine == theirs, f"{case}: datasets {'loads' if theirs else 'fails'}"


def test_qwen3_vl_moe_is_counted_as_qwen3_vl_and_qwen3_5_is_refused(tmp_path: Path) -> None:
    """EasyR1 runs on transformers 4.x (its requirements: <5), where a Qwen3-VL MoE checkpoint gets Qwen3-VL's
    processor class (processing_auto maps qwen3_vl_moe to Qwen3VLProcessor) and Qwen3.5 has no model at all."""
    from qwen3_sharing_checkpoint import sharing_checkpoint
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    per_model = {}
    for model, checkpoint in (("qwen3_vl", qwen_checkpoint("qwen3_vl")), ("qwen3_vl_moe",
                                                                         sharing_checkpoint("qwen3_vl_moe"))):
        script, _ = repo(tmp_path / model, checkpoint)
        out = tmp_path / f"{model}.jsonl"
        vlmcheck.check(script, output=out)
        per_model[model] = [(r["tokens"], r["image_tokens"]) for r in map(json.loads, out.read_text().splitlines())]
    assert per_model["qwen3_vl_moe"] == per_model["qwen3_vl"] and any(i for _, i in per_model["qwen3_vl"])
    script, _ = repo(tmp_path / "qwen3_5", sharing_checkpoint("qwen3_5"))
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and "transformers<5" in result.output
