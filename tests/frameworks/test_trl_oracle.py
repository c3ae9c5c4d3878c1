"""``vlmcheck check`` on ``trl sft`` / ``trl grpo`` configs, proved against TRL itself.

The oracle is TRL 1.16's own code run for real: the datasets are loaded with ``datasets.load_dataset`` as
``trl sft`` loads them, each sample goes alone through ``DataCollatorForVisionLanguageModeling`` (the collator
SFTTrainer builds for a vision dataset) with transformers' Qwen2-VL processor made from the test checkpoint's own
files, and GRPO prompts go through ``GRPOTrainer._tokenize_prompts`` of a real trainer on a tiny Qwen2-VL. Per
sample we compare the untruncated total, each image's token count, the trained tokens, what survives
``max_length`` (tokens, labels, image tokens) and the verdict (the collator or the model raising is a crash).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import vlmcheck
from realparts import qwen_processor

# width x height: a plain photo, a side under 28 px, a 3-megapixel photo, a ratio over 200 (the processor raises)
SIZES = {"photo": (640, 480), "thin": (300, 12), "big": (2000, 1500), "strip": (6000, 20), "small": (56, 56),
         "mid": (1280, 960)}


def png(size: tuple[int, int]) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.new("RGB", size, "blue").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def messages_rows() -> list[dict[str, Any]]:
    """String contents: TRL puts every image before the first user turn's text."""
    def row(i: int, images: list[str], turns: list[tuple[str, str]]) -> dict[str, Any]:
        return {"id": f"m{i}", "images": [png(SIZES[k]) for k in images],
                "messages": [{"role": r, "content": c} for r, c in turns]}

    qa = [("user", "What is shown?"), ("assistant", "A blue field.")]
    return [
        row(0, ["photo"], qa),
        row(1, [], [("user", "Say hi."), ("assistant", "Hi.")]),
        row(2, ["photo", "small"], [("system", ""), ("user", "Compare <image> and <image>."),
                                    ("assistant", "\n\nThey are both blue.")]),
        row(3, ["small"], [("system", "You are terse."), ("user", "Colour?"), ("assistant", "Blue."),
                           ("user", "Sure?"), ("assistant", "\nYes, blue. " * 20)]),
        row(4, ["thin"], qa),
        row(5, ["big"], qa),
        row(6, ["strip"], qa),
        row(7, ["small"], [("user", "A long question. " * 40), ("assistant", "Short.")]),
        row(8, ["mid"], qa),  # ~1,600 tokens: between TRL's default max_length and LLaMA-Factory's
    ]


def typed_rows() -> list[dict[str, Any]]:
    """Typed parts, an image in a later user turn."""
    def text(t: str) -> dict[str, Any]:
        return {"type": "text", "text": t}

    img = {"type": "image", "text": None}
    return [
        {"id": "t0", "images": [png(SIZES["small"]), png(SIZES["photo"])], "messages": [
            {"role": "user", "content": [img, text("First.")]}, {"role": "assistant", "content": [text("Blue.")]},
            {"role": "user", "content": [text("And this?"), img]},
            {"role": "assistant", "content": [text("Also blue.")]}]},
        {"id": "t1", "images": [png(SIZES["small"])], "messages": [  # two image parts, one image: TRL raises
            {"role": "user", "content": [img, img, text("Two?")]}, {"role": "assistant", "content": [text("No.")]}]},
    ]


def completion_rows() -> list[dict[str, Any]]:
    """Prompt-completion: only the completion is trained, and the cut is a slice after the processor."""
    def row(i: int, size: str, answer: str) -> dict[str, Any]:
        return {"id": f"c{i}", "images": [png(SIZES[size])],
                "prompt": [{"role": "user", "content": "Describe it."}],
                "completion": [{"role": "assistant", "content": answer}]}

    return [row(0, "small", "Blue."), row(1, "photo", "A blue rectangle."), row(2, "small", "Blue " * 80)]


def prompt_rows() -> list[dict[str, Any]]:
    """GRPO: prompts only, no assistant turn by design."""
    def row(i: int, sizes: list[str], question: str) -> dict[str, Any]:
        return {"id": f"g{i}", "images": [png(SIZES[s]) for s in sizes],
                "prompt": [{"role": "user", "content": question}], "solution": "blue"}

    return [row(0, ["photo"], "What colour?"), row(1, ["small", "small"], "Same colour?"),
            row(2, ["big"], "Colour? " * 30)]


