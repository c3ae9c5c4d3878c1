"""Produce resize_golden.json: what Unsloth's own ``UnslothVisionDataCollator._resize_images_inplace``
(unsloth_zoo 2026.10.9, ``vision_utils.py``) does to images of many sizes. Not run by the tests.

``unsloth`` cannot be installed beside the project (it pins transformers < 5.23 and pulls torchvision, which the
project leaves out), and on a machine without a GPU ``import unsloth`` selects its CPU backend, whose
``UnslothVisionDataCollator`` raises NotImplementedError. So, in a scratch environment
(``pip install -c constraints unsloth==2026.10.9 unsloth_zoo==2026.10.9`` with torch pinned), this imports the
collator class from ``unsloth_zoo.vision_utils`` (``UNSLOTH_IS_PRESENT=1`` lets the package import without
``unsloth``), builds it with its own ``__init__`` for each setting (a stand-in model exposes the vision config's
``image_size``, ``max_seq_length`` and an embedding table) and calls its resize on real PIL images:
``UNSLOTH_IS_PRESENT=1 python tests/assets/unsloth_golden/produce.py TOKENIZER_JSON > resize_golden.json``
(any tokenizer.json; the Qwen2-VL demo checkpoint's was used).
Nothing of Unsloth is copied here.
"""

from __future__ import annotations

import json

SIZES = [(640, 480), (480, 640), (1920, 1080), (4000, 3000), (513, 2), (2, 2000), (511, 511), (512, 512),
         (513, 513), (100, 30000), (30000, 100), (1023, 767), (3, 3), (896, 1), (7000, 5)]
# (the model's vision_config.image_size, the collator's resize, resize_dimension, max_seq_length argument,
# the model's max_seq_length)
SETTINGS = [(512, "min", 0, None, 2048), (512, "min", 1, 1024, 2048), (896, "min", "max", None, None),
            (448, "min", "min", 4096, 2048), (512, "max", 0, None, 2048), (512, 336, "max", None, 2048),
            (512, [300, 200], 0, None, 2048)]
QWEN_TOKENIZER = "tokenizer.json of the project's Qwen2-VL demo checkpoint (vlmcheck.demo.checkpoints)"


def main(tokenizer_json: str) -> None:  # pragma: no cover - a producer, run by hand
    from types import SimpleNamespace

    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast
    from unsloth_zoo.vision_utils import UnslothVisionDataCollator

    # __init__ wants a processor with an image processor (LlavaProcessor needs no torchvision) and reads the
    # model's vision_config.image_size, max_seq_length and input embeddings' dtype only
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer, patch_size=14,
                               chat_template="{{ messages }}")
    embeddings = torch.nn.Embedding(4, 4)
    out = []
    for image_size, resize, dimension, max_seq_length, model_max in SETTINGS:
        model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=image_size,
                                                                                     patch_size=14)),
                                get_input_embeddings=lambda: embeddings)
        if model_max is not None:
            model.max_seq_length = model_max
        collator = UnslothVisionDataCollator(model, processor, max_seq_length=max_seq_length,
                                             resize=tuple(resize) if isinstance(resize, list) else resize,
                                             resize_dimension=dimension)
        got = []
        for w, h in SIZES:
            images = collator._resize_images_inplace([Image.new("RGB", (w, h))])
            got.append(list(images[0].size))
        out.append({"model_image_size": image_size, "resize": resize, "resize_dimension": dimension,
                    "max_seq_length": max_seq_length, "model_max_seq_length": model_max,
                    "collator": {"image_size": collator.image_size, "max_seq_length": collator.max_seq_length,
                                 "truncation": collator.truncation},
                    "sizes": SIZES, "resized": got})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
