"""`vlmcheck check train.sh` on LLaVA's own launch scripts: the per-sample totals and labels against LLaVA's own
preprocess (tests/assets/llava_golden, produced by running haotian-liu/LLaVA's train.py unmodified), the image
features per LLaVA's CLIP vision tower, and what happens at the cut (see docs/frameworks/llava.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # llama_vocab.py

from llama_vocab import llama2_checkpoint  # noqa: E402
from vlmcheck import check  # noqa: E402
from vlmcheck.errors import UsageError  # noqa: E402
from vlmcheck.frameworks import detect, llava  # noqa: E402

ASSETS = Path(__file__).parents[1] / "assets" / "llava_golden"
ROWS: list[dict[str, Any]] = json.loads((ASSETS / "conversations.json").read_text(encoding="utf-8"))
SETUPS = {s["name"]: s for s in json.loads((ASSETS / "setups.json").read_text(encoding="utf-8"))}
GOLDEN = {(g["setup"], g["version"]): g["cases"]
          for g in map(json.loads, (ASSETS / "golden.jsonl").read_text(encoding="utf-8").splitlines())}

# scripts/v1_5/finetune_task_lora.sh of haotian-liu/LLaVA (c121f04), paths and the model as a user changes them
FINETUNE = """#!/bin/bash

deepspeed llava/train/train_mem.py \\
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \\
    --deepspeed ./scripts/zero3.json \\
    --model_name_or_path {model} \\
    --version {version} \\
    --data_path ./playground/data/mix.json \\
    --image_folder ./playground/data \\
    --vision_tower openai/clip-vit-large-patch14-336 \\
    --mm_projector_type mlp2x_gelu \\
    --mm_vision_select_layer -2 \\
    --mm_use_im_start_end False \\
    --mm_use_im_patch_token False \\
    --image_aspect_ratio pad \\
    --group_by_modality_length True \\
    --bf16 True \\
    --output_dir ./checkpoints/llava-v1.5-13b-task-lora \\
    --num_train_epochs 1 \\
    --per_device_train_batch_size 16 \\
    --model_max_length {length} \\
    --gradient_checkpointing True \\
    --lazy_preprocess True \\
    --report_to wandb
"""


def _project(root: Path, setup: str, version: str, length: int | None = None) -> Path:
    """A LLaVA checkout as a user runs it: the script in scripts/v1_5/, data under playground/data."""
    from PIL import Image

    build = dict(SETUPS[setup]["build"])
    build["added"] = tuple(build.get("added", ()))
    model = llama2_checkpoint(root / "checkpoints" / "vicuna", **build)
    data = root / "playground" / "data"
    data.mkdir(parents=True)
    (data / "mix.json").write_text(json.dumps(ROWS), encoding="utf-8")
    for row in ROWS:
        if isinstance(row.get("image"), str) and not (data / row["image"]).exists():
            Image.new("RGB", (640, 480), "white").save(data / row["image"])
    script = root / "scripts" / "v1_5" / "finetune.sh"
    script.parent.mkdir(parents=True)
    script.write_text(FINETUNE.format(model=model, version=version,
                                      length=length or SETUPS[setup]["model_max_length"]), encoding="utf-8")
    return script


@pytest.mark.parametrize(("setup", "version"), [("v15_legacy_false", "v1"), ("legacy_true", "v1"),
                                                 ("v15_legacy_false", "plain"), ("yi34b_style", "chatml_direct"),
                                                 ("no_bos_short", "llava_llama_2")])
def test_totals_and_labels_are_llavas(tmp_path: Path, setup: str, version: str) -> None:
    """Each row's ids and labels as LLaVA's preprocess made them (the golden), plus 575 for the image: its
    <image> id becomes clip-vit-large-patch14-336's 576 features."""
    script = _project(tmp_path, setup, version)
    out = tmp_path / "records.jsonl"
    report = check(script, output=out)
    assert report.summary["framework"]["name"] == "llava"
    assert report.summary["framework"]["features_per_image"] == 576
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(ROWS)
    length = SETUPS[setup]["model_max_length"]
    model = tmp_path / "checkpoints" / "vicuna"
    tok = llava.load_tokenizer(model, version=version, model_max_length=length, model_name_or_path=str(model))
    checked = 0
    for row, record, want in zip(ROWS, records, GOLDEN[(setup, version)]):
        frame = record["framework"]
        if isinstance(want, dict):  # LLaVA raises on this row
            assert frame["verdict"] == "stops" and "VC001" in record["findings"], (row["id"], record)
            continue
        n_ids, supervised, mismatch = want[0], want[1], want[2]
        image = "image" in row
        # the <image> ids (-200) among LLaVA's ids: simulate's ids equal LLaVA's (their SHA-1 is the golden's,
        # tests/test_template_llava_golden.py), so their count is LLaVA's
        ids = llava.simulate(row, tokenizer=tok, version=version).input_ids
        holes = ids.count(llava.IMAGE_TOKEN_INDEX)
        # a pad string in the text: the collator's attention mask drops its id from what the model sees
        # (test_the_cut_is_llavas_own proves it against LLaVA's code)
        n_ids -= ids.count(tok.pad_id)
        supervised -= sum(1 for t, s in zip(ids, llava.simulate(row, tokenizer=tok, version=version).supervised)
                          if s and t == tok.pad_id)
        if image and ids[:length].count(llava.IMAGE_TOKEN_INDEX) > 1:  # more <image> ids than images
            assert frame["verdict"] == "stops" and "VC002" in record["findings"], row["id"]
            continue
        if image:
            assert record["tokens"] == n_ids - holes + 576 * holes and record["image_tokens"] == [576], row["id"]
            if not holes:  # no <image> id: the model skips the row's image
                assert "VC002" in record["findings"] and frame["verdict"] in ("image_dropped", "masked"), row["id"]
            kept_ids = min(n_ids, length)
        elif holes:  # preprocess_plain writes <image> into a text row: the model splices the blank image in
            assert record["tokens"] == n_ids - holes + 576 * holes, row["id"]
            kept_ids = min(n_ids, length)
        else:
            assert frame["kept_tokens"] == n_ids, row["id"]  # preprocess's own truncation at model_max_length
            kept_ids = n_ids
        if mismatch:
            assert "VC003" in record["findings"] and frame["verdict"] in ("masked", "image_cut", "image_dropped")
        elif record["tokens"] <= length:
            assert record["supervised_tokens"] == supervised == frame["kept_supervised"], row["id"]
            assert not {"VC201", "VC202", "VC203"} & set(record["findings"]), row["id"]
        else:
            assert {"VC201", "VC202", "VC203"} & set(record["findings"]), row["id"]
            assert frame["kept_tokens"] == length or kept_ids < n_ids
        checked += 1
    assert checked > 10


