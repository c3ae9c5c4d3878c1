"""`vlmcheck check` on LLaVA-NeXT / LLaVA-OneVision launches with ``--version qwen_1_5`` / ``qwen_2`` / ``qwen_2_5``
(its ``preprocess_qwen``, the fast Qwen2 tokenizer it loads for a qwen name) and SigLIP or CLIP towers, against
qwen_golden.jsonl: what LLaVA-NeXT df17966's own ``__getitem__``, collator and ``prepare_inputs_labels_for_multimodal``
did with each row (tests/assets/llava_golden/produce_qwen.py, README.md)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # qwen_llm_checkpoint.py
sys.path.insert(0, str(Path(__file__).parents[1] / "assets" / "llava_golden"))  # produce_next.next_rows

from produce_next import next_rows  # noqa: E402
from produce_qwen import multi_rows  # noqa: E402

from qwen_llm_checkpoint import qwen_llm_tokenizer  # noqa: E402
from vlmcheck import check  # noqa: E402
from vlmcheck.errors import UsageError  # noqa: E402
from vlmcheck.frameworks import llava  # noqa: E402

ASSETS = Path(__file__).parents[1] / "assets" / "llava_golden"
ROWS, SIZES = next_rows(json.loads((ASSETS / "conversations.json").read_text(encoding="utf-8")))
MULTI, MULTI_SIZES = multi_rows()
GOLDEN = ASSETS / "qwen_golden.jsonl"
QWEN = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()] if GOLDEN.is_file() else []
# what modality_lengths (the sampler of --group_by_modality_length, in every script here) raises on, per row
MODALITY = json.loads((ASSETS / "modality_golden.json").read_text(encoding="utf-8"))
TOWERS = {"clip-336": "openai/clip-vit-large-patch14-336", "siglip-384": "google/siglip-so400m-patch14-384"}

# the shape of LLaVA-NeXT's scripts/train/finetune_ov.sh (LLaVA-OneVision)
SCRIPT = """#!/bin/bash
LLM_VERSION="{model}"
VISION_MODEL_VERSION="{tower}"
PROMPT_VERSION="{version}"
ACCELERATE_CPU_AFFINITY=1 torchrun --nproc_per_node="${{NUM_GPUS:-8}}" \\
    llava/train/train_mem.py \\
    --deepspeed scripts/zero3.json \\
    --model_name_or_path ${{LLM_VERSION}} \\
    --version ${{PROMPT_VERSION}} \\
    --data_path ./data/rows.json \\
    --image_folder ./data/images \\
    --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" \\
    --mm_vision_tower_lr=2e-6 \\
    --vision_tower ${{VISION_MODEL_VERSION}} \\
    --mm_projector_type mlp2x_gelu \\
    --mm_vision_select_layer -2 \\
    --mm_use_im_start_end False \\
    --mm_use_im_patch_token False \\
    --group_by_modality_length True \\
    --image_aspect_ratio {aspect} {pinpoints}\\
    --mm_patch_merge_type {merge} \\
    --bf16 True \\
    --model_max_length {length} \\
    --lazy_preprocess True
