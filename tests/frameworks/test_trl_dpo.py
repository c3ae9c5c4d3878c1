"""``vlmcheck check`` on ``trl dpo`` configs with vision-language preference datasets, proved against TRL itself.

The oracle is TRL 1.16's own code run for real: the dataset is loaded with ``datasets.load_dataset`` as
``trl dpo`` loads it, the config is parsed by TRL's own ``TrlParser`` into a ``DPOConfig``, a real ``DPOTrainer``
(tiny random Qwen2-VL policy and reference) builds its collator from it (``DataCollatorForVisionPreference`` with
transformers' Qwen2-VL processor made from the test checkpoint's own files), and each row goes alone through that
collator. Per row and per sequence (chosen, rejected) we compare the untruncated length, each image's token count,
the answer tokens (completion_mask), what survives ``max_length`` (tokens, answer tokens, each image's tokens) and
the verdict; the rows judged ``crash`` are then put through ``DPOTrainer.compute_loss`` on the tiny model, which
must raise "Image features and image tokens do not match", and every row judged ``ok`` must run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_trl_oracle import SIZES, png

import vlmcheck
from realparts import qwen_processor, tiny_qwen2_vl_model
from vlmcheck.cli import main
from vlmcheck.frameworks import trl

# the shape of a `trl dpo --config` recipe: TRL's keys side by side, most of them not ours
RECIPE = """\
model_name_or_path: {model}
dataset_name: {data}
dtype: bfloat16
beta: 0.1
learning_rate: 1.0e-6
gradient_checkpointing: true
per_device_train_batch_size: 2
output_dir: {out}
report_to: none
use_cpu: true
{extra}"""


def conversation(role: str, text: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": text}]


def pair_rows() -> list[dict[str, Any]]:
    """Conversational preference rows: string contents (TRL puts every image before the first user text)."""
    def row(i: int, images: list[str], prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
        return {"id": f"p{i}", "images": [png(SIZES[k]) for k in images], "prompt": prompt,
                "chosen": conversation("assistant", chosen), "rejected": conversation("assistant", rejected)}

    ask = conversation("user", "What is shown?")
    return [
        row(0, ["photo"], ask, "A blue field.", "A red car."),
        row(1, [], conversation("user", "Say hi."), "Hi.", "Go away."),  # text-only row of a vision dataset
        row(2, ["photo", "small"], [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "Compare <image> and <image>."}],
            "\n\nBoth blue.", "One is green."),
        row(3, ["small"], conversation("user", "A long question. " * 40), "Short.", "Also short."),
        row(4, ["big"], ask, "Blue.", "Red."),  # ~3,800 image tokens
        row(5, ["thin"], ask, "A line.", "A dot."),
        row(6, ["mid"], ask, "Blue.", "Red."),  # ~1,600 tokens: over DPOConfig's default max_length 1024
        row(7, ["small"], ask, "Blue.", "Blue " * 300),  # a long rejected answer: only it is cut
        row(8, ["small", "photo"], [{"role": "user", "content": "Colour?"},
                                    {"role": "assistant", "content": "The colour is"}], " blue.", " red."),
        row(9, ["strip"], ask, "A strip.", "A bar."),  # 300:1, the processor refuses it
        row(10, ["photo", "small", "small"], ask, "Three blue images.", "Two."),
    ]


def typed_rows() -> list[dict[str, Any]]:
    """Typed parts: the image placed where the row says; two image parts for one image make TRL raise."""
    def text(t: str) -> dict[str, Any]:
        return {"type": "text", "text": t}

    img = {"type": "image", "text": None}
    answer = [{"role": "assistant", "content": [text("Blue.")]}]
    return [
        {"id": "t0", "images": [png(SIZES["photo"])], "chosen": answer,
         "rejected": [{"role": "assistant", "content": [text("Red, I think.")]}],
         "prompt": [{"role": "user", "content": [text("Look:"), img, text("What colour?")]}]},
        {"id": "t1", "images": [png(SIZES["small"])], "chosen": answer, "rejected": answer,
         "prompt": [{"role": "user", "content": [img, img, text("Two?")]}]},
    ]


def standard_rows() -> list[dict[str, Any]]:
    """Standard (text) rows: the prompt carries the processor's image placeholder itself, or does not."""
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    return [
        {"id": "s0", "images": [png(SIZES["photo"])], "prompt": f"{vision}Describe it.", "chosen": " Blue.",
         "rejected": " Red."},
        {"id": "s1", "images": [png(SIZES["small"])], "prompt": "Describe it.", "chosen": " Blue.", "rejected": " Red."},
        {"id": "s2", "images": [], "prompt": "Say hi.", "chosen": " Hi.", "rejected": " No."},
    ]


