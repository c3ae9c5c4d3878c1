"""When an image that cannot be opened stops a LLaMA-Factory run: the Qwen-VL, LLaVA, InternVL and Pixtral plugins
open every image in ``process_messages`` (their text depends on it), so ``get_dataset`` raises and the run stops
before step 1 (verdict ``stops``); the Gemma 3 (without pan-and-scan), PaliGemma and Llama 3.2 Vision plugins write a
fixed text per image and never open it there, so ``get_dataset`` keeps the row and the collator's ``get_mm_inputs``
raises on it at the training step that reaches it (verdict ``crash``). Proved against LLaMA-Factory 0.9.5's own
``get_dataset`` and its collator's path (``_get_mm_inputs``, per row) in its environment. Found by differential
campaign 5 (vlmcheck said ``stops`` for Gemma 3).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from PIL import Image
from test_llamafactory_check import check_configs, run_oracle

# template -> (the checkpoint builder's module, whether get_dataset opens the images)
TEMPLATES: dict[str, tuple[str | None, bool]] = {
    "qwen2_vl": (None, True),
    "gemma3": ("gemma3_checkpoint", False),
    "paligemma": ("paligemma_checkpoint", False),
    "mllama": ("mllama_checkpoint", False),
}


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lf_late_images")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(data / "images" / "good.png")
    Image.new("RGB", (64, 48), (20, 90, 200)).save(data / "images" / "whole.png")
    whole = (data / "images" / "whole.png").read_bytes()
    (data / "images" / "cut.png").write_bytes(whole[: len(whole) // 2])  # cut short: Pillow raises on load
    rows = [{"conversations": [{"from": "human", "value": "<image>What is this?"}, {"from": "gpt", "value": "A."}],
             "images": [f"images/{name}"]} for name in ("good.png", "missing.png", "cut.png")]
    (data / "rows.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"rows": {
        "file_name": "rows.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}}))
    configs = {}
    for name, (module, _) in TEMPLATES.items():
        ckpt = qwen2_vl_checkpoint if module is None else getattr(importlib.import_module(module), module)()
        configs[name] = {"model_name_or_path": str(ckpt), "template": name, "dataset": "rows", "cutoff_len": 4096}
    paths = write_configs(root, data, configs)
    return {"oracle": run_oracle(llamafactory_python, paths, cwd=data), "mine": check_configs(paths, data)}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_an_unopenable_image_stops_the_run_where_get_dataset_opens_it_and_crashes_the_step_elsewhere(
        proof: dict[str, Any], name: str) -> None:
    oracle, mine = proof["oracle"][name], proof["mine"][name]
    opens = TEMPLATES[name][1]
    raised = [bool(r.get("error")) for r in oracle["rows"]]  # the collator's path on each row
    assert raised == [False, True, True], (name, oracle["rows"])
    verdicts = [r["framework"]["verdict"] for r in mine]
    if opens:  # get_dataset itself raises on the first bad row: the run stops before step 1
        assert "error" in oracle["get_dataset"], oracle["get_dataset"]
        assert verdicts[1:] == ["stops", "stops"], verdicts
    else:  # get_dataset keeps every row; the training step that batches a bad one raises
        assert oracle["get_dataset"].get("rows") == 3, oracle["get_dataset"]
        assert verdicts[1:] == ["crash", "crash"], verdicts
    assert verdicts[0] == "ok", verdicts
    assert [r["findings"][:1] for r in mine[1:]] == [["VC101"], ["VC103"]], [r["findings"] for r in mine]
