"""`vlmcheck check` on Unsloth's own notebooks and scripts: read statically as written (tests/assets/unsloth_scripts,
excerpts of unslothai/notebooks), and every sample judged as Unsloth's own UnslothVisionDataCollator judged it
(tests/assets/unsloth_golden/collate_golden.json, produced by running that class on a real Gemma 3 processor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import detect, pyscript, unsloth

ASSETS = Path(__file__).parents[1] / "assets"
SCRIPTS = ASSETS / "unsloth_scripts"
GOLDEN = json.loads((ASSETS / "unsloth_golden" / "collate_golden.json").read_text())


def _read(path: Path, **kw: Any) -> unsloth.Script:
    raw = unsloth.read_launch(path.read_text(), path=path)
    assert raw is not None and detect(raw, path=path) is unsloth
    return unsloth.read_script(raw["unsloth_script"], **kw)


@pytest.mark.parametrize("name", ["qwen2_5_vl_vision.ipynb", "gemma3_vision.ipynb", "pixtral_vision.ipynb"])
def test_the_notebooks_are_read_as_written_and_a_hub_dataset_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match="Hugging Face Hub dataset cannot be read offline: pass --data"):
        _read(SCRIPTS / name)


def test_what_the_qwen_notebook_sets(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"image": "a.png", "text": "x"}\n')
    script = _read(SCRIPTS / "qwen2_5_vl_vision.ipynb", data=str(data))
    # the model of the training cell, not the one reloaded under `if False:`
    assert script.model == "unsloth/Qwen2.5-VL-7B-Instruct-bnb-4bit"
    assert script.cut() == (2048, "FastVisionModel.from_pretrained(max_seq_length = ...)")
    assert script.collator["max_seq_length"] is None and isinstance(script.collator["model"], pyscript.Unresolved)
    assert script.sft["max_length"] == 2048 and script.sft["dataset_kwargs"] == {"skip_prepare_dataset": True}
    assert script.mapping_name == "convert_to_conversation" and not script.mapping_merges
    # the instruction the mapping reads is the one assigned before the list comprehension runs
    example = unsloth.apply_mapping(script.mapping, {"image": "a.png", "text": "x^2"})
    assert example == {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Write the LaTeX representation for this image."},
                                     {"type": "image", "image": "a.png"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "x^2"}]}]}
    assert script.files == (data,)


def test_pixtral_reads_resize_and_the_images_column(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    script = _read(SCRIPTS / "pixtral_vision.ipynb", data=str(data))
    assert script.collator["resize"] == 512 and script.mapping is None
    assert script.model == "unsloth/Pixtral-12B-2409"


def test_gemma3_swaps_its_template_so_the_saved_processor_is_asked_for(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    with pytest.raises(UsageError, match=r"get_chat_template\(processor, 'gemma-3'\).*pass --model"):
        vlmcheck.check(SCRIPTS / "gemma3_vision.ipynb", data=data)


def _golden_rows(tmp_path: Path) -> Path:
    rows = []
    for k, (w, h, words) in enumerate(GOLDEN["rows"]):
        image = tmp_path / f"img{k}.png"
        Image.new("RGB", (w, h)).save(image)
        rows.append({"image": str(image), "text": " ".join(f"x_{{{i}}}" for i in range(words))})
    data = tmp_path / "latex.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return data


# the notebook each golden processor is checked through, and its collator call as the notebook writes it
NOTEBOOKS = {"gemma3": ("gemma3_vision.ipynb", "UnslothVisionDataCollator(model, processor)"),
             "qwen2_vl": ("qwen2_5_vl_vision.ipynb", "UnslothVisionDataCollator(model, tokenizer)")}


def _notebook_with(tmp_path: Path, processor: str, setting: dict[str, Any]) -> Path:
    """Unsloth's notebook with the golden's collator arguments written into its collator call."""
    name, call = NOTEBOOKS[processor]
    args = []
    if setting["max_seq_length"] is not None:
        args.append(f"max_seq_length = {setting['max_seq_length']}")
    if setting["markers"]:
        args += ["train_on_responses_only = True", f"instruction_part = {setting['markers'][0]!r}",
                 f"response_part = {setting['markers'][1]!r}"]
    text = (SCRIPTS / name).read_text()
    assert json.dumps(call)[1:-1] in text
    written = json.dumps(call[:-1] + "".join(", " + a for a in args) + ")")
    path = tmp_path / name
    path.write_text(text.replace(json.dumps(call)[1:-1], written[1:-1]))
    return path


CASES = [(processor, setting) for processor, settings in GOLDEN["processors"].items() for setting in settings]


@pytest.mark.parametrize(("processor", "setting"), CASES, ids=[
    f"{p}-{s['max_seq_length']}-{'responses' if s['markers'] else 'all'}" for p, s in CASES])
def test_every_sample_is_judged_as_unsloths_collator_judged_it(processor: str, setting: dict[str, Any],
                                                               tmp_path: Path) -> None:
    from gemma3_checkpoint import gemma3_checkpoint
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    model = gemma3_checkpoint() if processor == "gemma3" else qwen_checkpoint("qwen2_vl")
    data = _golden_rows(tmp_path)
    out = tmp_path / "records.jsonl"
    vlmcheck.check(_notebook_with(tmp_path, processor, setting), data=data, model=model, output=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(setting["results"])
    for record, want in zip(records, setting["results"]):
        frame = record["framework"]
        if "raises" in want and "aspect ratio" in want["raises"]:
            assert frame["verdict"] == "stops" and record["findings"] == ["VC107"], record
        elif "raises" in want:
            assert "Mismatch in `image` token count" in want["raises"]
            assert frame["verdict"] == "crash" and "VC201" in record["findings"], record
        else:
            assert frame["verdict"] == "ok", record
            assert frame["kept_tokens"] == want["tokens"], record
            assert frame["kept_image_tokens"] == [want["image_tokens"]]
            assert frame["kept_supervised"] == want["labels"], record


def test_the_cli_reads_a_script_and_writes_the_fix_in_unsloths_syntax(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    Image.new("RGB", (640, 480)).save(tmp_path / "a.png")
    rows = [{"image": str(tmp_path / "a.png"), "text": "x^2"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    script = tmp_path / "train.py"
    script.write_text(f"""\
