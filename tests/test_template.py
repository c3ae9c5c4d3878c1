"""vlmcheck template: label masks of LLaVA templates and per-turn chat encoding vs the real tokenizers.

Every verdict is computed: the framework's arithmetic (LLaVA preprocess_v1 / mpt / llama_2 / plain / the ###
path, per-turn encoding) is run against the tokenizer's own split of the whole conversation located by
character offsets; expected numbers come from that split, never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from llama_vocab import llama2_checkpoint, llama2_tokenizer_dir
from vlmcheck.slow_llama import SlowLlamaTokenizer
from vlmcheck.templates import Tok, check_template

ROWS = [
    {"id": "cat", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A cat sitting on a red sofa."},
        {"from": "human", "value": "What colour is the cat?"},
        {"from": "gpt", "value": "It is grey with white paws."},
        {"from": "human", "value": "Is it asleep?"},
        {"from": "gpt", "value": "No, it is looking at the camera."}]},
    {"id": "one", "conversations": [
        {"from": "human", "value": "Describe the image."},
        {"from": "gpt", "value": "A street at night."}]},
]


@pytest.fixture(scope="module")
def llama() -> tuple[Tok, Tok]:
    """The real Llama-2 vocabulary, as a legacy tokenizer (the fixture's "▁" before every segment) and as a
    non-legacy one (Metaspace prepend_scheme="first": no "▁" after a special token)."""
    folder = llama2_tokenizer_dir()
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    legacy = Tok(Tokenizer.from_file(str(folder / "tokenizer.json")), {**config, "legacy": True})
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return legacy, Tok(backend, {**config, "legacy": False})


@pytest.fixture(scope="module")
def qwen() -> Tok:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    return Tok.load(qwen_checkpoint("qwen2_vl"))


IMAGE_ROWS = [{**row, "image": f"{row['id']}.jpg"} for row in ROWS]


@pytest.fixture(scope="module")
def llava_ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenizer folders as LLaVA checkpoints ship them: llava-v1.5's (tokenizer.model, legacy=False), the same
    with legacy=True, one with only tokenizer.json (LLaVA cannot load it), and a Yi-style one (llava-v1.6-34b:
    no BOS, "</s>" not a special token, ChatML tokens added)."""
    root = tmp_path_factory.mktemp("llava")
    return {
        "v15": llama2_checkpoint(root / "v15"),
        "legacy": llama2_checkpoint(root / "legacy", legacy=True),
        "json_only": llama2_checkpoint(root / "json_only", fast=True, slow=False),
        "yi": llama2_checkpoint(root / "yi", legacy=None, add_bos_token=False, eos_token="<|im_end|>",
                                added=("<|im_start|>", "<|im_end|>")),
    }


def _slow(folder: Path) -> SlowLlamaTokenizer:
    return SlowLlamaTokenizer.load(folder)


@pytest.mark.parametrize("rows", [ROWS, IMAGE_ROWS], ids=["text", "image"])
@pytest.mark.parametrize("template", ["v0", "v0.5", "v1", "vicuna_v1", "llava_v1", "v1_mmtag", "llama_2",
                                      "llava_llama_2", "mistral_instruct", "llava_v1.6"])
@pytest.mark.parametrize("variant", ["v15", "legacy"])
def test_llava_15_tokenizer_is_clean_under_its_versions(llava_ckpt: dict[str, Path], template: str, variant: str,
                                                       rows: list) -> None:
    # llava-v1.5 ships legacy=False and LLaVA loads the slow tokenizer, which honours it: no "80 vs. 81" false
    # alarm; with legacy=True the -1 per round is skipped and the counts agree too
    report = check_template(rows, tokenizer=llava_ckpt[variant], template=template)
    assert report.clean, report.render()
    assert all(v.supervised_framework == v.supervised_truth > 0 for v in report.verdicts)
    assert report.routes[template].startswith("slow (train() loads use_fast=False")


def test_slow_route_honours_legacy_false_after_a_special_token(llava_ckpt: dict[str, Path]) -> None:
    new, old = _slow(llava_ckpt["v15"]), _slow(llava_ckpt["legacy"])
    # as transformers 4.37.2's slow LlamaTokenizer gives them on these files (tests/assets/llava_golden/README.md)
    assert new.tokens(new.ids("</s>USER")) == ["<s>", "</s>", "USER"]
    assert new.tokens(new.ids("</s> USER")) == ["<s>", "</s>", "▁US", "ER"]
    assert old.tokens(old.ids("</s>USER")) == ["<s>", "</s>", "▁US", "ER"]
    assert old.tokens(old.ids("</s> USER")) == ["<s>", "</s>", "▁", "▁US", "ER"]
    # both match the SentencePiece model on plain text (llama.cpp's references: tests/test_llama_vocab.py)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(llava_ckpt["v15"] / "tokenizer.model"))
    assert old.ids("Hello world", add_special_tokens=False) == sp.encode("Hello world")
    assert new.ids("Hello world", add_special_tokens=False) == sp.encode("Hello world")


def test_multi_turn_fast_tokenizer_refused_under_v1(llava_ckpt: dict[str, Path]) -> None:
    # "mpt" in the model path: train() loads the fast tokenizer, which has no `legacy` in LLaVA's transformers
    report = check_template(ROWS, tokenizer=llava_ckpt["json_only"], template="v1",
                            model_name_or_path="checkpoints/llava-mpt-7b")
    cat, one = report.verdicts
    assert cat.verdict == "refused" and cat.findings[0].code == "VT007"
    assert "AttributeError: 'LlamaTokenizerFast' object has no attribute 'legacy'" in cat.findings[0].message
    assert one.verdict == "exact"  # one round: preprocess_v1 never reads tokenizer.legacy
    assert report.routes["v1"].startswith("fast ('mpt' is in the model path")
    # without "mpt", train() loads use_fast=False: a folder with only tokenizer.json cannot be loaded at all
    stop = check_template(ROWS, tokenizer=llava_ckpt["json_only"], template="v1")
    assert [v.verdict for v in stop.verdicts] == ["refused", "refused"]
    assert "needs tokenizer.model" in stop.verdicts[0].findings[0].message


def test_checkpoint_with_only_tokenizer_model_is_read(llava_ckpt: dict[str, Path]) -> None:
    assert not (llava_ckpt["v15"] / "tokenizer.json").exists()
    assert check_template(ROWS, tokenizer=llava_ckpt["v15"], template="v1").clean


def test_plain_needs_two_turns_and_an_image(llava_ckpt: dict[str, Path]) -> None:
    rows = [{**IMAGE_ROWS[1], "conversations": [{"from": "human", "value": "<image>"},
                                                  {"from": "gpt", "value": "A street at night."}]},
            IMAGE_ROWS[0], ROWS[1]]
    report = check_template(rows, tokenizer=llava_ckpt["v15"], template=["plain", "v0_plain"])
    for name in ("plain", "v0_plain"):
        ok, three, no_image = report.verdicts_for(name)
        assert ok.verdict == "exact"
        assert three.verdict == "refused" and "assert len(source) == 2" in three.findings[0].message
        assert no_image.verdict == "refused" and "DEFAULT_IMAGE_TOKEN in source[0]" in no_image.findings[0].message


def test_pad_string_in_text_drops_out_of_the_total(llava_ckpt: dict[str, Path]) -> None:
    # total_len counts ids that are not the pad id (<unk> under v1): each literal "<unk>" makes cur_len exceed it
    rows = [{"conversations": [{"from": "human", "value": "What is <unk>?"},
                               {"from": "gpt", "value": "Unknown: <unk> <unk>."}]}]
    (v,) = check_template(rows, tokenizer=llava_ckpt["v15"], template="v1").verdicts
    unk = _slow(llava_ckpt["v15"]).token_id("<unk>")
    data = v.findings[0].data
    assert v.verdict == "masked" and data["cur_len"] - data["total_len"] == 3 and unk == 0
    assert "take '<unk>' out" in v.findings[0].fix


def test_empty_turn_and_role_errors(llava_ckpt: dict[str, Path]) -> None:
    rows = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ""}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q2"}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "assistant", "value": "A"}]},
            {"conversations": [{"from": "gpt", "value": "skipped"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]}]
    report = check_template(rows, tokenizer=llava_ckpt["v15"], template=["v1", "llama_2"])
    empty, twice, key, lead = report.verdicts_for("v1")
    # an empty answer is written "ASSISTANT:" with no separator: the round split breaks, LLaVA warns and masks
    assert empty.verdict == "masked" and empty.findings[0].code == "VT001"
    assert twice.verdict == "refused" and "assert role == conv.roles[j % 2]" in twice.findings[0].message
    assert key.verdict == "refused" and "KeyError: 'assistant'" in key.findings[0].message
    assert lead.verdict == "exact"  # a leading gpt turn is skipped
    assert [v.verdict for v in report.verdicts_for("llama_2")][:3] == ["masked", "refused", "refused"]