"""


def _project(root: Path, case: dict[str, Any]) -> Path:
    import shutil

    from PIL import Image

    model = root / "checkpoints" / case["setup"]  # the name holds "qwen": LLaVA-NeXT's fast-tokenizer branch
    shutil.copytree(qwen_llm_tokenizer(qwen25="2.5" in case["setup"]), model)
    images = root / "data" / "images"
    images.mkdir(parents=True)
    rows, sizes = (MULTI, MULTI_SIZES) if case.get("rows") == "multi" else (ROWS, SIZES)
    (root / "data" / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    for name, size in sizes.items():
        Image.new("RGB", size, "white").save(images / name)
    pins = case["image_grid_pinpoints"]
    script = root / "scripts" / "train" / "finetune_ov.sh"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT.format(model=model, tower=TOWERS[case["vision_tower"]], version=case["version"],
                                    aspect=case["image_aspect_ratio"],
                                    pinpoints=f'--image_grid_pinpoints "{pins}" ' if pins else "",
                                    merge=case["mm_patch_merge_type"], length=case["model_max_length"]),
                      encoding="utf-8")
    return script


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("case", QWEN, ids=lambda c: f"{c.get('rows', 'rows')}-{c['setup']}-{c['version']}-"
                                                     f"{c['vision_tower']}-{c['image_aspect_ratio']}-"
                                                     f"{c['model_max_length']}")
def test_every_row_is_kept_as_llava_next_keeps_it(tmp_path: Path, case: dict[str, Any]) -> None:
    """Kept tokens, kept image features (newlines included) and kept labels per row, as LLaVA-NeXT's own
    __getitem__, collator and prepare_inputs_labels_for_multimodal left them; a row it gave up on is `replaced`,
    and where it raises on every row, every row is. Multi-image rows: a training step that raises (the splice runs
    past the images, or has none to concatenate) is `stops`."""
    out = tmp_path / "records.jsonl"
    check(_project(tmp_path, case), output=out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rows = MULTI if case.get("rows") == "multi" else ROWS
    assert len(records) == len(rows) == len(case["cases"])
    wrong = []
    modality = MODALITY[case.get("rows", "rows")]
    for row, record, want, sampler in zip(rows, records, case["cases"], modality):
        frame = record["framework"]
        if sampler is not None:  # the sampler raises before step 1 (--group_by_modality_length True)
            got, expect = frame["verdict"], "stops"
        elif isinstance(want, str):  # "raises: ...": the training step with this sample raises
            got: object = frame["verdict"]
            expect: object = "stops"
        elif want is None or want[3] != row["id"]:
            got, expect = frame["verdict"], "replaced"
        else:
            got = [frame.get("kept_tokens"), sum(frame.get("kept_image_tokens") or [0]), frame.get("kept_supervised")]
            expect = want[:3]
            if record["tokens"] <= case["model_max_length"] and got == expect:  # nothing cut: the same total
                got = got if record["tokens"] == want[0] else ("total", record["tokens"])
        if got != expect:
            wrong.append((row["id"], got, expect))
    assert not wrong, f"{len(wrong)} rows differ from LLaVA-NeXT's, first: {wrong[:5]}"


@pytest.mark.parametrize("case", [c for c in QWEN if any(c["cases"]) and "rows" not in c][:2]
                         + [c for c in QWEN if c.get("rows") == "multi"][:1],
                         ids=lambda c: f"{c.get('rows', 'rows')}-{c['setup']}-{c['version']}")
def test_ids_and_labels_are_preprocess_qwens(case: dict[str, Any]) -> None:
    """The ids preprocess_qwen returns (the image as one -200) and which of them carry labels, by hash."""
    folder = qwen_llm_tokenizer(qwen25="2.5" in case["setup"])
    tok = llava.load_tokenizer(folder, version=case["version"], model_max_length=case["model_max_length"],
                               model_name_or_path=str(folder), fork=llava.LLAVA_NEXT, use_fast=True)
    compared = 0
    rows = MULTI if case.get("rows") == "multi" else ROWS
    for row, want in zip(rows, case["cases"]):
        if not isinstance(want, list) or want[3] != row["id"]:
            continue
        run = llava.simulate(row, tokenizer=tok, version=case["version"], fork=llava.LLAVA_NEXT)
        assert run.refused is None, (row["id"], run.refused)
        got = [len(run.input_ids), sum(run.supervised), _sha(json.dumps(run.input_ids)),
               _sha("".join("1" if s else "0" for s in run.supervised))]
        assert got == want[4:8], (row["id"], got, want[4:8])
        compared += 1
    assert compared >= (6 if rows is MULTI else 30)


def test_a_qwen_version_needs_the_fast_qwen_route(tmp_path: Path) -> None:
    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "siglip-384",
            "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 2048}
    script = _project(tmp_path, case)
    text = script.read_text(encoding="utf-8")
    script.write_text(text.replace("google/siglip-so400m-patch14-384", "google/siglip-base-patch16-224"),
                      encoding="utf-8")
    with pytest.raises(UsageError, match="729"):
        check(script)
    script.write_text(text.replace("google/siglip-so400m-patch14-384", "facebook/dinov2-large"), encoding="utf-8")
    with pytest.raises(UsageError, match="Unknown vision tower"):
        check(script)


def test_the_rows_are_those_llava_next_reads_for_its_data_path(tmp_path: Path) -> None:
    """--data_path as a YAML list of json_path entries with sampling strategies (all, first:N, end:N, N%, end:0,
    an unknown strategy, random:N) and as base{a,c}.json: the rows and their order are those LLaVA-NeXT's own
    LazySupervisedDataset held (data_paths_golden.json, produce_qwen.py data). random:N draws with an unseeded
    shuffle: every row of that file is judged and says so."""
    from produce_qwen import DATA_PATHS, data_files

    golden = json.loads((ASSETS / "data_paths_golden.json").read_text(encoding="utf-8"))
    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "siglip-384",
            "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 2048}
    script = _project(tmp_path, case)
    folder = tmp_path / "data-paths"
    data_files(folder)
    text = script.read_text(encoding="utf-8")
    for name, path, _ in DATA_PATHS:
        script.write_text(text.replace("./data/rows.json", str(folder / path)), encoding="utf-8")
        out = tmp_path / f"{name}.jsonl"
        check(script, output=out)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        ids = [r["id"] for r in records]
        if name != "random":
            assert ids == golden[name], (name, ids, golden[name])
            continue
        drawn = [r["id"] for r in records if r["framework"].get("sampling") == "random:2"]
        assert [i for i in ids if i not in drawn] == [i for i in golden[name] if i.startswith("c")]
        assert drawn == [f"b{k}" for k in range(7)] and set(golden[name]) - {"c0"} <= set(drawn)


def test_a_video_row_is_said_to_be_not_counted(tmp_path: Path) -> None:
    """LLaVA-NeXT's _get_item takes a "video" row down its own path (frames, pooling): not a text row."""
    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "siglip-384",
            "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 2048}
    script = _project(tmp_path, case)
    video = {"id": "v", "video": "clip.mp4", "conversations": [{"from": "human", "value": "<image>\nWhat happens?"},
                                                                {"from": "gpt", "value": "A dog runs."}]}
    (tmp_path / "data" / "rows.json").write_text(json.dumps([video, ROWS[0]]), encoding="utf-8")
    out = tmp_path / "records.jsonl"
    check(script, output=out)
    first, second = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert first["framework"]["verdict"] == "unknown" and "VC007" in first["findings"]
    assert second["framework"]["verdict"] != "unknown"


