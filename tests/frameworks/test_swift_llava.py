"""``vlmcheck check`` on ``swift sft`` with LLaVA-1.5 (ms-swift's ``llava1_5_hf`` template), proved against
ms-swift 4.6's own ``load_dataset`` and encode in its environment (swift_env.py).

The template: ``<s>`` (or ``<s>{system}\\n``), ``USER: {query}\\nASSISTANT:`` per round, the answer, ``</s>`` after
every answer (trained); each ``<image>`` written ``<image>\\n`` and its image token repeated to the processor's
feature count (576 for CLIP's 336 px crop). ``Template._truncate`` protects the image token: a cut takes text only.
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

SETTINGS = [(None, "raise"), (200, "raise"), (200, "left"), (200, "right"), (650, "left"), (650, "right")]
IMAGE_ID = 32000  # <image>
FEATURES = 576  # CLIP's 336 px crop: 24 x 24 patches

ORACLE = "import json, sys\n" + ENCODE_ROWS + textwrap.dedent('''
    from swift.model import get_processor

    job = json.loads(sys.argv[1])
    processor = get_processor(job["checkpoint"], model_type="llava1_5_hf")

    def measure(template, enc, row):
        ids = list(enc["input_ids"])
        return {"tokens": len(ids), "labels": sum(1 for x in enc["labels"] if x != -100),
                "image_tokens": ids.count(job["image_id"]), "images": len(row.get("images") or [])}

    out = encode_all(processor, "llava1_5_hf", loaded_rows(job["data"]), job["settings"], job["system"], measure)
    print("ORACLE" + json.dumps(out))
''')



def corpus(folder: Path) -> Path:
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, (20, 160, 90)).save(path)
        return str(path)

    photo, tall, small = image("photo", (640, 480)), image("tall", (200, 900)), image("small", (20, 20))
    long = " ".join(f"word{i}" for i in range(120))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
    rows = [
        {"messages": [user("<image>What is shown?"), bot("A green field.")], "images": [photo]},
        {"messages": [user("Describe."), bot("\nTall.\n")], "images": [tall]},  # the tag is added
        {"messages": [{"role": "system", "content": "Be brief."}, user("<image>\nand <image>"), bot("Two."),
                      user("Sure?"), bot("Yes.")], "images": [photo, small]},
        {"messages": [user("Hi."), bot("Hello.")]},
        {"messages": [{"role": "system", "content": ""}, user("<image>" + long), bot(long)], "images": [photo]},
        {"messages": [user(long), bot(long), user("<image> again"), bot(long)], "images": [tall]},
        {"messages": [user("<image>Q"), bot("no", loss=False), user("Q2"), bot("yes")], "images": [photo]},
        {"messages": [user("<image>Q"), bot("untrained last", loss=False)], "images": [small]},
        {"messages": [user("<image><image> two tags"), bot("one image")], "images": [photo]},
        {"messages": [{"role": "system", "content": "See <image>."}, user("this"), bot("ok")], "images": [tall]},
        {"messages": [user("unicode 漢字 ✓ <image>"), bot("  spaced  ")], "images": [small]},
        {"messages": [user("<image>" * 3 + long), bot(long)], "images": [photo, tall, small]},
        {"messages": [user("a literal <image> and no image"), bot("ok")]},
        # turns ms-swift repairs (_swift_prepare_inputs, _get_std_messages) and loss keys it reads
        {"messages": [user("<image>first "), user("second"), bot("merged questions")], "images": [photo]},
        {"messages": [user("<image>Q"), bot("one "), bot("two", loss=False)], "images": [small]},
        {"messages": [user("<image>Q"), bot("A"), user("a question left unanswered")], "images": [tall]},
        {"messages": [bot("an answer first"), user("<image>then"), bot("B")], "images": [small]},
        {"messages": [user("<image>Q"), bot("zero", loss=0), user("Q2"), bot("scaled", loss_scale=0)],
         "images": [photo]},
        {"messages": [user("<image>Q"), bot("ends with its own stop word</s>")], "images": [small]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": k, **r}, ensure_ascii=False) + "\n" for k, r in enumerate(rows)))
    return data


@pytest.fixture(scope="module", params=[None, "You are a careful assistant.", "First see <image>."],
                ids=["no-system", "system", "image-in-system"])
def oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    folder = tmp_path_factory.mktemp("swift_llava")
    data = corpus(folder)
    checkpoint = llava_checkpoint()
    job = {"checkpoint": str(checkpoint), "data": str(data), "settings": SETTINGS, "image_id": IMAGE_ID,
           "system": request.param}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": checkpoint, "system": request.param,
            "results": json.loads(lines[-1][len("ORACLE"):])}


def records(tmp_path: Path, oracle: dict[str, Any], max_length: int | None, strategy: str) -> list[dict[str, Any]]:
    return check_launch(tmp_path, oracle, max_length, strategy,
                        *([f"--system '{oracle['system']}'"] if oracle["system"] else []))


@pytest.mark.parametrize(("max_length", "strategy"), SETTINGS)
def test_each_row_is_judged_as_swifts_llava_template_encodes_it(tmp_path: Path, oracle: dict[str, Any],
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
        # a row without images keeps its literal <image> as text (no features to match: the model runs)
        assert kept == (row["tokens"], row["labels"], row["image_tokens"] if row["images"] else 0), (k, record, row)
        # the image tokens are never cut; a tag past the images is expanded all the same (more tokens than features:
        # the model's count check raises); a literal <image> in a row without images is left as one token
        crash = row["images"] > 0 and row["image_tokens"] != row["images"] * FEATURES
        assert (frame["verdict"] == "crash") == crash, (k, record, row)


def test_the_corpus_reaches_each_outcome(oracle: dict[str, Any]) -> None:
    whole = oracle["results"]["None-raise"]
    cut = 0
    for key, results in oracle["results"].items():
        limit, strategy = key.split("-")
        if strategy in ("left", "right"):
            cut += sum(1 for w, r in zip(whole, results)
                       if r["verdict"] == "ok" and w["verdict"] == "ok" and w["tokens"] > int(limit))
    assert cut >= 10
    assert sum(1 for r in oracle["results"]["200-raise"] if r["verdict"] == "dropped") >= 5
