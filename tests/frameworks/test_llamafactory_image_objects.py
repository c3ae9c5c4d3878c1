"""An image object (``{"bytes": ..., "path": ...}``) whose ``bytes`` field is not bytes: a JSON dataset can only hold
them as base64 text or a list of numbers, and LLaMA-Factory's ``_regularize_images`` passes the field to
``BytesIO``, which raises TypeError: ``get_dataset`` stops the run. vlmcheck says VC102 with verdict ``stops``
(it used to read the row as unreadable, VC001 ``unknown``). Proved against LLaMA-Factory 0.9.5 in its environment.
Found by differential campaign 5.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from PIL import Image
from test_llamafactory_check import check_configs, run_oracle

ROW = {"conversations": [{"from": "human", "value": "<image>What is this?"}, {"from": "gpt", "value": "A."}]}


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_image_objects")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(data / "images" / "good.png")
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 90, 200)).save(out, format="PNG")
    png = out.getvalue()
    datasets = {  # one file each: a column cannot mix text and lists
        "text": [{"bytes": None, "path": "images/good.png"}, {"bytes": base64.b64encode(png).decode(), "path": None}],
        "numbers": [{"bytes": None, "path": "images/good.png"}, {"bytes": list(png), "path": None}],
    }
    info = {}
    for name, images in datasets.items():
        (data / f"{name}.json").write_text(json.dumps([{**ROW, "images": [image]} for image in images]))
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                      "columns": {"messages": "conversations", "images": "images"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    configs = {name: {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "dataset": name,
                      "cutoff_len": 4096} for name in datasets}
    paths = write_configs(root, data, configs)
    return {"oracle": run_oracle(llamafactory_python, paths, cwd=data), "mine": check_configs(paths, data)}


@pytest.mark.parametrize("name", ["text", "numbers"])
def test_bytes_that_are_not_bytes_stop_the_run(proof: dict[str, Any], name: str) -> None:
    oracle, mine = proof["oracle"][name], proof["mine"][name]
    assert [r["error"] for r in oracle["rows"]][0] is None, oracle["rows"]
    assert "TypeError" in oracle["rows"][1]["error"], oracle["rows"]
    assert "TypeError" in oracle["get_dataset"].get("error", ""), oracle["get_dataset"]
    assert [r["framework"]["verdict"] for r in mine] == ["ok", "stops"], mine
    assert mine[1]["findings"] == ["VC102"], mine[1]