def test_yi_style_tokenizer_gets_the_cur_len_patch(llava_ckpt: dict[str, Path]) -> None:
    # llava-v1.6-34b's setup: no BOS, "</s>" is text. No registered version is exact; starting preprocess_mpt's
    # cur_len one later is (re-run and checked), the numbers differ per sample, the class is one
    report = check_template(IMAGE_ROWS, tokenizer=llava_ckpt["yi"], template=["mpt", "v1"])
    for v in report.verdicts_for("mpt"):
        f = v.findings[0]
        assert f.data["total_len"] - f.data["cur_len"] == 1
        assert "start cur_len at 1 instead of 0" in f.fix and f"({f.data['cur_len']} vs. {f.data['total_len']}" in f.fix
    assert len(report.causes["mpt"]) == 1
    assert all("'</s>' is not a special token" in (v.cause or "") for v in report.verdicts_for("v1"))


def test_long_image_sample_is_not_truncated_but_text_is(llava_ckpt: dict[str, Path]) -> None:
    long = "word " * 400
    rows = [{"conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": long}]}]
    image = check_template([{**rows[0], "image": "x.jpg"}], tokenizer=llava_ckpt["v15"], template="v1",
                           max_length=64).verdicts[0]
    text = check_template(rows, tokenizer=llava_ckpt["v15"], template="v1", max_length=64).verdicts[0]
    # tokenizer_image_token never truncates, and cur_len >= model_max_length skips the check: it trains on all
    assert image.framework_tokens > 400 and image.verdict == "exact"
    assert text.framework_tokens == 64 and text.supervised_framework > 0


