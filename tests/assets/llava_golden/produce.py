"""Produce golden.jsonl by running haotian-liu/LLaVA's own preprocessing (see README.md). Not run by the tests.

Two environments, three steps:

1. In the project's environment, build the tokenizer folders named in setups.json:
   ``python tests/assets/llava_golden/produce.py folders OUT``
2. In a scratch environment with LLaVA's pinned stack (``pip install transformers==4.37.2 tokenizers==0.15.1
   sentencepiece==0.1.99 protobuf torch pillow``) and a LLaVA checkout at commit c121f04 whose
   ``llava/__init__.py``, ``llava/model/__init__.py`` are emptied and ``llava/train/llava_trainer.py`` holds only
   ``class LLaVATrainer: pass`` (preprocessing needs no model class), run LLaVA on every case:
   ``python tests/assets/llava_golden/produce.py run LLAVA_CHECKOUT OUT > records.jsonl``
3. In either environment, write the golden file: ``python tests/assets/llava_golden/produce.py golden records.jsonl``

Nothing of LLaVA is copied here: step 2 imports its modules from the checkout and calls them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
VERSIONS = ["v0", "v0.5", "v1", "vicuna_v1", "llava_v1", "v1_mmtag", "llama_2", "llava_llama_2", "mistral_instruct",
            "chatml_direct", "mistral_direct", "mpt", "plain", "v0_plain", "llava_v0", "v0_mmtag", "default",
            "llava_v1.6"]


def folders(out: Path) -> None:
    sys.path.insert(0, str(HERE.parent.parent))
    from llama_vocab import llama2_checkpoint

    for setup in json.loads((HERE / "setups.json").read_text(encoding="utf-8")):
        build = dict(setup["build"])
        build["added"] = tuple(build.get("added", ()))
        llama2_checkpoint(out / setup["name"], **build)


def run(llava_checkout: Path, out: Path) -> None:  # pragma: no cover - runs in LLaVA's environment
    sys.path.insert(0, str(llava_checkout))
    import transformers
    from llava import conversation as conversation_lib
    from llava.train import train as llava_train

    class DataArgs:
        is_multimodal = True

        def __init__(self, mm_use_im_start_end: bool) -> None:
            self.mm_use_im_start_end = mm_use_im_start_end

    rows = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
    for setup in json.loads((HERE / "setups.json").read_text(encoding="utf-8")):
        for version in VERSIONS:
            # train(): the tokenizer, the pad token and the conversation; a fresh process starts at conv_vicuna_v1
            kwargs: dict[str, Any] = {"model_max_length": setup["model_max_length"], "padding_side": "right"}
            if "mpt" not in (setup["model_name_or_path"] or ""):
                kwargs["use_fast"] = False
            conversation_lib.default_conversation = conversation_lib.conv_vicuna_v1
            try:
                tok = transformers.AutoTokenizer.from_pretrained(str(out / setup["name"]), **kwargs)
            except Exception as e:
                for row in rows:
                    print(json.dumps({"setup": setup["name"], "version": version, "id": row["id"],
                                      "refused": f"{type(e).__name__}: {e}", "where": "load"}))
                continue
            if version == "v0":
                if tok.pad_token is None:
                    tok.add_special_tokens({"pad_token": "[PAD]"})
            elif version == "v0.5":
                tok.pad_token = tok.unk_token
            else:
                tok.pad_token = tok.unk_token
                conversation_lib.default_conversation = conversation_lib.conv_templates.get(
                    version, conversation_lib.conv_templates["vicuna_v1"])
            if setup["mm_use_im_start_end"]:  # initialize_vision_tokenizer (finetune.sh: no <im_patch>)
                tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
            for row in rows:
                record = {"setup": setup["name"], "version": version, "id": row["id"]}
                # LazySupervisedDataset.__getitem__, without opening the image
                if "image" in row:
                    sources = llava_train.preprocess_multimodal(copy.deepcopy([row["conversations"]]),
                                                                DataArgs(setup["mm_use_im_start_end"]))
                else:
                    sources = copy.deepcopy([row["conversations"]])
                printed = io.StringIO()
                try:
                    with contextlib.redirect_stdout(printed):
                        data = llava_train.preprocess(sources, tok, has_image="image" in row)
                except Exception as e:
                    frame = traceback.extract_tb(e.__traceback__)[-1]
                    record |= {"refused": f"{type(e).__name__}: {e}", "where": f"{frame.name}: {frame.line}"}
                    print(json.dumps(record))
                    continue
                labels = data["labels"][0].tolist()
                warning = re.search(r"tokenization mismatch: (\d+) vs\. (\d+)", printed.getvalue())
                record |= {"input_ids": data["input_ids"][0].tolist(),
                           "supervised": sum(1 for x in labels if x != -100),
                           "labels_mask": "".join("1" if x != -100 else "0" for x in labels),
                           "mismatch": [int(warning.group(1)), int(warning.group(2))] if warning else None}
                print(json.dumps(record))


def golden(records: Path) -> None:
    by_case = {(r["setup"], r["version"], r["id"]): r
               for r in map(json.loads, records.read_text(encoding="utf-8").splitlines())}
    rows = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
    lines = []
    for setup in json.loads((HERE / "setups.json").read_text(encoding="utf-8")):
        for version in VERSIONS:
            cases: list[Any] = []
            for row in rows:
                r = by_case[(setup["name"], version, row["id"])]
                if "refused" in r:
                    cases.append({"refused": r["refused"], "where": r["where"]})
                else:
                    cases.append([len(r["input_ids"]), r["supervised"], r["mismatch"],
                                  hashlib.sha1(json.dumps(r["input_ids"]).encode()).hexdigest()[:16],
                                  hashlib.sha1(r["labels_mask"].encode()).hexdigest()[:16]])
            lines.append(json.dumps({"setup": setup["name"], "version": version, "cases": cases},
                                    separators=(",", ":")))
    (HERE / "golden.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    step, *args = sys.argv[1:]
    if step == "folders":
        folders(Path(args[0]))
    elif step == "run":
        run(Path(args[0]), Path(args[1]))
    elif step == "golden":
        golden(Path(args[0]))
    else:
        raise SystemExit(__doc__)
