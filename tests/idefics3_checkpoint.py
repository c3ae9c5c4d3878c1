"""Offline Idefics3 / SmolVLM / SmolVLM2 checkpoint folders with the hub's processor files.

Values are those of the hub checkpoints' preprocessor_config.json / processor_config.json /
chat_template.json (the tokenizers come from ``idefics3_vocab``):

- ``idefics3-8b-llama3`` (HuggingFaceM4/Idefics3-8B-Llama3, ``model_type`` idefics3): size
  longest_edge 1456 and no ``max_image_size`` (commit 30d4b60 removed it, so the class default 364
  applies), ``image_seq_len`` 169, the ``<|begin_of_text|>User:...`` template.
- ``smolvlm-instruct`` (HuggingFaceTB/SmolVLM-Instruct, idefics3): longest_edge 1536 (1920 for one
  commit, f6f46b9), max_image_size 384, ``image_seq_len`` 81, ``<image>`` 49153.
- ``smolvlm-256m-instruct`` (HuggingFaceTB/SmolVLM-256M-Instruct, idefics3): 2048 / 512, 64.
- ``smolvlm2-2.2b-instruct`` (HuggingFaceTB/SmolVLM2-2.2B-Instruct, smolvlm): 1536 / 384, 81,
  ``SmolVLMProcessor``.

Built once, cached under ``$VLMCHECK_CACHE``; a variant replaces preprocessor_config.json values.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cache_lock import serialized
from idefics3_vocab import idefics3_tokenizer_dir, smolvlm_tokenizer_dir
from llama_vocab import _cache

_TEMPLATE_BODY = (
    "{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# chat_template.json of HuggingFaceM4/Idefics3-8B-Llama3 (``.capitalize()`` there, same output)
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _TEMPLATE_BODY.replace(
    "message['role'] | capitalize", "message['role'].capitalize()")
# chat_template.json of HuggingFaceTB/SmolVLM-Instruct, SmolVLM-256M-Instruct, SmolVLM2-2.2B-Instruct
SMOLVLM_TEMPLATE = "<|im_start|>" + _TEMPLATE_BODY

_IMAGE_PROCESSOR = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "resample": 1, "rescale_factor": 0.00392156862745098,
}

CHECKPOINTS: dict[str, dict[str, Any]] = {
    "idefics3-8b-llama3": {
        "model_type": "idefics3", "image_token_id": 128257, "tokenizer": "idefics3",
        "template": IDEFICS3_TEMPLATE,
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "Idefics3ImageProcessor",
                         "processor_class": "Idefics3Processor", "size": {"longest_edge": 1456}},
        "processor": {"image_seq_len": 169, "processor_class": "Idefics3Processor"},
    },
    "smolvlm-instruct": {
        "model_type": "idefics3", "image_token_id": 49153, "tokenizer": "smolvlm-2b",
        "template": SMOLVLM_TEMPLATE,
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "Idefics3ImageProcessor",
                         "processor_class": "Idefics3Processor", "max_image_size": {"longest_edge": 384},
                         "size": {"longest_edge": 1536}},
        "processor": {"image_seq_len": 81, "processor_class": "Idefics3Processor"},
    },
    "smolvlm-256m-instruct": {
        "model_type": "idefics3", "image_token_id": 49190, "tokenizer": "smolvlm",
        "template": SMOLVLM_TEMPLATE,
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "Idefics3ImageProcessor",
                         "processor_class": "Idefics3Processor", "max_image_size": {"longest_edge": 512},
                         "size": {"longest_edge": 2048}},
        "processor": {"image_seq_len": 64, "processor_class": "Idefics3Processor"},
    },
    "smolvlm2-2.2b-instruct": {
        "model_type": "smolvlm", "image_token_id": 49190, "tokenizer": "smolvlm",
        "template": SMOLVLM_TEMPLATE,
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "SmolVLMImageProcessor",
                         "processor_class": "SmolVLMProcessor", "max_image_size": {"longest_edge": 384},
                         "size": {"longest_edge": 1536},
                         "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 384}}},
        "processor": {"image_seq_len": 81, "processor_class": "SmolVLMProcessor"},
    },
}


def _tokenizer_dir(kind: str) -> Path:
    if kind == "idefics3":
        return idefics3_tokenizer_dir()
    return smolvlm_tokenizer_dir(full=kind == "smolvlm")


@serialized
def checkpoint(name: str, *, preprocessor: dict[str, Any] | None = None, variant: str = "") -> Path:
    """The folder of checkpoint ``name``; ``preprocessor`` replaces preprocessor_config.json values."""
    spec = CHECKPOINTS[name]
    dest = _cache() / f"checkpoint-{name}{'-' + variant if variant else ''}"
    if (dest / "chat_template.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(_tokenizer_dir(spec["tokenizer"]) / f, tmp / f)
    config = {"model_type": spec["model_type"], "image_token_id": spec["image_token_id"]}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    values = {**spec["preprocessor"], **(preprocessor or {})}
    (tmp / "preprocessor_config.json").write_text(json.dumps(values, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps(spec["processor"], indent=2))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": spec["template"]}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def processor(folder: Path):
    """transformers' own processor for ``folder``: ``Idefics3Processor`` or ``SmolVLMProcessor`` with
    the PIL image processor (no torchvision).

    ``SmolVLMProcessor`` needs a video processor (torchvision) and, for video prompts only,
    ``num2words``; the subclass here drops just that part, as FIXTURES.md describes for Qwen: its
    ``__init__`` sets the same attributes from the tokenizer and hands only the image processor and
    tokenizer to ``ProcessorMixin``. Every image and text path (``replace_image_token``,
    ``prepare_inputs_layout``, ``validate_inputs``, ``ProcessorMixin.__call__``) is the real one.
    """
    from transformers import AutoTokenizer, Idefics3Processor, SmolVLMProcessor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    config = json.loads((folder / "config.json").read_text())
    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class", "video_sampling"):  # not image processor kwargs
        values.pop(key, None)
    args = json.loads((folder / "processor_config.json").read_text())
    args.pop("processor_class", None)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if config["model_type"] == "idefics3":
        return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**values), tokenizer=tokenizer,
                                 chat_template=template, **args)

    class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169,
                     chat_template=None, **kwargs):
            # SmolVLMProcessor.__init__ minus the video processor and the num2words check
            self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
            self.image_token = getattr(tokenizer, "image_token", "<image>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
            self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
            self.image_seq_len = image_seq_len
            self.video_token = getattr(tokenizer, "video_token", "<video>")
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # SmolVLMProcessor's override only adds video frame defaults
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return ImageOnlySmolVLMProcessor(image_processor=SmolVLMImageProcessorPil(**values), tokenizer=tokenizer,
                                     chat_template=template, **args)
