"""An offline InternVL3 ``-hf`` checkpoint folder (OpenGVLab/InternVL3-1B-hf's processor files).

Values come from transformers' ``models/internvl/convert_internvl_weights_to_hf.py``, the script that
made the hub ``-hf`` checkpoints:

- tokenizer: Qwen2.5-VL's (151,643 BPE ranks, ``<|endoftext|>``..``<|file_sep|>`` at 151643-151664),
  then ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<quad>``, ``</quad>``, ``<ref>``, ``</ref>``, ``<box>``,
  ``</box>`` added as special tokens, so they land on 151665-151673 (``image_token_id`` 151667 in its
  ``get_internvl_config``), and ``extra_special_tokens`` naming start/end/context image tokens and
  ``<video>``. transformers 5.x adds ``<video>`` to the vocabulary when it loads such a tokenizer
  (151674); it is written into tokenizer.json here so vlmcheck's tokenizer holds the same pieces.
  The BPE is the real Qwen2 one (``vlmcheck.demo.qwen_tokenizer``).
- ``write_image_processor``: ``GotOcr2ImageProcessor`` with size 448 x 448, ImageNet mean/std and
  the class defaults ``crop_to_patches`` False, ``min_patches`` 1, ``max_patches`` 12.
- the processor's ``image_seq_length`` 256 (InternVLProcessor default, saved in processor_config.json)
  and its chat template (``<IMG_CONTEXT>\\n`` per image, no default system prompt).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from vlmcheck.demo.checkpoints import cache_dir

# convert_internvl_weights_to_hf.py: chat_template
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# convert_internvl_weights_to_hf.py write_tokenizer: added in this order after Qwen2.5's 151665 pieces
INTERNVL_SPECIAL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>",
                           "</box>"]
EXTRA_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}

CONFIG: dict[str, Any] = {
    "architectures": ["InternVLForConditionalGeneration"],
    "model_type": "internvl",
    "image_token_id": 151667,
    "downsample_ratio": 0.5,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "vision_config": {"model_type": "internvl_vision", "image_size": [448, 448], "patch_size": [14, 14],
                      "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "text_config": {"model_type": "qwen2", "vocab_size": 151674, "hidden_size": 896, "num_hidden_layers": 24,
                    "eos_token_id": 151645},
}

# convert_internvl_weights_to_hf.py write_image_processor (InternVL3, not 3.5)
PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "GotOcr2ImageProcessorFast",
    "processor_class": "InternVLProcessor",
    "crop_to_patches": False,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "max_patches": 12,
    "min_patches": 1,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 448, "width": 448},
}

PROCESSOR: dict[str, Any] = {"processor_class": "InternVLProcessor", "image_seq_length": 256}


def _write_tokenizer(dest: Path) -> None:
    from tokenizers import AddedToken

    from vlmcheck.demo.qwen_tokenizer import build_qwen2_tokenizer, find_qwen_tiktoken

    tok = build_qwen2_tokenizer(find_qwen_tiktoken())
    for content in [*INTERNVL_SPECIAL_TOKENS, "<video>"]:  # one at a time: each lands on the next id
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    assert tok.token_to_id("<img>") == 151665 and tok.token_to_id("<IMG_CONTEXT>") == 151667
    assert tok.token_to_id("</box>") == 151673 and tok.token_to_id("<video>") == 151674
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 8192,  # convert_internvl_weights_to_hf.py CONTEXT_LENGTH
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": EXTRA_SPECIAL_TOKENS,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


@serialized
def internvl_checkpoint(*, preprocessor: dict[str, Any] | None = None, processor: dict[str, Any] | None = None,
                        name: str = "internvl3-1b-hf") -> Path:
    """The checkpoint folder; ``preprocessor``/``processor`` replace values (a variant), built once."""
    dest = cache_dir() / f"checkpoint-{name}"
    if (dest / "chat_template.jinja").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if name != "internvl3-1b-hf":  # a variant shares the base checkpoint's tokenizer
        base = internvl_checkpoint()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(base / f, tmp / f)
    else:
        _write_tokenizer(tmp)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **(preprocessor or {})}, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps({**PROCESSOR, **(processor or {})}, indent=2))
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def internvl_processor(folder: Path):
    """transformers' own InternVLProcessor for ``folder`` with the PIL GotOcr2 image processor.

    Its video processor needs torchvision, so (as FIXTURES.md describes) a subclass whose
    ``__init__`` takes only image processor, tokenizer and chat template is built; it sets the same
    attributes ``InternVLProcessor.__init__`` sets, and all counting code (``__call__``,
    ``replace_image_token``, the image processor) runs unchanged.
    """
    import re

    from transformers import AutoTokenizer, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                     **kwargs):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
            # the body of InternVLProcessor.__init__ (transformers 5.23.0)
            self.image_seq_length = image_seq_length
            self.start_image_token = tokenizer.start_image_token
            self.end_image_token = tokenizer.end_image_token
            self.start_image_token_id = tokenizer.start_image_token_id
            self.end_image_token_id = tokenizer.end_image_token_id
            self.image_token = tokenizer.context_image_token
            self.video_token = tokenizer.video_token
            self.image_token_id = tokenizer.context_image_token_id
            self.multimodal_pattern = re.compile(
                f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
            )

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    args = json.loads((folder / "processor_config.json").read_text())
    args.pop("processor_class", None)
    return ImageOnlyInternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(**values), tokenizer=AutoTokenizer.from_pretrained(str(folder)),
        chat_template=(folder / "chat_template.jinja").read_text(), **args,
    )