def test_unknown_version_runs_as_vicuna_v1(llava_ckpt: dict[str, Path]) -> None:
    report = check_template(ROWS, tokenizer=llava_ckpt["v15"], template=["llava_v1.6", "vicuna_v1"])
    assert [v.supervised_framework for v in report.verdicts_for("llava_v1.6")] == \
        [v.supervised_framework for v in report.verdicts_for("vicuna_v1")]
    assert "falls back to vicuna_v1" in report.routes["llava_v1.6"]


def test_mpt_on_a_chatml_tokenizer_counts_one_separator_too_few_per_round(qwen: Tok) -> None:
    # preprocess_mpt splits on <|im_end|> and never counts the one that closes an assistant turn: with the real
    # Qwen tokenizer (no BOS, no `legacy` attribute) the arithmetic falls short by exactly those tokens.
    report = check_template(ROWS, tokenizer=qwen, template=["mpt", "chatml_direct"])
    for v in report.verdicts:
        f = v.findings[0]
        assert f.data["total_len"] - f.data["cur_len"] == len(ROWS[v.index]["conversations"]) // 2
    assert report.masked_away == {"mpt": 2, "chatml_direct": 2}


def test_mpt_two_rounds_is_the_n_vs_n_plus_2_warning(qwen: Tok) -> None:
    rows = [{"conversations": ROWS[0]["conversations"][:4]}]
    (v,) = check_template(rows, tokenizer=qwen, template="mpt").verdicts
    total = v.truth_tokens
    assert v.warning == f"WARNING: tokenization mismatch: {total - 2} vs. {total}. (ignored)"


def test_llava_v0_trains_the_role_header(llava_ckpt: dict[str, Path]) -> None:
    # The ### path (--version llava_v0) has no length check; its mask covers "### Assistant:" and the "###"
    # that opens the next turn: labels on prompt tokens, found by decoding the labelled tokens.
    from vlmcheck.frameworks import llava

    tok = llava.load_tokenizer(llava_ckpt["legacy"], version="llava_v0")
    rows = [{"conversations": [{"from": "human", "value": "Describe the image."},
                               {"from": "gpt", "value": "A street at night."}]}]
    run = llava.simulate(rows[0], tokenizer=tok, version="llava_v0")
    slow = _slow(llava_ckpt["legacy"])
    labelled = "".join(slow.tokens([i for i, s in zip(run.input_ids, run.supervised) if s]))
    assert "Assistant" in labelled and "###" in labelled
    (v,) = check_template(rows, tokenizer=llava_ckpt["legacy"], template="llava_v0").verdicts
    assert v.verdict == "misaligned" and v.findings[0].code == "VT002" and "header" in v.findings[0].message


