"""``vlmcheck check`` on ``trl dpo`` configs with a text-only preference dataset on a vision-language model, proved
against TRL itself.

A dataset without an ``image`` / ``images`` column takes DPOTrainer's text route even on a VLM: ``_prepare_dataset``
tokenizes it ahead with the processor (``extract_prompt`` when there is no ``prompt`` column, the EOS appended to a
standard dataset's answers, ``tokenize_fn`` and its ``common_prefix_length`` rule, the filter that drops a row whose
prompt alone fills ``max_length``), and ``DataCollatorForPreference`` cuts each sequence. The oracle is TRL 1.16 run
for real: the YAML parsed by ``TrlParser`` into a ``DPOConfig``, a real ``DPOTrainer`` (tiny random Qwen2-VL policy
and reference, transformers' Qwen2-VL processor from the test checkpoint's files) prepares the dataset loaded with
``datasets.load_dataset``, and each prepared row goes alone through the collator it builds. Per row we compare: kept
or dropped, the prompt's tokens, each sequence's length, its kept tokens and its kept answer tokens
(``completion_mask``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_trl_dpo import check, config, dpo_trainer

from realparts import qwen_processor

Row = dict[str, Any]


def turn(role: str, text: str) -> list[Row]:
    return [{"role": role, "content": text}]


LONG = "A long question about the colour of the sky. " * 12  # ~120 tokens


def explicit_conversations() -> list[Row]:
    def row(i: int, prompt: list[Row], chosen: str, rejected: str) -> Row:
        return {"id": f"c{i}", "prompt": prompt, "chosen": turn("assistant", chosen),
                "rejected": turn("assistant", rejected)}

    return [
        row(0, turn("user", "Say hi."), "Hi.", "Go away."),
        row(1, [{"role": "system", "content": "You are terse."}, *turn("user", "Colour of the sky?")], "Blue.",
            "It is a long story. " * 10),
        row(2, turn("user", "Hi") + turn("assistant", "Hello!") + turn("user", "Colour?"), "Blue.", "Red."),
        row(3, turn("user", "Colour?") + turn("assistant", "The colour is"), " blue.", " red."),  # ends in assistant
        row(4, turn("user", LONG), "Blue.", "Red."),  # the prompt alone fills the small max_lengths
        row(5, turn("user", "Count."), "one " * 60, "two " * 90),  # long answers
        row(6, turn("user", "Say nothing."), "", "Something."),  # an empty chosen answer
        row(7, [{"role": "system", "content": ""}, *turn("user", "Q?")], "\n\nA.", "B."),
    ]


def implicit_conversations() -> list[Row]:
    def row(i: int, chosen: list[Row], rejected: list[Row]) -> Row:
        return {"id": f"i{i}", "chosen": chosen, "rejected": rejected}

    ask, system = turn("user", "Colour?"), [{"role": "system", "content": "Be kind."}]
    return [
        row(0, ask + turn("assistant", "Blue."), ask + turn("assistant", "Red.")),
        row(1, system + ask + turn("assistant", "Blue."), system + ask + turn("assistant", "Red, green and gold.")),
        # they differ at the user turn: the prompt is the system turn alone, whose rendering with the generation
        # prompt is not a prefix of the whole conversation's (the common-prefix rule cuts it back)
        row(2, system + ask + turn("assistant", "Blue."), system + turn("user", "Size?") + turn("assistant", "Big.")),
        row(3, ask + turn("assistant", "Blue.") + turn("user", "Sure?") + turn("assistant", "Yes."),
            ask + turn("assistant", "Blue.") + turn("user", "Sure?") + turn("assistant", "No.")),
        row(4, ask + turn("assistant", "Blue."), ask + turn("assistant", "Blue.")),  # identical: no break in the loop
        row(5, ask + turn("assistant", "Blue."), ask + turn("assistant", "Blue.") + turn("user", "And?")
            + turn("assistant", "Red.")),  # one is a prefix of the other
        row(6, turn("user", LONG) + turn("assistant", "Blue."), turn("user", LONG) + turn("assistant", "Red.")),
    ]


def explicit_texts() -> list[Row]:
    def row(i: int, prompt: str, chosen: str, rejected: str) -> Row:
        return {"id": f"s{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected}

    return [
        row(0, "The sky is", " blue.", " red."),
        row(1, "The sky is ", "blue.", "red."),  # the space merges with the answer: the prompt is cut back
        row(2, "Q: colour?\nA:", " blue.<|im_end|>", " red."),  # an answer that already ends with the EOS
        row(3, "Say nothing:", "", " Something."),  # an empty answer: the EOS is its only token
        row(4, LONG, " Blue.", " Red."),
        row(5, "Count:", " one" * 70, " two" * 40),
    ]


def implicit_texts() -> list[Row]:
    def row(i: int, chosen: str, rejected: str) -> Row:
        return {"id": f"t{i}", "chosen": chosen, "rejected": rejected}

    return [
        row(0, "The sky is blue.", "The sky is red."),  # the space before the difference goes to the answers
        row(1, "Blue sky.", "Red sky."),  # they differ at once: an empty prompt
        row(2, "Blue sky ", "Red sky."),  # ... and chosen ends with a space: TRL reads chosen[-1]
        row(3, "Same answer.", "Same answer."),  # identical: the last character is the answer
        row(4, "Short.", "Short. And then a lot more."),  # one a prefix of the other
        row(5, LONG + "Blue.", LONG + "Red and then more words follow here."),
    ]


@pytest.fixture(scope="module")
def processor() -> Any:
    return qwen_processor("qwen2_vl")


@pytest.fixture(autouse=True)
def random_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets`` names each ``map`` result by a hash of its function and arguments, and hashing the processor
    (pickling the whole tokenizer) takes seconds per map. Each map gets a random name instead, as ``datasets`` gives
    one when hashing fails: only the cache file's name changes, never what TRL computes."""
    import datasets.arrow_dataset
    import datasets.fingerprint

    def named(*_args: Any, **_kw: Any) -> str:
        return datasets.fingerprint.generate_random_fingerprint()

    monkeypatch.setattr(datasets.arrow_dataset, "update_fingerprint", named)
    monkeypatch.setattr(datasets.fingerprint, "update_fingerprint", named)