def test_template_reads_the_fork_and_agrees_with_llava_next(tmp_path: Path) -> None:
    """`vlmcheck template --launch` on a LLaVA-OneVision script: LLaVA-NeXT's preprocess_qwen with the fast Qwen
    tokenizer (c121f04 has no qwen_1_5 and would fall back to vicuna_v1's separators: every sample masked). Every
    row LLaVA-NeXT prepared is exact; the Qwen2.5 tokenizer is refused as LLaVA-NeXT raises on it."""
    from click.testing import CliRunner

    from vlmcheck.cli import main
    from vlmcheck.options import TemplateOptions
    from vlmcheck.templates import check_template

    case = next(c for c in QWEN if c["setup"] == "qwen2-7b-instruct" and "rows" not in c)
    script = _project(tmp_path, case)
    folder = tmp_path / "checkpoints" / case["setup"]
    report = check_template(ROWS, tokenizer=folder, options=TemplateOptions(
        template="qwen_1_5", llava_fork="llava_next", model_name_or_path=str(folder)))
    prepared = {row["id"] for row, want in zip(ROWS, case["cases"]) if isinstance(want, list) and want[3] == row["id"]}
    verdicts = {ROWS[v.index]["id"]: v.verdict for v in report.verdicts}
    assert {i for i in prepared if verdicts[i] != "exact"} == set()
    assert len(prepared) >= 80
    c121 = check_template(ROWS, tokenizer=folder, options=TemplateOptions(template="qwen_1_5",
                                                                          model_name_or_path=str(folder)))
    assert sum(v.verdict == "exact" for v in c121.verdicts) < 10  # vicuna_v1's round arithmetic on Qwen
    result = CliRunner().invoke(main, ["template", "--launch", str(script), "--tokenizer", str(folder)])
    assert "preprocess_qwen with conv_qwen" in result.output, result.output
    qwen25 = tmp_path / "qwen2.5-7b-instruct"
    import shutil

    shutil.copytree(qwen_llm_tokenizer(qwen25=True), qwen25)
    refused = check_template(ROWS[:3], tokenizer=qwen25, options=TemplateOptions(
        template="qwen_2_5", llava_fork="llava_next", model_name_or_path=str(qwen25)))
    assert {v.verdict for v in refused.verdicts} == {"refused"}


