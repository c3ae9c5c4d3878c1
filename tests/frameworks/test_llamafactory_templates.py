"""LLaMA-Factory's templates beyond Qwen-VL (``gemma3``, ``llava``, ``llava_next``), proved per sample against its own
data pipeline, as test_llamafactory_check.py proves the Qwen-VL ones.

For each template: the same generated corpus (lf_corpus.py: every image size class, multi-image multi-turn rows,
empty / missing / leading-turn system prompts, answers starting with newlines, custom ``dataset_info.json``
mappings, rows LLaMA-Factory drops and rows on which it raises) under its defaults (no ``cutoff_len``, no pixel
budget) and three ``cutoff_len`` values with ``mask_history``, ``train_on_prompt``, ``default_system``,
``max_samples`` and several pixel budgets, plus the template's own switches (Gemma 3's ``image_do_pan_and_scan``).
LLaMA-Factory 0.9.5 runs them in its own environment (llamafactory_oracle_runner.py: ``get_train_args``,
``load_tokenizer`` with the checkpoint's real processor class, the template and its mm_plugin, ``infer_seqlen``,
then ``get_dataset`` on the whole config); every row must agree on kept / dropped / raising, the untruncated
total, each image's feature count (from the image processor's output and the checkpoint's config, as the model
computes it), the tokens and labels kept by the cut, and the image tokens left (the crash verdict).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from lf_corpus import write_template_corpus
from llamafactory_env import oracle_env
from test_llamafactory_check import assert_agreement, outcome, run_oracle

import vlmcheck

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py


def _gemma3() -> Path:
    from gemma3_checkpoint import gemma3_checkpoint

    return gemma3_checkpoint()


def _llava() -> Path:
    from llava_checkpoint import llava_checkpoint

    return llava_checkpoint()


def _llava_next() -> Path:
    from llava_next_checkpoint import llava_next_checkpoint

    return llava_next_checkpoint()


def _internvl() -> Path:
    from internvl_checkpoint import internvl_checkpoint

    return internvl_checkpoint()


def _paligemma() -> Path:
    from paligemma_checkpoint import paligemma_checkpoint

    return paligemma_checkpoint()


def _mllama() -> Path:
    from mllama_checkpoint import mllama_checkpoint

    return mllama_checkpoint()


def _glm4v() -> Path:
    from glm4v_checkpoint import glm4v_checkpoint

    return glm4v_checkpoint()


def _pixtral() -> Path:
    from pixtral_checkpoint import pixtral_checkpoint

    return pixtral_checkpoint()


# mistralai/Ministral-3-3B-Instruct-2512 config.json: a Mistral3ForConditionalGeneration (model_type "mistral3")
# whose text model is transformers 5's "ministral3" (Ministral3Config), with Mistral Small 3.1's Pixtral vision tower
# settings (patch 14, image size 1540, spatial merge 2) and the same PixtralProcessor files; only the model types and
# the vision values reach the counts, the text sizes are the 3B's
MINISTRAL3_TEXT = {"model_type": "ministral3", "hidden_size": 3072, "head_dim": 128, "intermediate_size": 9216,
                   "num_hidden_layers": 26, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "max_position_embeddings": 262144, "vocab_size": 131072, "tie_word_embeddings": True}


def _ministral3() -> Path:
    """A Ministral 3 checkpoint folder (weightless): the Mistral Small 3.1 fixture's tokenizer (Tekken, BOS) and
    processor files, its config.json's text model a ministral3; no chat template (LLaMA-Factory's ``ministral3``
    template writes the text)."""
    import shutil

    from pixtral_checkpoint import CHECKPOINTS, pixtral_checkpoint
    from tekken_vocab import _cache

    dest = _cache() / "checkpoint-ministral-3-3b"
    if not (dest / "config.json").is_file():
        source = pixtral_checkpoint("mistral-small-3.1")
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("chat_template.jinja", "config.json"))
        config = {**CHECKPOINTS["mistral-small-3.1"]["config"], "text_config": MINISTRAL3_TEXT}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


# template -> (checkpoint, cutoff_len values small to large for its image sizes, its own extra configs)
CASES: dict[str, tuple[Any, tuple[int, int, int], dict[str, dict[str, Any]]]] = {
    "gemma3": (_gemma3, (300, 700, 1400), {
        "pan": {"dataset": "sg,oa", "image_do_pan_and_scan": True, "cutoff_len": 1500},
        "pan_tight": {"dataset": "chat,alp", "image_do_pan_and_scan": True, "cutoff_len": 900,
                      "image_max_pixels": 2_000_000},
    }),
    "llava": (_llava, (500, 900, 1600), {}),
    # one <|image|> an image: only the smallest cutoff_len values reach image tokens
    "mllama": (_mllama, (40, 120, 400), {}),
    # efficient_eos: LLaMA-Factory refuses train_on_prompt, so its prompt config trains on answers only; and the
    # reasoning template without enable_thinking
    "glm4v": (_glm4v, (300, 700, 1400), {
        "prompt": {"dataset": "alp,oa", "cutoff_len": 1400, "image_max_pixels": 50_176,
                   "default_system": "Answer in one short sentence.", "max_samples": 12},
        "nothink": {"dataset": "sg,chat", "cutoff_len": 500, "enable_thinking": False, "mask_history": True},
    }),
    "llava_next": (_llava_next, (1000, 2000, 3000), {}),
    "pixtral": (_pixtral, (600, 1500, 3000), {}),
    # pixtral's strings on a Ministral 3 checkpoint (Mistral Small 3.1's image grid: 28 px a token); a budget that
    # keeps images whole at a cutoff_len that still cuts some, and a system prompt on every row
    "ministral3": (_ministral3, (500, 1200, 2500), {
        "system": {"dataset": "sg,alp", "cutoff_len": 900, "image_max_pixels": 100_000,
                   "default_system": "Describe what you see."},
    }),
    # every image's 256 tokens go before the sample and are never cut: no crash, but cutoff_len values below a
    # sample's image tokens leave it no text at all
    "paligemma": (_paligemma, (300, 600, 1200), {
        # packing drops what the cut cannot take: a sample whose image prefix alone is over cutoff_len - 1
        "pack": {"dataset": "sg,alp", "cutoff_len": 500, "packing": True},
    }),
    # the checkpoint's image processor does not crop (crop_to_patches false, as on the hub): 256 tokens an image;
    # LLaMA-Factory's crop_to_patches tiles it (up to 12 + 1 tiles)
    "intern_vl": (_internvl, (300, 700, 1400), {
        "crop": {"dataset": "sg,oa", "crop_to_patches": True, "cutoff_len": 3000},
        "crop_tight": {"dataset": "chat,alp", "crop_to_patches": True, "cutoff_len": 1500,
                       "image_max_pixels": 2_000_000},
    }),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def proof(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          llamafactory_python: Path) -> dict[str, Any]:
    template = request.param
    make, cutoffs, extra = CASES[template]
    root = tmp_path_factory.mktemp(f"lf_{template}")
    configs = write_template_corpus(root, template, make(), seed=31, rows=12, cutoffs=cutoffs, extra=extra)
    data = root / "data"
    # Llama 3.2 Vision: a tiny real model runs forward on cut and whole samples through LLaMA-Factory's collator
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=3 if template == "mllama" else 0)
    mine: dict[str, list[dict[str, Any]]] = {}
    cut_messages: dict[str, list[str]] = {}  # the VC201 findings' messages
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        for config in configs:
            records = root / f"{config.stem}.jsonl"
            report = vlmcheck.check(config, output=records)
            mine[config.stem] = [json.loads(line) for line in records.read_text().splitlines()]
            cut_messages[config.stem] = [f.message for f in report.findings if f.code == "VC201"]
    return {"template": template, "oracle": oracle, "mine": mine, "cut_messages": cut_messages}


def test_every_sample_agrees_with_llamafactory(proof: dict[str, Any]) -> None:
    assert_agreement(proof, at_least=100)


def test_the_per_row_oracle_is_get_dataset(proof: dict[str, Any]) -> None:
    for name, result in proof["oracle"].items():
        check = result["get_dataset"]
        if any(r["error"] for r in result["rows"]):
            assert "error" in check, f"{name}: rows raise but get_dataset does not"
        else:
            assert check.get("same_as_rows") is True, f"{name}: {check}"
        assert result["llamafactory"] == "0.9.5"
        # only Pixtral's and InternVL's processors cannot load without torchvision (the runner builds the real
        # classes)
        assert result["built_processor"] == (proof["template"] in ("pixtral", "ministral3", "intern_vl", "glm4v"))


def test_the_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """Not vacuous: LLaMA-Factory crashes, drops, cuts text and keeps samples whole here, and multi-image rows and
    several cutoff_len values (its default among them) are judged."""
    oracle = proof["oracle"]
    assert oracle[f"{proof['template']}-defaults"]["cutoff_len"] == 2048
    outcomes: Counter[str] = Counter()
    for result in oracle.values():
        for r in result["rows"]:
            outcomes[outcome(r)] += 1
            if r["kept"] and not r["error"]:
                outcomes["multi-image"] += len(r["image_features"]) > 1
                outcomes["no labels left"] += r["kept_supervised"] == 0 < r["supervised"]
    if proof["template"] == "paligemma":  # its image tokens are never cut: whole prompts and answers are
        assert outcomes["crash"] == 0 and outcomes["no labels left"] >= 3, outcomes
    else:
        assert outcomes["crash"] >= 5, outcomes
    assert outcomes["dropped"] >= 3 and outcomes["whole"] >= 40, outcomes
    assert outcomes["text cut"] >= 1 and outcomes["raises"] >= 3 and outcomes["multi-image"] >= 10, outcomes
    assert len({result["cutoff_len"] for result in oracle.values()}) >= 4


def test_a_cut_image_token_of_llama_vision_breaks_the_cross_attention(proof: dict[str, Any]) -> None:
    """Llama 3.2 Vision has one <|image|> an image and no feature count to mismatch; what a cut does is LLaMA-Factory's
    own: its MllamaPlugin builds cross_attention_mask from the <|image|> ids left. A tiny real
    MllamaForConditionalGeneration, through LLaMA-Factory's collator: every sample vlmcheck calls a crash raises the
    size mismatch alone and goes through batched with a whole sample holding as many images; the whole ones never
    raise."""
    if proof["template"] != "mllama":
        pytest.skip("Llama 3.2 Vision only")
    runs = batched = 0
    for name, result in proof["oracle"].items():
        positions = {(row["dataset"], row["row"]): k for k, row in enumerate(result["rows"])}
        for run in result.get("forward", []):
            record = proof["mine"][name][positions[(run["dataset"], run["row"])]]
            if record["framework"]["verdict"] == "crash":
                assert run["error"] and "must match the size of tensor b" in run["error"], (name, run)
                if "batched_with_whole" in run:
                    assert run["batched_with_whole"]["error"] is None, (name, run)
                    batched += 1
                assert "VC201" in record["findings"], (name, record)
            else:
                assert run["error"] is None, (name, run)
            runs += 1
    assert runs >= 10 and batched >= 5, (runs, batched)
    messages = [m for found in proof["cut_messages"].values() for m in found]
    assert messages and all("The size of tensor a must match the size of tensor b" in m for m in messages)


_REFUSES = """
import sys, yaml
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_template_and_fix_tokenizer
args = yaml.safe_load(open(sys.argv[1]))
args.update(do_train=True, output_dir=sys.argv[2], report_to="none")
model_args, data_args, *_ = get_train_args(args)
try:
    get_template_and_fix_tokenizer(load_tokenizer(model_args)["tokenizer"], data_args)
