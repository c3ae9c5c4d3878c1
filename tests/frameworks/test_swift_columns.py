"""ms-swift's column mapping, proved against its own ``load_dataset`` and encode (swift_env.py): ``--columns``
renames a file's columns before its ``AutoPreprocessor`` does (matched without case; two columns bound for one name
are both left as they are), the preprocessor is chosen from the renamed columns, and
``--disable_auto_column_mapping true`` turns the preprocessor's own renames off. Each case is one launch on one file,
with LLaVA-1.5's template (``llava1_5_hf``): a row keeps its image and text, loses them, or is deleted, and the
totals, labels and image tokens must equal ms-swift's encode.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from swift_env import ENCODE_ROWS, check_launch, oracle_python

from vlmcheck.errors import DatasetError

pytestmark = pytest.mark.slow

IMAGE_ID = 32000  # <image>

ORACLE = "import json, sys\n" + ENCODE_ROWS + textwrap.dedent('''
    from swift.model import get_processor

    job = json.loads(sys.argv[1])
    processor = get_processor(job["checkpoint"], model_type="llava1_5_hf")

    def measure(template, enc, row):
        ids = list(enc["input_ids"])
        return {"tokens": len(ids), "labels": sum(1 for x in enc["labels"] if x != -100),
                "image_tokens": ids.count(job["image_id"]), "images": len(row.get("images") or [])}

    out = {}
    for name, case in job["cases"].items():
        try:
            rows = loaded_rows(case["data"], **case["load"])
        except Exception as e:  # the load itself raises: the run stops before step 1
            out[name] = {"raises": f"{type(e).__name__}: {e}"[:300]}
            continue
        out[name] = encode_all(processor, "llava1_5_hf", rows, [[None, "raise"]], None, measure)["None-raise"]
    print("ORACLE" + json.dumps(out))
''')


def cases(folder: Path) -> dict[str, dict[str, Any]]:
    """Per case: its rows, the options of the launch and what they are for load_dataset."""
    photo = folder / "photo.png"
    Image.new("RGB", (640, 480), (30, 90, 200)).save(photo)
    pic = str(photo)
    turn = [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "Blue."}]
    return {
        # the user's names for query, answer and images; a 'question' column is the preprocessor's own query
        "renamed": ({"columns": {"Reply": "response", "pic": "images"}}, [
            {"question": "<image>What is it?", "reply": "A blue field.", "pic": [pic]},
            {"question": "Describe.", "reply": "Blue.", "pic": pic},  # no tag: one is added
            {"question": "No image.", "reply": "Fine.", "pic": None},
        ]),
        # a messages column of another name; rows without it keep no row
        "dialog": ({"columns": {"dialog": "messages"}}, [
            {"dialog": turn, "images": [pic]},
            {"dialog": None, "query": "<image>Q", "response": "A", "images": [pic]},
        ]),
        # two columns bound for 'response': neither is renamed, and the row is a question without an answer
        "bound twice": ({"columns": {"reply": "response", "reply2": "response"}}, [
            {"query": "<image>Q?", "reply": "One.", "reply2": "Two.", "images": [pic]},
            {"query": "<image>Q?", "response": "Kept.", "images": [pic]},
        ]),
        # no automatic renames: 'image' stays (no image: its tag is text), 'conversations' is not messages
        "no auto, image": ({"disable_auto_column_mapping": True}, [
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "image": pic},
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "image": None},
        ]),
        "no auto, conversations": ({"disable_auto_column_mapping": True}, [
            {"conversations": turn, "images": [pic]},
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic]},
        ]),
        # history entries: a list's first two items; fewer is an IndexError (the row is deleted)
        "history": ({}, [
            {"query": "<image>Now?", "response": "Yes.", "history": [["Before?", "No.", "a third item"]],
             "images": [pic]},
            {"query": "<image>Now?", "response": "Yes.", "history": [["Only a question"]], "images": [pic]},
        ]),
        # a rejected_response column: a row with none (null), or the same as its answer, is deleted while loading
        "rejected": ({}, [
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "rejected_response": "B", "images": [pic]},
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic]},
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "rejected_response": "A", "images": [pic]},
        ]),
        # every row deleted: ms-swift's load raises (sampling an empty dataset) and the run stops
        "no row kept": ({"disable_auto_column_mapping": True}, [
            {"conversations": turn, "images": [pic]},
        ]),
        # a split holds one row out for evaluation and asserts a training row is left
        "split, one row kept": ({"split_dataset_ratio": 0.01}, [
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic]},
            {"messages": [{"role": "user", "content": "Q"}, {"role": "narrator", "content": "A"}]},
        ]),
        "split, two rows kept": ({"split_dataset_ratio": 0.01}, [
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic]},
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]},
        ]),
        # columns differing only in case: the last one is renamed for the whole file (QUERY), onto a column the
        # file has (query): two columns of one name, and the load raises
        "case": ({}, [
            {"Query": "<image>Upper?", "response": "A", "images": [pic]},
            {"query": "<image>Lower, and longer?", "response": "B", "images": [pic]},
            {"QUERY": "<image>Both", "query": "<image>of them, and longer", "response": "C", "images": [pic]},
        ]),
        # --columns matched without case: the last of q / Q is renamed
        "case, columns first": ({"columns": {"Q": "query"}}, [
            {"q": "<image>Upper?", "response": "A", "images": [pic]},
            {"Q": "<image>Lower, and longer?", "response": "B", "images": [pic]},
        ]),
        # a row with tools: llava1_5_hf has no agent template to write them, so encode raises and the row is
        # skipped; "[]" decodes to no tools, a null is none
        "tools": ({}, [
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic], "tools": json.dumps([{"type": "function", "function": {"name": "zoom"}}])},
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic], "tools": "[]"},
            {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic], "tools": None},
        ]),
        "no auto, renamed by --columns": ({"columns": {"conversations": "messages"},
                                          "disable_auto_column_mapping": True}, [
            {"conversations": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
             "images": [pic]},
        ]),
    }  # type: ignore[return-value]


def options(load: dict[str, Any]) -> list[str]:
    out = []
    if "columns" in load:
        out.append("--columns " + shlex.quote(json.dumps(load["columns"])))
    if load.get("disable_auto_column_mapping"):
        out.append("--disable_auto_column_mapping true")
    if "split_dataset_ratio" in load:
        out.append(f"--split_dataset_ratio {load['split_dataset_ratio']}")
    return out


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    folder = tmp_path_factory.mktemp("swift_columns")
    jobs: dict[str, Any] = {}
    for k, (name, (load, rows)) in enumerate(cases(folder).items()):
        data = folder / f"case{k}.jsonl"
        data.write_text("".join(json.dumps({"id": n, **r}) + "\n" for n, r in enumerate(rows)))
        jobs[name] = {"data": str(data), "load": load}
    checkpoint = llava_checkpoint()
    job = {"checkpoint": str(checkpoint), "cases": jobs, "image_id": IMAGE_ID}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"checkpoint": checkpoint, "cases": jobs, "results": json.loads(lines[-1][len("ORACLE"):])}


@pytest.mark.parametrize("name", ["renamed", "dialog", "bound twice", "no auto, image", "no auto, conversations",
                                  "no auto, renamed by --columns", "history", "rejected", "case, columns first",
                                  "tools"])
def test_columns_are_mapped_as_swift_maps_them(tmp_path: Path, oracle: dict[str, Any], name: str) -> None:
    case = oracle["cases"][name]
    ours = check_launch(tmp_path, {"checkpoint": oracle["checkpoint"], "data": case["data"]}, None, "raise",
                        *options(case["load"]))
    theirs = oracle["results"][name]
    assert len(ours) == len(theirs)
    for k, (record, row) in enumerate(zip(ours, theirs)):
        frame = record["framework"]
        if row["verdict"] in ("deleted", "error"):
            assert frame["verdict"] == "dropped", (k, record, row)
            continue
        assert row["verdict"] == "ok"
        kept = (frame["kept_tokens"], frame["kept_supervised"],
                sum(frame["kept_image_tokens"]) + frame.get("kept_literal_image_tokens", 0))
        assert kept == (row["tokens"], row["labels"], row["image_tokens"] if row["images"] else 0), (k, record, row)


@pytest.mark.parametrize(("name", "why"), [("no row kept", "keeps no row"), ("split, one row kept", "holds it out"),
                                           ("case", "which the file also has")])
def test_a_file_that_keeps_too_few_rows_stops_the_run(tmp_path: Path, oracle: dict[str, Any], name: str,
                                                      why: str) -> None:
    case = oracle["cases"][name]
    assert "raises" in oracle["results"][name]
    with pytest.raises(DatasetError, match=why):
        check_launch(tmp_path, {"checkpoint": oracle["checkpoint"], "data": case["data"]}, None, "raise",
                     *options(case["load"]))


def test_a_split_that_leaves_a_training_row_loads(tmp_path: Path, oracle: dict[str, Any]) -> None:
    case = oracle["cases"]["split, two rows kept"]
    assert isinstance(oracle["results"]["split, two rows kept"], list)  # loaded (one row held out for evaluation)
    ours = check_launch(tmp_path, {"checkpoint": oracle["checkpoint"], "data": case["data"]}, None, "raise",
                        *options(case["load"]))
    assert [r["framework"]["verdict"] for r in ours] == ["ok", "ok"]


def test_the_cases_reach_each_outcome(oracle: dict[str, Any]) -> None:
    results = oracle["results"]
    assert [r["verdict"] for r in results["dialog"]] == ["ok", "deleted"]
    assert [r["verdict"] for r in results["no auto, conversations"]] == ["deleted", "ok"]
    assert "raises" in results["no row kept"]
    assert [r["verdict"] for r in results["history"]] == ["ok", "deleted"]
    assert [r["verdict"] for r in results["rejected"]] == ["ok", "deleted", "deleted"]
    assert [r["verdict"] for r in results["tools"]] == ["error", "ok", "ok"]
    assert [r["images"] for r in results["no auto, image"]] == [0, 0]  # 'image' not renamed: no image
    assert [r["images"] for r in results["renamed"]] == [1, 1, 0]
