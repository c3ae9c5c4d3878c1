"""``vlmcheck demo``: judge a bundled LLaMA-Factory run (or scan the bundled dataset) with a real Qwen2-VL
processor setup, offline.

The checkpoint folder (real Qwen2 tokenizer, hub preprocessor values and chat template) is built on
first use from the `dashscope` package's BPE ranks; see :mod:`vlmcheck.demo.checkpoints`.
"""

from __future__ import annotations

from pathlib import Path

from vlmcheck.demo.checkpoints import qwen_checkpoint
from vlmcheck.report import Report

DATA = Path(__file__).parent / "data" / "train.jsonl"
# A LLaMA-Factory run on the bundled images: train.yaml in the shape of its qwen2_vl LoRA example
LLAMAFACTORY_CONFIG = Path(__file__).parent / "llamafactory" / "train.yaml"
DEMO_MAX_LENGTH = 4096


def demo(*, max_length: int = DEMO_MAX_LENGTH, model_type: str = "qwen2_vl") -> tuple[Report, str]:
    """Scan the bundled dataset; returns the report and the equivalent `vlmcheck scan` command."""
    from vlmcheck.scan import scan

    model = qwen_checkpoint(model_type)
    command = f"vlmcheck scan {DATA} --model {model} --max-length {max_length}"
    return scan(DATA, model=model, max_length=max_length), command


def demo_check(*, model_type: str = "qwen2_vl") -> tuple[Report, str]:
    """Judge the bundled LLaMA-Factory run as LLaMA-Factory will prepare it; returns the report and the
    equivalent `vlmcheck check` command (the config names a hub model; the demo passes the local checkpoint)."""
    from vlmcheck.checking import check

    model = qwen_checkpoint(model_type)
    command = f"vlmcheck check {LLAMAFACTORY_CONFIG} --model {model}"
    return check(LLAMAFACTORY_CONFIG, model=model), command