except Exception as e:
    print("REFUSED", e)
else:
    print("ACCEPTED")
"""


@pytest.mark.parametrize("train_on_prompt", [True, False])
def test_glm4v_train_on_prompt_is_refused_where_llamafactory_refuses_it(
        tmp_path: Path, llamafactory_python: Path, train_on_prompt: bool) -> None:
    """glm4v's efficient_eos: LLaMA-Factory's own template loader refuses train_on_prompt; vlmcheck check refuses
    the same config with the reason, and accepts it without the flag."""
    config = write_template_corpus(tmp_path, "glm4v", _glm4v(), seed=5, rows=2, cutoffs=(300, 700, 1400))[1]
    raw = yaml.safe_load(config.read_text())
    raw.update(train_on_prompt=train_on_prompt, mask_history=False)
    config.write_text(yaml.safe_dump(raw))
    data = tmp_path / "data"
    done = subprocess.run([str(llamafactory_python), "-c", _REFUSES, str(config), str(tmp_path / "out")], cwd=data,
                          env=oracle_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = done.stdout.strip().splitlines()[-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        if train_on_prompt:
            assert verdict.startswith("REFUSED") and "train_on_prompt" in verdict, verdict
            with pytest.raises(vlmcheck.UsageError, match="does not support train_on_prompt"):
                vlmcheck.check(config)
        else:
            assert verdict == "ACCEPTED", verdict
            records = list(vlmcheck.check(config).records())
            assert records and all(r["framework"]["verdict"] for r in records)


def test_packing_drops_only_what_the_cut_cannot_take(proof: dict[str, Any]) -> None:
    """With packing LLaMA-Factory still cuts each sample pair by pair; PackedSupervisedDatasetProcessor then drops
    only a sample longer than cutoff_len after the cut: PaliGemma's image prefix, which the cut never takes."""
    if proof["template"] != "paligemma":
        pytest.skip("PaliGemma only")
    oracle, mine = proof["oracle"]["paligemma-pack"], proof["mine"]["paligemma-pack"]
    dropped = [(row, record) for row, record in zip(oracle["rows"], mine) if "VC204" in record["findings"]]
    assert len(dropped) >= 2, [r["findings"] for r in mine]
    assert all(not row["kept"] and not row["error"] for row, _ in dropped)
    kept_cut = [row for row in oracle["rows"] if row["kept"] and row["kept_tokens"] < row["tokens"]]
    assert kept_cut, "no sample was cut and kept under packing"
