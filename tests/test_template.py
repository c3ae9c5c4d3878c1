"""vlmcheck template: label masks of LLaVA templates and per-turn chat encoding vs the real tokenizers.

Every verdict is computed: the framework's arithmetic (LLaVA preprocess_v1 / mpt / llama_2 / plain / the ###
path, per-turn encoding) is run against the tokenizer's own split of the whole conversation located by
character offsets; expected numbers come from that split, never from the code under test.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from llama_vocab import llama2_tokenizer_dir
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


@pytest.mark.parametrize("rows", [ROWS, IMAGE_ROWS], ids=["text", "image"])
@pytest.mark.parametrize("template", ["v0", "v1", "vicuna_v1", "llava_v1", "llama_2", "llava_llama_2",
                                      "mistral_instruct", "plain"])
@pytest.mark.parametrize("variant", [0, 1])
def test_matching_template_and_tokenizer_setting_is_clean(llama: tuple[Tok, Tok], template: str,
                                                           variant: int, rows: list) -> None:
    report = check_template(rows, tokenizer=llama[variant], template=template)
    assert report.clean, report.render()
    assert all(v.supervised_framework == v.supervised_truth > 0 for v in report.verdicts)


def test_mpt_on_a_chatml_tokenizer_counts_one_separator_too_few_per_round(qwen: Tok) -> None:
    # preprocess_mpt splits on <|im_end|> and never counts the one that closes an assistant turn: with the real
    # Qwen tokenizer (no BOS, no `legacy` attribute) the arithmetic falls short by exactly those tokens.
    from vlmcheck.templates import llava

    report = check_template(ROWS, tokenizer=qwen, template=["mpt", "chatml_direct"])
    for v in report.verdicts:
        msgs = [(("user", "assistant")[i % 2], m["value"]) for i, m in enumerate(ROWS[v.index]["conversations"])]
        rendered = llava.render(llava.TEMPLATES[v.framework], msgs)
        enc = qwen.encode(rendered.text, add_special_tokens=False)
        im_end = qwen.token_id("<|im_end|>")
        closing = sum(1 for t, (a, b) in zip(enc.ids, enc.offsets)
                      if t == im_end and any(s <= a and b <= e for s, e in rendered.spans))
        assert closing == len(msgs) // 2
        data = v.findings[0].data
        assert v.verdict == "masked" and v.findings[0].code == "VT001"
        assert data["total_len"] == v.truth_tokens == len(enc.ids)
        assert data["total_len"] - data["cur_len"] == closing
        assert "separator counted once too few" in v.findings[0].message
    assert report.masked_away == {"mpt": 2, "chatml_direct": 2}


def test_mpt_two_rounds_is_the_n_vs_n_plus_2_warning(qwen: Tok) -> None:
    rows = [{"conversations": ROWS[0]["conversations"][:4]}]
    (v,) = check_template(rows, tokenizer=qwen, template="mpt").verdicts
    total = v.truth_tokens
    assert v.warning == f"WARNING: tokenization mismatch: {total - 2} vs. {total}. (ignored)"


def test_llava_v0_trains_the_role_header(llama: tuple[Tok, Tok]) -> None:
    # The ### path (--version llava_v0) has no length check; its mask covers "### Assistant:" and the "###"
    # that opens the first human turn: labels on prompt tokens, found by decoding the labelled tokens.
    from vlmcheck.templates import llava
    from vlmcheck.templates.check import _llava_truth

    tok = llama[0]
    conv = llava.TEMPLATES["llava_v0"]
    msgs = [("user", "Describe the image."), ("assistant", "A street at night.")]
    rendered = llava.render(conv, msgs)
    labels = llava.preprocess(conv, rendered, tok, legacy=True)
    ids, truth = _llava_truth(tok, rendered)
    prompt_labelled = tok.backend.decode([i for i, s, t in zip(ids, labels.supervised, truth) if s and not t])
    assert "Assistant:" in prompt_labelled and "###" in prompt_labelled
    rows = [{"conversations": [{"from": "human", "value": msgs[0][1]}, {"from": "gpt", "value": msgs[1][1]}]}]
    (v,) = check_template(rows, tokenizer=tok, template="llava_v0").verdicts
    assert v.verdict == "misaligned" and v.findings[0].code == "VT002"
    assert (v.supervised_framework, v.supervised_truth) == (sum(labels.supervised), sum(truth))
    assert "header" in v.findings[0].message


def test_legacy_flag_that_the_fast_tokenizer_ignores_gives_n_vs_n_plus_2(llama: tuple[Tok, Tok]) -> None:
    # tokenizer.legacy=False while tokenizer.json still prepends "▁" after </s>: LLaVA's -1 per round
    # undercounts each round after the first; 3 rounds -> "N vs. N+2", and the sample is fully masked.
    report = check_template(ROWS, tokenizer=llama[0], template="v1", legacy=False)
    cat, one = report.verdicts
    assert cat.verdict == "masked" and cat.supervised_framework == 0 and cat.supervised_truth > 0
    data = cat.findings[0].data
    assert data["total_len"] == cat.truth_tokens and data["cur_len"] == data["total_len"] - 2
    assert cat.warning == f"WARNING: tokenization mismatch: {data['cur_len']} vs. {data['total_len']}. (ignored)"
    assert cat.findings[0].code == "VT001" and "legacy=True" in cat.findings[0].fix
    assert one.verdict == "exact"  # one round: the adjustment never applies
    assert report.summary["v1"] == {"samples": 2, "exact": 1, "drift": 0, "misaligned": 0, "masked": 1,
                                    "refused": 0}
    assert report.masked_away == {"v1": 1}


def test_non_legacy_tokenizer_with_llava_before_the_fix_gives_n_plus_2_vs_n(llama: tuple[Tok, Tok]) -> None:
    report = check_template(ROWS, tokenizer=llama[1], template="v1", legacy_fix=False)
    data = report.verdicts[0].findings[0].data
    assert data["cur_len"] == data["total_len"] + 2
    assert report.masked_away == {"v1": 1}


def test_v1_template_on_a_tokenizer_without_a_special_eos_masks_everything(qwen: Tok) -> None:
    report = check_template(ROWS, tokenizer=qwen, template="v1")
    assert report.masked_away == {"v1": 2}
    assert all("not a special token" in f.message for f in report.findings)


def test_truncation_below_the_first_answer_masks_the_sample(llama: tuple[Tok, Tok]) -> None:
    from vlmcheck.templates import llava

    msgs = [(("user", "assistant")[i % 2], m["value"]) for i, m in enumerate(ROWS[1]["conversations"])]
    rendered = llava.render(llava.TEMPLATES["v1"], msgs)
    ids, offsets = llama[0].ids(rendered.text), llama[0].encode(rendered.text).offsets
    first_answer = next(i for i, (a, b) in enumerate(offsets) if b > rendered.spans[0][0] and b > a)
    report = check_template(ROWS[1:], tokenizer=llama[0], template="v1", max_length=first_answer)
    (v,) = report.verdicts
    assert v.verdict == "masked" and v.findings[0].code == "VT003"
    assert f"at least {first_answer + 1}" in v.findings[0].fix and len(ids) > first_answer
    assert check_template(ROWS[1:], tokenizer=llama[0], template="v1", max_length=first_answer + 1).clean


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
    assert out["masked_away"] == {"v1": 2, "mpt": 2}
    assert {v["findings"][0]["code"] for v in out["verdicts"]} == {"VT001"}


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