from unsloth import FastVisionModel
from unsloth.trainer import UnslothVisionDataCollator
from datasets import load_dataset
from trl import SFTTrainer, SFTConfig

MAX_LEN = 100
model, tokenizer = FastVisionModel.from_pretrained({str(qwen2_vl_checkpoint)!r}, load_in_4bit = True)
dataset = load_dataset("json", data_files = "train.jsonl", split = "train")
instruction = "Write the LaTeX representation for this image."

def convert_to_conversation(sample):
    conversation = [
        {{"role": "user", "content": [{{"type": "text", "text": instruction}},
                                      {{"type": "image", "image": sample["image"]}}]}},
        {{"role": "assistant", "content": [{{"type": "text", "text": sample["text"]}}]}},
    ]
    return {{"messages": conversation}}

converted_dataset = [convert_to_conversation(sample) for sample in dataset]
trainer = SFTTrainer(model = model, tokenizer = tokenizer,
                     data_collator = UnslothVisionDataCollator(model, tokenizer, max_seq_length = MAX_LEN),
                     train_dataset = converted_dataset,
                     args = SFTConfig(remove_unused_columns = False, dataset_text_field = "",
                                      dataset_kwargs = {{"skip_prepare_dataset": True}}, max_length = 2048))
""")
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 1, result.output
    assert "VC201" in result.output
    assert "set UnslothVisionDataCollator(max_seq_length = 286)" in result.output, result.output
    script.write_text(script.read_text().replace("MAX_LEN = 100", "MAX_LEN = 286"))
    assert CliRunner().invoke(main, ["check", str(script)]).exit_code == 0


@pytest.mark.parametrize(("line", "message"), [
    ("MAX_LEN = int('100')", r"max_seq_length cannot be read without running the script"),
    ("MAX_LEN = 100\nif flag:\n    MAX_LEN = 200", r"assigned under a condition"),
])
def test_a_setting_that_is_not_a_literal_is_named_not_guessed(line: str, message: str, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(f"""\
from unsloth import FastVisionModel
from unsloth.trainer import UnslothVisionDataCollator
{line}
model, tokenizer = FastVisionModel.from_pretrained("m")
collator = UnslothVisionDataCollator(model, tokenizer, max_seq_length = MAX_LEN)
""")
    with pytest.raises(UsageError, match=message):
        vlmcheck.check(script)


def test_a_script_without_unsloth_is_not_read_as_one(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("from trl import SFTTrainer\n")
    with pytest.raises(UsageError, match="Python training scripts and notebooks of Unsloth"):
        vlmcheck.check(script)


def test_fetch_image_resize_follows_smart_resize() -> None:
    # unsloth_zoo vision_utils.smart_resize with factor 28, min 4*28*28, max 16384*28*28 (round half to even)
    assert unsloth.fetch_size(640, 480, factor=28) == (644, 476)
    assert unsloth.fetch_size(3, 3, factor=28) == (56, 56)
    with pytest.raises(ValueError, match="smaller than 200"):
        unsloth.fetch_size(513, 2, factor=28)


def test_the_static_reader_follows_a_script_as_python_runs_it(tmp_path: Path) -> None:
    text = """\