def test_truncation_below_the_first_answer_masks_the_sample(llava_ckpt: dict[str, Path]) -> None:
    (v,) = check_template(ROWS[1:], tokenizer=llava_ckpt["v15"], template="v1", max_length=20).verdicts
    assert v.verdict == "masked" and v.findings[0].code == "VT003" and v.framework_tokens == 20
    assert "model_max_length=20" in v.findings[0].message


def test_qwen2_chat_template_whole_per_turn_and_trl_are_clean(qwen: Tok) -> None:
    report = check_template(ROWS, tokenizer=qwen, template=["chat_template", "llamafactory", "trl"])
    assert report.clean, report.render()
    assert report.masked_away == {"chat_template": 0, "llamafactory": 0, "trl": 0}


def test_qwen2_per_turn_encoding_drifts_at_a_whitespace_boundary(qwen: Tok) -> None:
    rows = [{"messages": [{"role": "user", "content": "Write a poem."},
                          {"role": "assistant", "content": "\n\nRoses are red."}]}]
    report = check_template(rows, tokenizer=qwen, template="llamafactory")
    (v,) = report.verdicts
    # the generation prompt's "\n" and the answer's "\n\n" are one token in the whole conversation
    whole = qwen.tokens(qwen.ids("<|im_start|>assistant\n\n\nRoses", add_special_tokens=False))
    apart = qwen.tokens(qwen.ids("<|im_start|>assistant\n", add_special_tokens=False)
                        + qwen.ids("\n\nRoses", add_special_tokens=False))
    assert v.verdict == "drift" and v.framework_tokens - v.truth_tokens == len(apart) - len(whole) == 1
    assert v.findings[0].code == "VT004" and v.findings[0].data["turn"] == 1
    assert "boundary merge" in v.findings[0].message
    assert check_template(rows, tokenizer=qwen, template="chat_template").clean


