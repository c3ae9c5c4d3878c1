"""Processors built from a test checkpoint's files without torchvision, for the framework oracles (no CPU
torchvision exists for this torch): transformers' own processor classes, images only. Imported by the oracle
scripts that run in a framework's environment (llamafactory_oracle_runner.py, the ms-swift InternVL oracle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def internvl_processor(model_path: str, tokenizer: Any) -> Any:
    """transformers' own InternVLProcessor with the PIL GotOcr2 image processor and no video processor (its video
    processor requires torchvision; the corpus has no videos): as for Qwen-VL, a subclass takes only the image
    processor and tokenizer, and sets the attributes InternVLProcessor.__init__ sets."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.processing_internvl import InternVLProcessor
    from transformers.processing_utils import ProcessorMixin

    class WithoutVideo(InternVLProcessor):  # type: ignore[misc]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.image_seq_length = int(kwargs.get("image_seq_length", 256))
            self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
            self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
            self.image_token_id = tokenizer.context_image_token_id

    WithoutVideo.__name__ = "InternVLProcessor"
    values = json.loads(Path(model_path, "preprocessor_config.json").read_text())
    args = json.loads(Path(model_path, "processor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
        args.pop(key, None)
    return WithoutVideo(GotOcr2ImageProcessorPil(**values), tokenizer, **args)
