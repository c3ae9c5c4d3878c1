"""vlmcheck template for chat-template trainers: TRL ``assistant_only_loss``, Unsloth ``train_on_responses_only``,
LLaMA-Factory per-turn encoding, with the real Qwen2 and Gemma 3 tokenizers.

Oracles: transformers' own ``apply_chat_template(return_assistant_tokens_mask=True)`` and TRL's own
``get_training_chat_template`` / ``is_chat_template_stop_token_trained`` on the real tokenizers; for Unsloth
(not installed) the real tokenizer's ids of the marker alone and of the whole conversation. The Gemma 3 chat
template is the one TRL ships as google/gemma-3's (``trl/chat_templates/gemma3.jinja``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trl
from transformers import AutoTokenizer
from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

from gemma3_vocab import gemma3_tokenizer_dir
from llama_vocab import llama2_tokenizer_dir
from vlmcheck.templates import Tok, check_template
from vlmcheck.templates import trl as trl_route

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
GEMMA3 = (TRL_TEMPLATES / "gemma3.jinja").read_text(encoding="utf-8")

ROWS = [
    {"id": "cat", "messages": [
        {"role": "user", "content": "What is in the picture?"},
        {"role": "assistant", "content": "A cat sitting on a red sofa."},
        {"role": "user", "content": "What colour is the cat?"},
        {"role": "assistant", "content": "It is grey with white paws."}]},
    {"id": "one", "messages": [
        {"role": "user", "content": "Describe the image."},
        {"role": "assistant", "content": "A street at night."}]},
]
POEM = {"id": "poem", "messages": [{"role": "user", "content": "Write a poem."},
                                   {"role": "assistant", "content": "\n\nRoses are red."}]}
# An Alpaca-style template, as Unsloth's notebooks use with Llama-2 models: no special-token markers.
ALPACA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}"
          "\n\n{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}### Response:\n{% endif %}")


def _msgs(row: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


@pytest.fixture(scope="module")
def qwen() -> tuple[Tok, object]:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    folder = qwen_checkpoint("qwen2_vl")
    tok = Tok.load(folder)
    hf = AutoTokenizer.from_pretrained(str(folder))
    hf.chat_template = tok.chat_template  # the checkpoint keeps it in chat_template.json (a processor file)
    return tok, hf


@pytest.fixture(scope="module")
def gemma() -> tuple[Tok, object]:
    folder = gemma3_tokenizer_dir()
    hf = AutoTokenizer.from_pretrained(str(folder))
    hf.chat_template = GEMMA3
    return Tok.load(folder), hf


@pytest.fixture(scope="module")
def llama() -> Tok:
    return Tok.load(llama2_tokenizer_dir())


# -- TRL ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["qwen", "gemma"])
def test_trl_swaps_in_its_training_template_and_the_mask_is_transformers_own(request, which: str) -> None:
    tok, hf = request.getfixturevalue(which)
    chat = GEMMA3 if which == "gemma" else tok.chat_template
    training = trl_route.training_template(chat)
    assert training.template == get_training_chat_template(hf)  # TRL's own choice
    for row in [*ROWS, POEM]:
        ours = trl_route.assistant_mask(training.template, [(m["role"], m["content"]) for m in row["messages"]], tok)
        real = hf.apply_chat_template(_msgs(row), chat_template=training.template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert ours.input_ids == real["input_ids"]
        assert ours.supervised == [bool(x) for x in real["assistant_masks"]]
    report = check_template([*ROWS, POEM], tokenizer=tok, template="trl", chat_template=chat)
    assert report.clean, report.render()


def test_trl_refuses_a_template_without_generation_markers(llama: Tok) -> None:
    hf = AutoTokenizer.from_pretrained(str(llama2_tokenizer_dir()))
    hf.chat_template = ALPACA
    with pytest.raises(ValueError, match="not training-compatible"):
        get_training_chat_template(hf)
    report = check_template(ROWS, tokenizer=llama, template="trl", chat_template=ALPACA)
    assert [f.code for f in report.notes] == ["VT005"]
    assert report.summary["trl"]["refused"] == 2 and report.masked_away == {"trl": 0}


def test_trl_end_of_turn_outside_the_generation_block_is_never_trained(qwen: tuple[Tok, object]) -> None:
    tok, hf = qwen
    # a hand-written template whose generation block stops before <|im_end|>
    custom = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
              "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert is_chat_template_stop_token_trained(hf, chat_template=custom) is False  # TRL's own check
    report = check_template(ROWS, tokenizer=tok, template="trl", chat_template=custom)
    for v in report.verdicts:
        real = hf.apply_chat_template(_msgs(ROWS[v.index]), chat_template=custom, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert v.supervised_framework == sum(real["assistant_masks"])
        assert v.verdict == "misaligned" and v.findings[0].code == "VT002"
        assert "never learns to stop" in v.findings[0].message and "<|im_end|>" in v.findings[0].message
    assert check_template(ROWS, tokenizer=tok, template="chat_template", chat_template=custom).clean


def test_trl_truncation_that_leaves_no_label_masks_the_sample(qwen: tuple[Tok, object]) -> None:
    tok, hf = qwen
    training = get_training_chat_template(hf)
    real = hf.apply_chat_template(_msgs(ROWS[1]), chat_template=training, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    first = real["assistant_masks"].index(1)  # TRL keeps the first max_length tokens, then drops label-less rows
    for max_length, verdict in ((first, "masked"), (first + 1, "exact")):
        (v,) = check_template(ROWS[1:], tokenizer=tok, template="trl", max_length=max_length).verdicts
        assert v.verdict == verdict
    (v,) = check_template(ROWS[1:], tokenizer=tok, template="trl", max_length=first).verdicts
    assert v.findings[0].code == "VT003" and f"at least {first + 1}" in v.findings[0].fix


# -- Unsloth -----------------------------------------------------------------------------------------------

def test_unsloth_marker_merged_with_a_leading_newline_masks_the_sample(qwen: tuple[Tok, object]) -> None:
    tok, hf = qwen
    marker = hf("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    text = hf.apply_chat_template(_msgs(POEM), tokenize=False)
    ids = hf(text)["input_ids"]
    assert not any(ids[i:i + len(marker)] == marker for i in range(len(ids)))  # the marker never occurs
    report = check_template([*ROWS, POEM], tokenizer=tok, template="unsloth")
    verdicts = {v.id: v for v in report.verdicts}
    assert verdicts["poem"].verdict == "masked" and verdicts["poem"].findings[0].code == "VT006"
    assert "'ĊĊĊ'" in verdicts["poem"].findings[0].message
    assert report.masked_away == {"unsloth": 1}
    # the other samples keep every answer (the EOS TRL appends to a text column shows up as drift)
    for sid in ("cat", "one"):
        assert verdicts[sid].verdict == "drift" and verdicts[sid].supervised_framework >= verdicts[sid].supervised_truth


def test_unsloth_alpaca_marker_on_llama2_never_matches(llama: Tok) -> None:
    hf = AutoTokenizer.from_pretrained(str(llama2_tokenizer_dir()))
    hf.chat_template = ALPACA
    marker = hf("### Response:\n", add_special_tokens=False)["input_ids"]
    for row in ROWS:
        ids = hf(hf.apply_chat_template(_msgs(row), tokenize=False))["input_ids"]
        assert not any(ids[i:i + len(marker)] == marker for i in range(len(ids)))
    report = check_template(ROWS, tokenizer=llama, template=["unsloth", "chat_template"], chat_template=ALPACA,
                            instruction_part="### Instruction:\n", response_part="### Response:\n")
    assert report.masked_away == {"unsloth": 2, "chat_template": 0}
    assert all(f.code == "VT006" for f in report.findings)


# -- Gemma 3 -----------------------------------------------------------------------------------------------

def test_gemma3_per_turn_matches_the_whole_conversation(gemma: tuple[Tok, object]) -> None:
    tok, hf = gemma
    report = check_template([*ROWS, POEM], tokenizer=tok, template=["chat_template", "llamafactory", "trl"],
                            chat_template=GEMMA3)
    assert report.clean, report.render()
    for v in report.verdicts_for("chat_template"):
        row = [*ROWS, POEM][v.index]
        assert v.truth_tokens == len(hf.apply_chat_template(_msgs(row), tokenize=True, return_dict=True)["input_ids"])


def test_gemma3_text_column_gets_two_bos(gemma: tuple[Tok, object]) -> None:
    tok, hf = gemma
    text = hf.apply_chat_template(_msgs(ROWS[1]), tokenize=False)
    ids = hf(text)["input_ids"]  # what SFTTrainer does with a text column
    assert ids[:2] == [hf.bos_token_id, hf.bos_token_id]
    report = check_template(ROWS, tokenizer=tok, template="unsloth", chat_template=GEMMA3)
    for v in report.verdicts:
        assert v.verdict == "drift" and v.findings[0].code == "VT004"
        assert "BOS added 1 more time" in v.findings[0].message
        assert v.supervised_framework >= v.supervised_truth  # labels still on the answers


def test_gemma3_with_llava_templates_and_the_summary(gemma: tuple[Tok, object]) -> None:
    tok, _ = gemma
    report = check_template(ROWS, tokenizer=tok, template=["chat_template", "trl", "mpt", "v1"],
                            chat_template=GEMMA3, max_length=8)
    # max_length=8 ends inside the first user turn: no framework keeps a label
    for fw in ("chat_template", "trl"):
        assert all(v.verdict == "masked" and v.findings[0].code == "VT003" for v in report.verdicts_for(fw))
    assert report.masked_away["chat_template"] == report.masked_away["trl"] == 2
    # <|im_end|> is text to Gemma: preprocess_mpt's count is off and LLaVA masks every sample
    full = check_template(ROWS, tokenizer=tok, template="mpt")
    assert full.masked_away == {"mpt": 2} and all(f.code == "VT001" for f in full.findings)
    assert json.loads(json.dumps(report.to_dict()))["masked_away"] == report.masked_away
