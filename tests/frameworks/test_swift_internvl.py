"""``vlmcheck check`` on ``swift sft`` with InternVL3 ``-hf`` checkpoints (ms-swift's ``internvl_hf`` template),
proved against ms-swift 4.6's own ``load_dataset`` and encode in its environment (swift_env.py).

The template: chatml, no default system prompt; each image ``<img>``, then ``image_seq_length`` (256)
``<IMG_CONTEXT>`` per tile of the image processor called with ``crop_to_patches=True`` (the -hf checkpoint saves
false), then ``</img>\\n``; ``<IMG_CONTEXT>`` protected at the cut, so a cut takes text only; an ``<IMG_CONTEXT>``
written in a row's text stays one token, one more than the features (the model raises). The processor is
transformers' own InternVLProcessor built without its video processor (it needs torchvision, which has no CPU
build here): stand_in_processors.py, put where ms-swift's get_processor loads it.
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

SETTINGS = [(None, "raise"), (300, "raise"), (300, "left"), (300, "right"), (1400, "left"), (1400, "right")]
IMAGE_ID = 151667  # <IMG_CONTEXT>

ORACLE = "import json, sys\n" + ENCODE_ROWS + textwrap.dedent('''
    job = json.loads(sys.argv[1])
    sys.path.insert(0, job["helpers"])
    from stand_in_processors import internvl_processor
    from transformers import AutoProcessor, AutoTokenizer

    def from_pretrained(cls, path, *args, **kwargs):
        return internvl_processor(str(path), AutoTokenizer.from_pretrained(path))

    AutoProcessor.from_pretrained = classmethod(from_pretrained)
    from swift.model import get_processor

    processor = get_processor(job["checkpoint"], model_type="internvl")

    def measure(template, enc, row):
        ids = list(enc["input_ids"])
        tiles = 0 if enc.get("pixel_values") is None else int(enc["pixel_values"].shape[0])
        return {"tokens": len(ids), "labels": sum(1 for x in enc["labels"] if x != -100),
                "image_tokens": ids.count(job["image_id"]), "features": tiles * processor.image_seq_length,
                "images": len(row.get("images") or [])}

    out = encode_all(processor, "internvl_hf", loaded_rows(job["data"]), job["settings"], job["system"], measure)
    print("ORACLE" + json.dumps(out))
''')



def corpus(folder: Path) -> Path:
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, (200, 60, 90)).save(path)
        return str(path)

    wide, tall, small = image("wide", (900, 300)), image("tall", (200, 1300)), image("small", (20, 20))
    square, strip = image("square", (448, 448)), image("strip", (2400, 60))
    long = " ".join(f"word{i}" for i in range(150))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
    rows = [
        {"messages": [user("<image>What is shown?"), bot("A red field.")], "images": [wide]},
        {"messages": [user("Describe."), bot("\nTall.\n")], "images": [tall]},  # the tag is added
        {"messages": [{"role": "system", "content": "Be brief."}, user("<image>\nand <image>"), bot("Two."),
                      user("Sure?"), bot("Yes.")], "images": [square, small]},
        {"messages": [user("Hi."), bot("Hello.")]},
        {"messages": [{"role": "system", "content": ""}, user("<image>" + long), bot(long)], "images": [small]},
        {"messages": [user(long), bot(long), user("<image> again"), bot(long)], "images": [strip]},
        {"messages": [user("<image>Q"), bot("no", loss=False), user("Q2"), bot("yes")], "images": [square]},
        {"messages": [user("<image>Q"), bot("untrained last", loss=False)], "images": [small]},
        {"messages": [user("<image><image> two tags"), bot("one image")], "images": [small]},
        {"messages": [{"role": "system", "content": "See <image>."}, user("this"), bot("ok")], "images": [small]},
        {"messages": [user("unicode 漢字 ✓ <image>"), bot("  spaced  ")], "images": [wide]},
        {"messages": [user("<image>" * 3 + long), bot(long)], "images": [wide, small, square]},
        {"messages": [user("a literal <IMG_CONTEXT> and an image <image>"), bot("ok")], "images": [small]},
        {"messages": [user("a literal <IMG_CONTEXT> and no image"), bot("ok")]},
        {"messages": [user("<image>\n\nnewlines"), bot("\n\nanswer")], "images": [strip]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": k, **r}, ensure_ascii=False) + "\n" for k, r in enumerate(rows)))
    return data


@pytest.fixture(scope="module", params=[None, "You are a careful assistant."], ids=["no-system", "system"])
def oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from internvl_checkpoint import internvl_checkpoint

    folder = tmp_path_factory.mktemp("swift_internvl")
    data = corpus(folder)
    checkpoint = internvl_checkpoint()
    job = {"checkpoint": str(checkpoint), "data": str(data), "settings": SETTINGS, "image_id": IMAGE_ID,
           "system": request.param, "helpers": str(Path(__file__).parent)}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": checkpoint, "system": request.param,
            "results": json.loads(lines[-1][len("ORACLE"):])}


@pytest.mark.parametrize(("max_length", "strategy"), SETTINGS)
def test_each_row_is_judged_as_swifts_internvl_template_encodes_it(tmp_path: Path, oracle: dict[str, Any],
                                                                    max_length: int | None, strategy: str) -> None:
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
        # a row without images keeps its literal <IMG_CONTEXT> as text (no features to match: the model runs)
        assert kept == (row["tokens"], row["labels"], row["image_tokens"] if row["images"] else 0), (k, record, row)
        if row["images"]:  # every image's own count, against the oracle's tiles
            assert sum(record["image_tokens"]) == row["features"], (k, record, row)
        # the model checks image tokens against the features only when the row has images
        crash = row["images"] > 0 and row["image_tokens"] != row["features"]
        assert (frame["verdict"] == "crash") == crash, (k, record, row)


def test_the_corpus_reaches_each_outcome(oracle: dict[str, Any]) -> None:
    whole = oracle["results"]["None-raise"]
    assert len({r["features"] for r in whole if r["verdict"] == "ok" and r["images"]}) >= 4  # tile counts vary
    assert any(r["verdict"] == "ok" and r["images"] and r["image_tokens"] != r["features"] for r in whole)
    cut = 0
    for key, results in oracle["results"].items():
        limit, strategy = key.split("-")
        if strategy in ("left", "right"):
            cut += sum(1 for w, r in zip(whole, results)
                       if r["verdict"] == "ok" and w["verdict"] == "ok" and w["tokens"] > int(limit))
    assert cut >= 10
    assert sum(1 for r in oracle["results"]["300-raise"] if r["verdict"] == "dropped") >= 5
