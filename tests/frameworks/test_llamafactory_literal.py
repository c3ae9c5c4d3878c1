"""A model's own image token written as text in a row (``<|image_pad|>`` in an answer, ``<image>`` in a LLaVA system
prompt, ``[IMG]`` in a Pixtral question): LLaMA-Factory expands only the ``<image>`` placeholders of the messages,
the tokenizer turns the literal string into the image token id, nothing checks it while the data is prepared, and the
model then sees more image tokens than features and raises, unless the cut removes the literal. vlmcheck must say
the same per sample (proved against LLaMA-Factory 0.9.5's own pipeline, and for Qwen2-VL through its collator and a
tiny random model): the token counts, a crash when the literal survives the cut, no crash when the cut takes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from PIL import Image
from test_llamafactory_check import assert_agreement, check_configs, run_oracle

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py

# template -> (the model's image token, checkpoint factory module and function, a cutoff_len)
TEMPLATES: dict[str, tuple[str, str, int]] = {
    "llava": ("<image>", "llava_checkpoint", 700),
    "paligemma": ("<image>", "paligemma_checkpoint", 300),
    "gemma3": ("<image_soft_token>", "gemma3_checkpoint", 400),
    "intern_vl": ("<IMG_CONTEXT>", "internvl_checkpoint", 400),
    "pixtral": ("[IMG]", "pixtral_checkpoint", 300),
    "glm4v": ("<|image|>", "glm4v_checkpoint", 200),
}
LONG = " ".join(["word"] * 300)


def _rows(token: str, placeholder_is_token: bool) -> list[dict[str, Any]]:
    """Rows whose text holds ``token`` outside the messages' placeholders: in the system prompt (always), and, when
    the token is not itself the ``<image>`` placeholder (LLaMA-Factory counts those in the messages and raises), in
    a question, in an answer, at the end of an answer long enough to be cut, and in a row without images."""
    def row(user: str, answer: str, images: list[str], system: str = "") -> dict[str, Any]:
        return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}],
                "images": images, "system": system}

    rows = [row("<image>What is it?", "A square.", ["images/sq56.png"], system=f"{token} be brief"),
            row("Hello?", "Hi.", [], system=f"Look: {token}"),
            row("<image>Describe.", "A plain picture.", ["images/wide.png"])]  # no literal: the control
    if not placeholder_is_token:
        rows += [row("<image>Describe.", f"A pad {token} here.", ["images/sq56.png"]),
                 row(f"<image>What is {token} this?", "Nothing.", ["images/wide.png"]),
                 row("<image>Describe.", f"{LONG} {token}", ["images/sq56.png"]),  # the cut takes the literal
                 row(f"No image, just {token}.", "Fine.", [])]
    # a literal "{{idx}}" in a question: Template._encode formats each user turn with idx=str(i // 2), and the
    # formatter replaces the first "{{idx}}" of the formatted slot, the user's own (Llama2Template passes no idx);
    # the same text in an answer or a system prompt stays
    rows += [row("<image>Turn {{idx}}: {{idx}} what?", "Answer {{idx}}.", ["images/sq56.png"], system="S {{idx}}"),
             {"conversations": [{"from": "human", "value": "<image>first"}, {"from": "gpt", "value": "one"},
                                {"from": "human", "value": "second {{idx}}"}, {"from": "gpt", "value": "two"}],
              "images": ["images/wide.png"], "system": ""}]
    return rows


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    import importlib

    root = tmp_path_factory.mktemp("lf_literal")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(data / "images" / "sq56.png")
    Image.new("RGB", (300, 120), (20, 90, 200)).save(data / "images" / "wide.png")
    info = {}
    configs: dict[str, dict[str, Any]] = {}
    for name, token, module, cutoff, ckpt in [
        ("qwen2_vl", "<|image_pad|>", None, 100, qwen2_vl_checkpoint),
        *((n, t, m, c, None) for n, (t, m, c) in TEMPLATES.items()),
    ]:
        (data / f"{name}.json").write_text(json.dumps(_rows(token, token == "<image>")))
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                      "columns": {"messages": "conversations", "images": "images", "system": "system"}}
        if ckpt is None:
            ckpt = getattr(importlib.import_module(module), module)()
        model = {"model_name_or_path": str(ckpt), "template": name, "dataset": name}
        configs[f"{name}-cut"] = {**model, "cutoff_len": cutoff}
        configs[f"{name}-whole"] = {**model, "cutoff_len": 4096}
    (data / "dataset_info.json").write_text(json.dumps(info))
    paths = write_configs(root, data, configs)
    return {"oracle": run_oracle(llamafactory_python, paths, cwd=data, forward=8), "mine": check_configs(paths, data)}


def test_every_sample_agrees_with_llamafactory(proof: dict[str, Any]) -> None:
    assert_agreement(proof, at_least=80)


def test_a_literal_left_by_the_cut_is_a_crash_and_one_cut_away_is_not(proof: dict[str, Any]) -> None:
    """Not vacuous: every template has rows LLaMA-Factory keeps with one image token more than features; the
    long Qwen2-VL answer keeps it whole (crash) and loses it at cutoff_len 100 (no crash)."""
    for name, result in proof["oracle"].items():
        crashes = [(r, rec) for r, rec in zip(result["rows"], proof["mine"][name]) if r["kept"] and r["crash"]]
        assert crashes, name
        assert any("VC002" in rec["findings"] for _, rec in crashes), name  # (others: an image span cut)
    long_cut = proof["oracle"]["qwen2_vl-cut"]["rows"][5]
    long_whole = proof["oracle"]["qwen2_vl-whole"]["rows"][5]
    assert long_whole["crash"] and not long_cut["crash"] and long_cut["kept_tokens"] < long_cut["tokens"]
    assert proof["mine"]["qwen2_vl-cut"][5]["framework"]["verdict"] != "crash"


def test_the_model_raises_on_the_literal_rows(proof: dict[str, Any]) -> None:
    """A tiny random Qwen2-VL behind LLaMA-Factory's collator raises on every row judged a crash (a literal kept,
    with or without images: the collator's stand-in image for text-only batches meets the literal) and runs the
    others."""
    for name in ("qwen2_vl-cut", "qwen2_vl-whole"):
        forward = proof["oracle"][name]["forward"]
        verdicts = {(rec["framework"]["dataset"], rec["framework"]["row"]): rec["framework"]["verdict"]
                    for rec in proof["mine"][name]}
        assert forward, name
        for run in forward:
            crash = verdicts[(run["dataset"], run["row"])] == "crash"
            assert bool(run["error"]) == crash, (name, run)
