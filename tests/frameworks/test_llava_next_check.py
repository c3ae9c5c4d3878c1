"""`vlmcheck check` on LLaVA-NeXT launch scripts (LLaVA-VL/LLaVA-NeXT df17966's train.py, recognised by the flags only
it has): per row, what its own data path, collator and model splice keep — anyres tiles, unpad, image_newline, the
anyres_max downscale, the cut and the retry that replaces a failing row — against next_golden.jsonl, produced by
running LLaVA-NeXT's code (tests/assets/llava_golden/produce_next.py, README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # llama_vocab.py
sys.path.insert(0, str(Path(__file__).parents[1] / "assets" / "llava_golden"))  # produce_next.next_rows

from produce_next import next_rows  # noqa: E402

from llama_vocab import llama2_checkpoint  # noqa: E402
from vlmcheck import check  # noqa: E402
from vlmcheck.errors import UsageError  # noqa: E402
from vlmcheck.families import llava_next  # noqa: E402
from vlmcheck.frameworks import llava  # noqa: E402

ASSETS = Path(__file__).parents[1] / "assets" / "llava_golden"
ROWS, SIZES = next_rows(json.loads((ASSETS / "conversations.json").read_text(encoding="utf-8")))
SETUPS = {s["name"]: s for s in json.loads((ASSETS / "setups.json").read_text(encoding="utf-8"))}
NEXT = [json.loads(line) for line in (ASSETS / "next_golden.jsonl").read_text(encoding="utf-8").splitlines()]

# the shape of LLaVA-NeXT's scripts/train/finetune_*.sh, with a vicuna model (LLaVA-NeXT loads it use_fast=False)
SCRIPT = """#!/bin/bash
ACCELERATE_CPU_AFFINITY=1 torchrun --nproc_per_node=8 \\
    llava/train/train_mem.py \\
    --deepspeed scripts/zero3.json \\
    --model_name_or_path {model} \\
    --version {version} \\
    --data_path=./data/rows.json \\
    --image_folder ./data/images \\
    --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" \\
    --vision_tower openai/clip-vit-large-patch14-336 \\
    --mm_projector_type mlp2x_gelu \\
    --mm_vision_select_layer -2 \\
    --mm_use_im_start_end False \\
    --mm_use_im_patch_token False \\
    --image_aspect_ratio {aspect} {pinpoints}\\
    --mm_patch_merge_type {merge} \\
    --bf16 True \\
    --model_max_length {length} \\
    --lazy_preprocess True
"""


def _project(root: Path, case: dict[str, Any]) -> Path:
    from PIL import Image

    build = dict(SETUPS[case["setup"]]["build"])
    build["added"] = tuple(build.get("added", ()))
    model = llama2_checkpoint(root / "checkpoints" / "vicuna-7b", **build)
    images = root / "data" / "images"
    images.mkdir(parents=True)
    (root / "data" / "rows.json").write_text(json.dumps(ROWS), encoding="utf-8")
    for name, size in SIZES.items():
        Image.new("RGB", size, "white").save(images / name)
    pins = case["image_grid_pinpoints"]
    script = root / "scripts" / "train" / "finetune.sh"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT.format(model=model, version=case["version"], aspect=case["image_aspect_ratio"],
                                    pinpoints=f'--image_grid_pinpoints "{pins}" ' if pins else "",
                                    merge=case["mm_patch_merge_type"], length=case["model_max_length"]),
                      encoding="utf-8")
    return script


@pytest.mark.parametrize("case", NEXT, ids=lambda c: f"{c['version']}-{c['image_aspect_ratio']}-"
                                                     f"{c['mm_patch_merge_type']}-{c['model_max_length']}")
def test_every_row_is_kept_as_llava_next_keeps_it(tmp_path: Path, case: dict[str, Any]) -> None:
    """Kept tokens, kept image features (newlines included) and kept labels per row, as LLaVA-NeXT's own
    __getitem__, collator and prepare_inputs_labels_for_multimodal left them; a row it gave up on is `replaced`."""
    out = tmp_path / "records.jsonl"
    check(_project(tmp_path, case), output=out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    wrong = []
    for row, record, want in zip(ROWS, records, case["cases"]):
        frame = record["framework"]
        if want is None or want[3] != row["id"]:
            got: object = frame["verdict"]
            expect: object = "replaced"
        else:
            got = [frame.get("kept_tokens"), sum(frame.get("kept_image_tokens") or [0]), frame.get("kept_supervised")]
            if frame["verdict"] == "masked":  # the mismatch masks every label before the cut
                got[2] = 0
            expect = want[:3]
            if record["tokens"] <= case["model_max_length"] and got == expect:  # nothing cut: the same total
                got = got if record["tokens"] == want[0] else ("total", record["tokens"])
        if got != expect:
            wrong.append((row["id"], got, expect))
    assert not wrong, f"{len(wrong)} rows differ from LLaVA-NeXT's, first: {wrong[:5]}"


def test_unpad_truncates_where_transformers_rounds() -> None:
    """LLaVA-NeXT's unpad_image truncates the scaled side (int()), transformers' LlavaNextProcessor rounds it to 7
    digits first: 32 sizes under 1100 x 1100 on the 336 px pinpoints get another grid. next_golden.jsonl's 352 x 748
    is one (its rows pass above with LLaVA-NeXT's rule, and would not with transformers')."""
    pins = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    for (w, h) in [(352, 748), (55, 88), (176, 55), (205, 328)]:
        best_h, best_w = llava_next.select_best_resolution(h, w, pins)
        ours = llava_next.unpadded_grid(h, w, best_h // 14, best_w // 14, rounded=False)
        assert ours != llava_next.unpadded_grid(h, w, best_h // 14, best_w // 14), (w, h)


def test_the_fork_is_read_from_its_own_flags(tmp_path: Path) -> None:
    case = dict(NEXT[0], model_max_length=4096)
    script = _project(tmp_path, case)
    launch = llava.launch_settings(script)
    assert launch.fork == llava.LLAVA_NEXT and launch.mm_patch_merge_type == "spatial_unpad"
    text = script.read_text(encoding="utf-8").replace("--model_max_length 4096 \\\n", "")
    script.write_text(text, encoding="utf-8")
    assert llava.launch_settings(script).model_max_length == 4096  # LLaVA-NeXT's default, not c121f04's 512
    plain = text.replace('--mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" \\\n', "")
    plain = plain.replace(f'--image_grid_pinpoints "{case["image_grid_pinpoints"]}" ', "")
    script.write_text(plain, encoding="utf-8")
    assert llava.launch_settings(script).fork == llava.LLAVA  # c121f04's parser takes every flag left


@pytest.mark.parametrize(("edit", "message"), [
    (("--version v1", "--version qwen_1_5"), "qwen_1_5"),
    (('--image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" ', ""),
     "without --image_grid_pinpoints"),
    (("--mm_patch_merge_type spatial_unpad", "--mm_patch_merge_type unires"), "Unexpected mm_patch_merge_type"),
    (("checkpoints/vicuna-7b", "checkpoints/base-7b"), "UnboundLocalError"),
])
def test_what_stops_every_image_row_is_a_usage_error(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    script = _project(tmp_path, NEXT[0])
    text = script.read_text(encoding="utf-8")
    assert edit[0] in text
    script.write_text(text.replace(*edit), encoding="utf-8")
    if "base-7b" in edit[1]:
        (tmp_path / "checkpoints" / "vicuna-7b").rename(tmp_path / "checkpoints" / "base-7b")
    with pytest.raises(UsageError, match=message):
        check(script)