def write(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """A Parquet file as `datasets` writes it: images as {bytes, path} structs, decoded to PIL on load."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    ds.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


@pytest.fixture(scope="module")
def processor() -> Any:
    return qwen_processor("qwen2_vl")


def trl_sft(processor: Any, folder: Path, max_length: int | None, *,
            assistant_only: bool = False, model: Any = None) -> list[dict[str, Any]]:
    """Each sample of ``load_dataset(folder)['train']`` alone through TRL's vision collator, built as SFTTrainer
    builds it (with assistant_only_loss, the training template TRL's own get_training_chat_template picks); with
    ``model``, the collated batch through its forward too (``raised``: its error, or None)."""
    import datasets
    from trl.chat_template_utils import get_training_chat_template
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    rows = datasets.load_dataset(str(folder))["train"]
    completion_only = "completion" in rows.column_names  # SFTTrainer: on for prompt-completion rows
    collator = DataCollatorForVisionLanguageModeling(
        processor=processor, max_length=max_length, completion_only_loss=completion_only,
        assistant_only_loss=assistant_only,
        chat_template=get_training_chat_template(processor) if assistant_only else None)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size ** 2
    out = []
    for row in rows:
        example = {k: v for k, v in row.items() if k not in ("id", "solution")}
        try:
            batch = collator([example])
        except ValueError as e:
            out.append({"verdict": "crash" if "Mismatch in `image` token count" in str(e) else "stops"})
            continue
        ids = batch["input_ids"][0].tolist()
        features = [int(t.prod()) // merge for t in batch["image_grid_thw"]] if "image_grid_thw" in batch else []
        kept_images = [ids.count(pad)] if features else []  # one count for all images: compared in total below
        crash = bool(features) and ids.count(pad) < sum(features)  # the model raises on the forward
        out.append({"verdict": "crash" if crash else "ok", "tokens": len(ids), "image_tokens": features,
                    "labels": int((batch["labels"][0] != -100).sum()), "kept_pads": kept_images})
        if model is not None:
            import torch

            try:
                with torch.no_grad():
                    model(**batch)
                out[-1]["raised"] = None
            except ValueError as e:
                out[-1]["raised"] = str(e)
    return out


def check(tmp_path: Path, checkpoint: Path, folder: Path, extra: str) -> list[dict[str, Any]]:
    config = tmp_path / f"trl_{folder.name}_{abs(hash(extra))}.yaml"
    config.write_text(f"model_name_or_path: {checkpoint}\ndataset_name: {folder}\nlearning_rate: 2.0e-5\n"
                      f"gradient_checkpointing: true\n{extra}")
    out = tmp_path / "records.jsonl"
    vlmcheck.check(config, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def compare(ours: list[dict[str, Any]], whole: list[dict[str, Any]], cut: list[dict[str, Any]] | None) -> int:
    """Assert per-sample agreement; return how many samples were compared."""
    assert len(ours) == len(whole)
    for i, (record, full) in enumerate(zip(ours, whole)):
        frame = record["framework"]
        if full["verdict"] == "stops":
            assert frame["verdict"] == "stops", (i, record)
            continue
        assert record["tokens"] == full["tokens"], (i, record, full)
        assert record["image_tokens"] == full["image_tokens"], (i, record, full)
        assert record["supervised_tokens"] == full["labels"], (i, record, full)
        if cut is None:
            assert frame["verdict"] == "ok", (i, record)
            continue
        after = cut[i]
        assert frame["verdict"] == after["verdict"], (i, record, after)
        if after["verdict"] == "ok":
            assert frame["kept_tokens"] == after["tokens"], (i, record, after)
            assert frame["kept_supervised"] == after["labels"], (i, record, after)
            assert sum(frame["kept_image_tokens"]) == sum(after["kept_pads"]), (i, record, after)
    return len(ours)


@pytest.mark.parametrize("max_length", [64, 300, 1024])
def test_sft_messages_agree_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any,
                                               max_length: int) -> None:
    folder = write(tmp_path / "messages", messages_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, f"max_length: {max_length}\n")
    whole = trl_sft(processor, folder, None)
    cut = trl_sft(processor, folder, max_length)
    assert compare(ours, whole, cut) == len(messages_rows())
    verdicts = [r["framework"]["verdict"] for r in ours]
    assert "stops" in verdicts  # the 6000x20 strip: the processor refuses it
    if max_length == 64:
        assert "crash" in verdicts


def test_a_tiny_real_model_raises_on_the_crash_verdicts_only(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                             processor: Any) -> None:
    """Each sample at a max_length that cuts some image spans, through TRL's collator and then a real (tiny)
    Qwen2VLForConditionalGeneration: the step raises (TRL's collator checks the image tokens left itself, else the
    model's forward) exactly where vlmcheck says crash, and the forward runs on every sample it calls ok."""
    from realparts import tiny_qwen2_vl_model

    folder = write(tmp_path / "messages", [r for r in messages_rows() if r["id"] not in ("m5", "m8")])  # small
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, "max_length: 64\n")
    theirs = trl_sft(processor, folder, 64, model=tiny_qwen2_vl_model())
    seen = {"crash": 0, "ok": 0}
    for record, run in zip(ours, theirs, strict=True):
        verdict = record["framework"]["verdict"]
        if "raised" not in run:  # the collator itself raised: its image-token check (crash), or the 6000x20 strip
            assert verdict == run["verdict"], (record, run)
        else:
            assert (run["raised"] is not None) == (verdict == "crash"), (record, run)
            assert run["raised"] is None or "do not match" in run["raised"], run
        seen[verdict] = seen.get(verdict, 0) + 1
    assert seen["crash"] >= 2 and seen["ok"] >= 2, seen


@pytest.mark.parametrize("max_length", [64, 300])
def test_sft_assistant_only_loss_agrees_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any,
                                                           max_length: int) -> None:
    folder = write(tmp_path / "messages", messages_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, f"max_length: {max_length}\nassistant_only_loss: true\n")
    whole = trl_sft(processor, folder, None, assistant_only=True)
    compare(ours, whole, trl_sft(processor, folder, max_length, assistant_only=True))
    counted = [r for r in ours if r["tokens"] is not None]
    assert all(0 < r["supervised_tokens"] < r["tokens"] for r in counted)  # only the answers (and <|im_end|>\n)
    if max_length == 64:  # row 7: a long question, the answer cut away
        assert "VC202" in next(r for r in ours if r["id"] == "m7")["findings"]


def test_sft_defaults_to_max_length_1024(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    folder = write(tmp_path / "messages", messages_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, "")
    compare(ours, trl_sft(processor, folder, None), trl_sft(processor, folder, 1024))
    mid = next(r for r in ours if r["id"] == "m8")
    assert 1024 < mid["tokens"] < 2048 and mid["framework"]["verdict"] == "crash"  # over TRL's default 1024


def test_sft_typed_parts_agree_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    folder = write(tmp_path / "typed", typed_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, "max_length: 120\n")
    compare(ours, trl_sft(processor, folder, None), trl_sft(processor, folder, 120))
    assert [r["framework"]["verdict"] for r in ours] == ["crash", "stops"]
    assert "VC002" in ours[1]["findings"]


@pytest.mark.parametrize("max_length", [40, 100])
def test_sft_prompt_completion_agrees_with_trls_collator(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any,
                                                         max_length: int) -> None:
    folder = write(tmp_path / "completion", completion_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, f"max_length: {max_length}\n")
    compare(ours, trl_sft(processor, folder, None), trl_sft(processor, folder, max_length))
    assert all(r["supervised_tokens"] < r["tokens"] for r in ours)  # the prompt is not trained


def test_grpo_prompts_agree_with_grpo_trainer(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from realparts import tiny_qwen2_vl_model

    folder = write(tmp_path / "prompts", prompt_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, "num_generations: 2\nmax_completion_length: 16\n")
    rows = datasets.load_dataset(str(folder))["train"]
    args = GRPOConfig(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=2,
                      max_completion_length=16, report_to=[], use_cpu=True)
    trainer = GRPOTrainer(model=tiny_qwen2_vl_model(), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                          args=args, train_dataset=rows, processing_class=processor)
    from trl.data_utils import prepare_multimodal_messages

    merge = processor.image_processor.merge_size ** 2
    for record, row in zip(ours, rows):
        prompt = prepare_multimodal_messages(row["prompt"], images=row["images"])  # as _generate_and_score_completions
        ids, _images, fields = trainer._tokenize_prompts([prompt])
        assert record["framework"]["prompt_tokens"] == len(ids[0]) == record["tokens"]
        assert record["image_tokens"] == [int(t.prod()) // merge for t in fields["image_grid_thw"]]
        assert record["findings"] == []  # prompt-only rows are normal: no VC003
    assert len(ours) == len(prompt_rows())
    texts = tmp_path / "texts"  # standard (non-conversational) text prompts
    texts.mkdir()
    (texts / "train.jsonl").write_text("\n".join(json.dumps({"prompt": p, "solution": "x"})
                                                  for p in ("Say hi.", "Count to ten. " * 20)))
    ours = check(tmp_path, qwen2_vl_checkpoint, texts, "num_generations: 2\n")
    for record, row in zip(ours, datasets.load_dataset(str(texts))["train"]):
        ids, _, _ = trainer._tokenize_prompts([row["prompt"]])
        assert record["tokens"] == len(ids[0]) and record["findings"] == []


def test_grpo_with_one_generation_is_refused_in_trls_own_words(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from trl import GRPOConfig

    with pytest.raises(ValueError, match="at least 2 generations"):  # TRL refuses it too
        GRPOConfig(output_dir=str(tmp_path / "out"), num_generations=1, per_device_train_batch_size=2, report_to=[],
                   use_cpu=True)
    folder = write(tmp_path / "prompts", prompt_rows())
    config = tmp_path / "grpo.yaml"
    config.write_text(f"model_name_or_path: {qwen2_vl_checkpoint}\ndataset_name: {folder}\nnum_generations: 1\n")
    with pytest.raises(vlmcheck.UsageError, match="num_generations: 2"):
        vlmcheck.check(config)


def test_keys_trl_no_longer_has_are_ignored_as_trl_ignores_them(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from trl import GRPOConfig, SFTConfig, TrlParser
    from trl.scripts.utils import ScriptArguments

    config = tmp_path / "old.yaml"
    config.write_text(f"max_seq_length: 4096\nmax_prompt_length: 256\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\n")
    for kind in (SFTConfig, GRPOConfig):  # TRL's own parser: ignored, its defaults apply
        _, args = TrlParser((ScriptArguments, kind)).parse_args_and_config(
            ["--config", str(config)], fail_with_unknown_args=False)
        assert not hasattr(args, "max_prompt_length") and not hasattr(args, "max_seq_length")
        assert getattr(args, "max_length", 1024) == 1024
    folder = write(tmp_path / "messages", messages_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder, "max_seq_length: 4096\n")
    mid = next(r for r in ours if r["id"] == "m8")
    assert mid["framework"]["kept_tokens"] == 1024 and mid["framework"]["verdict"] == "crash"


def test_chat_template_path_is_no_grpo_key(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    from trl import GRPOConfig, TrlParser
    from trl.scripts.utils import ScriptArguments

    template = tmp_path / "other.jinja"  # renders every prompt with a long preamble: any use of it shows in the counts
    template.write_text("{{ 'a preamble that the checkpoint template does not write ' * 20 }}"
                        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] if m['content'] is string else "
                        "'' }}\n{% endfor %}")
    config = tmp_path / "grpo.yaml"
    config.write_text(f"chat_template_path: {template}\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\n")
    _, args = TrlParser((ScriptArguments, GRPOConfig)).parse_args_and_config(
        ["--config", str(config)], fail_with_unknown_args=False)
    assert not hasattr(args, "chat_template_path")  # TRL's own parser drops it: the checkpoint's template applies
    folder = write(tmp_path / "prompts", prompt_rows())
    plain = check(tmp_path, qwen2_vl_checkpoint, folder, "num_generations: 2\n")
    given = check(tmp_path, qwen2_vl_checkpoint, folder, f"num_generations: 2\nchat_template_path: {template}\n")
    assert [r["tokens"] for r in given] == [r["tokens"] for r in plain]


def test_grpo_prompt_over_vllm_model_length(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    folder = write(tmp_path / "prompts", prompt_rows())
    ours = check(tmp_path, qwen2_vl_checkpoint, folder,
                 "num_generations: 2\nmax_completion_length: 16\nuse_vllm: true\nvllm_max_model_length: 512\n")
    over = [r for r in ours if r["tokens"] >= 512]
    assert over and all(r["findings"] == ["VC206"] and r["framework"]["verdict"] == "crash" for r in over)
