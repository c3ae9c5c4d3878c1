"""What LLaMA-Factory 0.9.5's converters read of a row, the rows they skip included, proved per sample against
LLaMA-Factory in its environment (the project's oracle runner, then get_dataset). Found by differential campaign 6.

- A column dataset_info names for media or tools (and, for alpaca, the system column) is read for every row: when
  the dataset lacks it, a row the converter skips (a bad role order, an odd turn count, no answer) raises KeyError
  too, and the run stops. vlmcheck called such rows dropped.
- ``datasets`` types the turns of a column as one struct: a turn without a key other turns have reads None (the
  role check then skips the row, and the run goes on); a key no turn has raises KeyError. vlmcheck stopped on the
  first.
- alpaca's ``history`` is unpacked ``for old_prompt, old_response in history``: any two items, a two-letter text or
  an object's two keys, become a turn pair; three items raise. vlmcheck stopped on the first.
- Under ``stage: sft`` a row whose ``kto_tag`` is a boolean becomes a KTO example (its answer and an empty one),
  which the supervised processor drops. vlmcheck judged it as an sft row.
- FFmpeg demuxes an animated GIF or a PNG given as a video (PyAV opens it): LLaMA-Factory keeps the row. vlmcheck
  does not count such a video: VC114, not a stop (it said VC112, the run stops).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from PIL import Image
from test_llamafactory_check import check_configs, mismatches, run_oracle

pytestmark = pytest.mark.slow


def _sg(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


GOOD = _sg(("human", "What is it?"), ("gpt", "A red square."))
BAD_ORDER = _sg(("gpt", "An answer first."), ("human", "Then a question?"))
ODD = _sg(("human", "A question alone?"))
SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
OPENAI = {"formatting": "openai", "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                         "assistant_tag": "assistant", "system_tag": "system"}}
OA_GOOD = {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A square."}]}
OA_BAD_ORDER = {"messages": [{"role": "assistant", "content": "First."}, {"role": "user", "content": "Then?"}]}
HISTORY = {"columns": {"prompt": "instruction", "response": "output", "history": "history"}}


def _history(entry: Any) -> dict[str, Any]:
    return {"instruction": "Now?", "output": "Yes.", "history": [entry]}


# dataset: (rows, dataset_info entry)
DATASETS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    # no row has the images / tools column dataset_info names: every row raises, the skipped ones too
    "images_missing": ([GOOD, BAD_ORDER, ODD], {**SHAREGPT, "columns": {"messages": "conversations",
                                                                        "images": "pics"}}),
    "tools_missing_skipped_only": ([BAD_ORDER, ODD], {**SHAREGPT, "columns": {"messages": "conversations",
                                                                              "tools": "fns"}}),
    "alpaca_system_missing": ([{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "No answer."}],
                              {"columns": {"prompt": "instruction", "response": "output", "system": "sys"}}),
    # a turn without `value` or `from`, where others have them: None (skipped by the role check, or read)
    "turn_keys_filled": ([GOOD, {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human"}]},
                          {"conversations": [{"value": "no role"}, {"from": "gpt", "value": "a"}]},
                          {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}], SHAREGPT),
    # the turns' keys are role / content, dataset_info's tags the defaults: no turn has `from`
    "turn_key_absent": ([{"conversations": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}]}], SHAREGPT),
    # one file per kind of entry: datasets types a column once
    "history_texts": ([_history("ab"), _history("abc")], HISTORY),
    "history_object": ([_history({"user": "u", "assistant": "v"})], HISTORY),
    "history_lists": ([_history(["Before?", "Yes."]), _history(["only one"])], HISTORY),
    # the openai converter reads its tools with .get (a missing column is no tools), its media columns as above
    "openai_tools_missing": ([OA_GOOD, OA_BAD_ORDER], {**OPENAI, "columns": {"messages": "messages", "tools": "fns"}}),
    "openai_images_missing": ([OA_GOOD, OA_BAD_ORDER], {**OPENAI, "columns": {"messages": "messages",
                                                                              "images": "pics"}}),
    # under sft, a boolean kto_tag makes a KTO example (two answers) the supervised processor drops; null: kept
    "kto_tagged_sft": ([{**GOOD, "label": True}, {**GOOD, "label": False}, {**GOOD, "label": None}],
                       {**SHAREGPT, "columns": {"messages": "conversations", "kto_tag": "label"}}),
    "image_files_as_videos": ([{**_sg(("human", "<video>What moves?"), ("gpt", "A square.")),
                                "videos": ["media/moving.gif"]},
                               {**_sg(("human", "<video>And this?"), ("gpt", "Nothing.")),
                                "videos": ["media/still.png"]}],
                              {**SHAREGPT, "columns": {"messages": "conversations", "videos": "videos"}}),
}


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_converter_reads")
    data = root / "data"
    (data / "media").mkdir(parents=True)
    frames = [Image.new("RGB", (96, 64), (40 * k, 90, 200 - 40 * k)) for k in range(4)]
    frames[0].save(data / "media" / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(data / "media" / "still.png")
    info = {}
    for name, (rows, entry) in DATASETS.items():
        (data / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {"file_name": f"{name}.json", **entry}
    (data / "dataset_info.json").write_text(json.dumps(info))
    configs = {name: {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "dataset": name,
                      "cutoff_len": 4096} for name in DATASETS}
    paths = write_configs(root, data, configs)
    return {"oracle": run_oracle(llamafactory_python, paths, cwd=data), "mine": check_configs(paths, data)}


def _video_rows(name: str, row: dict[str, Any], record: dict[str, Any]) -> bool:
    return name == "image_files_as_videos"


def test_each_row_is_judged_as_the_converter_reads_it(proof: dict[str, Any]) -> None:
    found, compared = mismatches(proof, skip=_video_rows)
    assert not found, found
    assert compared == sum(len(rows) for name, (rows, _) in DATASETS.items() if name != "image_files_as_videos")


def test_the_cases_are_what_they_say(proof: dict[str, Any]) -> None:
    rows = {name: proof["oracle"][name]["rows"] for name in DATASETS}
    assert all("KeyError" in (r["error"] or "") for r in rows["images_missing"] + rows["tools_missing_skipped_only"])
    assert all("KeyError" in (r["error"] or "") for r in rows["alpaca_system_missing"] + rows["turn_key_absent"])
    assert [r["kept"] for r in rows["turn_keys_filled"]] == [True, False, False, False]
    assert not any(r["error"] for r in rows["turn_keys_filled"][:3])  # the last: a None answer raises when read
    assert [r["kept"] for r in rows["kto_tagged_sft"]] == [False, False, True]
    assert [(r["kept"], r["error"]) for r in rows["openai_tools_missing"]] == [(True, None), (False, None)]
    assert all("KeyError" in (r["error"] or "") for r in rows["openai_images_missing"])
    history = rows["history_texts"] + rows["history_object"] + rows["history_lists"]
    assert [bool(r["error"]) for r in history] == [False, True, False, False, True]
    assert all(r["kept"] for r in history if not r["error"])


def test_an_image_file_given_as_a_video_is_not_counted_not_stopped(proof: dict[str, Any]) -> None:
    theirs = proof["oracle"]["image_files_as_videos"]["rows"]
    assert all(r["kept"] and not r["error"] for r in theirs), theirs  # PyAV opens both
    mine = proof["mine"]["image_files_as_videos"]
    assert [(r["findings"], r["framework"]["verdict"]) for r in mine] == [(["VC114"], "unknown")] * 2, mine
