"""`vlmcheck check` on LLaMA-Factory's v1 engine (``USE_V1=1``), proved per sample against the engine itself.

The oracle is LLaMA-Factory 0.9.5's v1 package in its own environment (llamafactory_env.py): its argument parser,
``DataEngine`` (the dataset list, the local loader, the alpaca and sharegpt converters), ``Renderer`` (chatml,
qwen3_nothink, qwen3) and ``pad_and_truncate`` run on a generated corpus (llamafactory_v1_runner.py). For every row
both must agree on: raises or not, the untruncated total, the trained tokens, and the tokens and labels that survive
``cutoff_len``. The corpus holds what the engine does not forgive: rows with images (never loaded), keys some rows
lack (None after datasets' load), image parts, bad tool JSON, unknown roles, a missing answer.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from llamafactory_env import oracle_env

import vlmcheck
from vlmcheck.errors import DatasetError, UsageError

RUNNER = Path(__file__).with_name("llamafactory_v1_runner.py")
WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "図", "表", "😀", "<image>", "\n", "  ",
         "<|im_end|>", "image", "describe", "tool", "answer", "<think>", "x" * 12)
TOOLS = json.dumps([{"name": "zoom", "description": "Zoom in", "parameters": {"type": "object", "properties": {
    "factor": {"type": "number"}}}}])


def _text(rng: random.Random, most: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, most)))


def _call(rng: random.Random) -> str:
    call = {"name": "zoom", "arguments": {"factor": rng.randint(1, 9)}}
    return json.dumps([call, call] if rng.random() < 0.3 else call)


def sharegpt_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(n):
        turns: list[dict[str, Any]] = []
        if k % 3 == 0:
            turns.append({"from": "system", "value": _text(rng, 8)})
        for _ in range(rng.randint(1, 3)):
            turns.append({"from": "human", "value": ("<image>" if rng.random() < 0.5 else "") + _text(rng, 30)})
            if rng.random() < 0.25:
                turns.append({"from": "function_call", "value": _call(rng) if rng.random() < 0.8 else "{bad json"})
                turns.append({"from": "observation", "value": _text(rng, 10)})
            answer = _text(rng, 40)
            turns.append({"from": "gpt", "value": ("\n" + answer) if rng.random() < 0.2 else answer})
        if k % 7 == 3:
            turns.insert(1, {"from": "bot", "value": "skipped role"})
        if k % 11 == 5:
            turns[-1] = {"from": "gpt"}  # no value: None once loaded, the template raises
        row: dict[str, Any] = {"conversations": turns}
        if k % 4 == 1:
            row["images"] = [f"img/{k}.png"]  # never opened by the v1 engine
        if k % 5 == 2:
            row["tools"] = TOOLS if k % 10 == 2 else "[not json"
        rows.append(row)
    rows.append({"conversations": []})
    return rows


def alpaca_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(n):
        row = {"instruction": _text(rng, 30), "output": _text(rng, 40)}
        if k % 2:
            row["input"] = _text(rng, 10)
        if k % 6 == 0:
            row["system"] = _text(rng, 6)  # every other row then has system None: the template raises on it
        if k % 9 == 4:
            del row["output"]
        if k % 5 == 0:
            row["images"] = [f"img/a{k}.png"]
        rows.append(row)
    return rows


def native_rows(rng: random.Random, n: int, *, weights: bool) -> list[dict[str, Any]]:
    rows = []
    for k in range(n):
        messages: list[dict[str, Any]] = []
        if k % 3 == 0:
            messages.append({"role": "system", "content": [{"type": "text", "value": _text(rng, 8)}]})
        for turn in range(rng.randint(1, 3)):
            user = [{"type": "text", "value": _text(rng, 25)}]
            if k % 8 == 6 and turn == 0:
                user.insert(0, {"type": "image_url", "value": "img/n.png"})
            messages.append({"role": "user", "content": user})
            answer: list[dict[str, Any]] = []
            if rng.random() < 0.4:
                answer.append({"type": "reasoning", "value": "\n" + _text(rng, 15) + "\n"})
            answer.append({"type": "text", "value": ("\n" if rng.random() < 0.3 else "") + _text(rng, 30)})
            if rng.random() < 0.3:
                answer.append({"type": "tool_call", "value": json.dumps({"name": "zoom", "arguments": {"f": 2}})})
                messages.append({"role": "assistant", "content": answer})
                messages.append({"role": "tool", "content": [{"type": "text", "value": _text(rng, 6)}]})
                if rng.random() < 0.5:
                    messages.append({"role": "tool", "content": [{"type": "text", "value": _text(rng, 6)}]})
                answer = [{"type": "text", "value": _text(rng, 12)}]
            messages.append({"role": "assistant", "content": answer})
        if weights:
            for m in messages:
                m["loss_weight"] = rng.choice([0.0, 1.0, 0.5, 1e-7]) if m["role"] != "assistant" or k % 4 else 0.0
        row: dict[str, Any] = {"messages": messages}
        if k % 5 == 1:
            row["tools"] = TOOLS
        if k % 4 == 3:
            row["images"] = ["img/n.png"]
        rows.append(row)
    return rows


def write_corpus(root: Path, model: Path) -> list[Path]:
    rng = random.Random(29)
    data = root / "data"
    data.mkdir()
    (data / "chat.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt_rows(rng, 34)))
    (data / "alpaca.json").write_text(json.dumps(alpaca_rows(rng, 24), ensure_ascii=False))
    (data / "native.jsonl").write_text("".join(json.dumps(r) + "\n" for r in native_rows(rng, 24, weights=False)))
    (data / "weighted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in native_rows(rng, 16, weights=True)))
    # extra_info goes into the model input: a string or numbers collate, an object or None (a row without it) raise
    plain = {"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]},
                          {"role": "assistant", "content": [{"type": "text", "value": "ok"}]}]}
    for name, values in (("extra_obj", [{"k": "v"}, {"k": "w"}, None]), ("extra_str", ["a", "b", None]),
                         ("extra_num", [[1, 2.5], [], [3]])):
        (data / f"{name}.jsonl").write_text("".join(
            json.dumps({**plain, **({} if v is None else {"extra_info": v})}) + "\n" for v in values))
    (data / "datasets.yaml").write_text(yaml.safe_dump({
        "chat": {"path": str(data / "chat.jsonl"), "source": "local", "converter": "sharegpt"},
        "alpaca": {"path": "alpaca.json", "source": "local", "converter": "alpaca"},  # relative: the launch folder
        "native": {"path": str(data / "native.jsonl"), "source": "local"},
        "weighted": {"path": str(data / "weighted.jsonl"), "source": "local"},
        **{n: {"path": str(data / f"{n}.jsonl"), "source": "local"} for n in ("extra_obj", "extra_str", "extra_num")},
    }, sort_keys=False))
    # datasets cannot load these: LLaMA-Factory stops before step 1, and so does the check
    (data / "empty.jsonl").write_text("")
    (data / "clash.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": 5, "output": "c"}\n')
    for name in ("empty", "clash"):
        (data / f"{name}.yaml").write_text(yaml.safe_dump({
            "chat": {"path": str(data / "chat.jsonl"), "source": "local", "converter": "sharegpt"},
            name: {"path": str(data / f"{name}.jsonl"), "source": "local", "converter": "alpaca"}}))
    configs = []
    for template in ("chatml", "qwen3_nothink", "qwen3"):
        for cutoff in (None, 24, 90):
            config = {"model": str(model), "template": template, "train_dataset": str(data / "datasets.yaml")}
            if cutoff is not None:
                config["cutoff_len"] = cutoff
            path = root / f"v1_{template}_{cutoff or 'default'}.yaml"
            path.write_text(yaml.safe_dump(config))
            configs.append(path)
    bare = root / "v1_bare_file.yaml"  # a data file as train_dataset, the template by default (qwen3_nothink)
    bare.write_text(yaml.safe_dump({"model": str(model), "train_dataset": str(data / "native.jsonl"),
                                    "cutoff_len": 60}))
    stops = []
    for name in ("empty", "clash"):
        stops.append(root / f"stops_{name}.yaml")
        stops[-1].write_text(yaml.safe_dump({"model": str(model), "train_dataset": str(data / f"{name}.yaml")}))
    return [*configs, bare, *stops]


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path, qwen2_vl_checkpoint: Path
          ) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_v1")
    configs = write_corpus(root, qwen2_vl_checkpoint)
    data = root / "data"
    out = root / "oracle.json"
    done = subprocess.run([str(llamafactory_python), str(RUNNER), str(out), *map(str, configs)], cwd=data,
                          env=oracle_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    mine: dict[str, list[dict[str, Any]]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        for config in configs:
            records = root / f"{config.stem}.jsonl"
            try:
                vlmcheck.check(config, output=records, env={})
            except DatasetError as e:
                mine[config.stem] = str(e)
                continue
            mine[config.stem] = [json.loads(line) for line in records.read_text().splitlines()]
    return {"oracle": json.loads(out.read_text()), "mine": mine}


def _compare(row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    frame = record["framework"]
    where = f"{row['dataset']}[{row['row']}]"
    if (frame["dataset"], frame["row"]) != (row["dataset"], row["row"]):
        return [f"{where}: vlmcheck judged {frame['dataset']}[{frame['row']}] here"]
    if row["error"]:
        return [] if frame["verdict"] == "crash" else [f"{where}: the engine raises ({row['error']}), vlmcheck: "
                                                       f"{frame['verdict']}"]
    if frame["verdict"] == "crash":
        return [f"{where}: vlmcheck calls a crash, the engine prepared it"]
    mine = (record["tokens"], record["supervised_tokens"], frame["kept_tokens"], frame["kept_supervised"])
    theirs = (row["tokens"], row["supervised"], row["kept_tokens"], row["kept_supervised"])
    return [] if mine == theirs else [f"{where}: (total, trained, kept, kept trained) {mine} != {theirs}"]


def test_every_sample_is_judged_as_the_v1_engine_prepares_it(proof: dict[str, Any]) -> None:
    found, compared, outcomes = [], 0, {"raises": 0, "cut": 0, "whole": 0}
    for name, result in proof["oracle"].items():
        if name.startswith("stops_"):
            continue
        assert result["error"] is None, f"{name}: {result['error']}"
        rows, records = result["rows"], proof["mine"][name]
        assert len(rows) == len(records), f"{name}: the engine indexed {len(rows)} rows, vlmcheck {len(records)}"
        for row, record in zip(rows, records):
            found += [f"{name}: {m}" for m in _compare(row, record)]
            compared += 1
            outcomes["raises" if row["error"] else "cut" if row["kept_tokens"] < row["tokens"] else "whole"] += 1
    assert not found, f"{len(found)} mismatches in {compared} samples:\n" + "\n".join(found[:25])
    assert compared >= 900
    assert min(outcomes.values()) >= 60, outcomes  # the corpus reaches each outcome


def test_rows_with_images_train_without_them(proof: dict[str, Any]) -> None:
    records = proof["mine"]["v1_qwen3_nothink_default"]
    with_images = [r for r in records if "VC108" in r["findings"]]
    assert len(with_images) >= 15
    assert all(r["framework"]["verdict"] == "trains_without_images" for r in with_images)
    assert all(r["image_tokens"] == [] for r in records)


def _check(tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return vlmcheck.check(path, env=env or {})


def test_a_default_engine_config_under_use_v1_is_refused_as_the_v1_parser_refuses_it(
        tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    config = {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "dataset": "demo",
              "cutoff_len": 1024}
    with pytest.raises(UsageError, match="refuses the keys dataset, model_name_or_path"):
        _check(tmp_path, config, {"USE_V1": "1"})
    with pytest.raises(UsageError, match="no train_dataset"):
        _check(tmp_path, config, {"USE_V1": "1", "ALLOW_EXTRA_KEYS": "yes"})


def test_what_the_v1_engine_cannot_load_stops_the_check(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"messages": []}\n')
    base = {"model": str(qwen2_vl_checkpoint), "train_dataset": str(tmp_path / "list.yaml")}
    for entry, message in (({"path": "rows.jsonl"}, "from the Hub"),
                           ({"path": "rows.jsonl", "source": "local", "streaming": True}, "Iterable dataset"),
                           ({"path": "rows.jsonl", "source": "local", "converter": "openai"}, "not registered"),
                           ({"path": "rows.jsonl", "source": "local", "split": "test"}, "split"),
                           ({"path": "rows.csv", "source": "local"}, "not found")):
        (tmp_path / "list.yaml").write_text(yaml.safe_dump({"d": entry}))
        with pytest.raises(vlmcheck.errors.VlmcheckError, match=message):
            _check(tmp_path, base)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"d": {"path": "rows.jsonl", "source": "local"}}))
    with pytest.raises(UsageError, match="template 'llava'"):
        _check(tmp_path, {**base, "template": "llava"})


def test_another_installed_llamafactory_is_not_judged_as_0_9_5(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the v1 package changes between releases (main loads images): an installed LLaMA-Factory other than 0.9.5
    # is named, not judged with 0.9.5's rules
    site = tmp_path / "site"
    (site / "llamafactory-0.9.6.dev0.dist-info").mkdir(parents=True)
    (site / "llamafactory-0.9.6.dev0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llamafactory\nVersion: 0.9.6.dev0\n")
    monkeypatch.syspath_prepend(str(site))
    (tmp_path / "rows.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(UsageError, match="LLaMA-Factory 0.9.6.dev0 is installed here"):
        _check(tmp_path, {"model": str(qwen2_vl_checkpoint), "train_dataset": str(tmp_path / "rows.jsonl")})


def test_a_file_datasets_cannot_load_stops_the_check_as_it_stops_the_engine(proof: dict[str, Any]) -> None:
    for name, why in (("stops_empty", "holds no rows"), ("stops_clash", "instruction is a whole number here")):
        assert proof["oracle"][name]["error"], name  # LLaMA-Factory's DataEngine raises
        assert why in proof["mine"][name], proof["mine"][name]


def test_extra_info_that_cannot_be_collated_is_a_crash(proof: dict[str, Any]) -> None:
    records = [r for r in proof["mine"]["v1_chatml_default"] if r["framework"]["dataset"].startswith("extra_")]
    verdicts = [(r["framework"]["dataset"], r["framework"]["verdict"]) for r in records]
    assert verdicts == [("extra_obj", "crash")] * 3 + [("extra_str", "ok")] * 2 + [("extra_str", "crash")] + \
        [("extra_num", "ok")] * 3


def test_cutoff_len_and_split_values_the_engine_mishandles_are_refused(tmp_path: Path,
                                                                       qwen2_vl_checkpoint: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"messages": []}\n')
    base = {"model": str(qwen2_vl_checkpoint), "train_dataset": str(tmp_path / "rows.jsonl")}
    for value in ("128", 5.0, 0, -5, True):
        with pytest.raises(UsageError, match="cutoff_len"):
            _check(tmp_path, {**base, "cutoff_len": value})
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"d": {"path": "rows.jsonl", "source": "local",
                                                              "split": "train[:1]"}}))
    with pytest.raises(UsageError, match="slice"):
        _check(tmp_path, {**base, "train_dataset": str(tmp_path / "list.yaml")})


def test_a_lone_surrogate_escape_is_counted_as_datasets_returns_it(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """The v1 engine loads through datasets too: a JSON array's lone high surrogate escape is dropped (ujson; proved
    against datasets in tests/test_hfjson_loads.py), so the row counts as the row without it, with VC008; in JSON
    Lines the load fails and the check stops. (It reached the tokenizer: VC001, verdict unknown.)"""
    def rows(text: str) -> str:
        return ('[{"messages": [{"role": "user", "content": [{"type": "text", "value": "' + text + '"}]}, '
                '{"role": "assistant", "content": [{"type": "text", "value": "Fine."}]}]}]')

    counted = {}
    for name, text in (("clean", "Hi there"), ("lone", "Hi \\ud800there")):
        (tmp_path / f"{name}.json").write_text(rows(text))
        out = tmp_path / f"{name}.jsonl"
        config = {"model": str(qwen2_vl_checkpoint), "train_dataset": str(tmp_path / f"{name}.json")}
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
        vlmcheck.check(tmp_path / "train.yaml", env={}, output=out)
        (counted[name],) = [json.loads(line) for line in out.read_text().splitlines()]
    assert counted["lone"]["framework"]["verdict"] == "ok" and counted["lone"]["findings"] == ["VC008"]
    assert counted["lone"]["tokens"] == counted["clean"]["tokens"]
    (tmp_path / "lines.jsonl").write_text(rows("Hi \\ud800there")[1:-1] + "\n")
    config = {"model": str(qwen2_vl_checkpoint), "train_dataset": str(tmp_path / "lines.jsonl")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(vlmcheck.errors.VlmcheckError, match="surrogate"):
        vlmcheck.check(tmp_path / "train.yaml", env={})