def test_what_llava_cannot_load_is_said(tmp_path: Path) -> None:
    """A --data_path that json.load cannot read as one list (JSON Lines named .json), a YAML .jsonl with a blank
    line (LLaVA-NeXT's json.loads of every line), and a SigLIP checkpoint given as a local folder (build_vision_tower
    loads any folder as CLIP): the run stops or is refused, never judged as if it loaded."""
    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "siglip-384",
            "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 2048}
    script = _project(tmp_path, case)
    rows = tmp_path / "data" / "rows.json"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]), encoding="utf-8")  # JSON Lines
    out = tmp_path / "out.jsonl"
    check(script, output=out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["framework"]["verdict"] for r in records] == ["stops"] and "VC001" in records[0]["findings"]
    part = tmp_path / "data" / "part.jsonl"
    part.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    (tmp_path / "data" / "mix.yaml").write_text(f"datasets:\n  - json_path: {part}\n    sampling_strategy: first:1\n")
    text = script.read_text(encoding="utf-8")
    script.write_text(text.replace("./data/rows.json", str(tmp_path / "data" / "mix.yaml")), encoding="utf-8")
    check(script, output=out)
    verdicts = [json.loads(line)["framework"]["verdict"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert verdicts[-1] == "stops"  # the blank line: the load raises before first:1 is applied
    siglip = tmp_path / "siglip-so400m-patch14-384"
    siglip.mkdir()
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": {
        "model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14}}))
    script.write_text(text.replace("google/siglip-so400m-patch14-384", str(siglip)), encoding="utf-8")
    with pytest.raises(UsageError, match="SigLIP"):
        check(script)


def test_a_multi_image_row_is_processed_as_configured_first(tmp_path: Path) -> None:
    """LLaVA-NeXT processes each image of a list with the launch's aspect ratio before padding them all: an image
    only the first pass refuses (one row high under square: the CLIP processor reads it as a channel) fails the
    row, which is replaced."""
    from PIL import Image

    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "clip-336",
            "image_aspect_ratio": "square", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 4096}
    script = _project(tmp_path, case)
    images = tmp_path / "data" / "images"
    Image.new("RGB", (500, 1), "white").save(images / "flat.png")
    Image.new("RGB", (64, 64), "white").save(images / "ok.png")
    conv = [{"from": "human", "value": "<image>\n<image>\nBoth?"}, {"from": "gpt", "value": "Yes."}]
    (tmp_path / "data" / "rows.json").write_text(json.dumps([
        {"id": "a", "image": ["ok.png", "flat.png"], "conversations": conv},
        {"id": "b", "image": ["ok.png", "ok.png"], "conversations": conv}]), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    check(script, output=out)
    first, second = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert first["framework"]["verdict"] == "replaced"
    assert second["framework"]["verdict"] == "ok" and second["image_tokens"] == [576, 576]


def test_template_refuses_what_check_refuses_for_llava_next() -> None:
    """One home for LLaVA-NeXT's unmodelled paths: template says what check says (llava_llama_3's own
    preprocess_llama3, a fast-route name with a vicuna version, a name with no tokenizer branch)."""
    from vlmcheck.options import TemplateOptions
    from vlmcheck.templates import check_template

    folder = qwen_llm_tokenizer()
    for template, name, message in (("llava_llama_3", str(folder), "llava_llama_3"),
                                    ("v1", str(folder), "qwen versions only"),
                                    ("qwen_1_5", "/models/base-7b", "UnboundLocalError")):
        with pytest.raises(UsageError, match=message):
            check_template(ROWS[:2], tokenizer=folder, options=TemplateOptions(
                template=template, llava_fork="llava_next", model_name_or_path=name))


def test_the_length_grouped_sampler_is_read_as_llava_next_reads_it(tmp_path: Path) -> None:
    """LLaVA-NeXT's _get_train_sampler takes --group_by_length first (its ``lengths``: no zero-word assert), then
    --group_by_modality_length (``modality_lengths``: the assert); a turn without value raises in both."""
    case = {"setup": "qwen2-7b-instruct", "version": "qwen_1_5", "vision_tower": "siglip-384",
            "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
            "model_max_length": 2048}
    script = _project(tmp_path, case)
    empty = {"id": "e", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]}
    keyless = {"id": "k", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}
    (tmp_path / "data" / "rows.json").write_text(json.dumps([empty, keyless]), encoding="utf-8")
    text = script.read_text(encoding="utf-8")
    out = tmp_path / "out.jsonl"
    for flags, want in (("--group_by_modality_length True", ["stops", "stops"]),
                        ("--group_by_length True --group_by_modality_length True", ["ok", "stops"]),
                        ("--group_by_modality_length False", ["ok", "replaced"])):
        script.write_text(text.replace("--group_by_modality_length True", flags), encoding="utf-8")
        check(script, output=out)
        got = [json.loads(line)["framework"]["verdict"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert got == want, (flags, got)