import unsloth
N = 512
M = N * 2
if False:
    M = 1
def main():
    local = M + 1
    f(size = local, other = N)
if __name__ == "__main__":
    main()
g(value = M)
for x in range(3):
    N = x
h(value = N)
"""
    script = pyscript.read_source(text, path=tmp_path / "train.py")
    assert script.calls_to("f")[0].kwargs == {"size": 1025, "other": 512}
    assert script.calls_to("g")[0].kwargs == {"value": 1024}
    assert isinstance(script.calls_to("h")[0].kwargs["value"], pyscript.Unresolved)


def test_notebook_magics_and_foreign_cells_are_skipped(tmp_path: Path) -> None:
    cells = [{"cell_type": "code", "source": ["%%capture\n", "if True:\n", "    !pip install unsloth\n", "x = 1\n"]},
             {"cell_type": "code", "source": "%%bash\necho $((1+1))\n"},
             {"cell_type": "markdown", "source": "f(x = 2)"},
             {"cell_type": "code", "source": "f(x = x)\n"}]
    script = pyscript.read_source(json.dumps({"cells": cells}), path=tmp_path / "nb.ipynb")
    assert [c.kwargs for c in script.calls_to("f")] == [{"x": 1}]


def test_responses_only_from_the_function_and_a_mapped_dataset(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"")
    script = tmp_path / "train.py"
    script.write_text("""\
from unsloth import FastVisionModel
from unsloth.trainer import UnslothVisionDataCollator
from unsloth.chat_templates import train_on_responses_only
from datasets import load_dataset
from trl import SFTTrainer
model, processor = FastVisionModel.from_pretrained(model_name = "m", max_seq_length = 4096)
ds = load_dataset("parquet", data_files = {"train": "d.parquet"})["train"]
def to_messages(row):
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["q"]}]},
                         {"role": "assistant", "content": [{"type": "text", "text": row["a"]}]}]}
ds = ds.map(to_messages)
trainer = SFTTrainer(model = model, train_dataset = ds,
                     data_collator = UnslothVisionDataCollator(model, processor, resize = "max"))
trainer = train_on_responses_only(trainer, instruction_part = "<|im_start|>user\\n",
                                  response_part = "<|im_start|>assistant\\n")
