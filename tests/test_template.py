"""vlmcheck template: label masks of LLaVA templates and per-turn chat encoding vs the real tokenizers.

Every verdict is computed: the framework's arithmetic (LLaVA preprocess_v1 / llama_2 / plain, per-turn
encoding) is run against the tokenizer's own split of the whole conversation located by character offsets.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.llama_vocab import llama2_tokenizer_dir
from tokenizers import Tokenizer, normalizers, pre_tokenizers

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


@pytest.mark.parametrize("template", ["v1", "vicuna_v1", "llava_v1", "llava_llama_2", "plain"])
@pytest.mark.parametrize("variant", [0, 1])
def test_matching_template_and_tokenizer_setting_is_clean(llama: tuple[Tok, Tok], template: str,
                                                           variant: int) -> None:
    report = check_template(ROWS, tokenizer=llama[variant], template=template)
    assert report.clean, report.render()
    assert all(v.supervised_framework == v.supervised_truth > 0 for v in report.verdicts)


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
    assert report.summary == {"samples": 2, "exact": 1, "misaligned": 0, "masked": 1, "drift": 0}


def test_non_legacy_tokenizer_with_llava_before_the_fix_gives_n_plus_2_vs_n(llama: tuple[Tok, Tok]) -> None:
    report = check_template(ROWS, tokenizer=llama[1], template="v1", legacy_fix=False)
    data = report.verdicts[0].findings[0].data
    assert data["cur_len"] == data["total_len"] + 2
    assert report.summary["masked"] == 1


def test_v1_template_on_a_tokenizer_without_a_special_eos_masks_everything(qwen: Tok) -> None:
    report = check_template(ROWS, tokenizer=qwen, template="v1")
    assert report.summary["masked"] == 2
    assert all("not a special token" in f.message for f in report.findings)


def test_qwen2_chat_template_whole_and_per_turn_are_clean(qwen: Tok) -> None:
    for template in ("chat_template", "per_turn"):
        report = check_template(ROWS, tokenizer=qwen, template=template)
        assert report.clean, report.render()


def test_qwen2_per_turn_encoding_drifts_at_a_whitespace_boundary(qwen: Tok) -> None:
    rows = [{"messages": [{"role": "user", "content": "Write a poem."},
                          {"role": "assistant", "content": "\n\nRoses are red."}]}]
    report = check_template(rows, tokenizer=qwen, template="per_turn")
    (v,) = report.verdicts
    assert v.verdict == "drift" and v.framework_tokens == v.truth_tokens + 1
    assert v.findings[0].code == "VT004" and v.findings[0].data["turn"] == 1
    assert check_template(rows, tokenizer=qwen, template="chat_template").clean


def test_cli(tmp_path, qwen: Tok) -> None:  # type: ignore[no-untyped-def]
    from vlmcheck.cli import main
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    args = ["template", str(data), "--tokenizer", str(qwen_checkpoint("qwen2_vl"))]
    ok = CliRunner().invoke(main, [*args, "--template", "per_turn"])
    assert ok.exit_code == 0 and "2 samples, 2 exact" in ok.output
    bad = CliRunner().invoke(main, [*args, "--template", "v1"])
    assert bad.exit_code == 1 and "2 silently masked" in bad.output and "VT001" in bad.output