def test_the_image_id_past_the_collators_slice_drops_the_image(tmp_path: Path) -> None:
    """A long first question puts <image> (moved to the front of its turn) past model_max_length only when the
    system prompt and the turn before it are longer than the limit; with a short limit the splice cuts the
    features instead, and LLaVA raises nothing either way."""
    script = _project(tmp_path, "v15_legacy_false", "v1", length=64)
    out = tmp_path / "records.jsonl"
    check(script, output=out)
    records = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    cut = [r for r in records.values() if "VC201" in r["findings"]]
    assert cut and all(r["framework"]["verdict"] in ("image_cut", "image_dropped") for r in cut)
    # the v1 system prompt is 35 ids, "USER: " then <image>: 64 - p features survive, p the image's position
    first = records["img1"]
    assert first["framework"]["kept_image_tokens"][0] < 576 and first["framework"]["kept_tokens"] == 64


def test_launch_script_is_read_with_llavas_defaults_and_claimed_by_llava_only(tmp_path: Path) -> None:
    script = tmp_path / "pretrain.sh"
    script.write_text("#!/bin/bash\ndeepspeed llava/train/train_mem.py --model_name_or_path m --data_path d.json "
                      "--vision_tower openai/clip-vit-large-patch14\n", encoding="utf-8")
    raw = llava.read_launch(script.read_text(), path=script)
    assert raw is not None and detect(raw, path=script) is llava
    config = llava.read_config(raw, path=script)
    assert (config.version, config.launch.model_max_length, config.launch.image_aspect_ratio) == ("v0", 512, "square")
    # the 224 px tower: (224 / 14)**2 features
    assert llava.tower_settings("openai/clip-vit-large-patch14").crop_height == 224
    # another framework's train.py without LLaVA's --data_path is not LLaVA's
    assert llava.read_launch("python src/train.py --stage sft --dataset x\n", path=script) is None
    with pytest.raises(UsageError, match="model_name_or_path"):
        llava.read_config({"__launch__": "llava", "data_path": "d.json"}, path=script)


def test_fix_is_written_in_llavas_flag_syntax(tmp_path: Path) -> None:
    script = _project(tmp_path, "v15_legacy_false", "v1", length=64)
    report = check(script)
    fixes = {f.fix for f in report.findings if f.code in ("VC201", "VC203")}
    assert fixes and all(fix.startswith("set --model_max_length ") for fix in fixes)
    assert "--version v1 (conv_vicuna_v1, preprocess_v1)" in report.render()


CUT = [json.loads(line) for line in (ASSETS / "cut_golden.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", CUT, ids=lambda c: f"{c['setup']}-{c['version']}-{c['image_aspect_ratio']}-"
                                                    f"{c['model_max_length']}")
def test_the_cut_is_llavas_own(tmp_path: Path, case: dict[str, Any]) -> None:
    """What survives model_max_length, per row, against LLaVA's own collator and prepare_inputs_labels_for_multimodal
    with a real CLIPVisionTower (cut_golden.jsonl, produce_cut.py): kept tokens, kept image features, kept labels;
    and a stop where LLaVA raises."""
    from PIL import Image

    script = _project(tmp_path, case["setup"], case["version"], length=case["model_max_length"])
    text = script.read_text(encoding="utf-8").replace("--image_aspect_ratio pad",
                                                      f"--image_aspect_ratio {case['image_aspect_ratio']}")
    script.write_text(text, encoding="utf-8")
    data = tmp_path / "playground" / "data"
    for k, row in enumerate(ROWS):  # the image sizes LLaVA's run had (pad and square must not change the count)
        if isinstance(row.get("image"), str):
            Image.new("RGB", tuple(case["sizes"][k % len(case["sizes"])]), "white").save(data / row["image"])
    out = tmp_path / "records.jsonl"
    check(script, output=out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    wrong = []
    for row, record, want in zip(ROWS, records, case["cases"]):
        frame = record["framework"]
        if want is None:
            got: object = None if frame["verdict"] == "stops" else frame["verdict"]
        else:
            got = [frame.get("kept_tokens"), sum(frame.get("kept_image_tokens") or [0]), frame.get("kept_supervised")]
            if frame["verdict"] == "masked":  # LLaVA's mismatch masks every label before the cut
                got[2] = 0
        if got != want:
            wrong.append((row["id"], got, want))
    assert not wrong, f"{len(wrong)} rows differ from LLaVA's cut, first: {wrong[:5]}"
