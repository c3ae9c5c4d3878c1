"""Offline checkpoint folders for the model types that share Qwen3-VL's processor: ``qwen3_vl_moe`` (Qwen3-VL
MoE), ``qwen3_5`` and ``qwen3_5_moe`` (Qwen3.5). transformers gives all three ``Qwen3VLProcessor`` and
``Qwen2VLImageProcessor`` (``processing_auto.py``, ``image_processing_auto.py``); the folder is Qwen3-VL's
(vlmcheck.demo.checkpoints: the real Qwen2 BPE with the vision special tokens at their ids, Qwen3-VL's
preprocessor_config.json) with its ``config.json`` naming the other model type and architecture. Qwen3.5's own
vocabulary (248k pieces) has no offline source here: the text tokens of these folders are Qwen2's, which the
processor's image counts do not depend on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cache_lock import serialized
from vlmcheck.demo.checkpoints import cache_dir, qwen_checkpoint

ARCHITECTURES = {
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
}


@serialized
def sharing_checkpoint(model_type: str) -> Path:
    """The cached folder for ``model_type`` (one of ARCHITECTURES), built on first use."""
    dest = cache_dir() / "checkpoints" / model_type
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(qwen_checkpoint("qwen3_vl"), tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.update(model_type=model_type, architectures=[ARCHITECTURES[model_type]])
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
