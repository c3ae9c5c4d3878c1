"""The proof on a real trainer: TRL ``SFTTrainer`` with a tiny random-weight Qwen2-VL on CPU crashes on
a poisoned dataset and completes on ``vlmcheck repair``'s output of it.

The dataset is a ``save_to_disk`` folder in TRL's ``messages`` format with embedded images; one
sample's image (224x224: 64 placeholders after a ~20-token prefix) does not fit under
max_length=64. Repair resizes that image inside the row (cap-pixels) and writes a folder
``datasets.load_from_disk`` reads. Both ways TRL feeds a VLM are run: conversational ``messages``
(the processor truncates, and refuses the cut image span) and the prompt-completion view of the same
rows (TRL slices input_ids at max_length and keeps the pixels: the model raises).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vlmcheck
from realparts import qwen_processor, tiny_qwen2_vl_model
from vlmcheck.repairing import manifest_path

pytestmark = pytest.mark.slow

MAX_LENGTH = 64
SMALL, BIG = 56, 224  # 4 and 64 image tokens


def row(i: int, size: int, answer: str) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buf, format="PNG")
    return {
        "id": f"s{i}",
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What is shown?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [{"bytes": buf.getvalue(), "path": f"s{i}.png"}],
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> tuple[Path, Path]:
    import datasets

    root = tmp_path_factory.mktemp("trl")
    rows = [row(0, SMALL, "A red square."), row(1, BIG, "A big red square."), row(2, SMALL, "Red."),
            row(3, SMALL, "A square.")]
    poisoned, repaired = root / "poisoned", root / "repaired"
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    ds.save_to_disk(str(poisoned))
    report = vlmcheck.repair(poisoned, model=qwen2_vl_checkpoint, max_length=MAX_LENGTH, output=repaired)
    assert report.counts == {"kept": 3, "changed": 1, "split": 0, "held": 0, "dropped": 0}
    record = [json.loads(line) for line in manifest_path(repaired).read_text().splitlines()][1]
    assert record["codes"] == ["VC201", "VC202"] and record["change"]["strategy"] == "cap-pixels"
    return poisoned, repaired


def train(folder: Path, tmp_path: Path, *, prompt_completion: bool) -> Any:
    import datasets
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.load_from_disk(str(folder), keep_in_memory=True)
    if prompt_completion:
        dataset = dataset.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                              remove_columns=["messages"], keep_in_memory=True)
    args = SFTConfig(
        output_dir=str(tmp_path), max_length=MAX_LENGTH, per_device_train_batch_size=2,
        max_steps=2,  # the whole dataset: the big sample is in one of the batches
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
    )
    model = copy.deepcopy(tiny_qwen2_vl_model())  # trainers change weights; the cached one stays clean
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=qwen_processor("qwen2_vl"))
    return trainer.train()


def test_messages_crash_on_the_poisoned_dataset_and_train_on_the_repaired(folders, tmp_path):
    poisoned, repaired = folders
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count between text and `input_ids`\. "
                                         r"Got ids=\[4, 49\] and text=\[4, 64\]"):
        train(poisoned, tmp_path, prompt_completion=False)
    assert train(repaired, tmp_path, prompt_completion=False).global_step == 2


def test_prompt_completion_crash_on_the_poisoned_dataset_and_train_on_the_repaired(folders, tmp_path):
    poisoned, repaired = folders
    with pytest.raises(ValueError) as info:
        train(poisoned, tmp_path, prompt_completion=True)
    # TRL re-raises the model's error with its own advice; the model's is the cause.
    assert "Image features and image tokens do not match, tokens: 53, features: 68" in str(info.value.__cause__)
    assert train(repaired, tmp_path, prompt_completion=True).global_step == 2
