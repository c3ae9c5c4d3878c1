"""``vlmcheck check`` on ``swift sft`` with Gemma 3 (ms-swift's ``gemma3_vision`` template), proved against
ms-swift 4.6's own encode in its environment (swift_env.py) and a tiny random Gemma 3 behind its own collator.

What the template does, as the oracle shows it: ``<bos>``, ``<start_of_turn>user\\n{query}<end_of_turn>\\n
<start_of_turn>model\\n`` per round, the row's system prompt (even an empty one) plus "\\n\\n" opening the first
question, answers stripped of newlines, ``<end_of_turn>`` trained after every answer, each ``<image>`` written as
``<start_of_image>`` and replaced by the processor's 260-token image sequence. Under transformers 5.15+ its
``Template._truncate`` protects only ``<start_of_image>``: a left or right cut takes the 256 soft image tokens like
text, and the model raises "Image features and image tokens do not match".
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from swift_env import check_launch, oracle_python

SETTINGS = [(None, "raise"), (300, "raise"), (300, "left"), (300, "right"), (700, "left"), (700, "right")]
SOFT, FEATURES = 262144, 256  # <image_soft_token>, Gemma 3's tokens per image

ORACLE = textwrap.dedent('''
    import json, sys
    import torch
    from swift.dataset import load_dataset
    from swift.model import get_model_processor
    from swift.template import MaxLengthError, get_template

    job = json.loads(sys.argv[1])
    folder, data = job["tiny"], job["data"]

    # ms-swift's loader on a tiny random Gemma 3 (the checkpoint's config shrunk; its own tokenizer and processor)
    model, processor = get_model_processor(folder, model_type="gemma3_vision", torch_dtype=torch.float32,
                                           load_model=True)
    model.eval()
    wanted = [json.loads(line)["id"] for line in open(data)]
    loaded, _ = load_dataset([data], split_dataset_ratio=0, remove_unused_columns=False, strict=False,
                             load_from_cache_file=False)
    by_id = {r["id"]: {k: v for k, v in r.items() if v is not None} for r in loaded}
    rows = [by_id.get(i) for i in wanted]

    def template(max_length, strategy):
        t = get_template(processor, max_length=max_length, truncation_strategy=strategy,
                         template_type="gemma3_vision")
        t.set_mode("train")
        return t

    def forward(enc):
        batch = template(None, "raise").data_collator([enc])
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids",
                                                            "pixel_values", "labels")}
        try:
            with torch.no_grad():
                model(**inputs)
            return None
        except Exception as e:
            return repr(e)[:200]

    out, ran = {}, {"crash": 0, "whole": 0}
    for max_length, strategy in job["settings"]:
        results = []
        t = template(max_length, strategy)
        for k, row in enumerate(rows):
            if row is None:
                results.append({"verdict": "deleted"})
                continue
            try:
                enc = t.encode(json.loads(json.dumps(row)))
            except MaxLengthError:
                results.append({"verdict": "dropped"})
                continue
            except Exception as e:
                results.append({"verdict": "error", "error": repr(e)[:200]})
                continue
            ids = list(enc["input_ids"])
            n = len(row.get("images") or [])
            r = {"verdict": "ok", "tokens": len(ids), "labels": sum(1 for x in enc["labels"] if x != -100),
                 "soft": ids.count(job["soft"]), "images": n}
            crash = n > 0 and r["soft"] != n * job["features"]
            kind = "crash" if crash else "whole"
            if n and ran[kind] < job["forward"]:  # a sample of each verdict through the real model
                r["raised"] = forward(enc)
                ran[kind] += 1
            results.append(r)
        out[f"{max_length}-{strategy}"] = results
    print("ORACLE" + json.dumps(out))
''')


def corpus(folder: Path) -> Path:
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, (90, 20, 160)).save(path)
        return str(path)

    photo, square, thin, big = image("photo", (640, 480)), image("square", (224, 224)), image("thin", (10, 600)), \
        image("big", (3000, 2000))
    long = " ".join(f"word{i}" for i in range(160))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
    rows = [
        {"messages": [{"role": "system", "content": "You are terse."}, user("<image>What is shown?"),
                      bot("\nA purple field.\n")], "images": [photo]},
        {"messages": [user("Describe the picture."), bot("Teal.")], "images": [square]},  # the tag is added
        {"messages": [{"role": "system", "content": "Compare."}, user("First <image> then <image>. Same?"),
                      bot("No."), user("Which is bigger?"), bot("\n\nThe second.\n\n")], "images": [photo, big]},
        {"messages": [user("Look."), bot("Ok."), user("And <image>?"), bot(long)], "images": [thin, square]},
        {"messages": [user("Hi."), bot("Hello.")]},
        {"messages": [{"role": "system", "content": ""}, user("<image>" + long), bot("Thin.")], "images": [thin]},
        {"messages": [user(long), bot(long), user("<image> again " + long), bot(long)], "images": [big]},
        {"messages": [user("<image><image><image> three"), bot(long)], "images": [photo, square, thin]},
        {"messages": [user("<image>Not trained"), bot("ignored", loss=False)], "images": [photo]},
        {"messages": [user("<image>Q"), bot("kept", loss=False), user("Q2"), bot("trained")], "images": [square]},
        {"messages": [user("<image><image> two tags"), bot("one image")], "images": [photo]},  # more tags
        {"messages": [user("<image>literal <start_of_image> here"), bot("x")], "images": [photo]},
        {"messages": [user("no image but <start_of_image>"), bot("y")]},
        {"messages": [{"role": "system", "content": "Sys <image> tag."}, user("where"), bot("z")],
         "images": [square]},
        {"messages": [user(long + " <image>"), bot("  spaced \n")], "images": [big]},
        {"messages": [user("<image>" * 2 + long), bot(long + long)], "images": [photo, photo]},
        # consecutive answers are merged into parts before Gemma3Template strips newlines: none are stripped
        {"messages": [user("<image>Q"), bot("one\n"), bot("\ntwo\n")], "images": [square]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": k, **r}) + "\n" for k, r in enumerate(rows)))
    return data


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gemma3_checkpoint import gemma3_checkpoint, gemma3_small_checkpoint, tiny_gemma3_model

    python = oracle_python()
    folder = tmp_path_factory.mktemp("swift_gemma3")
    data = corpus(folder)
    checkpoint = gemma3_checkpoint()
    tiny = folder / "tiny"
    # random weights, Gemma 3's vocabulary and 256 tokens per image, its SigLIP at 224 px (the files of the checkpoint
    # variant that resizes to 224: the token counts are the same)
    tiny_gemma3_model().save_pretrained(tiny)
    for file in gemma3_small_checkpoint().iterdir():
        if file.name != "config.json":
            (tiny / file.name).write_bytes(file.read_bytes())
    job = {"tiny": str(tiny), "data": str(data), "settings": SETTINGS, "soft": SOFT, "features": FEATURES,
           "forward": 3}
    done = subprocess.run([str(python), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": checkpoint, "results": json.loads(lines[-1][len("ORACLE"):])}


def records(tmp_path: Path, oracle: dict[str, Any], max_length: int | None, strategy: str) -> list[dict[str, Any]]:
    return check_launch(tmp_path, oracle, max_length, strategy, "--train_type lora")


@pytest.mark.parametrize(("max_length", "strategy"), SETTINGS)
def test_each_row_is_judged_as_swifts_gemma3_template_encodes_it(tmp_path: Path, oracle: dict[str, Any],
                                                                  max_length: int | None, strategy: str) -> None:
    ours = records(tmp_path, oracle, max_length, strategy)
    theirs = oracle["results"][f"{max_length}-{strategy}"]
    assert len(ours) == len(theirs)
    for k, (record, row) in enumerate(zip(ours, theirs)):
        frame = record["framework"]
        if row["verdict"] in ("deleted", "error", "dropped"):
            assert frame["verdict"] == "dropped", (k, record, row)
            continue
        kept = (frame["kept_tokens"], frame["kept_supervised"],
                sum(frame["kept_image_tokens"]) + frame.get("kept_literal_image_tokens", 0))
        assert kept == (row["tokens"], row["labels"], row["soft"]), (k, record, row)
        crash = row["images"] > 0 and row["soft"] != row["images"] * FEATURES
        assert (frame["verdict"] == "crash") == crash, (k, record, row)
        if "raised" in row:  # the tiny model raises exactly on the samples judged crash
            assert (row["raised"] is not None) == crash, (k, row)


def test_the_corpus_reaches_each_outcome(oracle: dict[str, Any]) -> None:
    rows = [r for results in oracle["results"].values() for r in results]
    crashes = [r for r in rows if r["verdict"] == "ok" and r["images"] and r["soft"] != r["images"] * FEATURES]
    assert len(crashes) >= 8
    assert sum(1 for r in rows if r["verdict"] == "dropped") >= 5
    forwarded = [r for r in rows if "raised" in r]
    assert sum(1 for r in forwarded if r["raised"]) >= 3 and sum(1 for r in forwarded if not r["raised"]) >= 3
    assert all("do not match" in r["raised"] for r in forwarded if r["raised"])


def test_before_transformers_5_15_the_cut_keeps_gemma3s_image_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       oracle: dict[str, Any]) -> None:
    # Gemma3Processor.image_token_id was the soft token until transformers 5.15 (read in 4.57.1 and 5.14.0): then
    # Template._truncate protects the 256 soft tokens as it protects Qwen's, and a left or right cut takes text only
    from vlmcheck.frameworks import swift

    monkeypatch.setattr(swift, "_transformers_version", lambda: ("4.57.1", False))
    ours = records(tmp_path, oracle, 300, "left")
    judged = [r for r in ours if r["framework"]["verdict"] in ("ok", "cut", "crash")]
    assert judged and all(r["framework"]["verdict"] != "crash" or "VC002" in r["findings"] for r in judged)
    assert all(sum(r["framework"]["kept_image_tokens"]) == sum(r["image_tokens"]) for r in judged)
