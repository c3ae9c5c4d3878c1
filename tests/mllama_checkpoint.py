"""An offline Llama 3.2 Vision checkpoint folder (meta-llama/Llama-3.2-11B-Vision-Instruct's processor files).

- tokenizer: the real Llama 3 BPE (128,000 ranks) from llama.cpp's ``ggml-vocab-llama-bpe.gguf``
  in the llama-cpp-python sdist, with ``ignore_merges`` as in the hub tokenizer.json; it reproduces
  all of llama.cpp's reference encodings for that vocabulary (checked when it is built). The GGUF
  carries Llama 3.0's names for the 256 specials; Llama 3.1/3.2 renamed some of them, at the same
  ids, and they are renamed here: 128004 ``<|finetune_right_pad_id|>``, 128008 ``<|eom_id|>``,
  128010 ``<|python_tag|>``, the reserved ones renumbered (``<|reserved_special_token_N|>``), then
  ``<|image|>`` is added at 128256 (config.json ``image_token_index``). The post-processor adds
  ``<|begin_of_text|>`` as the hub tokenizer.json's does; ``eos_token`` ``<|eot_id|>`` and pad
  ``<|finetune_right_pad_id|>`` as in the Instruct tokenizer_config.json.
- ``preprocessor_config.json``: MllamaImageProcessor, 560 x 560 tiles, ``max_image_tiles`` 4, OpenAI
  CLIP mean/std, resample 2 (the hub file, shared unchanged by its fine-tunes and quantizations).
- chat template: the hub checkpoint's (``{{- bos_token }}`` first; a "Cutting Knowledge Date" system
  block only when no message has an image; images and a system message together are an error).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import MEMBER_DIR, _sdist
from vlmcheck.demo.checkpoints import cache_dir

NAME = "ggml-vocab-llama-bpe"
IMAGE_TOKEN_ID = 128256
BOS = "<|begin_of_text|>"

# meta-llama/Llama-3.2-11B-Vision-Instruct chat template
CHAT_TEMPLATE = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n"
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{#- Find out if there are any images #}\n{% set image_ns = namespace(has_images=false) %}      \n"
    "{%- for message in messages %}\n    {%- for content in message['content'] %}\n"
    "        {%- if content['type'] == 'image' %}\n            {%- set image_ns.has_images = true %}\n"
    "        {%- endif %}\n    {%- endfor %}\n{%- endfor %}\n\n"
    "{#- Error out if there are images and system message #}\n"
    "{%- if image_ns.has_images and not system_message == \"\" %}\n"
    "    {{- raise_exception(\"Prompting with images is incompatible with system messages.\") }}\n{%- endif %}\n\n"
    "{#- System message if there are no images #}\n{%- if not image_ns.has_images %}\n"
    "    {{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n    {%- if tools is not none %}\n"
    "        {{- \"Environment: ipython\\n\" }}\n    {%- endif %}\n"
    "    {{- \"Cutting Knowledge Date: December 2023\\n\" }}\n    {{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    "        {{- \"You have access to the following functions. To call a function, please respond with JSON for a "
    "function call.\" }}\n"
    "        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    "        {{- \"Do not use variables.\\n\\n\" }}\n        {%- for t in tools %}\n"
    "            {{- t | tojson(indent=4) }}\n            {{- \"\\n\\n\" }}\n        {%- endfor %}\n    {%- endif %}\n"
    "    {{- system_message }}\n    {{- \"<|eot_id|>\" }}\n{%- endif %}\n\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first "
    "user message!\") }}\n{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "        {%- if message['content'] is string %}\n            {{- message['content'] }}\n        {%- else %}\n"
    "            {%- for content in message['content'] %}\n                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n        {{- \"}\" }}\n        {{- \"<|eot_id|>\" }}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n"
    "        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)

CONFIG: dict[str, Any] = {
    "architectures": ["MllamaForConditionalGeneration"],
    "model_type": "mllama",
    "image_token_index": 128256,
    "text_config": {"model_type": "mllama_text_model", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
                    "hidden_size": 4096, "num_hidden_layers": 40, "vocab_size": 128256,
                    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]},
    "vision_config": {"model_type": "mllama_vision_model", "image_size": 560, "patch_size": 14, "max_num_tiles": 4},
}

PREPROCESSOR: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "MllamaImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_image_tiles": 4,
    "processor_class": "MllamaProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 560, "width": 560},
}

TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": BOS,
    "eos_token": "<|eot_id|>",
    "pad_token": "<|finetune_right_pad_id|>",
    "clean_up_tokenization_spaces": True,
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": 131072,
}


def llama3_special_name(token_id: int) -> str:
    """Llama 3.1/3.2's name for special id 128000-128255."""
    named = {128000: BOS, 128001: "<|end_of_text|>", 128002: "<|reserved_special_token_0|>",
             128003: "<|reserved_special_token_1|>", 128004: "<|finetune_right_pad_id|>",
             128005: "<|reserved_special_token_2|>", 128006: "<|start_header_id|>", 128007: "<|end_header_id|>",
             128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>"}
    return named.get(token_id) or f"<|reserved_special_token_{token_id - 128008}|>"


@serialized
def llama_bpe_files() -> Path:
    """Folder with the Llama 3 vocab GGUF and its reference .inp/.out, extracted once."""
    dest = cache_dir() / "llama-bpe-gguf"
    if not (dest / f"{NAME}.gguf.out").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(_sdist()) as tar:
            for member in tar.getmembers():
                base = member.name.split("/", 1)[-1]
                if base.startswith(MEMBER_DIR + NAME):
                    data = tar.extractfile(member)
                    assert data is not None
                    (dest / Path(base).name).write_bytes(data.read())
    return dest


def reference_cases() -> list[tuple[str, list[int]]]:
    src = llama_bpe_files()
    texts = (src / f"{NAME}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = (src / f"{NAME}.gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


def write_tokenizer(dest: Path) -> None:
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer

    src = llama_bpe_files()
    data = json.loads(AutoTokenizer.from_pretrained(str(src), gguf_file=f"{NAME}.gguf").backend_tokenizer.to_str())
    # as in the hub tokenizer.json: a pre-token that is itself a piece is taken whole (llama.cpp
    # does the same; without it " Việt" splits in three and one reference encoding fails)
    data["model"]["ignore_merges"] = True
    vocab = data["model"]["vocab"]
    for piece, i in list(vocab.items()):
        if i >= 128000:
            del vocab[piece]
            vocab[llama3_special_name(i)] = i
    data["added_tokens"] = [{**t, "content": llama3_special_name(t["id"])} for t in data["added_tokens"]
                            if 128000 <= t["id"] < 128256]
    data["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {BOS: {"id": BOS, "ids": [128000], "tokens": [BOS]}}},
    ]}
    tok = Tokenizer.from_str(json.dumps(data))
    assert tok.get_vocab_size() == 128256
    tok.add_special_tokens([AddedToken("<|image|>", special=True, normalized=False)])
    assert tok.token_to_id("<|image|>") == IMAGE_TOKEN_ID and tok.token_to_id("<|python_tag|>") == 128010
    assert tok.token_to_id("<|eot_id|>") == 128009 and tok.token_to_id("<|reserved_special_token_247|>") == 128255
    for text, ids in reference_cases():
        assert tok.encode(text, add_special_tokens=False).ids == ids, text
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")


@serialized
def mllama_checkpoint() -> Path:
    """The checkpoint folder, built once."""
    dest = cache_dir() / "checkpoint-llama-3.2-11b-vision-instruct"
    if (dest / "chat_template.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_tokenizer(tmp)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def mllama_processor(folder: Path, **overrides: Any):
    """transformers' own MllamaProcessor for ``folder`` with the PIL image processor (``overrides``: its
    settings changed)."""
    from transformers import AutoTokenizer, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    values.update(overrides)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return MllamaProcessor(image_processor=MllamaImageProcessorPil(**values),
                           tokenizer=AutoTokenizer.from_pretrained(str(folder)), chat_template=template)


def mllama_small_processor(folder: Path, *, tile: int = 56):
    """``mllama_processor`` with ``tile`` px tiles instead of 560 (16 patches of 14 px), for tiny models."""
    return mllama_processor(folder, size={"height": tile, "width": tile})


def tiny_mllama_model(seed: int = 0, *, tile: int = 56):
    """A real ``MllamaForConditionalGeneration``: 2 tiny text layers (the second cross-attends) with the real
    vocabulary size, a 2-layer vision encoder over ``tile`` px tiles at patch 14, up to 4 tiles per image."""
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    config = MllamaConfig(
        vision_config={"hidden_size": 16, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
                       "intermediate_size": 32, "vision_output_dim": 32, "image_size": tile, "patch_size": 14,
                       "max_num_tiles": 4, "intermediate_layers_indices": [0]},
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 64, "cross_attention_layers": [1]},
        image_token_index=IMAGE_TOKEN_ID,
    )
    return MllamaForConditionalGeneration(config).eval()
