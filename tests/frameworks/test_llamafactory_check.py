"""`vlmcheck.check` on LLaMA-Factory configs, proved per sample against LLaMA-Factory's own data pipeline.

The oracle is LLaMA-Factory 0.9.5 itself, in its own environment (llamafactory_env.py), running its
``get_train_args`` / ``load_tokenizer`` / converter / supervised processor / mm_plugin on a generated corpus
(lf_corpus.py: every image size class, empty and missing system prompts, answers starting with newlines,
multi-image multi-turn rows, custom ``dataset_info.json`` mappings, rows it drops) under several configs, defaults
included (llamafactory_oracle_runner.py). For every row both must agree on: kept or dropped, the untruncated total,
each image's feature count, the tokens and labels that survive ``cutoff_len``, the image tokens left after the cut
and so the crash verdict. A tiny random Qwen-VL model confirms that the cut samples crash and whole ones do not.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from lf_corpus import SIZES, write_corpus
from llamafactory_env import oracle_env

import vlmcheck
from vlmcheck.frameworks import llamafactory as lf

RUNNER = Path(__file__).with_name("llamafactory_oracle_runner.py")


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path, qwen2_vl_checkpoint: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    """Every config of the corpus through the oracle (one process) and through vlmcheck.check."""
    root = tmp_path_factory.mktemp("lf_corpus")
    configs = write_corpus(root, {"qwen2_vl": qwen2_vl_checkpoint, "qwen3_vl": qwen3_vl_think_checkpoint},
                           seed=13, rows=16)
    data = root / "data"  # both launched from the dataset folder: paths not found in media_dir stay relative to it
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=3)
    return {"oracle": oracle, "mine": check_configs(configs, data), "configs": configs}


def check_configs(configs: list[Path], data: Path) -> dict[str, list[dict[str, Any]]]:
    """vlmcheck.check's records for every config, launched from the dataset folder as the oracle is."""
    mine: dict[str, list[dict[str, Any]]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        for config in configs:
            records = data.parent / f"{config.stem}.jsonl"
            vlmcheck.check(config, output=records)
            mine[config.stem] = [json.loads(line) for line in records.read_text().splitlines()]
    return mine


def mismatches(proof: dict[str, Any], compare: Any = None, *, skip: Any = None) -> tuple[list[str], int]:
    """Every oracle row against vlmcheck's record at its place (``compare``: ``_compare`` by default; ``skip``:
    rows the caller judges itself): the differences and how many rows were compared."""
    compare = compare or _compare
    found: list[str] = []
    compared = 0
    for name, result in proof["oracle"].items():
        rows, records = result["rows"], proof["mine"][name]
        assert len(rows) == len(records), f"{name}: LLaMA-Factory read {len(rows)} rows, vlmcheck {len(records)}"
        for row, record in zip(rows, records):
            if skip is not None and skip(name, row, record):
                continue
            found += [f"{name}: {m}" for m in compare(row, record)]
            compared += 1
    return found, compared


def assert_agreement(proof: dict[str, Any], *, at_least: int, compare: Any = None) -> None:
    """Every sample agrees (``mismatches``), and at least ``at_least`` were compared."""
    found, compared = mismatches(proof, compare)
    assert compared >= at_least, compared
    assert not found, f"{len(found)} mismatches in {compared} samples:\n" + "\n".join(found[:25])


def outcome(row: dict[str, Any]) -> str:
    """What LLaMA-Factory did with an oracle row: raises, dropped, crash, text cut or whole."""
    if row["error"]:
        return "raises"
    if not row["kept"]:
        return "dropped"
    return "crash" if row["crash"] else "text cut" if row["kept_tokens"] < row["tokens"] else "whole"


def forward_outcomes(proof: dict[str, Any]) -> Counter[str]:
    """The tiny model's runs (the runner's ``forward``): each row LLaMA-Factory's data calls a crash must raise
    there and each other row must run. How many of each ran."""
    ran = Counter[str]()
    for name, result in proof["oracle"].items():
        for f in result.get("forward", []):
            row = next(r for r in result["rows"] if r["kept"] and (r["dataset"], r["row"], r["split"])
                       == (f["dataset"], f["row"], f["split"]))
            if row["crash"]:
                assert f["error"], f"{name}: {f}"
                ran["crash"] += 1
            else:
                assert f["error"] is None, f"{name}: {f}"
                ran["whole"] += 1
    return ran


def verdicts_in_forward(proof: dict[str, Any], raises: tuple[str, ...]) -> Counter[str]:
    """The tiny model's runs (the runner's ``forward``) against vlmcheck's verdicts: each sample vlmcheck calls a
    crash raises there, with one of ``raises`` in the error, and each other sample runs. How many of each ran."""
    ran = Counter[str]()
    for name, result in proof["oracle"].items():
        verdicts = {(r["dataset"], r["row"]): record["framework"]["verdict"]
                    for r, record in zip(result["rows"], proof["mine"][name])}
        for run in result.get("forward", []):
            if verdicts[(run["dataset"], run["row"])] == "crash":
                assert run["error"] and any(m in run["error"] for m in raises), (name, run)
                ran["crash"] += 1
            else:
                assert run["error"] is None, (name, run)
                ran["whole"] += 1
    return ran


def run_oracle(python: Path, configs: list[Path], *, cwd: Path, forward: int = 0, processes: int = 2) -> dict[str, Any]:
    """LLaMA-Factory's results for every config, the configs shared between a few runner processes."""
    procs = []
    for k in range(processes):
        share = configs[k::processes]
        if share:
            out = cwd.parent / f"oracle-{k}.json"
            procs.append((out, subprocess.Popen(
                [str(python), str(RUNNER), str(out), *map(str, share), "--forward", str(forward)],
                cwd=cwd, env=oracle_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    results: dict[str, Any] = {}
    for out, proc in procs:
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-5000:]
        results.update(json.loads(out.read_text()))
    return results


def _compare(oracle_row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What differs between LLaMA-Factory's result for a row and vlmcheck's record of it."""
    frame = record["framework"]
    where = f"{oracle_row['dataset']}[{oracle_row['row']}]"
    if (frame["dataset"], frame["row"], frame.get("split", "train")) != (
            oracle_row["dataset"], oracle_row["row"], oracle_row.get("split", "train")):
        return [f"{where} ({oracle_row.get('split', 'train')}): vlmcheck judged {frame['dataset']}[{frame['row']}] "
                f"({frame.get('split', 'train')}) in its place"]
    if oracle_row["error"]:  # in get_dataset: the run stops before step 1; only in the collator: at the step
        want = "crash" if oracle_row.get("stage") == "collator" else "stops"
        return [] if frame["verdict"] == want else [f"{where}: LLaMA-Factory raises in its {oracle_row.get('stage')} "
                                                    f"({oracle_row['error']}), vlmcheck says {frame['verdict']}"]
    if not oracle_row["kept"]:
        return [] if frame["verdict"] == "dropped" else [f"{where}: LLaMA-Factory drops it, vlmcheck says "
                                                         f"{frame['verdict']} {record['findings']}"]
    if frame["verdict"] not in ("ok", "crash"):
        return [f"{where}: LLaMA-Factory keeps it, vlmcheck says {frame['verdict']} {record['findings']}"]
    pairs = {
        "untruncated tokens": (oracle_row["tokens"], record["tokens"]),
        "features per image": (oracle_row["image_features"], record["image_tokens"]),
        "supervised tokens": (oracle_row["supervised"], record["supervised_tokens"]),
        "kept tokens": (oracle_row["kept_tokens"], frame["kept_tokens"]),
        "kept labels": (oracle_row["kept_supervised"], frame["kept_supervised"]),
        # the image tokens the cut keeps: the images' and those the row's own text holds (a literal token)
        "image tokens left": (oracle_row["image_tokens_left"],
                              sum(frame["kept_image_tokens"]) + frame.get("kept_literal_image_tokens", 0)),
        "crash": (oracle_row["crash"], frame["verdict"] == "crash"),
    }
    return [f"{where}: {what}: LLaMA-Factory {a}, vlmcheck {b}" for what, (a, b) in pairs.items() if a != b]


def test_every_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    assert_agreement(proof, at_least=200)


def test_the_per_row_oracle_is_llamafactory_get_dataset(proof: dict[str, Any]) -> None:
    """The runner judges rows one at a time; LLaMA-Factory's get_dataset on the whole config must give exactly the
    kept rows (same input_ids and labels), or raise when a row raises."""
    for name, result in proof["oracle"].items():
        errors = [r for r in result["rows"] if r["error"] and r.get("stage") != "collator"]
        late = [r for r in result["rows"] if r["error"] and r.get("stage") == "collator"]
        check = result["get_dataset"]
        if errors:
            assert "error" in check, f"{name}: rows raise but get_dataset does not"
        elif late:  # rows only the collator raises on (at the training step): get_dataset keeps them
            assert "error" not in check and check["rows"] >= len(late), f"{name}: {check}"
        else:
            assert check.get("same_as_rows") is True, f"{name}: {check}"
            assert check.get("same_as_eval_rows", True) is True, f"{name}: {check}"
        assert result["llamafactory"] == "0.9.5"


def test_the_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """Not a vacuous proof: LLaMA-Factory itself crashes, drops, cuts, and keeps samples whole in this corpus, under
    its defaults too, and every size class reaches its resize rules."""
    oracle = proof["oracle"]
    assert oracle["defaults"]["cutoff_len"] == 2048 and oracle["defaults"]["image_max_pixels"] == 768 * 768
    outcomes = Counter(outcome(r) for result in oracle.values() for r in result["rows"])
    assert outcomes["crash"] >= 10 and outcomes["dropped"] >= 5 and outcomes["whole"] >= 100, outcomes
    assert outcomes["text cut"] >= 5 and outcomes["raises"] >= 6, outcomes
    stored = {tuple(s) for result in oracle.values() for r in result["rows"] if r["kept"] for s in r["image_stored"]}
    for cls in SIZES:
        assert stored & set(SIZES[cls]), f"no {cls} image reached LLaMA-Factory"


def test_resized_sizes_are_llamafactorys(proof: dict[str, Any]) -> None:
    """Every image's size after LLaMA-Factory's pre-scaling and the Qwen plugin's side / ratio rules."""
    paths = {p.stem: p for p in proof["configs"]}
    seen = 0
    for name, result in proof["oracle"].items():
        config = lf.read_config(yaml.safe_load(paths[name].read_text()), path=paths[name])
        for r in result["rows"]:
            if not r["kept"]:
                continue
            for stored, resized in zip(r["image_stored"], r["image_sizes"]):
                assert lf.image_size(*stored, config) == tuple(resized), (name, stored, resized)
                seen += 1
    assert seen >= 200


def test_a_tiny_real_model_crashes_on_the_cut_samples_only(proof: dict[str, Any]) -> None:
    """LLaMA-Factory's collator and a random-weight Qwen-VL model of the checkpoint's type: every sample judged a
    crash raises, every whole one runs."""
    ran = forward_outcomes(proof)
    assert ran["crash"] >= 3 and ran["whole"] >= 3, ran


def test_packing_cuts_as_without_it(proof: dict[str, Any]) -> None:
    """packing / neat_packing: LLaMA-Factory cuts every sample pair by pair before packing it (cutoff_len - 1), so a
    cut image still crashes and nothing is dropped for its length (vlmcheck said "dropped" here before)."""
    for name in ("packed", "neat"):
        result, records = proof["oracle"][name], proof["mine"][name]
        assert result["cutoff_len"] == {"packed": 499, "neat": 899}[name]
        crashes = [r for r in result["rows"] if r["kept"] and r["crash"]]
        assert crashes, name
        assert not any("VC204" in record["findings"] for record in records), name
        assert result["get_dataset"].get("same_as_rows") is True, result["get_dataset"]


def test_which_rows_llamafactory_prepares(proof: dict[str, Any]) -> None:
    """dataset_info ``num_samples`` (a seeded draw, rows repeated past the file's length), a dataset listed twice,
    ``eval_dataset``, ``max_samples`` after the draw and ``val_size``: the rows, their order and their split are
    LLaMA-Factory's (get_dataset's output, train and eval, equals the runner's rows; vlmcheck judged the same row
    at every place, checked in the comparison above)."""
    oracle = proof["oracle"]
    for name in ("sampled", "evaluated", "split", "folder"):
        assert oracle[name]["get_dataset"].get("same_as_rows") is True, (name, oracle[name]["get_dataset"])
    sampled = oracle["sampled"]["rows"]
    by_dataset = Counter((r["dataset"], r["split"]) for r in sampled)
    assert by_dataset == {("sg_few", "train"): 8, ("alp_many", "train"): 21, ("chat", "eval"): 16}, by_dataset
    drawn = [r["row"] for r in sampled if r["dataset"] == "sg_few"]
    assert drawn != sorted(drawn) and len(set(drawn)) == 8  # a permutation's head, not the first rows
    many = Counter(r["row"] for r in sampled if r["dataset"] == "alp_many")
    assert len(many) == 16 and max(many.values()) >= 2  # every row once, then 5 drawn again
    assert oracle["sampled"]["get_dataset"].get("same_as_eval_rows") is True
    folder = oracle["folder"]
    assert folder["get_dataset"].get("same_as_rows") is True, folder["get_dataset"]
    assert Counter(r["dataset"] for r in folder["rows"]) == {"sgdir": 11, "sgdir_few": 5}
    evaluated = Counter((r["dataset"], r["split"]) for r in oracle["evaluated"]["rows"])
    assert evaluated == {("alp_many", "train"): 9, ("sg_few", "eval"): 8, ("oa", "eval"): 9}, evaluated
    mine = proof["mine"]["sampled"]
    assert [(r["framework"]["dataset"], r["framework"]["row"]) for r in mine] == [
        (r["dataset"], r["row"]) for r in sampled]


def test_settings_that_change_which_rows_are_read_or_refused(tmp_path: Path) -> None:
    """What LLaMA-Factory refuses is refused, and what vlmcheck does not model is said, not guessed."""
    base = {"model_name_or_path": "m", "template": "qwen2_vl", "dataset": "a,b"}
    with pytest.raises(vlmcheck.UsageError, match="val_size"):
        lf.read_config({**base, "eval_dataset": "c", "val_size": 0.1}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="interleave_once.*is not supported"):
        lf.read_config({**base, "mix_strategy": "interleave_once"}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="streaming"):
        lf.read_config({**base, "mix_strategy": "interleave_under", "streaming": True}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="3 values for 2 datasets"):
        lf.read_config({**base, "mix_strategy": "interleave_under", "interleave_probs": "0.2,0.3,0.5"},
                       path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="takes concat"):
        lf.read_config({**base, "mix_strategy": "interleave"}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="interleave_probs"):
        lf.read_config({**base, "interleave_probs": "0.5,0.5"}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="streaming"):
        lf.read_config({**base, "streaming": True, "max_samples": 10}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="streaming"):
        lf.read_config({**base, "streaming": True, "val_size": 0.1}, path=tmp_path / "x.yaml")
    assert lf.read_config({**base, "streaming": True, "val_size": 100, "dataloader_num_workers": 2},
                          path=tmp_path / "x.yaml").streaming
    with pytest.raises(vlmcheck.UsageError, match="dataloader_num_workers 0"):
        lf.read_config({**base, "streaming": True, "val_size": 100}, path=tmp_path / "x.yaml")
    lf.read_config({**base, "dataset": "a", "mix_strategy": "interleave_once"}, path=tmp_path / "x.yaml")  # one dataset
    saved = tmp_path / "tokenized"
    lf.read_config({**base, "tokenized_path": str(saved)}, path=tmp_path / "x.yaml")  # not saved yet: rows prepared
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    with pytest.raises(vlmcheck.UsageError, match="tokenized_path"):
        lf.read_config({**base, "tokenized_path": str(saved)}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="num_samples"):
        lf.DatasetAttr.read("a", {"file_name": "a.json", "num_samples": "ten"})
    config = lf.read_config({**base, "tool_format": "qwen"}, path=tmp_path / "x.yaml")
    assert config.template.function == "{content}" and config.template.function_eos
    for bad in ("foo", ""):  # LLaMA-Factory: 'Tool utils ... not found'
        with pytest.raises(vlmcheck.UsageError, match="tool_format"):
            lf.read_config({**base, "tool_format": bad}, path=tmp_path / "x.yaml")
    # a template whose observation slot vlmcheck does not have: tool rows are not counted (never a dropped tool
    # result); llava's observation is its user slot, as LLaMA-Factory's format_observation falls back to it
    gemma = lf.read_config({**base, "template": "gemma3", "tool_format": "qwen"}, path=tmp_path / "x.yaml")
    assert gemma.template.tool_format != "qwen"
    llava = lf.read_config({**base, "template": "llava", "tool_format": "qwen"}, path=tmp_path / "x.yaml")
    assert llava.template.tool_format == "qwen" and llava.template.observation == llava.template.user
    for seed in (-1, 2**32):  # numpy's seed range: set_seed raises at startup
        with pytest.raises(vlmcheck.UsageError, match="seed"):
            lf.read_config({**base, "seed": seed}, path=tmp_path / "x.yaml")
    assert lf.read_config({**base, "dataset": "a,"}, path=tmp_path / "x.yaml").datasets == ("a", "")
    for split in ({"eval_dataset": "c"}, {"val_size": 0.1}):  # evaluation rows prepared without labels
        with pytest.raises(vlmcheck.UsageError, match="predict_with_generate"):
            lf.read_config({**base, **split, "predict_with_generate": True}, path=tmp_path / "x.yaml")
    with pytest.raises(vlmcheck.UsageError, match="streaming"):
        lf.read_config({**base, "streaming": True, "tokenized_path": str(tmp_path / "new")}, path=tmp_path / "x.yaml")


def test_the_draw_is_numpys() -> None:
    """num_samples: numpy's legacy generator, permutation then choice, as LLaMA-Factory calls them."""
    np = pytest.importorskip("numpy")
    np.random.seed(42)
    want = list(np.random.permutation(7)[:10]) + list(np.random.choice(7, 3))
    assert lf.draw_samples(7, 10, np.random.RandomState(42)) == [int(i) for i in want]
    with pytest.raises(vlmcheck.DatasetError):
        lf.draw_samples(0, 1, np.random.RandomState(42))


def test_a_hostile_num_samples_is_refused_not_drawn() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(vlmcheck.DatasetError, match="num_samples"):
        lf.draw_samples(3, 10**12, np.random.RandomState(0))


def test_a_folder_whose_files_have_other_columns_stops_the_run_or_is_refused(tmp_path: Path) -> None:
    """datasets loads each file of a folder dataset as its own table and casts the rest to the first one's columns:
    a later file with a column the first lacks fails the load (LLaMA-Factory stops before step 1), one lacking a
    column loads (nulls). So where the files' columns differ, os.listdir's order decides (refused, naming the
    files), unless no file has every column (it fails in every order); never judged row by row. The rule is proved
    on datasets 4.0.0 in hfjson_cases.py (JSON and JSON Lines pairs in both orders)."""
    import os

    from vlmcheck.demo.checkpoints import qwen_checkpoint

    data = tmp_path / "data"
    (data / "parts").mkdir(parents=True)
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    for name in ("a.jsonl", "b.jsonl"):
        (data / "parts" / name).write_text(json.dumps(row) + "\n")
    first, second = (data / "parts" / name for name in os.listdir(data / "parts"))  # the order datasets reads
    (data / "dataset_info.json").write_text(json.dumps({"p": {"file_name": "parts", "formatting": "sharegpt"}}))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(qwen_checkpoint("qwen2_vl")), "template": "qwen2_vl",
                                      "dataset": "p", "dataset_dir": str(data), "stage": "sft"}))
    assert vlmcheck.check(config).summary["samples"] == 2  # the same columns: it loads
    second.write_text(json.dumps({**row, "system": "be brief"}) + "\n")  # a column the first file has not
    with pytest.raises(vlmcheck.DatasetError, match=f"os.listdir.*{first.name} is listed first here and lacks"):
        vlmcheck.check(config)
    first.write_text(json.dumps({**row, "system": "be brief"}) + "\n")  # now the later one lacks it: loads here
    second.write_text(json.dumps(row) + "\n")
    with pytest.raises(vlmcheck.DatasetError, match=f"os.listdir.*with {second.name} listed first it fails"):
        vlmcheck.check(config)
    second.write_text(json.dumps({**row, "tools": "[]"}) + "\n")  # each has a column the other lacks
    with pytest.raises(vlmcheck.DatasetError, match="no file has every column"):
        vlmcheck.check(config)