DATASETS = {"explicit_conversations": explicit_conversations, "implicit_conversations": implicit_conversations,
            "explicit_texts": explicit_texts, "implicit_texts": implicit_texts}


def write(folder: Path, rows: list[Row]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def trl_text_dpo(path: Path, processor: Any, folder: Path) -> dict[str, dict[str, Any]]:
    """By row id: what DPOTrainer's prepared dataset holds (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)
    and what its collator keeps of each sequence (tokens, answer tokens); rows the filter dropped are absent."""
    import datasets
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows = datasets.load_dataset(str(folder))["train"]
    trainer = dpo_trainer(path, processor, rows)
    assert isinstance(trainer.data_collator, DataCollatorForPreference)  # the text route, not the vision one
    out: dict[str, dict[str, Any]] = {}
    for example in trainer.train_dataset:
        batch = trainer.data_collator([{k: example[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        seqs = [{"tokens": int(mask.sum()), "answer": int(answer.sum())}
                for mask, answer in zip(batch["attention_mask"], batch["completion_mask"])]
        out[example["id"]] = {"prompt": len(example["prompt_ids"]), "chosen": len(example["chosen_ids"]),
                              "rejected": len(example["rejected_ids"]), "kept": seqs}
    return out


def compare(ours: list[Row], whole: dict[str, dict[str, Any]], cut: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Per row: vlmcheck's record against TRL unlimited (``whole``) and at the config (``cut``)."""
    assert [r["id"] for r in ours] == list(whole), (ours, whole)  # every row counted (none stops, none unknown)
    seen: dict[str, int] = {}
    for record in ours:
        frame, full = record["framework"], whole[record["id"]]
        pair = frame["pair"]
        seen[frame["verdict"]] = seen.get(frame["verdict"], 0) + 1
        assert frame["prompt_tokens"] == full["prompt"], (record, full)
        assert record["tokens"] == pair["chosen_tokens"] == full["prompt"] + full["chosen"], (record, full)
        assert pair["rejected_tokens"] == full["prompt"] + full["rejected"], (record, full)
        assert record["supervised_tokens"] == full["chosen"] and pair["rejected_supervised"] == full["rejected"]
        assert record["image_tokens"] == [] and frame["kept_image_tokens"] == []
        if record["id"] not in cut:  # dropped by _prepare_dataset's filter
            assert frame["verdict"] == "dropped" and "VC204" in record["findings"], record
            continue
        after = cut[record["id"]]
        assert frame["verdict"] == "ok", (record, after)
        assert after["prompt"] == full["prompt"]
        chosen, rejected = after["kept"]
        assert (frame["kept_tokens"], frame["kept_supervised"]) == (chosen["tokens"], chosen["answer"]), (record, after)
        assert (pair["kept_rejected_tokens"], pair["kept_rejected_supervised"]) == (rejected["tokens"],
                                                                                   rejected["answer"]), (record, after)
        cut_sequences = (chosen["tokens"] < record["tokens"]) + (rejected["tokens"] < pair["rejected_tokens"])
        assert record["findings"].count("VC203") == cut_sequences, (record, after)
        assert ("VC003" in record["findings"]) == (0 in (full["chosen"], full["rejected"]))
    return seen


SETTINGS = ["max_length: 8\n", "max_length: 20\n", "max_length: 130\n",
            "max_length: 20\ntruncation_mode: keep_end\n", "max_length: 130\ntruncation_mode: keep_end\n",
            ""]  # "": DPOConfig's default max_length 1024


@pytest.mark.parametrize("name", list(DATASETS))
def test_text_pairs_agree_with_trls_prepared_dataset_and_collator(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                                  processor: Any, name: str) -> None:
    folder = write(tmp_path / name, DATASETS[name]())
    whole = trl_text_dpo(config(tmp_path, qwen2_vl_checkpoint, folder, "max_length: null\n"), processor, folder)
    assert len(whole) == len(DATASETS[name]())  # max_length null: nothing dropped
    verdicts: dict[str, int] = {}
    for setting in SETTINGS:
        path = config(tmp_path, qwen2_vl_checkpoint, folder, setting)
        ours = check(path)
        seen = compare(ours, whole, trl_text_dpo(path, processor, folder))
        for verdict, n in seen.items():
            verdicts[verdict] = verdicts.get(verdict, 0) + n
        if "keep_end" in setting or not setting:
            assert "dropped" not in seen, (setting, seen)  # keep_end: TRL's filter is off
    assert verdicts.get("dropped", 0) > 0 and verdicts.get("ok", 0) > 0, verdicts


def test_the_rows_exercise_what_they_are_for(tmp_path: Path, qwen2_vl_checkpoint: Path, processor: Any) -> None:
    """Not vacuous: TRL itself cuts the prompt back (common prefix), appends the EOS, extracts prompts with its
    quirks, and keeps an empty answer's EOS; vlmcheck's records say the same."""
    texts = write(tmp_path / "texts", explicit_texts())
    whole = trl_text_dpo(config(tmp_path, qwen2_vl_checkpoint, texts, "max_length: null\n"), processor, texts)
    tok = processor.tokenizer
    assert whole["s1"]["prompt"] < len(tok("The sky is ")["input_ids"])  # "The sky is " + "blue." merge
    assert whole["s3"]["chosen"] == 1  # "" + <|im_end|>
    assert whole["s2"]["chosen"] == len(tok(" blue.<|im_end|>")["input_ids"])  # no second EOS
    conv = write(tmp_path / "implicit", implicit_conversations())
    theirs = trl_text_dpo(config(tmp_path, qwen2_vl_checkpoint, conv, "max_length: null\n"), processor, conv)
    system_alone = processor.apply_chat_template([{"role": "system", "content": [{"type": "text", "text": "Be kind."}]}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=True)
    assert theirs["i2"]["prompt"] < len(system_alone["input_ids"][0])  # not a prefix: cut back
    ours = {r["id"]: r for r in check(config(tmp_path, qwen2_vl_checkpoint, conv, "max_length: null\n"))}
    assert ours["i2"]["framework"]["prompt_tokens"] == theirs["i2"]["prompt"]


def test_empty_implicit_answers_stop_the_preparation_as_trl_does(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                                   processor: Any) -> None:
    """``extract_prompt`` on an empty chosen raises (UnboundLocalError) while DPOTrainer prepares the dataset."""
    import datasets

    folder = write(tmp_path / "empty", [{"id": "e0", "chosen": "Blue.", "rejected": "Red."},
                                        {"id": "e1", "chosen": "", "rejected": "Red."}])
    path = config(tmp_path, qwen2_vl_checkpoint, folder, "")
    with pytest.raises(Exception) as raised:
        dpo_trainer(path, processor, datasets.load_dataset(str(folder))["train"])
    assert "UnboundLocalError" in repr(raised.value) or "idx" in str(raised.value), raised.value
    ours = check(path)
    assert [r["framework"]["verdict"] for r in ours] == ["ok", "stops"]
    assert ours[1]["findings"] == ["VC001"]


def test_text_route_options_trl_accepts_are_accepted(tmp_path: Path, qwen2_vl_checkpoint: Path,
                                                      processor: Any) -> None:
    """keep_end, precompute_ref_log_probs and pad_to_multiple_of are refused for vision datasets only: on the text
    route DPOTrainer builds and the collator runs, and vlmcheck checks the rows."""
    import datasets

    folder = write(tmp_path / "opts", explicit_conversations()[:3])
    rows = datasets.load_dataset(str(folder))["train"]
    for extra in ("truncation_mode: keep_end\nmax_length: 16\n", "pad_to_multiple_of: 8\n", "padding_free: true\n"):
        path = config(tmp_path, qwen2_vl_checkpoint, folder, extra)
        trainer = dpo_trainer(path, processor, rows)
        trainer.data_collator([{k: trainer.train_dataset[0][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        assert [r["framework"]["verdict"] for r in check(path)] == ["ok"] * 3, extra
    # precompute_ref_log_probs runs the reference model over the prepared dataset at init: not run here (slow); the
    # option changes no row, and vlmcheck no longer refuses it for a text dataset
    assert len(check(config(tmp_path, qwen2_vl_checkpoint, folder, "precompute_ref_log_probs: true\n"))) == 3