def write(folder: Path, rows: list[dict[str, Any]], *, column: str = "images") -> Path:
    """A Parquet file as `datasets` writes it: images as {bytes, path} structs, decoded to PIL on load."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    feature = datasets.List(datasets.Image()) if column == "images" else datasets.Image()
    datasets.Dataset.from_list(rows).cast_column(column, feature).to_parquet(
        str(folder / "train-00000-of-00001.parquet"))
    return folder


@pytest.fixture(scope="module")
def processor() -> Any:
    return qwen_processor("qwen2_vl")


def config(tmp_path: Path, checkpoint: Path, folder: Path, extra: str) -> Path:
    path = tmp_path / f"dpo_{folder.name}_{abs(hash(extra))}.yaml"
    path.write_text(RECIPE.format(model=checkpoint, data=folder, out=tmp_path / "out", extra=extra))
    return path


def check(path: Path) -> list[dict[str, Any]]:
    out = path.with_suffix(".jsonl")
    vlmcheck.check(path, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def fresh_model(seed: int) -> Any:
    return tiny_qwen2_vl_model.__wrapped__(seed)  # not the cached one: DPOTrainer patches the model it is given


def dpo_trainer(path: Path, processor: Any, rows: Any) -> Any:
    """A real DPOTrainer built from the YAML as ``trl dpo --config`` parses it (TRL's own parser and DPOConfig)."""
    from trl import DatasetMixtureConfig, DPOConfig, DPOTrainer, ModelConfig, ScriptArguments, TrlParser

    _, args, _, _ = TrlParser((ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        ["--config", str(path)], fail_with_unknown_args=False)
    args.bf16 = False  # CPU: the numbers do not depend on it
    return DPOTrainer(model=fresh_model(1), ref_model=fresh_model(2), args=args, train_dataset=rows,
                      processing_class=processor)


def trl_dpo(path: Path, processor: Any, folder: Path, *, forward: bool = False) -> list[dict[str, Any]]:
    """Each row of ``load_dataset(folder)['train']`` alone through the collator DPOTrainer builds from ``path``:
    per sequence its kept length, answer tokens, and each image's tokens kept; with ``forward``, the batch through
    ``DPOTrainer.compute_loss`` (``raised``: its error, or None)."""
    import datasets
    import torch

    rows = datasets.load_dataset(str(folder))["train"]
    trainer = dpo_trainer(path, processor, rows)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size ** 2
    out: list[dict[str, Any]] = []
    for row in rows:
        example = {k: v for k, v in row.items() if k != "id"}  # remove_unused_columns drops it
        try:
            batch = trainer.data_collator([example])
        except (ValueError, TypeError, KeyError) as e:
            out.append({"verdict": "stops", "raised": f"{type(e).__name__}: {e}"})
            continue
        n = len(batch["image_grid_thw"]) // 2 if "image_grid_thw" in batch else 0  # images repeated per sequence
        features = [int(t.prod()) // merge for t in batch["image_grid_thw"][:n]] if n else []
        seqs = []
        for ids, mask, answer in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
            kept = ids[mask.bool()].tolist()
            pads = kept.count(pad)
            # one run of pads per image, in order: the cut is a prefix, so image k keeps what is left of the count
            per_image = [min(f, max(0, pads - sum(features[:k]))) for k, f in enumerate(features)]
            seqs.append({"tokens": len(kept), "answer": int(answer.sum()), "image_tokens": per_image})
        crash = any(s["image_tokens"] != features for s in seqs)
        record = {"verdict": "crash" if crash else "ok", "image_tokens": features, "chosen": seqs[0],
                  "rejected": seqs[1]}
        if forward:
            trainer.model.train()
            try:
                with torch.no_grad():
                    trainer.compute_loss(trainer.model, batch)
                record["raised"] = None
            except ValueError as e:  # DPOTrainer.compute_loss re-raises the model's error in its own words
                record["raised"] = f"{e} (from: {e.__cause__})"
        out.append(record)
    return out


def compare(ours: list[dict[str, Any]], whole: list[dict[str, Any]], cut: list[dict[str, Any]]) -> dict[str, int]:
    """Assert per-row agreement (``whole``: TRL at max_length null; ``cut``: at the config's); count verdicts."""
    assert len(ours) == len(whole) == len(cut)
    seen: dict[str, int] = {}
    for record, full, after in zip(ours, whole, cut):
        frame = record["framework"]
        seen[frame["verdict"]] = seen.get(frame["verdict"], 0) + 1
        assert frame["verdict"] == after["verdict"], (record, after)
        if after["verdict"] == "stops":
            continue
        pair = frame["pair"]
        assert record["image_tokens"] == full["image_tokens"] == after["image_tokens"], (record, full)
        assert record["tokens"] == pair["chosen_tokens"] == full["chosen"]["tokens"], (record, full)
        assert pair["rejected_tokens"] == full["rejected"]["tokens"], (record, full)
        assert record["supervised_tokens"] == full["chosen"]["answer"], (record, full)
        assert pair["rejected_supervised"] == full["rejected"]["answer"], (record, full)
        assert frame["kept_tokens"] == after["chosen"]["tokens"], (record, after)
        assert frame["kept_supervised"] == after["chosen"]["answer"], (record, after)
        assert frame["kept_image_tokens"] == after["chosen"]["image_tokens"], (record, after)
        assert pair["kept_rejected_tokens"] == after["rejected"]["tokens"], (record, after)
        assert pair["kept_rejected_supervised"] == after["rejected"]["answer"], (record, after)
        assert pair["kept_rejected_image_tokens"] == after["rejected"]["image_tokens"], (record, after)
    return seen


@pytest.mark.parametrize("max_length", [16, 64, 300, None])
def test_dpo_pairs_agree_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any,
                                            max_length: int | None) -> None:
    folder = write(tmp_path / "pairs", pair_rows())
    setting = "max_length: null\n" if max_length is None else f"max_length: {max_length}\n"
    path = config(tmp_path, qwen2_vl_checkpoint, folder, setting)
    ours = check(path)
    whole = trl_dpo(config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: null\n"), processor, folder)
    seen = compare(ours, whole, trl_dpo(path, processor, folder))
    assert seen.get("stops") == 1  # the 300:1 strip
    assert (seen.get("crash", 0) > 0) == (max_length is not None)  # at 300: the photo rows' prompts are cut
    if max_length == 300:  # p7: the long rejected answer is cut, the chosen one kept whole
        p7 = next(r for r in ours if r["id"] == "p7")
        assert p7["framework"]["verdict"] == "ok" and p7["framework"]["pair"]["kept_rejected_tokens"] == 300
        assert p7["findings"] == ["VC203"] and p7["framework"]["kept_tokens"] == p7["tokens"] < 300
    if max_length == 64:  # p3: a long question pushes both answers out; its small image is kept
        p3 = next(r for r in ours if r["id"] == "p3")
        assert p3["framework"]["verdict"] == "ok" and p3["findings"] == ["VC202", "VC202"]


def test_dpo_defaults_to_max_length_1024(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    folder = write(tmp_path / "pairs", [r for r in pair_rows() if r["id"] in ("p0", "p6", "p7")])
    path = config(tmp_path, qwen2_vl_checkpoint, folder, "")
    ours = check(path)
    compare(ours, trl_dpo(config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: null\n"), processor, folder),
            trl_dpo(path, processor, folder))
    mid = next(r for r in ours if r["id"] == "p6")
    assert 1024 < mid["tokens"] < 2048 and mid["framework"]["verdict"] == "crash"
    result = CliRunner().invoke(main, ["check", str(path)])  # the fix keeps both sequences whole, in TRL's syntax
    longest = max(mid["tokens"], mid["framework"]["pair"]["rejected_tokens"])
    assert result.exit_code == 1 and f"set max_length: {longest}" in result.output, result.output


def test_dpo_typed_and_standard_rows_agree_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                              processor: Any) -> None:
    for name, rows, verdicts in (("typed", typed_rows(), ["crash", "stops"]),
                                 ("standard", standard_rows(), ["crash", "stops", "ok"])):
        folder = write(tmp_path / name, rows)
        path = config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: 40\n")
        ours = check(path)
        compare(ours, trl_dpo(config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: null\n"), processor,
                              folder), trl_dpo(path, processor, folder))
        assert [r["framework"]["verdict"] for r in ours] == verdicts, name
        assert "VC002" in ours[1]["findings"]  # an image part too many / no placeholder in the text


def test_a_single_image_column_with_a_null_row_stops_as_trl_stops(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                                  processor: Any) -> None:
    """An ``image`` column: the collator wraps each row's image in a list, a null one too, and the processor
    raises on it; the rows with an image are judged as with ``images``."""
    rows = [{"id": f"i{k}", "image": png(SIZES[size]) if size else None, "prompt": conversation("user", "Colour?"),
             "chosen": conversation("assistant", "Blue."), "rejected": conversation("assistant", "Red.")}
            for k, size in enumerate(["photo", None, "small"])]
    folder = write(tmp_path / "image", rows, column="image")
    path = config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: 100\n")
    ours = check(path)
    theirs = trl_dpo(path, processor, folder)
    compare(ours, trl_dpo(config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: null\n"), processor, folder),
            theirs)
    assert [r["framework"]["verdict"] for r in ours] == ["crash", "stops", "ok"]
    assert "TypeError" in theirs[1]["raised"]


def test_a_tiny_real_model_raises_on_the_crash_verdicts_only(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                             processor: Any) -> None:
    """Each row through DPOTrainer.compute_loss on a tiny random Qwen2-VL, at max_length values that cut some
    prompts through their image tokens: the forward raises exactly where vlmcheck says crash, and runs on every
    row it calls ok (whole, or cut in the answer only)."""
    small = [r for r in pair_rows() if r["id"] not in ("p4", "p6", "p9")]
    folder = write(tmp_path / "pairs", small)
    seen = {"crash": 0, "ok": 0}
    for max_length in (20, 90):
        path = config(tmp_path, qwen2_vl_checkpoint, folder, f"max_length: {max_length}\n")
        ours = check(path)
        theirs = trl_dpo(path, processor, folder, forward=True)
        for record, run in zip(ours, theirs, strict=True):
            verdict = record["framework"]["verdict"]
            assert (run["raised"] is not None) == (verdict == "crash"), (max_length, record, run)
            assert run["raised"] is None or (f"The current `max_length` ({max_length}) is too short" in run["raised"]
                                             and "Image features and image tokens do not match" in run["raised"]), run
            seen[verdict] += 1
    assert seen["crash"] >= 4 and seen["ok"] >= 4, seen


def test_run_level_refusals_quote_trl(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    """keep_end and precompute_ref_log_probs: DPOTrainer refuses them for a vision dataset at init;
    pad_to_multiple_of: the vision collator raises at the first step. vlmcheck refuses each, before any row."""
    import datasets

    folder = write(tmp_path / "pairs", pair_rows()[:2])
    rows = datasets.load_dataset(str(folder))["train"]
    for extra, message in (("truncation_mode: keep_end\n", "keep_end"),
                           ("precompute_ref_log_probs: true\n", "precompute_ref_log_probs"),
                           ("pad_to_multiple_of: 8\n", "pad_to_multiple_of")):
        path = config(tmp_path, qwen2_vl_checkpoint, folder, extra)
        with pytest.raises((ValueError, NotImplementedError)) as raised:  # TRL's own refusal
            trainer = dpo_trainer(path, processor, rows)
            trainer.data_collator([{k: v for k, v in rows[0].items() if k != "id"}])
        with pytest.raises(vlmcheck.UsageError, match=message) as ours:
            vlmcheck.check(path)
        quoted = str(raised.value).split(".")[0][:40]
        assert quoted in str(ours.value), (quoted, str(ours.value))
    # keep_end without max_length, and padding_free (TRL warns and pads): TRL runs, and so does the check
    path = config(tmp_path, qwen2_vl_checkpoint, folder, "truncation_mode: keep_end\nmax_length: null\n"
                                                          "padding_free: true\n")
    dpo_trainer(path, processor, rows)
    assert len(check(path)) == 2


def test_implicit_prompt_rows_stop_as_trls_collator_stops(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                          processor: Any) -> None:
    ask = conversation("user", "Colour?")
    rows = [{"id": "n0", "images": [png(SIZES["small"])], "chosen": ask + conversation("assistant", "Blue."),
             "rejected": ask + conversation("assistant", "Red.")}]
    folder = write(tmp_path / "implicit", rows)
    path = config(tmp_path, qwen2_vl_checkpoint, folder, "")
    theirs = trl_dpo(path, processor, folder)
    assert theirs[0]["verdict"] == "stops" and "KeyError" in theirs[0]["raised"]
    ours = check(path)
    assert ours[0]["framework"]["verdict"] == "stops" and ours[0]["findings"] == ["VC001"]


def test_a_text_only_dataset_takes_trls_text_route(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    """No image column: DPOTrainer prepares the dataset ahead as text (proved in test_trl_dpo_text.py); the vision
    route's refusals (keep_end here) do not apply, and no image is counted."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"prompt": conversation("user", "Hi"),
                                                    "chosen": conversation("assistant", "Hello"),
                                                    "rejected": conversation("assistant", "Go")}) + "\n")
    records = check(config(tmp_path, qwen2_vl_checkpoint, folder, "truncation_mode: keep_end\n"))
    assert records[0]["framework"]["verdict"] == "ok" and records[0]["image_tokens"] == []


# -- which trainer a config is for --------------------------------------------------------------------------------
PAIRS = {"prompt": conversation("user", "Q"), "chosen": conversation("assistant", "A"),
         "rejected": conversation("assistant", "B"), "images": []}
PROMPTS = {"prompt": conversation("user", "Q"), "images": []}
TRAINERS = [  # (config keys, first row, trainer)
    ({"beta": 0.1}, PAIRS, "dpo"),  # beta is DPOConfig's and GRPOConfig's: the data tells
    ({"beta": 0.1}, PROMPTS, "grpo"),
    ({"loss_type": "sigmoid"}, PROMPTS, "dpo"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}, PROMPTS, "dpo"),
    ({"precompute_ref_log_probs": False}, PROMPTS, "dpo"),
    ({"max_completion_length": 128, "max_prompt_length": 512}, PAIRS, "dpo"),  # an old DPO recipe
    ({"num_generations": 4}, PAIRS, "grpo"),
    ({}, PAIRS, "dpo"),
    ({}, {"messages": PAIRS["prompt"] + PAIRS["chosen"], "images": []}, "sft"),
]


@pytest.mark.parametrize(("keys", "first", "trainer"), TRAINERS)
def test_the_trainer_is_read_from_the_config_and_the_data(tmp_path: Path, keys: dict[str, Any],
                                                          first: dict[str, Any], trainer: str) -> None:
    from trl import DPOConfig

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(first) + "\n")
    read = trl.read_config({"model_name_or_path": "m", "dataset_name": str(data), **keys}, path=tmp_path / "c.yaml")
    assert read.trainer == trainer, read.trainer_from
    if trainer == "dpo":  # DPOConfig takes what is read as DPO (the ignored keys aside)
        DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[],
                  **{k: v for k, v in keys.items() if k not in trl.DPO_IGNORED_KEYS})


def test_keys_dpo_no_longer_has_are_ignored_as_trl_ignores_them(tmp_path: Path) -> None:
    from trl import DPOConfig, TrlParser
    from trl.scripts.utils import ScriptArguments

    path = tmp_path / "old.yaml"
    path.write_text("".join(f"{k}: 7\n" for k in trl.DPO_IGNORED_KEYS) + f"output_dir: {tmp_path}\nuse_cpu: true\n")
    _, args = TrlParser((ScriptArguments, DPOConfig)).parse_args_and_config(["--config", str(path)],
                                                                           fail_with_unknown_args=False)
    assert not any(hasattr(args, k) for k in trl.DPO_IGNORED_KEYS) and args.max_length == 1024
