"""How LLaMA-Factory reads a config, proved against its own entry point: ``read_args`` (OmegaConf), then
``get_train_args``, ``load_tokenizer``, ``get_template_and_fix_tokenizer`` and ``get_dataset``, run for real in its
environment (llamafactory_env.py) as ``llamafactory-cli train CONFIG.yaml`` runs them.

A config's values reach LLaMA-Factory's settings unconverted (``HfArgumentParser.parse_dict``): a quoted number
raises at its first comparison, the text "false" is true, a float cutoff_len raises on every sample it cuts, an
unknown key or a duplicated one stops the run, ``1e5`` is a float (OmegaConf's loader) and runs, ``enable_thinking:
null`` is a mode of its own, and streaming a local file needs 1 to (rows) ``dataloader_num_workers``. For each
case: where LLaMA-Factory stops before step 1, vlmcheck refuses the config (exit 2); where it runs, every prepared
sample's length and trained-token count equal vlmcheck's, in order. The list of settings LLaMA-Factory knows
(frameworks/options.py) is checked against its argument classes there too. So are the datasets its loader reads or
refuses: a lone surrogate escape in JSON, the file types it picks a ``datasets`` builder for by extension (CSV,
Arrow, text), and Parquet shards whose outcome follows ``os.listdir``'s order (refused by vlmcheck, naming both).
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
SPLITS = {"train[:1]": True, "train[-2:]+train[:1]": True, "train[:50%]": True, "train[10%:90%]+train[2:1]": True,
          "test": False, "train[:0]": False, "train[:150%]": False, "train[ :2]": False}
# case: (template, extra YAML lines (a `dataset:` line replaces BASE's), whether LLaMA-Factory runs, or
# "stops:CODE:WORDS": it stops preparing a row, which vlmcheck judges `stops` with finding CODE saying WORDS)
CASES: dict[str, tuple[str, str, bool | str]] = {
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
    # JSON Lines fields whose every value is an ISO date load as timestamps (datasets / pyarrow): an alpaca answer
    # that is not text makes the row unsupervised (dropped), a turn's content that is not text stops the run
    "dated turns stop": ("qwen2_vl", "dataset: dated_sg\n", "stops:VC001:timestamp"),
    "dated system stops": ("qwen2_vl", "dataset: sg, dated_system\n", "stops:VC001:timestamp"),
    "dates in a JSON array are text": ("qwen2_vl", "dataset: sg, dated_array\n", True),
    # a dataset none of whose rows has an answer: alone, every row dropped ('Cannot find valid samples'); beside
    # others, its converted `_response` (a list of nulls) cannot be merged with theirs
    "no answers": ("qwen2_vl", "dataset: dated_alpaca\n", False),
    "no answers beside answers": ("qwen2_vl", "dataset: sg, dated_alpaca\n", False),
    "no answers interleaved": ("qwen2_vl", "dataset: dated_alpaca, sg\nmix_strategy: interleave_under\n", False),
    "no answers in the eval dataset": ("qwen2_vl", "eval_dataset: dated_alpaca\n", False),
    "no answers in one of each eval dataset": ("qwen2_vl", "eval_dataset: dated_array, dated_alpaca\n"
                                               "eval_on_each_dataset: true\n", False),
    # images given as paths in one dataset and as Parquet bytes (an Image feature, or plain structs) in another:
    # the converted datasets' `_images` cannot be aligned; alone, or beside a dataset without images, each runs
    "paths beside an Image feature": ("qwen2_vl", "dataset: sg, pq_image\n", False),
    "paths beside structs": ("qwen2_vl", "dataset: sg, pq_struct\n", False),
    "an Image feature beside structs, interleaved": ("qwen2_vl", "dataset: pq_image, pq_struct\n"
                                                     "mix_strategy: interleave_over\n", False),
    "an Image feature beside no images": ("qwen2_vl", "dataset: pq_image, dated_array\n", True),
    "structs": ("qwen2_vl", "dataset: pq_struct\n", True),
    # image objects in JSON: {"path": ...} alone (no row has "bytes") raise KeyError; with "bytes" null, the path
    "image objects without bytes": ("qwen2_vl", "dataset: path_objects\n", "stops:VC102:KeyError"),
    "image objects with null bytes": ("qwen2_vl", "dataset: null_bytes\n", True),
    # dataset_info.json's `split`, load_dataset's split of a local dataset (whose only split is "train")
    **{f"split {split}": ("qwen2_vl", f"dataset: split{k}\n", runs) for k, (split, runs) in enumerate(SPLITS.items())},
    # a lone UTF-16 surrogate escape ("\ud800" as written): a JSON array loads without it (ujson drops it), a JSON
    # Lines file does not load (pyarrow refuses it)
    "a lone surrogate in a JSON array is dropped": ("qwen2_vl", "dataset: surrogate_array\n", True),
    "a lone surrogate in JSON Lines stops": ("qwen2_vl", "dataset: surrogate_lines\n", False),
    # the builders LLaMA-Factory picks by extension (FILEEXT2TYPE): CSV read by pandas (NA strings missing, a column
    # of numbers numbers, one path a string), Arrow streams (save_to_disk's shards, an Image feature), text lines;
    # any other extension stops the run
    "csv": ("qwen2_vl", "dataset: csv\n", True),
    "csv answers read as numbers": ("qwen2_vl", "dataset: csv_numbers\n", False),
    "arrow shards": ("qwen2_vl", "dataset: arrow_parts\n", True),
    "arrow with an Image feature": ("qwen2_vl", "dataset: arrow_image\n", True),
    "txt": ("qwen2_vl", "dataset: txt\n", True),
    "another extension": ("qwen2_vl", "dataset: gz\n", False),
    # Parquet shards of one folder, an Image feature in one and paths in the other: every file is cast to the one
    # os.listdir lists first, so the run goes on with the Image file first and stops with the paths first
    "shards, the Image feature listed first": ("qwen2_vl", "dataset: shards_image_first\n", "listing"),
    "shards, the paths listed first": ("qwen2_vl", "dataset: shards_paths_first\n", "listing"),
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


def _parquet_images(data: Path) -> None:
    """The same rows as Parquet, images as bytes: written by `datasets` with its Image feature (image.parquet:
    decoded on load), and by pyarrow as plain structs of bytes and a null path (struct.parquet)."""
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 40)).save(buf, "PNG")
    rows = [r for r in _rows("") if "images" in r]
    images = [[{"bytes": buf.getvalue(), "path": None}] for _ in rows]
    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    features = datasets.Features({"conversations": datasets.List(turn), "images": datasets.List(datasets.Image())})
    datasets.Dataset.from_dict({"conversations": [r["conversations"] for r in rows], "images": images},
                               features=features).to_parquet(str(data / "image.parquet"))
    pq.write_table(pa.table({"conversations": [r["conversations"] for r in rows], "images": images}),
                   data / "struct.parquet")


def _file_types(data: Path) -> dict[str, Any]:
    """The datasets of the surrogate, file-type and listing-order cases, and their dataset_info.json entries."""
    import csv
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows("images/photo.png")
    lone = json.dumps(rows).replace("What is it?", "What is \\ud800it?")  # the escape as written, six characters
    assert "\\ud800" in lone
    (data / "surrogate.json").write_text(lone)
    (data / "surrogate.jsonl").write_text("".join(json.dumps(r).replace("What is it?", "What is \\ud800it?") + "\n"
                                                  for r in rows))
    with open(data / "alpaca.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output", "images"])
        writer.writerows([["<image>What is it?", "", "A purple field.", "images/photo.png"],
                          ["<image>Say None.", "", "None", "images/photo.png"], ["Say NA.", "", "NA", ""],
                          ["Say nothing.", "", "", ""], ["Say True.", "", "True", ""], ["Say 42.", "", "42", ""],
                          ["A question\nover two lines", "and an input", "An answer,\n\"quoted\".", ""]])
    with open(data / "numbers.csv", "w", newline="") as f:
        csv.writer(f).writerows([["instruction", "output"], ["Six times seven?", "42"], ["Two and two?", "4"]])
    saved = data / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved), num_shards=2)
    (data / "arrow_parts").mkdir()
    for shard in saved.glob("*.arrow"):
        (data / "arrow_parts" / shard.name).write_bytes(shard.read_bytes())
    datasets.load_dataset("parquet", data_files=str(data / "image.parquet"), split="train",
                          cache_dir=str(data.parent / "pq_cache")).save_to_disk(str(data / "saved_image"))
    (data / "image.arrow").write_bytes(next((data / "saved_image").glob("*.arrow")).read_bytes())
    (data / "lines.txt").write_text("First line.\r\nSecond line.\n\nA fourth\x0bwith a vertical tab.\n")
    with gzip.open(data / "sg.jsonl.gz", "wt") as g:
        g.write("".join(json.dumps(r) + "\n" for r in rows))
    for folder, image_first in (("shards_image_first", True), ("shards_paths_first", False)):
        (data / folder).mkdir()
        for name in ("a.parquet", "b.parquet"):
            (data / folder / name).write_bytes(b"")
        first, second = (data / folder / name for name in os.listdir(data / folder))  # the order datasets reads
        image, paths = (first, second) if image_first else (second, first)
        image.write_bytes((data / "image.parquet").read_bytes())
        picked = [r for r in rows if "images" in r]
        pq.write_table(pa.table({"conversations": [r["conversations"] for r in picked],
                                 "images": [r["images"] for r in picked]}), paths)
    sharegpt = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}
    return {
        "surrogate_array": {"file_name": "surrogate.json", **sharegpt},
        "surrogate_lines": {"file_name": "surrogate.jsonl", **sharegpt},
        "csv": {"file_name": "alpaca.csv", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                       "images": "images"}},
        "csv_numbers": {"file_name": "numbers.csv", "columns": {"prompt": "instruction", "response": "output"}},
        "arrow_parts": {"file_name": "arrow_parts", **sharegpt},
        "arrow_image": {"file_name": "image.arrow", **sharegpt},
        "txt": {"file_name": "lines.txt", "columns": {"prompt": "text", "response": "text"}},
        "gz": {"file_name": "sg.jsonl.gz", **sharegpt},
        **{name: {"file_name": name, **sharegpt} for name in ("shards_image_first", "shards_paths_first")},
    }


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("lf_config")
    data = folder / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (640, 480), (120, 40, 160)).save(data / "images" / "photo.png")
    (data / "sg.json").write_text(json.dumps(_rows("images/photo.png")))
    dated = [{"instruction": "<image>When was it taken?", "output": "2021-03-04", "images": ["images/photo.png"]},
             {"instruction": "And the next one?", "output": "2021-03-05 10:20:30+02:00"}]
    (data / "dated_alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dated))
    (data / "dated_array.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "2021-03-04"}, {"from": "gpt", "value": "2021-03-05"}]}]))
    (data / "dated_sg.jsonl").write_text(json.dumps(
        {"conversations": [{"from": "human", "value": "2021-03-04"}, {"from": "gpt", "value": "2021-03-05"}]}) + "\n")
    (data / "dated_system.jsonl").write_text("".join(json.dumps(
        {"conversations": [{"from": "human", "value": "Which day?"}, {"from": "gpt", "value": "Monday."}],
         "system": day}) + "\n" for day in ("2021-03-04", "2021-03-05")))
    _parquet_images(data)
    more = _file_types(data)
    for name, image in (("path_objects", {"path": "images/photo.png"}),
                        ("null_bytes", {"bytes": None, "path": str(data / "images" / "photo.png")})):
        (data / f"{name}.json").write_text(json.dumps([{**r, "images": [image]} for r in _rows("") if "images" in r]))
    sharegpt = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}
    (data / "dataset_info.json").write_text(json.dumps({
        "sg": {"file_name": "sg.json", **sharegpt},
        **{f"split{k}": {"file_name": "sg.json", "split": split, **sharegpt} for k, split in enumerate(SPLITS)},
        "path_objects": {"file_name": "path_objects.json", **sharegpt},
        "null_bytes": {"file_name": "null_bytes.json", **sharegpt},
        "pq_image": {"file_name": "image.parquet", **sharegpt}, "pq_struct": {"file_name": "struct.parquet", **sharegpt},
        "dated_sg": {"file_name": "dated_sg.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "dated_array": {"file_name": "dated_array.json", "formatting": "sharegpt",
                        "columns": {"messages": "conversations"}},
        "dated_system": {"file_name": "dated_system.jsonl", "formatting": "sharegpt",
                         "columns": {"messages": "conversations", "system": "system"}},
        "dated_alpaca": {"file_name": "dated_alpaca.jsonl", "columns": {
            "prompt": "instruction", "response": "output", "images": "images"}}, **more}))
    models = {"qwen2_vl": qwen2_vl_checkpoint, "qwen3_vl": qwen3_vl_think_checkpoint}
    configs = {}
    for k, (name, (template, extra, _)) in enumerate(CASES.items()):
        config = folder / f"case{k}.yaml"
        base = BASE.format(data=data, model=models[template], template=template)
        config.write_text((base.replace("dataset: sg\n", "") if "\ndataset:" in "\n" + extra else base) + extra)
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
    config = entry["configs"][name]
    if runs == "listing":  # the outcome follows os.listdir's order (test_an_outcome_that_follows_the_listing_...)
        with pytest.raises(VlmcheckError, match="os.listdir") as refused:
            vlmcheck.check(config)
        assert "a.parquet" in str(refused.value) and "b.parquet" in str(refused.value), refused.value
        return
    assert ("rows" in theirs) == (runs is True), theirs  # the case is what it says (LLaMA-Factory runs it, or stops)
    if not runs:
        with pytest.raises(VlmcheckError):
            vlmcheck.check(config)
        return
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(config, output=out)
    ours = [json.loads(line)["framework"] for line in out.read_text().splitlines()]
    if isinstance(runs, str):  # a row stops the run, for the reason the case is about
        _, code, words = runs.split(":")
        assert "stops" in [r["verdict"] for r in ours], ours
        assert [f for f in report.findings if f.code == code and words in f.message], report.findings
        return
    kept = [[r["kept_tokens"], r["kept_supervised"]] for r in ours if r["verdict"] != "dropped"]
    if "streaming" in name:  # a stream is shuffled through a buffer (get_dataset): the same samples, reordered
        kept, theirs["rows"] = sorted(kept), sorted(theirs["rows"])
    assert kept == theirs["rows"], (ours, theirs)


def test_the_cases_differ_where_they_should(entry: dict[str, Any]) -> None:
    """Guards of the corpus: the quoted "false" trains the prompt, and null keeps the thoughts that off strips."""
    runs = entry["runs"]
    assert [r[1] for r in runs["quoted false is true"]["rows"]] == [r[0] for r in runs["quoted false is true"]["rows"]]
    assert runs["thinking null"]["rows"][2] != runs["thinking off"]["rows"][2]


def test_an_outcome_that_follows_the_listing_order_is_what_llamafactory_does(entry: dict[str, Any]) -> None:
    """Guard of the listing cases: the same two Parquet files run with one listed first and stop with the other."""
    runs = entry["runs"]
    assert "rows" in runs["shards, the Image feature listed first"], runs["shards, the Image feature listed first"]
    assert "raises" in runs["shards, the paths listed first"], runs["shards, the paths listed first"]


def test_datasets_4_loads_surrogates_and_tables_as_vlmcheck_says(tmp_path: Path) -> None:
    """The lone-surrogate and table-cast cases (hfjson_cases.py) through datasets 4.0.0, LLaMA-Factory's: a JSON
    array drops a lone high half, JSON Lines fails; Parquet / Arrow / CSV tables cast to the first one's types,
    CSV files of other columns or types included (datasets 5 refuses those outright)."""
    from hfjson_cases import judge_surrogates, judge_tables, load, surrogate_cases, table_cases

    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    lone, tables = surrogate_cases(tmp_path / "s"), table_cases(tmp_path / "t")
    theirs = load({**lone, **tables}, tmp_path / "cache", oracle_python())
    differ, counts = judge_surrogates(lone, theirs, mixed_as_json=False)
    assert not differ, differ
    assert counts["loads"] >= 8 and counts["fails"] >= 15 and counts["dropped"] >= 3, counts
    differ, reached = judge_tables(tables, theirs)
    assert not differ, differ
    assert reached == {"loads", "fails", "order"}, reached


SPLIT_FORMS = ["train[2:1]", "train[5:2]", "train[:3]+train[2:1]", "train[0%:90%]+train[2:1]", "train[1:0]",
               "train[3:1]", "train[-1:-3]", "train[-2:]", "train[:50%]", "train[10%:90%]", "train[:35%]",
               "train[:-50%]", "train[-100%:]", "train[:100]", "train+train", "train[:20%](closest)", "train[7:]",
               "train[:0%]", "train[:101%]", "test", "TRAIN", "train[3]", "train[ :2]", "train[:1]+ train[2:]"]
SPLITTER = textwrap.dedent('''
    import json, sys, datasets
    datasets.disable_progress_bars(); datasets.disable_caching()
    out = {}
    for n in (3, 7):
        path = f"{sys.argv[1]}/r{n}.json"
        json.dump([{"i": i} for i in range(n)], open(path, "w"))
        for split in json.loads(sys.argv[2]):
            try:
                ds = datasets.load_dataset("json", data_files=path, split=split, cache_dir=sys.argv[1] + "/c")
                out[f"{n} {split}"] = [r["i"] for r in ds]
            except Exception as e:
                out[f"{n} {split}"] = type(e).__name__
    print("SPLITS" + json.dumps(out))
''')


def test_the_rows_a_split_keeps_are_the_ones_datasets_keeps(tmp_path: Path) -> None:
    """dataset_info.json's `split` on a local dataset, against datasets 4.0.0's own load_dataset in LLaMA-Factory's
    environment, on 3 and 7 rows: the rows kept and their order, and where it raises."""
    from vlmcheck.errors import DatasetError, UsageError
    from vlmcheck.frameworks.llamafactory import split_positions

    done = subprocess.run([str(oracle_python()), "-c", SPLITTER, str(tmp_path), json.dumps(SPLIT_FORMS)],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SPLITS")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    theirs = json.loads(lines[-1][len("SPLITS"):])
    differ = []
    for key, rows in theirs.items():
        n, split = key.split(" ", 1)
        try:
            positions = split_positions(split, int(n), "x")
            mine: Any = list(range(int(n))) if positions is None else positions
        except DatasetError:
            mine = "raises"
        except UsageError:
            continue  # a form vlmcheck refuses as not modelled
        if mine != rows and not (mine == "raises" and isinstance(rows, str)):
            differ.append(f"{key}: datasets {rows}, vlmcheck {mine}")
    assert not differ, differ
    assert any(isinstance(r, str) for r in theirs.values()) and any(isinstance(r, list) for r in theirs.values())
