"""Tools under Qwen3.5's templates (``qwen3_5``, ``qwen3_5_nothink``: the ``qwen3_5`` tool format) and tool turns
of OpenAI-format datasets (``tool_calls``, ``tool`` replies) under the qwen, qwen3_5 and default tool formats,
proved per sample against LLaMA-Factory 0.9.5's own data pipeline (llamafactory_oracle_runner.py).

The corpus: sharegpt rows as test_llamafactory_tools.py generates them (tools JSON text, function-call turns with one
or parallel calls, a thought block or text before a call, observation turns, images), plus calls whose arguments
are numbers, lists, objects, true and null (the qwen3_5 format writes a string argument as is, others as JSON);
rows on which LLaMA-Factory raises (arguments given as JSON text: no object for qwen3_5; a call that is not JSON;
tools that are not JSON; tools as a list column); thinking on and off, several cutoff_len values. OpenAI-format rows:
tool_calls (one or parallel, content null, empty or text) then one or two tool replies (joined into one observation
turn), text answers between, images, a system prompt or none, tools as a list column whose objects differ between
rows (datasets types them as one struct: absent fields read null, and the converter dumps them), as JSON text, as
missing; arguments as JSON text (OpenAI's own form); the kind LLaMA-Factory drops (a tool reply straight after the
user turn) and tool replies after the last turn (left out). Under a tool format vlmcheck does not model, tool rows
are said to be not counted (VC007).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from test_llamafactory_check import _compare, check_configs, outcome, run_oracle
from test_llamafactory_tools import TOOLS, _call, _row, _text

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py

# more tools, of other shapes: the default format reads every parameter's type / description / enum / items
MORE_TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "Find pages",
                                      "parameters": {"type": "object", "properties": {
                                          "query": {"type": "string", "description": "words"},
                                          "limit": {"type": "integer"},
                                          "lang": {"type": "string", "enum": ["en", "zh"]}},
                                          "required": ["query"]}}},
]


def _rich_call(rng: random.Random) -> dict[str, Any]:
    """A call whose arguments are of every JSON kind (qwen3_5 writes non-strings as JSON)."""
    args: dict[str, Any] = {"query": rng.choice(["cats", "猫 和 狗", "multi\nline"])}
    if rng.random() < 0.7:
        args["limit"] = rng.choice([3, 10, 2.5])
    if rng.random() < 0.5:
        args["opts"] = {"safe": rng.random() < 0.5, "tags": ["a", "b"], "none": None}
    if rng.random() < 0.4:  # a no-break space: JSON (ensure_ascii=False) writes it, Python's repr escapes it
        args["quote"] = {"say": 'he said "hi"\u00a0', "tags": ['"x"']}
    if rng.random() < 0.3:
        args["lang"] = None
    return {"name": "search", "arguments": args}


def _sharegpt_rows(rng: random.Random, rows: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(rows):
        row = _row(rng, rng.sample(["photo.png", "tall.png"], rng.choice((0, 1, 1, 2))))
        if rng.random() < 0.4:  # another pair: a call with rich arguments, maybe parallel, maybe after text
            calls = [_rich_call(rng)] + ([_call(rng)] if rng.random() < 0.4 else [])
            content = json.dumps(calls if len(calls) > 1 else calls[0], ensure_ascii=rng.random() < 0.5)
            if rng.random() < 0.3:
                content = f"{_text(rng, 1, 5)}\n<tool_call>{content}</tool_call>"
            row["conversations"] += [{"from": "human", "value": _text(rng, 1, 10)},
                                     {"from": "function_call", "value": content}]
            if rng.random() < 0.5:
                row["tools"] = json.dumps(TOOLS + MORE_TOOLS, ensure_ascii=False)
        out.append(row)
    return out


def _bad_sharegpt_rows(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(6):
        call: Any = _call(rng)
        tools = json.dumps(TOOLS)
        if i % 3 == 0:  # arguments as JSON text: qwen3_5 reads them as no object (AttributeError)
            call = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
        elif i % 3 == 1:
            call = "get_weather(city='Paris')"  # not JSON
        else:
            tools = "[{name: get_weather}]"  # tools that are not JSON
        out.append({"conversations": [{"from": "human", "value": _text(rng, 1, 8)},
                                      {"from": "function_call", "value": call if isinstance(call, str)
                                       else json.dumps(call)}], "tools": tools, "system": "", "images": []})
    return out


def _oa_call(rng: random.Random, as_text: bool) -> dict[str, Any]:
    call = _rich_call(rng) if rng.random() < 0.4 else _call(rng)
    if as_text:  # OpenAI's own form: the arguments a JSON string
        call = {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}
    wrapped: dict[str, Any] = {"function": call}
    if rng.random() < 0.6:
        wrapped = {"id": f"call_{rng.randint(0, 999)}", "type": "function", **wrapped}
    return wrapped


def _oa_row(rng: random.Random, images: list[str], *, tools: str, args_as_text: bool = False,
            kind: str = "normal") -> dict[str, Any]:
    marks = ["<image>"] * len(images)
    msgs: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": rng.choice([_text(rng, 1, 6), "detailed thinking on. " + _text(
            rng, 1, 3)])})
    msgs.append({"role": "user", "content": "".join(marks) + _text(rng, 1, 15)})
    if kind == "dropped":  # a tool reply straight after the user turn
        msgs += [{"role": "tool", "content": _text(rng, 1, 6)}, {"role": "assistant", "content": _text(rng, 1, 9)}]
    for step in range(rng.choice((1, 2, 2, 3))):
        if kind != "dropped" and (step == 0 or rng.random() < 0.7):
            message: dict[str, Any] = {"role": "assistant",
                                       "tool_calls": [_oa_call(rng, args_as_text)
                                                      for _ in range(rng.choice((1, 1, 2)))]}
            roll = rng.random()
            if roll < 0.4:
                message["content"] = None
            elif roll < 0.7:
                message["content"] = _text(rng, 1, 5)  # never read: the calls replace it
            msgs.append(message)
            for _ in range(rng.choice((1, 1, 2))):
                msgs.append({"role": "tool", "content": rng.choice([
                    json.dumps({"result": _text(rng, 1, 12)}, ensure_ascii=False), _text(rng, 1, 10)])})
        else:
            msgs += [{"role": "assistant", "content": _text(rng, 1, 20)},
                     {"role": "user", "content": _text(rng, 1, 10)}]
    if kind != "trailing":  # else the last tool replies are left out, the row ends with its calls
        msgs.append({"role": "assistant", "content": _text(rng, 1, 25)})
    row: dict[str, Any] = {"messages": msgs, "images": [f"images/{i}" for i in images]}
    if tools == "list":
        choice = rng.choice([TOOLS, TOOLS[:1], MORE_TOOLS, TOOLS + MORE_TOOLS, [], None])
        if choice is not None:
            row["tools"] = choice
    elif tools == "text":
        row["tools"] = rng.choice([json.dumps(TOOLS + MORE_TOOLS, ensure_ascii=False), json.dumps(MORE_TOOLS), ""])
    return row


def _oa_rows(rng: random.Random, rows: int, **kw: Any) -> list[dict[str, Any]]:
    kinds = ["normal"] * 6 + ["dropped", "trailing"]
    return [_oa_row(rng, rng.sample(["photo.png", "tall.png"], rng.choice((0, 0, 1, 2))), kind=rng.choice(kinds),
                    **kw) for _ in range(rows)]


OA_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
           "observation_tag": "tool", "system_tag": "system"}


def write_corpus(root: Path, checkpoints: dict[str, Path], *, seed: int) -> tuple[list[Path], dict[str, list[Any]]]:
    from PIL import Image

    rng = random.Random(seed)
    data = root / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (640, 480), (20, 90, 160)).save(data / "images" / "photo.png")
    Image.new("RGB", (300, 900), (200, 30, 30)).save(data / "images" / "tall.png")
    sets: dict[str, list[Any]] = {
        "s35": _sharegpt_rows(rng, 28),
        "s35bad": _bad_sharegpt_rows(rng),
        # tools as a list column in a sharegpt dataset: its converter hands the list on
        "s35list": [{"system": "", **r, "tools": TOOLS} for r in _sharegpt_rows(rng, 3)],
        "oa": _oa_rows(rng, 26, tools="list"),
        "oajs": _oa_rows(rng, 12, tools="text"),
        "oastr": _oa_rows(rng, 8, tools="text", args_as_text=True),
    }
    info: dict[str, Any] = {}
    for name, rows in sets.items():
        (data / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
        if name.startswith("s35"):
            info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                          "columns": {"messages": "conversations", "images": "images", "tools": "tools",
                                      "system": "system"}}
        else:
            info[name] = {"file_name": f"{name}.json", "formatting": "openai", "tags": OA_TAGS,
                          "columns": {"messages": "messages", "images": "images", "tools": "tools"}}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=1))
    q35 = {"model_name_or_path": str(checkpoints["qwen3_5"]), "template": "qwen3_5"}
    q35n = {"model_name_or_path": str(checkpoints["qwen3_5"]), "template": "qwen3_5_nothink"}
    q2 = {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl"}
    configs: dict[str, dict[str, Any]] = {
        "q35-whole": {**q35, "dataset": "s35"},
        "q35-cut": {**q35, "dataset": "s35", "cutoff_len": 400, "mask_history": True, "image_max_pixels": 200_000},
        "q35-off": {**q35, "dataset": "s35", "enable_thinking": False, "cutoff_len": 700},
        "q35n": {**q35n, "dataset": "s35", "cutoff_len": 600, "train_on_prompt": True},
        "q35-bad": {**q35, "dataset": "s35bad"},
        "q35-list": {**q35, "dataset": "s35list"},
        "oa-q2": {**q2, "dataset": "oa,oastr", "cutoff_len": 900},
        "oa-q35": {**q35, "dataset": "oa,oastr", "cutoff_len": 500},
        "oa-q35off": {**q35, "dataset": "oajs", "enable_thinking": False},
        "oa-q35n": {**q35n, "dataset": "oa,oajs", "cutoff_len": 800},
        "oa-llava": {"model_name_or_path": str(checkpoints["llava"]), "template": "llava",
                     "dataset": "oa,oajs,oastr"},
        # a tool format vlmcheck does not model: the tool rows are said to be not counted
        "oa-glm4fmt": {**q2, "dataset": "oajs", "tool_format": "glm4"},
    }
    return write_configs(root, data, configs), sets


NOT_COUNTED = ("oa-glm4fmt",)


def _uses_tools(row: dict[str, Any]) -> bool:
    turns = row.get("conversations") or row.get("messages")
    return bool(row.get("tools")) or any(t.get("from") in ("function_call", "observation") or t.get("role") == "tool"
                                         or t.get("tool_calls") for t in turns)


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint
    from qwen3_sharing_checkpoint import sharing_checkpoint
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    root = tmp_path_factory.mktemp("lf_tools35")
    configs, sets = write_corpus(root, {"qwen3_5": sharing_checkpoint("qwen3_5"),
                                        "qwen2_vl": qwen_checkpoint("qwen2_vl"), "llava": llava_checkpoint()},
                                 seed=7)
    data = root / "data"
    return {"oracle": run_oracle(llamafactory_python, configs, cwd=data), "mine": check_configs(configs, data),
            "sets": sets}


def test_every_tool_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    found: list[str] = []
    compared = Counter[str]()
    for name, result in proof["oracle"].items():
        assert not result.get("config_error"), (name, result.get("config_error"))
        rows, records = result["rows"], proof["mine"][name]
        assert len(rows) == len(records), f"{name}: LLaMA-Factory read {len(rows)} rows, vlmcheck {len(records)}"
        for row, record in zip(rows, records):
            source = proof["sets"][row["dataset"]][row["row"]]
            if name in NOT_COUNTED and _uses_tools(source) and outcome(row) != "dropped":
                if record["framework"]["verdict"] != "unknown" or "VC007" not in record["findings"]:
                    found.append(f"{name}: {row['dataset']}[{row['row']}]: uses tools, vlmcheck says "
                                 f"{record['framework']['verdict']} {record['findings']}")
                compared["unknown"] += 1
                continue
            found += [f"{name}: {m}" for m in _compare(row, record)]
            compared[outcome(row)] += 1
    assert not found, f"{len(found)} mismatches in {compared}:\n" + "\n".join(found[:25])
    assert sum(compared.values()) >= 280 and compared["unknown"] >= 8, compared


def test_the_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """LLaMA-Factory itself keeps tool samples whole and cut under each format, drops the tool reply after the user
    turn, and raises on the broken rows, for each reason."""
    seen: Counter[tuple[str, str]] = Counter()
    errors: list[str] = []
    for name, result in proof["oracle"].items():
        for row in result["rows"]:
            source = proof["sets"][row["dataset"]][row["row"]]
            if not _uses_tools(source):
                continue
            seen[name, outcome(row)] += 1
            errors += [row["error"]] if row["error"] else []
    for name in ("q35-whole", "q35-off", "q35n", "oa-q2", "oa-q35off", "oa-q35n", "oa-llava"):
        assert seen[name, "whole"] >= 5, (name, seen)
    for name in ("q35-cut", "oa-q35"):
        assert seen[name, "whole"] >= 2 and seen[name, "crash"] + seen[name, "text cut"] >= 3, (name, seen)
    for name in ("oa-q2", "oa-q35", "oa-llava"):
        assert seen[name, "dropped"] >= 2, (name, seen)
    assert seen["q35-bad", "raises"] == 6 and seen["q35-list", "raises"] == 3, seen
    assert seen["oa-q35", "raises"] >= 4, seen  # arguments as JSON text: no object for qwen3_5
    for fragment in ("Invalid JSON format in function message", "Invalid JSON format in tool", "AttributeError"):
        assert any(fragment in e for e in errors), (fragment, errors)
    # the trailing replies: the row kept without them (ends with its calls)
    trailing = [r for r in proof["oracle"]["oa-q2"]["rows"] if r["kept"] and r["dataset"] == "oa"
                and proof["sets"]["oa"][r["row"]]["messages"][-1]["role"] == "tool"]
    assert trailing, "no row with tool replies after its last turn was kept"
