"""``vlmcheck check`` on ``swift sft`` with Llama 3.2 Vision (ms-swift's ``llama3_2_vision`` template), proved
against ms-swift 4.6's own ``load_dataset``, encode and collator in its environment (swift_env.py), and a tiny real
MllamaForConditionalGeneration behind that collator.

The template: a system block dated the day the run starts (even without a system prompt), llama3 turns, one
``<|image|>`` per image; ``<|image|>`` protected at the cut. ``Llama3_2VisionTemplate._encode`` builds
``cross_attention_mask`` from the whole sample before the cut, which cuts only the ids: the model reads the mask's
first rows, so after a left cut (or a right cut that keeps a later ``<|image|>``) tokens attend the wrong images
and nothing raises (VC207). A literal ``<|image|>`` in a row with images is one image slot more than
``pixel_values``: the cross-attention raises a size mismatch (VC002, crash).
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
from swift_env import ENCODE_ROWS, check_launch, oracle_python

pytestmark = pytest.mark.slow

SETTINGS = [(None, "raise"), (70, "raise"), (70, "left"), (70, "right"), (160, "left"), (160, "right")]
IMAGE_ID = 128256  # <|image|>

ORACLE = "import json, sys\n" + ENCODE_ROWS + textwrap.dedent('''
    import numpy as np
    import torch
    from PIL import Image
    from swift.model import get_processor
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.image_utils import SizeDict
    from transformers.models.mllama.processing_mllama import (convert_sparse_cross_attention_mask_to_dense,
                                                              get_cross_attention_token_mask)

    job = json.loads(sys.argv[1])
    image_id = job["image_id"]
    processor = get_processor(job["checkpoint"], model_type="llama3_2_vision")
    # a tiny real model over 56 px tiles: the text never depends on the tile size, pixel_values are remade small
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(MllamaConfig(
        vision_config={"hidden_size": 16, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
                       "intermediate_size": 32, "vision_output_dim": 32, "image_size": 56, "patch_size": 14,
                       "max_num_tiles": 4, "intermediate_layers_indices": [0]},
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 64, "cross_attention_layers": [1]},
        image_token_index=image_id)).eval()

    def images_of(row, size):
        processor.image_processor.size = SizeDict(height=size, width=size)
        try:
            files = [p["path"] if isinstance(p, dict) else p for p in row["images"]]
            return processor.image_processor([Image.open(f) for f in files], return_tensors="pt")
        finally:
            processor.image_processor.size = SizeDict(height=560, width=560)

    def measure(t, enc, row):
        ids = list(enc["input_ids"])
        result = {"tokens": len(ids), "labels": sum(1 for x in enc["labels"] if x != -100),
                  "image_tokens": ids.count(image_id), "images": len(row.get("images") or [])}
        if result["images"]:
            # the mask the model reads (its first rows) against the one the ids left would make
            tiles = images_of(row, 560)["num_tiles"]
            right = np.asarray(convert_sparse_cross_attention_mask_to_dense(
                [get_cross_attention_token_mask(ids, image_id)], num_tiles=tiles, max_num_tiles=4,
                length=len(ids))[0])
            read = enc["cross_attention_mask"][0, :len(ids)].numpy()
            if right.shape[1] == read.shape[1]:
                result["misaligned"] = int((right != read).any(axis=(1, 2)).sum())
            sample = dict(enc)
            sample.update({k: v for k, v in images_of(row, 56).items() if k != "num_tiles"})
            try:
                batch = t.data_collator([sample])
                with torch.no_grad():
                    model(**{k: v for k, v in batch.items() if k in (
                        "input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask",
                        "cross_attention_mask")})
                result["forward"] = None
            except Exception as e:
                result["forward"] = f"{type(e).__name__}: {str(e)[:160]}"
        return result

    out = encode_all(processor, "llama3_2_vision", loaded_rows(job["data"]), job["settings"], job["system"],
                     measure)
    print("ORACLE" + json.dumps(out))
''')



def corpus(folder: Path) -> Path:
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, (40, 90, 200)).save(path)
        return str(path)

    wide, tall, small = image("wide", (900, 300)), image("tall", (200, 1300)), image("small", (20, 20))
    long = " ".join(f"word{i}" for i in range(60))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
    rows = [
        {"messages": [user("<image>What is shown?"), bot("A blue field.")], "images": [wide]},
        {"messages": [user("Describe."), bot("\nTall.\n")], "images": [tall]},  # the tag is added
        {"messages": [{"role": "system", "content": "Be brief."}, user("<image>\nand <image>"), bot("Two."),
                      user("Sure?"), bot("Yes.")], "images": [wide, small]},
        {"messages": [user("Hi."), bot("Hello.")]},
        {"messages": [{"role": "system", "content": ""}, user("<image>" + long), bot(long)], "images": [small]},
        {"messages": [user(long), bot(long), user("<image> again"), bot(long)], "images": [tall]},
        {"messages": [user("<image>Q"), bot("no", loss=False), user("Q2 " + long), bot("yes")], "images": [wide]},
        {"messages": [user("<image>Q"), bot("untrained last", loss=False)], "images": [small]},
        {"messages": [user("<image><image> two tags"), bot("one image")], "images": [small]},
        {"messages": [{"role": "system", "content": "See <image>."}, user("this"), bot("ok")], "images": [small]},
        {"messages": [user("unicode 漢字 ✓ <image>"), bot("  spaced  ")], "images": [wide]},
        {"messages": [user("<image>" + long + "<image>" + long), bot(long)], "images": [wide, small]},
        {"messages": [user("<image><image>" + long), bot(long), user("<image>" + long), bot("end")],
         "images": [wide, small, tall]},
        {"messages": [user("a literal <|image|> and an image <image>"), bot("ok")], "images": [small]},
        {"messages": [user("a literal <|image|> and no image"), bot("ok")]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": k, **r}, ensure_ascii=False) + "\n" for k, r in enumerate(rows)))
    return data


@pytest.fixture(scope="module", params=[None, "You are a careful assistant."], ids=["no-system", "system"])
def oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mllama_checkpoint import mllama_checkpoint

    folder = tmp_path_factory.mktemp("swift_llama_vision")
    data = corpus(folder)
    checkpoint = mllama_checkpoint()
    job = {"checkpoint": str(checkpoint), "data": str(data), "settings": SETTINGS, "image_id": IMAGE_ID,
           "system": request.param}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": checkpoint, "system": request.param,
            "results": json.loads(lines[-1][len("ORACLE"):])}


@pytest.mark.parametrize(("max_length", "strategy"), SETTINGS)
def test_each_row_is_judged_as_swifts_llama_vision_template_encodes_it(
        tmp_path: Path, oracle: dict[str, Any], max_length: int | None, strategy: str) -> None:
    ours = check_launch(tmp_path, oracle, max_length, strategy,
                        *([f"--system '{oracle['system']}'"] if oracle["system"] else []))
    theirs = oracle["results"][f"{max_length}-{strategy}"]
    assert len(ours) == len(theirs)
    for k, (record, row) in enumerate(zip(ours, theirs)):
        frame = record["framework"]
        if row["verdict"] in ("deleted", "error", "dropped"):
            assert frame["verdict"] == "dropped", (k, record, row)
            continue
        kept = (frame["kept_tokens"], frame["kept_supervised"],
                sum(frame["kept_image_tokens"]) + frame.get("kept_literal_image_tokens", 0))
        # a row without images keeps its literal <|image|> as text (no images: no cross-attention)
        assert kept == (row["tokens"], row["labels"], row["image_tokens"] if row["images"] else 0), (k, record, row)
        if not row["images"]:
            assert frame["verdict"] in ("ok", "cut"), (k, record, row)
            continue
        # the tiny model behind ms-swift's collator raises exactly on the rows judged a crash
        assert (frame["verdict"] == "crash") == (row["forward"] is not None), (k, record, row)
        if "misaligned" in row:  # the mask the model reads against the ids left: VC207 with its count
            assert frame.get("misaligned_tokens", 0) == row["misaligned"], (k, record, row)
            assert ("VC207" in record["findings"]) == (row["misaligned"] > 0), (k, record, row)


def test_the_corpus_reaches_each_outcome(oracle: dict[str, Any]) -> None:
    results = [r for rows in oracle["results"].values() for r in rows]
    assert sum(1 for r in results if r.get("misaligned")) >= 8  # silent misalignments after cuts
    assert sum(1 for r in results if r.get("forward")) >= 6  # crashes (the literal <|image|>)
    assert sum(1 for r in results if r.get("forward", "") is None) >= 30  # samples that run
    assert sum(1 for r in oracle["results"]["70-raise"] if r["verdict"] == "dropped") >= 5
