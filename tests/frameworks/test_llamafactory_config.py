"""How LLaMA-Factory reads a config, proved against its own entry point: ``read_args`` (OmegaConf), then
``get_train_args``, ``load_tokenizer``, ``get_template_and_fix_tokenizer`` and ``get_dataset``, run for real in its
environment (llamafactory_env.py) as ``llamafactory-cli train CONFIG.yaml`` runs them.

A config's values reach LLaMA-Factory's settings unconverted (``HfArgumentParser.parse_dict``): a quoted number
raises at its first comparison, the text "false" is true, a float cutoff_len raises on every sample it cuts, an
unknown key or a duplicated one stops the run, ``1e5`` is a float (OmegaConf's loader) and runs, ``enable_thinking:
null`` is a mode of its own, and streaming a local file needs 1 to (rows) ``dataloader_num_workers``. For each
case: where LLaMA-Factory stops before step 1, vlmcheck refuses the config (exit 2); where it runs, every prepared
sample's length and trained-token count equal vlmcheck's, in order. The list of settings LLaMA-Factory knows
(frameworks/options.py) is checked against its argument classes there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from llamafactory_env import oracle_python
from PIL import Image

import vlmcheck
from vlmcheck.errors import VlmcheckError

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent

ENTRY = textwrap.dedent('''
    import dataclasses, json, sys, tempfile
    import datasets
    from llamafactory.hparams.parser import _TRAIN_ARGS, read_args
    from llamafactory_oracle_runner import entry_train_dataset

    datasets.disable_caching()
    out = {"keys": sorted({f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls) if f.init}), "runs": {}}
    for config in sys.argv[1:]:
        sys.argv = ["llamafactory-cli", config]
        try:
            args = read_args()
            args.update(output_dir=tempfile.mkdtemp(), overwrite_cache=True, report_to="none")
            train = entry_train_dataset(args)
            rows = [[len(r["input_ids"]), sum(1 for x in r["labels"] if x != -100)] for r in train]
            out["runs"][config] = {"rows": rows}
        except BaseException as e:  # StopIteration included: the run stops before step 1
            out["runs"][config] = {"raises": f"{type(e).__name__}: {str(e)[:200]}"}
    print("ENTRY" + json.dumps(out))
''')

BASE = """stage: sft
do_train: true
finetuning_type: lora
dataset: sg
dataset_dir: {data}
model_name_or_path: {model}
template: {template}
output_dir: saves/x
"""
# case: (template, extra YAML lines, whether LLaMA-Factory runs)
CASES: dict[str, tuple[str, str, bool]] = {
    "plain": ("qwen2_vl", "cutoff_len: 350\n", True),
    "quoted false is true": ("qwen2_vl", 'train_on_prompt: "false"\n', True),
    "quoted false, mask_history": ("qwen2_vl", 'mask_history: "false"\ncutoff_len: 60\n', True),
    "thinking quoted false": ("qwen3_vl", 'enable_thinking: "false"\n', True),
    "thinking null": ("qwen3_vl", "enable_thinking: null\n", True),
    "thinking off": ("qwen3_vl", "enable_thinking: off\n", True),
    "pixels 1e5": ("qwen2_vl", "image_max_pixels: 1e5\n", True),
    "streaming, one worker": ("qwen2_vl", "streaming: true\nmax_steps: 10\ndataloader_num_workers: 1\n", True),
    "cutoff_len quoted": ("qwen2_vl", 'cutoff_len: "2048"\n', False),
    "pixels quoted": ("qwen2_vl", 'image_max_pixels: "262144"\n', False),
    "max_samples float": ("qwen2_vl", "max_samples: 2.0\n", False),
    "seed quoted": ("qwen2_vl", 'seed: "7"\n', False),
    "cutoff_len float": ("qwen2_vl", "cutoff_len: 3.5e2\n", False),
    "unknown key": ("qwen2_vl", "image_resolution: 512\n", False),
    "duplicate key": ("qwen2_vl", "cutoff_len: 300\ncutoff_len: 2048\n", False),
    "streaming, no workers": ("qwen2_vl", "streaming: true\nmax_steps: 10\n", False),
    "streaming, more workers than rows": ("qwen2_vl", "streaming: true\nmax_steps: 10\ndataloader_num_workers: 4\n",
                                          False),
}


def _rows(image: str) -> list[dict[str, Any]]:
    def turn(who: str, text: str) -> dict[str, str]:
        return {"from": who, "value": text}

    long = " ".join(f"word{i}" for i in range(300))
    return [
        {"conversations": [turn("human", "<image>What is it?"), turn("gpt", "A purple field.")], "images": [image]},
        {"conversations": [turn("human", "<image>Describe it."), turn("gpt", long)], "images": [image]},
        {"conversations": [turn("human", "First?"), turn("gpt", "<think>\nlet me see\n</think>\n\nOne."),
                           turn("human", "Second?"), turn("gpt", "<think>\nagain\n</think>\n\nTwo.")]},
    ]


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("lf_config")
    data = folder / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (640, 480), (120, 40, 160)).save(data / "images" / "photo.png")
    (data / "sg.json").write_text(json.dumps(_rows("images/photo.png")))
    (data / "dataset_info.json").write_text(json.dumps({"sg": {
        "file_name": "sg.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}}))
    models = {"qwen2_vl": qwen2_vl_checkpoint, "qwen3_vl": qwen3_vl_think_checkpoint}
    configs = {}
    for k, (name, (template, extra, _)) in enumerate(CASES.items()):
        config = folder / f"case{k}.yaml"
        config.write_text(BASE.format(data=data, model=models[template], template=template) + extra)
        configs[name] = config
    done = subprocess.run([str(oracle_python()), "-c", ENTRY, *map(str, configs.values())], capture_output=True,
                          text=True, timeout=1500, cwd=data,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
                               "PYTHONPATH": str(HERE), "HF_DATASETS_CACHE": str(folder / "cache")})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ENTRY")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1][len("ENTRY"):])
    return {"configs": configs, "keys": result["keys"], "runs": {n: result["runs"][str(c)] for n, c in configs.items()}}


def test_the_settings_llamafactory_knows_are_its_argument_fields(entry: dict[str, Any]) -> None:
    from vlmcheck.frameworks.options import LLAMAFACTORY_0_9_5

    assert sorted(LLAMAFACTORY_0_9_5) == entry["keys"]


@pytest.mark.parametrize("name", list(CASES))
def test_a_config_is_read_as_llamafactory_reads_it(entry: dict[str, Any], tmp_path: Path, name: str) -> None:
    theirs = entry["runs"][name]
    runs = CASES[name][2]
    assert ("rows" in theirs) == runs, theirs  # the case is what it says (LLaMA-Factory runs it, or stops)
    config = entry["configs"][name]
    if not runs:
        with pytest.raises(VlmcheckError):
            vlmcheck.check(config)
        return
    out = tmp_path / "records.jsonl"
    vlmcheck.check(config, output=out)
    ours = [json.loads(line)["framework"] for line in out.read_text().splitlines()]
    kept = [[r["kept_tokens"], r["kept_supervised"]] for r in ours if r["verdict"] != "dropped"]
    if "streaming" in name:  # a stream is shuffled through a buffer (get_dataset): the same samples, reordered
        kept, theirs["rows"] = sorted(kept), sorted(theirs["rows"])
    assert kept == theirs["rows"], (ours, theirs)


def test_the_cases_differ_where_they_should(entry: dict[str, Any]) -> None:
    """Guards of the corpus: the quoted "false" trains the prompt, and null keeps the thoughts that off strips."""
    runs = entry["runs"]
    assert [r[1] for r in runs["quoted false is true"]["rows"]] == [r[0] for r in runs["quoted false is true"]["rows"]]
    assert runs["thinking null"]["rows"][2] != runs["thinking off"]["rows"][2]
