"""Runs inside LLaMA-Factory's own environment (llamafactory_env.py): each v1 config through the v1 engine's own
argument parser, data engine, renderer and ``pad_and_truncate``, one sample at a time, and writes what happened to
every sample as JSON. Used by test_llamafactory_v1.py; never imported by vlmcheck.

usage: python llamafactory_v1_runner.py OUT.json CONFIG.yaml ...

The tokenizer is given to the renderer as the processor: the v1 engine's ``AutoProcessor`` needs torchvision for
Qwen2-VL's video processor, which this machine does not have, and the renderer takes ``processor.tokenizer``
(``get_tokenizer``), the same ``AutoTokenizer`` class loaded from the same files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from llamafactory.v1.config.arg_parser import get_args
from llamafactory.v1.core.data_engine import DataEngine
from llamafactory.v1.core.utils.rendering import Renderer
from llamafactory.v1.utils.constants import IGNORE_INDEX
from llamafactory.v1.utils.helper import pad_and_truncate
from transformers import AutoTokenizer


def run(config: Path) -> dict:
    raw = yaml.safe_load(config.read_text())
    try:
        model_args, data_args, training_args, _ = get_args(raw)
        if not data_args.train_dataset:
            raise ValueError("no train_dataset")
        engine = DataEngine(data_args.train_dataset)
    except Exception as e:  # the run stops before step 1
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    tokenizer = AutoTokenizer.from_pretrained(model_args.model)
    renderer = Renderer(model_args.template, tokenizer)
    rows = []
    for index in range(len(engine)):
        name, number = engine.data_index[index]
        row = {"dataset": name, "row": number, "error": None}
        try:  # the data loader (converter, renderer) and the collation: the step that reaches the sample
            sample = renderer.process_samples([engine[index]])[0]
            batch = pad_and_truncate([sample], training_args.cutoff_len)[0]
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            continue
        row.update(tokens=len(sample["input_ids"]),
                   supervised=sum(1 for label in sample["labels"] if label != IGNORE_INDEX),
                   kept_tokens=int(batch["input_ids"].shape[-1]),
                   kept_supervised=int((batch["labels"] != IGNORE_INDEX).sum()))
        rows.append(row)
    return {"error": None, "rows": rows, "cutoff_len": training_args.cutoff_len, "template": model_args.template}


def main() -> None:
    out, *configs = sys.argv[1:]
    Path(out).write_text(json.dumps({Path(c).stem: run(Path(c)) for c in configs}))


if __name__ == "__main__":
    main()