def test_cli(tmp_path, qwen: Tok) -> None:  # type: ignore[no-untyped-def]
    from vlmcheck.cli import main
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    args = ["template", str(data), "--tokenizer", str(qwen_checkpoint("qwen2_vl"))]
    ok = CliRunner().invoke(main, [*args, "--template", "llamafactory", "--template", "trl"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == [
        "llamafactory: 2 samples, 2 exact, 0 silently masked (train on nothing), 0 misaligned, 0 token drift",
        "trl: 2 samples, 2 exact, 0 silently masked (train on nothing), 0 misaligned, 0 token drift"]
    bad = CliRunner().invoke(main, [*args, "--template", "v1", "--template", "mpt", "--json"])
    assert bad.exit_code == 1
    out = json.loads(bad.output)
    # Qwen's slow class has no `legacy`: preprocess_v1 raises on the 3-round sample, masks the 1-round one
    assert out["masked_away"] == {"v1": 1, "mpt": 2} and out["summary"]["v1"]["refused"] == 1
    assert {v["findings"][0]["code"] for v in out["verdicts"]} == {"VT001", "VT007"}


def test_cli_usage_error_exits_2_without_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder without tokenizer.json is a usage error (exit 2), not a crash that reads as findings (exit 1)."""
    from vlmcheck.cli import main

    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    result = CliRunner().invoke(main, ["template", str(data), "--tokenizer", str(tmp_path), "--template", "trl"])
    assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert f"no tokenizer.json at {tmp_path}" in result.output


def test_cli_bad_dataset_and_max_length_are_usage_errors(tmp_path):
    from click.testing import CliRunner

    from vlmcheck.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [\n')
    tok = tmp_path / "tok"
    tok.mkdir()
    result = CliRunner().invoke(main, ["template", str(bad), "--tokenizer", str(tok), "--template", "v1"])
    assert result.exit_code == 2 and "is not a JSON list or JSON Lines file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    good = tmp_path / "good.jsonl"
    good.write_text("")
    result = CliRunner().invoke(main, ["template", str(good), "--tokenizer", str(tok), "--template", "v1",
                                       "--max-length", "0"])
    assert result.exit_code == 2 and "--max-length" in result.output


FINETUNE_SH = """#!/bin/bash
# as LLaVA's scripts/v1_5/finetune.sh, with a local checkpoint
MODEL=./checkpoints/llava-v1.5-7b
deepspeed llava/train/train_mem.py \\
    --deepspeed ./scripts/zero3.json \\
    --model_name_or_path $MODEL \\
    --version v1 \\
    --data_path ./playground/data/mix.json \\
    --image_folder ./playground/data \\
    --mm_use_im_start_end False \\
    --model_max_length 2048 \\
    --report_to wandb
"""


def _llava_repo(root: Path, script: str) -> Path:
    llama2_checkpoint(root / "checkpoints" / "llava-v1.5-7b")
    (root / "playground" / "data").mkdir(parents=True)
    rows = [IMAGE_ROWS[0], IMAGE_ROWS[1],
            {"id": "pad", "conversations": [{"from": "human", "value": "What is <unk>?"},
                                            {"from": "gpt", "value": "<unk>"}]},
            {"id": "twice", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}]
    (root / "playground" / "data" / "mix.json").write_text(json.dumps(rows), encoding="utf-8")
    (root / "scripts" / "v1_5").mkdir(parents=True)
    (root / "scripts" / "v1_5" / "finetune.sh").write_text(script, encoding="utf-8")
    return root / "scripts" / "v1_5" / "finetune.sh"


def test_cli_reads_the_llava_launch_script(tmp_path: Path) -> None:
    from vlmcheck.cli import main

    script = _llava_repo(tmp_path, FINETUNE_SH)
    result = CliRunner().invoke(main, ["template", "--launch", str(script)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[:5] == [
        "v1: 4 samples, 2 exact, 1 silently masked (train on nothing), 0 misaligned, 0 token drift, 1 refused (the "
        "framework stops with an error)",
        "  tokenizer: slow (train() loads use_fast=False and the checkpoint ships tokenizer.model (LlamaTokenizer, "
        "legacy=False)); preprocess_v1 with conv_vicuna_v1",
        "  1 sample masked: the pad token '<unk>' is in the text: total_len leaves out pad ids, the rounds count "
        "them (2 here)",
        "  1 sample refused: LLaVA raises AssertionError: 0",
        # 47 vs. 45: LLaVA c121f04 on transformers 4.37.2 printed it for this row (tests/assets/llava_golden/README.md)
        "VT001 error: sample 2 (id 'pad'): v1: \"tokenization mismatch: 47 vs. 45. (ignored)\" (off by +2 over 1 "
        "rounds): all 2 assistant tokens masked; cause: the pad token '<unk>' is in the text: total_len leaves out "
        "pad ids, the rounds count them (2 here). Fix: take '<unk>' out of the sample's text"]
    assert lines[5].startswith("VT007 error: sample 3 (id 'twice'): v1: LLaVA stops the run: AssertionError: 0 at "
                               "preprocess_v1: assert role == conv.roles[j % 2]")
    # the command line wins over the script: under plain no sample is "<image>" + one answer
    plain = CliRunner().invoke(main, ["template", "--launch", str(script), "--template", "plain"])
    assert plain.output.startswith("plain: 4 samples, 0 exact, 0 silently masked (train on nothing), 0 misaligned, "
                                   "0 token drift, 4 refused")


def test_cli_launch_script_with_a_hub_model(tmp_path: Path) -> None:
    from vlmcheck.cli import main

    script = _llava_repo(tmp_path, FINETUNE_SH.replace("$MODEL", "lmsys/vicuna-13b-v1.5"))
    result = CliRunner().invoke(main, ["template", "--launch", str(script)])
    assert result.exit_code == 2 and "no tokenizer folder lmsys/vicuna-13b-v1.5" in result.output
    local = str(tmp_path / "checkpoints" / "llava-v1.5-7b")
    ok = CliRunner().invoke(main, ["template", "--launch", str(script), "--tokenizer", local])
    assert ok.exit_code == 1 and ok.output.startswith("v1: 4 samples, 2 exact")
    # an MPT model path: LLaVA loads the fast tokenizer (no `legacy`: the multi-round samples stop the run)
    mpt = _llava_repo(tmp_path / "mpt", FINETUNE_SH.replace("$MODEL", "mosaicml/mpt-7b-chat"))
    both = llama2_checkpoint(tmp_path / "with-tokenizer-json", fast=True)
    fast = CliRunner().invoke(main, ["template", "--launch", str(mpt), "--tokenizer", str(both)])
    assert "tokenizer: fast ('mpt' is in the model path" in fast.output
    assert fast.output.startswith("v1: 4 samples, 1 exact, 1 silently masked (train on nothing), 0 misaligned, 0 "
                                  "token drift, 2 refused")
    # vlmcheck does not convert tokenizer.model to a fast tokenizer as transformers would: a usage error, not a guess
    only_model = CliRunner().invoke(main, ["template", "--launch", str(mpt), "--tokenizer", local])
    assert only_model.exit_code == 2 and "the fast route needs tokenizer.json" in only_model.output


def test_cli_launch_script_with_an_unset_variable(tmp_path: Path) -> None:
    from vlmcheck.cli import main

    script = _llava_repo(tmp_path, FINETUNE_SH.replace("--version v1", "--version $PROMPT_VERSION"))
    result = CliRunner().invoke(main, ["template", "--launch", str(script)])
    assert result.exit_code == 2 and "--version from $PROMPT_VERSION, which is empty or not set" in result.output
    ok = CliRunner().invoke(main, ["template", "--launch", str(script), "--template", "llava_v1"])
    assert ok.exit_code == 1 and ok.output.startswith("llava_v1: 4 samples, 2 exact")


def test_read_launch_flags_defaults_and_variables(tmp_path: Path) -> None:
    from vlmcheck.errors import UsageError
    from vlmcheck.frameworks.llava import launch_settings as read_launch

    script = tmp_path / "pretrain.sh"
    script.write_text("#!/bin/bash\nexport DATA=/data\npython llava/train/train.py --data_path=$DATA/x.json "
                      "--mm_use_im_start_end --model_name_or_path ${MODEL}\n", encoding="utf-8")
    launch = read_launch(script)
    # LLaVA's dataclass defaults: version v0, model_max_length 512; a bare boolean flag is True
    assert (launch.version, launch.model_max_length, launch.data_path, launch.mm_use_im_start_end) == \
        ("v0", 512, "/data/x.json", True)
    assert launch.model_name_or_path is None and launch.unresolved == {"model_name_or_path": "MODEL"}
    script.write_text("deepspeed llava/train/train_mem.py --mm_use_im_start_end maybe\n", encoding="utf-8")
    with pytest.raises(UsageError, match="not a boolean"):
        read_launch(script)
    script.write_text("echo nothing to train\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no command runs llava/train"):
        read_launch(script)


def test_byte_fallback_and_edge_whitespace_are_not_misalignments(llava_ckpt: dict[str, Path]) -> None:
    # "日本語の答え 🐱": byte-fallback pieces (<0xE7><0xAD><0x94> for 答) belong to their character, and the lone "▁"
    # between "ASSISTANT: " and "日" (no "▁日" piece) may carry a label or not: LLaVA's labels are right here
    rows = [{"conversations": [{"from": "human", "value": "Emoji 😀 and ünïcödé ✓"},
                               {"from": "gpt", "value": "日本語の答え 🐱"}]},
            {"image": "x.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                 {"from": "gpt", "value": "\tthe caption"}]}]
    slow = _slow(llava_ckpt["v15"])
    assert "<0xE7>" in slow.tokens(slow.ids("答"))
    report = check_template(rows, tokenizer=llava_ckpt["v15"], template=["v1", "plain"])
    assert [v.verdict for v in report.verdicts] == ["exact", "exact", "refused", "exact"]  # plain needs <image>


def test_a_tokenizer_object_is_not_changed_by_the_llava_check(qwen: Tok) -> None:
    size = qwen.backend.get_vocab_size()
    # <im_start>/<im_end> go into the copy LLaVA's train() would change, never into the caller's tokenizer
    report = check_template(IMAGE_ROWS, tokenizer=qwen, template="plain", mm_use_im_start_end=True)
    assert [v.verdict for v in report.verdicts] == ["refused", "refused"]  # plain: two turns, <image> in the first
    assert qwen.backend.get_vocab_size() == size and qwen.backend.token_to_id("<im_start>") is None
