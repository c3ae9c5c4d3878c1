"""``vlmcheck check`` on EasyR1 runs, against what EasyR1's own ``RLHFDataset`` did with the same data.

EasyR1 does not install from the package registry (and pins transformers<5), so its code was run beside the project
(tests/assets/easyr1_golden/make_golden.py, README.md there: the commit and how) on the corpus that
easyr1_corpus.py writes, and what it did is stored in golden.json: per row, the prompt length its overlong filter
computed (or that the filter raised), each image's token count after its ``process_image`` and the processor, the
rows its filter kept at several ``max_prompt_length`` values (or that building the dataset raised), and, with the
filter off, how many tokens and image tokens ``__getitem__`` kept after its right cut. Here the same corpus is
written again and vlmcheck is run on EasyR1 configs for each scenario.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from easyr1_corpus import write_corpus

import vlmcheck

GOLDEN = json.loads((Path(__file__).parent.parent / "assets" / "easyr1_golden" / "golden.json").read_text())
SCENARIOS = GOLDEN["scenarios"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("easyr1"))


def config(tmp_path: Path, checkpoint: Path, corpus: dict[str, Path], scenario: dict[str, Any], *, limit: int,
           filter: bool = True) -> Path:
    """An EasyR1 YAML in the shape of its examples/config.yaml."""
    file = next(p for p in corpus.values() if p.name == scenario["file"])
    data = {"train_files": f"{file}@train", "val_files": f"{file}@test", "prompt_key": "problem",
            "answer_key": "answer", "image_key": "images", "max_prompt_length": limit, "max_response_length": 2048,
            "rollout_batch_size": 512, "format_prompt": str(corpus["format"]) if scenario["format_prompt"] else None,
            "min_pixels": scenario["min_pixels"], "max_pixels": scenario["max_pixels"],
            "filter_overlong_prompts": filter}
    if scenario["image_dir"]:
        data["image_dir"] = str(corpus["images"])
    raw = {"data": data, "algorithm": {"adv_estimator": "grpo"},
           "worker": {"actor": {"model": {"model_path": str(checkpoint)}}, "rollout": {"n": 5}},
           "trainer": {"total_epochs": 15}}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def records(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "records.jsonl"
    vlmcheck.check(path, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_prompt_lengths_and_image_counts_agree_with_easyr1(name: str, tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                           corpus: dict[str, Path]) -> None:
    scenario = SCENARIOS[name]
    ours = records(config(tmp_path, qwen2_vl_checkpoint, corpus, scenario, limit=10**6), tmp_path)
    assert [int(r["id"]) for r in ours] == [g["id"] for g in scenario["rows"]]
    for record, golden in zip(ours, scenario["rows"]):
        assert record["tokens"] == golden["tokens"], (name, record, golden)  # None: EasyR1's filter raised
        if golden["error"] is None:
            assert record["framework"]["verdict"] in ("ok", "crash"), record
            if golden["images"] is not None:
                assert record["image_tokens"] == golden["images"], (name, record, golden)
        else:
            assert record["framework"]["verdict"] == "stops" and "VC001" in record["findings"], record
        assert "VC003" not in record["findings"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_overlong_filter_keeps_what_easyr1_keeps(name: str, tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                     corpus: dict[str, Path]) -> None:
    scenario = SCENARIOS[name]
    for limit, survivors in scenario["survivors"].items():
        ours = records(config(tmp_path, qwen2_vl_checkpoint, corpus, scenario, limit=int(limit)), tmp_path)
        verdicts = [r["framework"]["verdict"] for r in ours]
        if isinstance(survivors, str):  # building the dataset raised: one row stops the whole run
            assert survivors.startswith("raises") and "stops" in verdicts, (name, limit, verdicts)
            continue
        assert "stops" not in verdicts
        assert [int(r["id"]) for r, v in zip(ours, verdicts) if v != "filtered"] == survivors, (name, limit)
        for record in ours:
            if record["framework"]["verdict"] == "filtered":
                assert record["findings"] == ["VC204"]


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if "cut" in SCENARIOS[n]))
def test_without_the_filter_the_right_cut_is_easyr1s(name: str, tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                     corpus: dict[str, Path]) -> None:
    scenario = SCENARIOS[name]
    limit = scenario["cut"]["limit"]
    ours = records(config(tmp_path, qwen2_vl_checkpoint, corpus, scenario, limit=limit, filter=False), tmp_path)
    for record, golden, cut in zip(ours, scenario["rows"], scenario["cut"]["rows"]):
        verdict = record["framework"]["verdict"]
        if "error" in cut:  # __getitem__ raised on the row
            assert verdict == "stops", (record, cut)
            continue
        assert min(record["tokens"], limit) == cut["tokens"], (record, cut)
        kept = record["framework"].get("image_tokens_kept", record["image_tokens"])
        if verdict == "crash" and "VC002" in record["findings"]:  # the row's image has no tag: no image tokens
            assert cut["image_tokens"] == 0 and golden["images"]
            continue
        assert sum(kept) == cut["image_tokens"], (record, cut)
        if record["tokens"] <= limit:
            assert verdict == "ok" and record["findings"] in ([], ["VC106"]), record
        elif sum(kept) < sum(record["image_tokens"]):
            assert verdict == "crash" and "VC201" in record["findings"], record
        else:
            assert verdict == "cut" and "VC203" in record["findings"], record


@pytest.mark.slow
def test_the_crash_verdicts_are_the_models(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                           corpus: dict[str, Path]) -> None:
    """Where vlmcheck says EasyR1's right cut goes through an image (VC201) or an image has no tag (VC002), a real
    Qwen2-VL forward on the processor output, cut as EasyR1 cuts it, raises its mismatch error; where it says the
    cut falls in text or nothing is cut, the same forward runs. Images are sized as EasyR1's process_image sized
    them in the golden run (``scaled``)."""
    import datasets
    import torch

    from realparts import qwen_processor, tiny_qwen2_vl_model
    from vlmcheck.checking import read_config_file
    from vlmcheck.frameworks import easyr1

    scenario = SCENARIOS["geo_format_small"]
    limit = scenario["cut"]["limit"]
    path = config(tmp_path, qwen2_vl_checkpoint, corpus, scenario, limit=limit, filter=False)
    ours = records(path, tmp_path)
    run = easyr1.open_run(read_config_file(path), path=path)
    processor, model = qwen_processor("qwen2_vl"), tiny_qwen2_vl_model()
    rows = datasets.Dataset.from_parquet(str(corpus["geo"]))
    seen = {"crash": 0, "runs": 0}
    for record, golden, row in zip(ours, scenario["rows"], rows):
        if record["framework"]["verdict"] == "stops":
            continue
        messages = run.messages(row, with_images=True)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [image.convert("RGB").resize(tuple(size))  # datasets decodes them, as EasyR1 gets them
                  for image, size in zip(row["images"], golden.get("scaled", []))]
        if "VC002" in record["findings"]:  # transformers 4.x (EasyR1's pin) expands no tag and keeps the image;
            # 5.x refuses the pair, so the text and the image are processed apart, as 4.x hands them on
            batch = processor(text=[text], add_special_tokens=False, return_tensors="pt")
            batch.update(processor.image_processor(images=images, return_tensors="pt"))
        else:
            batch = processor(text=[text], images=images or None, add_special_tokens=False, return_tensors="pt")
        assert int(batch["attention_mask"].sum()) == golden["tokens"] == record["tokens"]
        inputs = {k: v[:, :limit] for k, v in batch.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        if images:
            inputs |= {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
        with torch.no_grad():
            if record["framework"]["verdict"] == "crash":
                with pytest.raises(ValueError, match="Image features and image tokens do not match"):
                    model(**inputs)
                seen["crash"] += 1
            else:
                model(**inputs)
                seen["runs"] += 1
    assert seen["crash"] >= 2 and seen["runs"] >= 5, seen