""")
    read = _read(script)
    assert read.responses == ("<|im_start|>user\n", "<|im_start|>assistant\n")
    assert read.cut() == (4096, "FastVisionModel.from_pretrained(max_seq_length = ...)")
    assert read.collator["resize"] == "max" and read.mapping_merges and read.mapping_name == "to_messages"
    assert read.files == (tmp_path / "d.parquet",)


UNSLOTH_JSON = """\
from unsloth import FastVisionModel
from unsloth.trainer import UnslothVisionDataCollator
from datasets import load_dataset
from trl import SFTTrainer, SFTConfig

model, tokenizer = FastVisionModel.from_pretrained({model!r}, load_in_4bit = True)
dataset = load_dataset("json", data_files = {files!r}, split = "train")

def convert_to_conversation(sample):
    conversation = [
        {{"role": "user", "content": [{{"type": "text", "text": "Read it."}},
                                      {{"type": "image", "image": sample["image"]}}]}},
        {{"role": "assistant", "content": [{{"type": "text", "text": sample["text"]}}]}},
    ]
    return {{"messages": conversation}}

converted_dataset = [convert_to_conversation(sample) for sample in dataset]
trainer = SFTTrainer(model = model, tokenizer = tokenizer,
                     data_collator = UnslothVisionDataCollator(model, tokenizer, max_seq_length = 4096),
                     train_dataset = converted_dataset,
                     args = SFTConfig(remove_unused_columns = False, dataset_text_field = "",
                                      dataset_kwargs = {{"skip_prepare_dataset": True}}))
"""
# the rows' extra fields per data file: datasets 4.8 keeps mixed types within a file as JSON text, but casts a later
# file to the first one's columns
UNSLOTH_SOURCES = {
    "mixed types in one file": {"a.jsonl": [{"meta": "x"}, {"meta": ["x"]}]},
    "a new column in a later file": {"a.jsonl": [{"meta": "x"}], "b.jsonl": [{"meta": "x", "n": 1}]},
    "a column missing in a later file": {"a.jsonl": [{"meta": "x", "n": 1}], "b.jsonl": [{"meta": "y"}]},
}


@pytest.mark.slow
def test_a_json_source_stops_the_check_where_datasets_4_8_cannot_load_it(tmp_path: Path,
                                                                          qwen2_vl_checkpoint: Path) -> None:
    """Unsloth's pin (datasets >= 3.4.1, < 5.0) installs datasets 4.8.5 with it, assumed when the datasets beside
    vlmcheck is outside that range. The oracle is datasets 4.8.4's own load_dataset, in ms-swift's oracle
    environment (the same JSON loader: 4.8.5 changed nothing in it)."""
    import subprocess

    from swift_env import oracle_python

    from vlmcheck.errors import DatasetError

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    outcomes = {}
    for k, (case, files) in enumerate(UNSLOTH_SOURCES.items()):
        folder = tmp_path / f"case{k}"
        folder.mkdir()
        for name, extras in files.items():
            rows = [{"image": str(tmp_path / "a.png"), "text": "x", **extra} for extra in extras]
            (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths = [str(folder / name) for name in files]
        done = subprocess.run([str(oracle_python()), "-c", (
            "import sys, json, datasets\n"
            "try:\n"
            f"    datasets.load_dataset('json', data_files={paths!r}, split='train', cache_dir={str(folder / 'c')!r})\n"
            "    print('LOADS')\n"
            "except Exception as e:\n"
            "    print('FAILS', type(e).__name__)\n")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        theirs = "LOADS" in done.stdout
        script = folder / "train.py"
        script.write_text(UNSLOTH_JSON.format(model=str(qwen2_vl_checkpoint), files=paths))
        try:
            vlmcheck.check(script)
            mine = True
        except DatasetError as e:
            assert "before step 1" in str(e)
            mine = False
        outcomes[case] = (theirs, mine)
    assert all(theirs == mine for theirs, mine in outcomes.values()), outcomes
    assert {theirs for theirs, _ in outcomes.values()} == {True, False}
