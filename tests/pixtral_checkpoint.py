"""Offline Pixtral-12B and Mistral-Small-3.1 checkpoint folders, and transformers' own PixtralProcessor.

Processor files, as on the hub:

- mistral-community/pixtral-12b: ``config.json`` is a LlavaConfig (``model_type`` "llava") whose
  ``vision_config`` is a Pixtral vision tower (``model_type`` "pixtral", patch 16, image size 1024);
  ``processor_config.json`` names ``PixtralProcessor`` with patch_size 16 (no spatial merge);
  ``preprocessor_config.json`` ``PixtralImageProcessor`` with ``size.longest_edge`` 1024. Its tokenizer
  adds no BOS: the chat template writes ``bos_token`` (transformers ``tests/models/pixtral/
  test_processing_pixtral.py`` encodes "USER: ..." to ids starting 21510, and expects 640 ``[IMG]``
  for a 316 x 500 image: ceil(500 / 16) * ceil(316 / 16)).
- mistralai/Mistral-Small-3.1-24B-Instruct-2503: ``model_type`` "mistral3", ``spatial_merge_size`` 2,
  Pixtral vision tower with patch 14 and image size 1540; ``processor_config.json`` patch_size 14,
  spatial_merge_size 2; ``preprocessor_config.json`` ``size.longest_edge`` 1540, ``patch_size`` 14.
  Its tokenizer prepends ``<s>`` (``tests/models/mistral3/test_processing_mistral3.py``, whose
  ``prepare_processor_dict`` also holds the checkpoint's chat template, used here).

The tokenizer is the real Tekken vocabulary (``tekken_vocab``). ``processing_pixtral.py`` imports
``get_resize_output_image_size`` from the torchvision image processor module, which cannot be
imported without torchvision; the function is only used by ``_get_num_multimodal_tokens``, and the
PIL module has the same function ("Adapted from" it). While the processor module is imported, the
torchvision module's name points at a module holding the PIL one; everything else is unchanged.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any

from cache_lock import serialized
from tekken_vocab import _cache, tekken_tokenizer_dir

# mistral-community/pixtral-12b chat_template.json (text chunks as "content" or "text")
PIXTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0][\"role\"] == \"system\" %}{%- if messages[0][\"content\"] is not string %}{%- if "
    "messages[0][\"content\"]|length == 1 and messages[0][\"content\"][0][\"type\"] == \"text\" %}{%- set "
    "system_message = messages[0][\"content\"][0][\"content\"] %}{%- endif %}{%- else %}{%- set system_message = "
    "messages[0][\"content\"] %}{%- endif %}{%- set loop_messages = messages[1:] %}\n{%- else %}{%- set "
    "loop_messages = messages %}{%- endif %}{{- bos_token }}{%- for message in loop_messages %}{%- if "
    "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system "
    "message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if "
    "message[\"role\"] == \"user\" %}{%- if loop.first and system_message is defined %}{{- \"[INST]\" + "
    "system_message + \"\n\n\" }}{%- else %}{{ \"[INST]\" }}{%- endif %}{%- endif %}{%- if message[\"content\"] "
    "is not string %}{%- for chunk in message[\"content\"] %}{%- if chunk[\"type\"] == \"text\" %}{%- if "
    "\"content\" in chunk %}{{- chunk[\"content\"] }}{%- elif \"text\" in chunk %}{{- chunk[\"text\"] }}{%- endif "
    "%}{%- elif chunk[\"type\"] == \"image\" %}{{- \"[IMG]\" }}{%- else %}{{- raise_exception(\"Unrecognized "
    "content type!\") }}{%- endif %}{%- endfor %}{%- else %}{{- message[\"content\"] }}{%- endif %}{%- if "
    "message[\"role\"] == \"user\" %}{{- \"[/INST]\" }}{%- elif message[\"role\"] == \"assistant\" %}{{- "
    "eos_token}}{%- else %}{{- raise_exception(\"Only user and assistant roles are supported, with the "
    "exception of an initial optional system message!\") }}{%- endif %}{%- endfor %}"
)

# mistralai/Mistral-Small-3.1-24B-Instruct-2503 chat template (transformers
# tests/models/mistral3/test_processing_mistral3.py, prepare_processor_dict)
MISTRAL3_CHAT_TEMPLATE = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}\n{%- set default_system_message = \"You are Mistral Small 3, a "
    "Large Language Model (LLM) created by Mistral AI, a French startup headquartered in Paris.\\nYour knowledge "
    "base was last updated on 2023-10-01. The current date is \" + today + \".\\n\\nWhen you're not sure about "
    "some information, you say that you don't have the information and don't make up anything.\\nIf the user's "
    "question is not clear, ambiguous, or does not provide enough context for you to accurately answer the "
    "question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "
    "\\\"What are some good restaurants around me?\\\" => \\\"Where are you?\\\" or \\\"When is the next flight "
    "to Tokyo\\\" => \\\"Where do you travel from?\\\")\" %}\n\n{{- bos_token }}\n\n{%- if messages[0]['role'] == "
    "'system' %}\n    {%- if messages[0] is string %}\n        {%- set system_message = messages[0]['content'] %}\n"
    "        {%- set loop_messages = messages[1:] %}\n    {%- else %} \n        {%- set system_message = "
    "messages[0]['content'][0]['text'] %}\n        {%- set loop_messages = messages[1:] %}\n    {%- endif %}\n"
    "{%- else %}\n    {%- set system_message = default_system_message %}\n    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}\n\n{%- for message in "
    "loop_messages %}\n    {%- if message['role'] == 'user' %}\n            {%- if message['content'] is string %}\n"
    "            {{- '[INST]' + message['content'] + '[/INST]' }}\n            {%- else %}\n                    "
    "{{- '[INST]' }}\n                    {%- for block in message['content'] %}\n                            "
    "{%- if block['type'] == 'text' %}\n                                    {{- block['text'] }}\n"
    "                            {%- elif block['type'] == 'image' or block['type'] == 'image_url' %}\n"
    "                                    {{- '[IMG]' }}\n                                {%- else %}\n"
    "                                    {{- raise_exception('Only text and image blocks are supported in "
    "message content!') }}\n                                {%- endif %}\n                        {%- endfor %}\n"
    "                    {{- '[/INST]' }}\n                {%- endif %}\n    {%- elif message['role'] == "
    "'system' %}\n        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}\n    {%- elif "
    "message['role'] == 'assistant' %}\n        {%- if message['content'] is string %}\n            {{- "
    "message['content'] + eos_token }}\n        {%- else %}\n            {{- message['content'][0]['text'] + "
    "eos_token }}\n        {%- endif %}\n    {%- else %}\n        {{- raise_exception('Only user, system and "
    "assistant roles are supported!') }}\n    {%- endif %}\n{%- endfor %}"
)

_IMAGE_PROCESSOR: dict[str, Any] = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "PixtralProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
}

CHECKPOINTS: dict[str, dict[str, Any]] = {
    "pixtral-12b": {
        "config": {
            "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 10,
            "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
            "text_config": {"model_type": "mistral", "hidden_size": 5120, "head_dim": 128, "intermediate_size": 14336,
                            "num_hidden_layers": 40, "num_key_value_heads": 8, "vocab_size": 131072},
            "vision_config": {"model_type": "pixtral", "head_dim": 64, "hidden_act": "silu", "image_size": 1024,
                              "patch_size": 16, "rope_theta": 10000.0},
        },
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "PixtralImageProcessor",
                         "patch_size": {"height": 16, "width": 16}, "size": {"longest_edge": 1024}},
        "processor": {"processor_class": "PixtralProcessor", "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                      "image_end_token": "[IMG_END]", "patch_size": 16},
        "template": PIXTRAL_CHAT_TEMPLATE,
        "add_bos": False,
    },
    "mistral-small-3.1": {
        "config": {
            "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "image_token_index": 10,
            "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "spatial_merge_size": 2,
            "vision_feature_layer": -1,
            "text_config": {"model_type": "mistral", "hidden_size": 5120, "head_dim": 128, "intermediate_size": 32768,
                            "num_hidden_layers": 40, "num_key_value_heads": 8, "vocab_size": 131072},
            "vision_config": {"model_type": "pixtral", "head_dim": 64, "hidden_size": 1024, "image_size": 1540,
                              "patch_size": 14, "rope_theta": 10000.0},
        },
        "preprocessor": {**_IMAGE_PROCESSOR, "image_processor_type": "PixtralImageProcessorFast", "patch_size": 14,
                         "size": {"longest_edge": 1540}},
        "processor": {"processor_class": "PixtralProcessor", "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                      "image_end_token": "[IMG_END]", "patch_size": 14, "spatial_merge_size": 2},
        "template": MISTRAL3_CHAT_TEMPLATE,
        "add_bos": True,
    },
}


@serialized
def pixtral_checkpoint(name: str = "pixtral-12b") -> Path:
    """The checkpoint folder (weightless), built once."""
    spec = CHECKPOINTS[name]
    dest = _cache() / f"checkpoint-{name}"
    if (dest / "chat_template.jinja").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tekken_tokenizer_dir(add_bos=spec["add_bos"]) / f, tmp / f)
    (tmp / "config.json").write_text(json.dumps(spec["config"], indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps(spec["preprocessor"], indent=2))
    (tmp / "processor_config.json").write_text(json.dumps(spec["processor"], indent=2))
    (tmp / "chat_template.jinja").write_text(spec["template"])
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _processor_class():
    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.image_processing_pixtral"
    stub = types.ModuleType(name)
    stub.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
    saved = sys.modules.get(name)
    sys.modules[name] = stub
    try:
        module = importlib.import_module("transformers.models.pixtral.processing_pixtral")
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved
    return module.PixtralProcessor


@cache
def pixtral_processor(folder: Path):
    """transformers' own PixtralProcessor for ``folder`` (PixtralImageProcessorPil, the folder's files)."""
    from transformers import AutoTokenizer
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    if isinstance(values.get("patch_size"), int):
        values["patch_size"] = {"height": values["patch_size"], "width": values["patch_size"]}
    processor_args = json.loads((folder / "processor_config.json").read_text())
    processor_args.pop("processor_class", None)
    return _processor_class()(
        image_processor=PixtralImageProcessorPil(**values), tokenizer=AutoTokenizer.from_pretrained(str(folder), fix_mistral_regex=False),
        chat_template=(folder / "chat_template.jinja").read_text(), **processor_args,
    )
