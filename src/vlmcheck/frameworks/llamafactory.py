"""LLaMA-Factory: the one home of its facts (config keys and defaults, ``dataset_info.json``, its own chat templates,
per-turn tokenization, image pre-scaling, ``cutoff_len`` truncation and what happens at the cut).

Modelled on LLaMA-Factory 0.9.4-0.9.5, default (v0) engine, ``stage: sft``, ``stage: dpo`` / ``rm`` (the
pairwise processor, see **Preference stages** below) and ``stage: kto`` (**KTO**); its v1 engine (``USE_V1=1``) is
:mod:`vlmcheck.frameworks._llamafactory_v1`, which ``open_run`` hands such runs to:

- **Config** (``hparams/data_args.py``, ``hparams/model_args.py``): ``cutoff_len`` 2048, ``dataset_dir`` ``data``,
  ``media_dir`` = ``dataset_dir``, ``image_max_pixels`` 768*768, ``image_min_pixels`` 32*32, ``train_on_prompt``
  and ``mask_history`` off, ``enable_thinking`` on, ``packing`` off (on: ``cutoff_len`` - 1;
  each sample is still cut pair by pair as without packing, and dropped only when what the cut cannot take, an
  image prefix, is over ``cutoff_len``).
- **Datasets** (``data/parser.py``): ``dataset_info.json`` entries with ``file_name``, ``formatting``
  (``alpaca`` by default, ``sharegpt``, ``openai``), ``columns`` and ``tags``. A ``columns`` or ``tags`` object
  replaces *every* default of its kind: a key it leaves out becomes unset. ``images`` is read only when
  ``columns`` names it.
- **Rows** (``data/converter.py``): a leading system turn is taken as the system prompt only when its role is
  ``system_tag``; roles must alternate user/assistant; an odd number of turns or a bad role drops the row (LLaMA-
  Factory logs "Skipping this abnormal example"). A missing key raises inside ``datasets.map``: the run stops; but
  a key is missing only when no row of the dataset has it (``datasets`` loads one table per dataset: a row without
  a key other rows have reads None, and so does a turn without a key other turns have). The media and tools
  columns (and alpaca's system) are read for every row, the skipped ones too. The ``openai`` converter adds "detailed thinking off" to the system prompt of
  rows without tools.
  Relative media paths are joined to ``media_dir`` when that file exists. A dataset none of whose rows the
  converter and the processor keep stops the run in ``get_dataset`` ("Cannot find valid samples"; see
  ``Run._merged_features``).
- **Template** (``data/template.py``): each turn is formatted with the template's own strings and every formatted
  piece is tokenized on its own with ``add_special_tokens=False``; an empty system prompt becomes the template's
  ``default_system``; reasoning templates (``qwen3_vl``) put an empty ``<think>`` block before answers without
  one, trained when ``enable_thinking`` is on.
- **Images** (``data/mm_plugin.py``): opened with ``Image.open`` (no EXIF rotation), scaled by
  sqrt(budget / pixels) with ``int`` truncation to ``image_max_pixels`` then ``image_min_pixels``; the Qwen-VL
  plugins then stretch a side under 28 px to 28 and squash a ratio over 200 to 180:1 before the processor's own
  ``smart_resize``. ``<image>`` becomes ``<|vision_start|>`` + one ``<|image_pad|>`` per feature +
  ``<|vision_end|>`` *before* tokenization and truncation. The other plugins write what the model's processor
  writes for the pre-scaled image (the family module's expansion: Gemma 3's ``full_image_sequence``, LLaVA's and
  LLaVA-NeXT's ``<image>`` run, Pixtral's ``[IMG]`` rows, InternVL's ``<IMG_CONTEXT>`` tiles), except PaliGemma's,
  which removes ``<image>`` and puts every image's tokens before the sample, where the cut never reaches them.
  Llama 3.2 Vision's writes one ``<|image|>`` per image; GLM-4.1V's is a Qwen-VL plugin (its rules, then GLM's own
  ``smart_resize``) writing ``<|begin_of_image|>`` + ``<|image|>`` per feature + ``<|end_of_image|>``.
  Templates: ``qwen2_vl``, ``qwen3_vl``, ``qwen3_vl_nothink``, ``gemma3``, ``llava``, ``llava_next``,
  ``intern_vl``, ``pixtral``, ``paligemma``, ``mllama``, ``glm4v`` (``efficient_eos``: one labelled EOS closes the
  sample, each later prompt's first label is the EOS id; ``train_on_prompt`` refused), and the templates that put
  other strings on those plugins (``glm4_5v``, ``llava_next_llama3`` / ``_mistral`` / ``_qwen`` / ``_yi``,
  ``granite3_vision``, ``yi_vl``, ``paligemma_chat``, ``mimo_vl``, ``mistral_small``, ``ministral3``; ``replace_eos``
  makes their first stop word the EOS); the others are refused.
- **Truncation** (``data/processor/supervised.py``, ``processor_utils.infer_seqlen``): pair by pair, each
  (prompt, answer) gets a share of the remaining ``cutoff_len``. Nothing checks the image tokens afterwards: a cut
  through an image span leaves fewer ``<|image_pad|>`` ids than the image has features, and the model's forward
  raises "Image features and image tokens do not match" at the step that reaches the sample. Llama 3.2 Vision:
  ``MllamaPlugin`` builds ``cross_attention_mask`` from the ``<|image|>`` ids left, fewer image slots than
  ``pixel_values``: a size mismatch at batch size 1 (silently unattended when batched with a whole sample holding
  as many images).
- **Preference stages** (``stage: dpo`` / ``rm``: ``get_dataset(stage="rm")``, ``data/processor/pairwise.py``):
  ``ranking: true`` datasets only (an sft run refuses them, a preference run refuses the others); a row is a
  prompt (an odd number of turns, ending with the user's) and a chosen and a rejected answer (alpaca: two strings;
  sharegpt / openai: two turn objects). ``encode_oneturn``: the whole prompt is one piece, the answer the other;
  reasoning templates strip the history's thoughts unless ``preserve_thinking`` and the answer's when
  ``enable_thinking`` is off, with one empty thought block for the last answer; an ``efficient_eos`` template's EOS
  joins each answer. One cut: ``infer_seqlen(prompt, the longer answer, cutoff_len)``, the same share for both
  answers; PaliGemma's image tokens join the prompt there and can be cut. Chosen and rejected go through the
  collator together, each with the images: a cut image span crashes as in sft. ``packing`` is not applied
  (``cutoff_len`` still loses 1 when it is set); ``train_on_prompt``, ``mask_history``, ``neat_packing`` and
  ``predict_with_generate`` are refused, as LLaMA-Factory refuses them outside sft.
- **KTO** (``stage: kto``: ``get_dataset(stage="kto")``, ``data/processor/feedback.py``): rows whose ``kto_tag``
  is a boolean (others are dropped); each gives a target sequence (its prompt and answer) and a KL sequence (its
  prompt with the answer of the row before it in its ``datasets.map`` batch, the batch's first row the last's:
  ``map_batches``, ``Run.rows``), each ``encode_oneturn`` and cut by its own ``infer_seqlen``. Both go through the
  KTO collator with the row's images: a cut image span in either crashes (the target forward, then the KL one).
  ``streaming`` and ``val_size`` are refused (batches vlmcheck does not follow).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmcheck import findings as F
from vlmcheck.data.files import FileProblem, not_a_file, read_text
from vlmcheck.data.hfjson import (
    ListingOrder,
    LoadPlan,
    NotFollowed,
    Rewritten,
    TypeClash,
    as_loaded,
    json_columns_problem,
    json_schema,
    json_type,
    tables_problem,
    unify_types,
)
from vlmcheck.data.images import ImageProblem, probe_bytes, probe_path
from vlmcheck.data.nesting import parse
from vlmcheck.data.readers import BadRow, builder_rows, column_feature, table_schemas
from vlmcheck.data.videos import VideoInfo, VideoProblem, probe_video_path
from vlmcheck.errors import DatasetError, ModelError, UsageError
from vlmcheck.families import Expansion, Overrides, pixtral
from vlmcheck.families.base import VideoFamily
from vlmcheck.families.qwen2_vl import QwenVLSettings
from vlmcheck.frameworks._run import locate, mapped
from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS
from vlmcheck.layout import infer_seqlen
from vlmcheck.model import ModelSpec, load_model, read_checkpoint_json
from vlmcheck.preview import Previewer, image_refs, token_spans
from vlmcheck.results import SampleResult

if TYPE_CHECKING:
    from vlmcheck.frameworks._llamafactory_v1 import Run as V1Run
    from vlmcheck.tokenizer import Tok

NAME = "llamafactory"
VERSIONS = "0.9.4-0.9.5, default engine"

# hparams/data_args.py and hparams/model_args.py (ProcessorArguments) defaults
DEFAULTS: dict[str, Any] = {
    "cutoff_len": 2048,
    "dataset_dir": "data",
    "media_dir": None,  # -> dataset_dir
    "image_max_pixels": 768 * 768,
    "image_min_pixels": 32 * 32,
    # hparams/model_args.py ProcessorArguments: how videos are sampled and pre-scaled
    "video_max_pixels": 256 * 256,
    "video_min_pixels": 16 * 16,
    "video_fps": 2.0,
    "video_maxlen": 128,
    "image_do_pan_and_scan": False,
    "crop_to_patches": False,
    "train_on_prompt": False,
    "mask_history": False,
    "enable_thinking": True,
    "preserve_thinking": False,
    "packing": None,
    "neat_packing": False,
    "default_system": None,
    "max_samples": None,
    "streaming": False,
    "predict_with_generate": False,
    "stage": "sft",
    "seed": 42,  # TrainingArguments.seed: get_train_args seeds numpy with it (dataset_info num_samples draws)
    "mix_strategy": "concat",
    "interleave_probs": None,
    "eval_on_each_dataset": False,
    "val_size": 0.0,
}
# extras/constants.py: the placeholders in dataset text (overridable by environment, as LLaMA-Factory reads them)
IMAGE_PLACEHOLDER_ENV = "IMAGE_PLACEHOLDER"
VIDEO_PLACEHOLDER_ENV = "VIDEO_PLACEHOLDER"
AUDIO_PLACEHOLDER_ENV = "AUDIO_PLACEHOLDER"

# what the model does with a video whose tokens are not its features (measured on a tiny Qwen2-VL through LLaMA-Factory's
# collator: the M-RoPE position step raises first)
VIDEO_CRASH = ("training stops: the model raises 'shape mismatch: value tensor of shape [3, N] cannot be broadcast to "
               "indexing result of shape [3, M]' (or 'Videos features and video tokens do not match')")
# the Qwen-VL plugins' extra image rules (mm_plugin.py Qwen2VLPlugin._preprocess_image)
QWEN_MIN_SIDE = 28
QWEN_MAX_RATIO = 200
QWEN_SQUASHED_RATIO = 180
# `vlmcheck scan --framework llamafactory`: its cut, its pixel pre-scaling and its defaults, without a config (the
# checkpoint's chat template renders; `vlmcheck check` uses LLaMA-Factory's own templates)
SCAN_DEFAULTS: dict[str, Any] = {
    "max_length": DEFAULTS["cutoff_len"], "truncation": "llamafactory", "resize": "prescale",
    "max_pixels": DEFAULTS["image_max_pixels"], "min_pixels": DEFAULTS["image_min_pixels"], "exif_transpose": False,
}
# `vlmcheck lint`: concept -> (LLaMA-Factory's option name, its default). hparams: use_reentrant_gc=True,
# disable_gradient_checkpointing=False (model_args.py), finetuning_type="lora" (finetuning_args.py).
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    **TRAINING_ARGUMENTS_OPTIONS,
    "stage": ("stage", DEFAULTS["stage"]),
    "bf16": ("bf16", False),
    "lora": ("finetuning_type", "lora"),
    "disable_gradient_checkpointing": ("disable_gradient_checkpointing", False),
    "use_reentrant_gc": ("use_reentrant_gc", True),
    "max_length": ("cutoff_len", DEFAULTS["cutoff_len"]),
    "max_pixels": ("image_max_pixels", DEFAULTS["image_max_pixels"]),
    "template": ("template", None),
}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads (``sft`` or None): ``stage: sft``, the default."""
    name, default = LINT_OPTIONS["stage"]
    return "sft" if str(options.get(name, default)) == "sft" else None


@dataclass(frozen=True)
class Plugin:
    """A multimodal plugin: the tokens an ``<image>`` becomes and the model types it serves.

    ``wrapped``: the Qwen-VL plugins write ``vision_bos`` + the image token per feature + ``vision_eos`` and stretch
    or squash images the processor would refuse (``qwen_rules``). Otherwise the plugin writes what the model's own
    processor writes for the pre-scaled image (the family's expansion): Gemma 3's ``full_image_sequence`` (and its
    pan-and-scan crops), LLaVA's ``<image>`` per feature."""

    name: str
    image_token: str
    video_token: str
    vision_bos: str
    vision_eos: str
    model_types: tuple[str, ...]  # the vlmcheck families (model types) it serves
    wrapped: bool = True
    qwen_rules: bool = True
    prefix_images: bool = False
    # what training does with a sample whose image tokens were cut
    cut_effect: str = "training stops with 'Image features and image tokens do not match'"
    # whether vlmcheck counts this plugin's videos (Qwen2VLPlugin: frames sampled by PyAV stream metadata)
    counts_videos: bool = False
    # whether LLaMA-Factory registers a video token for it (without one, _validate_input raises on any video)
    takes_videos: bool = False
    # Qwen3VLPlugin: each video written frame group by frame group, "<t seconds>" before each
    video_timestamps: bool = False
    # whether process_messages opens every image (its text depends on it): else an image that cannot be opened
    # passes get_dataset, and the collator's get_mm_inputs raises on it at the training step that reaches the row
    opens_images: bool = True


QWEN2_VL_PLUGIN = Plugin("qwen2_vl", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                         ("qwen2_vl", "qwen2_5_vl"), counts_videos=True, takes_videos=True)
# Qwen3VLPlugin serves Qwen3-VL and its MoE, and Qwen3.5 (the qwen3_5 / qwen3_6 templates): one processor class
QWEN3_VL_PLUGIN = Plugin("qwen3_vl", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                         ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"), counts_videos=True,
                         takes_videos=True, video_timestamps=True)
# mm_plugin.py Gemma3Plugin.process_messages: processor.full_image_sequence per image, or with
# image_do_pan_and_scan "Here is the original image ... and here are some crops ..." (the processor's own text)
# (it opens the images only with image_do_pan_and_scan, for the crop counts: see PAN_AND_SCAN_RAISES)
GEMMA3_PLUGIN = Plugin("gemma3", "<image_soft_token>", "", "", "", ("gemma3",), wrapped=False, qwen_rules=False,
                       opens_images=False)
# mm_plugin.py LlavaPlugin / LlavaNextPlugin.process_messages: "<image>" once per feature (image_seqlen from the
# processed pixel_values; LLaVA-NeXT: processor._get_number_of_features of each image's size)
LLAVA_PLUGIN = Plugin("llava", "<image>", "", "", "", ("llava",), wrapped=False, qwen_rules=False)
LLAVA_NEXT_PLUGIN = Plugin("llava_next", "<image>", "", "", "", ("llava_next",), wrapped=False, qwen_rules=False)
# mm_plugin.py PixtralPlugin.process_messages: per row of patches [IMG] x columns then [IMG_BREAK], the last one
# [IMG_END], from the image_sizes of the image processor called directly (rounded to its own patch size, 14 for
# Mistral-Small-3.1) divided, floored, by the processor's patch_size x spatial_merge_size (28): see pixtral_grid
PIXTRAL_PLUGIN = Plugin("pixtral", "[IMG]", "", "", "", ("pixtral", "mistral3"), wrapped=False, qwen_rules=False)
# mm_plugin.py InternVLPlugin.process_messages: "<img>" + "<IMG_CONTEXT>" x image_seq_length x tiles + "</img>"
# (the template registers "<image>" as its image token, but the text it writes holds <IMG_CONTEXT>); the tiles
# come from the image processor called directly: crop_to_patches (max 12, min 1 tiles) when LLaMA-Factory's own
# crop_to_patches is set, else the image processor's own preprocessor_config.json value
INTERN_VL_PLUGIN = Plugin("intern_vl", "<IMG_CONTEXT>", "", "", "", ("internvl",), wrapped=False, qwen_rules=False,
                          takes_videos=True)
# mm_plugin.py PaliGemmaPlugin: each <image> is removed from the text, and process_token_ids puts
# processor.image_seq_length image tokens per image before the whole sample (before BOS), unlabelled
PALIGEMMA_PLUGIN = Plugin("paligemma", "<image>", "", "", "", ("paligemma",), wrapped=False, qwen_rules=False,
                          prefix_images=True, opens_images=False)
# mm_plugin.py MllamaPlugin.process_messages: each <image> becomes one "<|image|>" (the image reaches the model through
# cross-attention); get_mm_inputs builds cross_attention_mask from the <|image|> ids left in the batch, with as many
# image slots as the most <|image|> ids a sample of the batch holds, while pixel_values has a slot for every image:
# when no sample of the batch keeps as many <|image|> ids as the batch's most images, the cross-attention raises a
# size mismatch (proved on 0.9.5 with a tiny MllamaForConditionalGeneration through its collator); batched with a
# whole sample holding as many images, nothing raises and no token attends the cut image
MLLAMA_PLUGIN = Plugin(
    "mllama", "<|image|>", "", "", "", ("mllama",), wrapped=False, qwen_rules=False, opens_images=False,
    cut_effect=("the cross_attention_mask LLaMA-Factory builds from the <|image|> ids left has fewer image slots "
                "than pixel_values: training stops with 'RuntimeError: The size of tensor a must match the size of "
                "tensor b' (always at batch size 1); only in a batch with a whole sample holding as many images "
                "does it go on, the cut image then silently unattended"))
# mm_plugin.py GLM4VPlugin(Qwen2VLPlugin): the Qwen-VL image rules (_preprocess_image is inherited), then
# "<|begin_of_image|>" + "<|image|>" per feature (image_grid_thw.prod() // merge_size**2 of GLM's own image
# processor) + "<|end_of_image|>"
GLM4V_PLUGIN = Plugin("glm4v", "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", ("glm4v", "glm4v_moe"),
                      takes_videos=True)
INTERN_VL_CROP = {"crop_to_patches": True, "max_patches": 12, "min_patches": 1}
# mm_plugin.py Gemma3Plugin.process_messages with image_do_pan_and_scan reads each image's crop count as
# mm_inputs["num_crops"][0][k]; transformers 5.x's Gemma 3 image processor returns num_crops as a flat tensor, so
# the second index raises IndexError on every row with an image (proved on 0.9.5 with transformers 5.6)
PAN_AND_SCAN_RAISES = ("with image_do_pan_and_scan LLaMA-Factory's Gemma3Plugin raises 'IndexError: invalid index "
                       "of a 0-dim tensor' on every row with an image (it indexes num_crops[0][k], a flat tensor under "
                       "transformers 5.x)")


@dataclass(frozen=True)
class Template:
    """One of LLaMA-Factory's registered templates (``data/template.py`` ``register_template``): each slot string
    holds ``{content}`` once."""

    name: str
    user: str
    assistant: str
    system: str
    plugin: Plugin
    prefix: str = ""
    default_system: str = ""
    reasoning: bool = False
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    efficient_eos: bool = False
    # format_prefix {"bos_token"}: the tokenizer's BOS id opens the first turn
    prefix_bos: bool = False
    # the default assistant slots ["{{content}}", {"eos_token"}]: the tokenizer's EOS id closes every answer
    answer_eos: bool = False
    # Llama2Template: the formatted system prompt is written inside the first user message, not before it
    system_in_user: bool = False
    # Template.fix_special_tokens: the stop words (after the one that replaces EOS) are added to the tokenizer as
    # special tokens, so text holding one tokenizes it as a single token
    stop_words: tuple[str, ...] = ()
    # replace_eos: this stop word becomes the tokenizer's EOS (added as a special token when it is not one): every
    # EOS slot writes its id
    eos_word: str = ""
    # tool use: format_observation / format_function slots and the tool format of format_tools / FunctionFormatter
    # (MODELLED_TOOL_FORMATS: qwen, qwen3_5, default; rows with tools or tool turns under another are VC007)
    observation: str = ""
    function: str = ""
    tool_format: str = ""
    # the default function slots ["{{content}}", {"eos_token"}] (a config's tool_format sets them): the tokenizer's
    # EOS id closes every function-call turn
    function_eos: bool = False
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")


_CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{content}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
# template.py "qwen2_vl" / "qwen3_vl" / "qwen3_vl_nothink": tool results are a user turn, calls an answer
_QWEN_OBSERVATION = ("<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"
                     "<|im_start|>assistant\n")
_QWEN_FUNCTION = "{content}<|im_end|>\n"
# tool_utils.py TOOLS: the tool formats a config's tool_format may name (vlmcheck models MODELLED_TOOL_FORMATS)
TOOL_FORMATS = ("default", "gemma4", "glm4", "llama3", "lfm2", "minimax1", "minimax2", "mistral", "qwen", "qwen3_5",
                "glm4_moe", "seed_oss", "ling")
MODELLED_TOOL_FORMATS = ("qwen", "qwen3_5", "default")
# tool_utils.py QWEN_TOOL_PROMPT: joined to the system prompt, the tools one JSON object a line
QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}}\n</tool_call>"
)
# tool_utils.py QWEN35_TOOL_PROMPT (the "qwen3_5" format): the tools one JSON object a line (unwrapped from
# {"type": "function", "function": ...}), then how to write an XML-style call
QWEN35_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}"
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: "
    "an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)
_LLAMA3_USER = ("<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
_LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>"
YI_VL_SYSTEM = (
    "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. Read all "
    "the images carefully, and respond to the human's questions with informative, helpful, detailed and polite "
    "answers. 这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。"
    "仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。\n\n")
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("qwen2_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN2_VL_PLUGIN,
                 default_system="You are a helpful assistant.", observation=_QWEN_OBSERVATION,
                 function=_QWEN_FUNCTION, tool_format="qwen"),
        Template("qwen3_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN3_VL_PLUGIN, reasoning=True,
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen"),
        Template("qwen3_vl_nothink", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN3_VL_PLUGIN,
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen"),
        # template.py "qwen3_5" / "qwen3_5_nothink" / "qwen3_6" (Qwen3.5): qwen3_vl's strings and plugin, its own tool
        # format (qwen3_5: the tools unwrapped in the system prompt, calls as <function=...> / <parameter=...> blocks)
        Template("qwen3_5", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN3_VL_PLUGIN, reasoning=True,
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen3_5"),
        Template("qwen3_5_nothink", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN3_VL_PLUGIN,
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen3_5"),
        Template("qwen3_6", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN3_VL_PLUGIN, reasoning=True,
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen3_5"),
        # template.py "gemma3": Llama2Template (system fused into the first user turn), BOS prefix, no default
        # system; stop word / replaced EOS <end_of_turn> (already a special token of the Gemma 3 vocabulary)
        Template("gemma3", "<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
                 "{content}<end_of_turn>\n", "{content}\n\n", GEMMA3_PLUGIN, prefix_bos=True, system_in_user=True),
        # template.py "llava" / "llava_next" (vicuna's strings): system and answer slots are the defaults
        # ("{{content}}", and "{{content}}" + the EOS id)
        Template("llava", "USER: {content} ASSISTANT:", "{content}", "{content}", LLAVA_PLUGIN,
                 default_system=_VICUNA_SYSTEM, answer_eos=True, observation="USER: {content} ASSISTANT:",
                 function="{content}", function_eos=True, tool_format="default"),
        Template("llava_next", "USER: {content} ASSISTANT:", "{content}", "{content}", LLAVA_NEXT_PLUGIN,
                 default_system=_VICUNA_SYSTEM, answer_eos=True, observation="USER: {content} ASSISTANT:",
                 function="{content}", function_eos=True, tool_format="default"),
        # template.py "intern_vl": chatml strings, BOS prefix (InternVL's Qwen2 tokenizer has none: nothing), its
        # own default system prompt
        Template("intern_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, INTERN_VL_PLUGIN, prefix_bos=True,
                 default_system="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                                "多模态大语言模型。"),
        # template.py "paligemma": Llama2Template, BOS prefix, user "{{content}}\n", default system and answer slots
        Template("paligemma", "{content}\n", "{content}", "{content}", PALIGEMMA_PLUGIN, prefix_bos=True,
                 answer_eos=True, system_in_user=True),
        # template.py "mllama" (llama3's strings): BOS prefix, no default system; replace_eos makes <|eot_id|> the
        # EOS (no answer slot writes it), <|eom_id|> joins the special tokens
        Template("mllama", _LLAMA3_USER, "{content}<|eot_id|>", _LLAMA3_SYSTEM, MLLAMA_PLUGIN, prefix_bos=True,
                 stop_words=("<|eom_id|>",), eos_word="<|eot_id|>"),
        # template.py "glm4v" (glm4's strings): "[gMASK]<sop>" prefix, ReasoningTemplate, efficient_eos (answers
        # carry no EOS: one EOS closes the sample, and each later prompt's first label is the EOS id)
        Template("glm4v", "<|user|>\n{content}<|assistant|>", "\n{content}", "<|system|>\n{content}", GLM4V_PLUGIN,
                 prefix="[gMASK]<sop>", reasoning=True, efficient_eos=True,
                 stop_words=("<|user|>", "<|observation|>", "</answer>")),
        # template.py "pixtral" (ministral's strings): Llama2Template, BOS prefix, default answer slots
        Template("pixtral", "[INST]{content}[/INST]", "{content}", "{content}\n\n", PIXTRAL_PLUGIN, prefix_bos=True,
                 answer_eos=True, system_in_user=True),
        # -- other models' strings on the same plugins (tools: VC007 unless the format is qwen or default) --
        # template.py "glm4_5v": glm4v's strings and plugin (GLM-4.5V, model_type glm4v_moe); tool format glm4_moe
        Template("glm4_5v", "<|user|>\n{content}<|assistant|>", "\n{content}", "<|system|>\n{content}",
                 GLM4V_PLUGIN, prefix="[gMASK]<sop>", reasoning=True, efficient_eos=True,
                 stop_words=("<|user|>", "<|observation|>", "</answer>")),
        # template.py "llava_next_llama3": llama3's strings, BOS prefix, replace_eos <|eot_id|>; tool format llama3
        Template("llava_next_llama3", _LLAMA3_USER, "{content}<|eot_id|>", _LLAMA3_SYSTEM, LLAVA_NEXT_PLUGIN,
                 prefix_bos=True, stop_words=("<|eom_id|>",), eos_word="<|eot_id|>"),
        # template.py "llava_next_mistral": Llama2Template, BOS prefix, " {content}" + EOS; tool format mistral
        Template("llava_next_mistral", "[INST] {content}[/INST]", " {content}", "{content}\n\n", LLAVA_NEXT_PLUGIN,
                 prefix_bos=True, answer_eos=True, system_in_user=True),
        # template.py "llava_next_qwen": qwen's chatml strings and default system, replace_eos <|im_end|>, qwen tools
        Template("llava_next_qwen", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, LLAVA_NEXT_PLUGIN,
                 default_system="You are a helpful assistant.", eos_word="<|im_end|>", observation=_QWEN_OBSERVATION,
                 function=_QWEN_FUNCTION, tool_format="qwen"),
        # template.py "llava_next_yi": chatml strings, <|im_end|> a stop word (no replace_eos), no tool slots
        Template("llava_next_yi", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, LLAVA_NEXT_PLUGIN,
                 stop_words=("<|im_end|>",)),
        # template.py "granite3_vision": its own strings, vicuna's default system, default answer / tool slots
        Template("granite3_vision", "<|user|>\n{content}\n<|assistant|>\n", "{content}", "<|system|>\n{content}\n",
                 LLAVA_NEXT_PLUGIN, default_system=_VICUNA_SYSTEM, answer_eos=True,
                 observation="<|user|>\n{content}\n<|assistant|>\n", function="{content}", function_eos=True,
                 tool_format="default"),
        # template.py "yi_vl": "### Human: ... ### Assistant:", its default system, efficient_eos, stop word "###"
        Template("yi_vl", "### Human: {content}\n### Assistant:", "{content}\n", "{content}", LLAVA_PLUGIN,
                 default_system=YI_VL_SYSTEM, efficient_eos=True, stop_words=("###",)),
        # template.py "paligemma_chat": Llama2Template, gemma's turns, BOS prefix, replace_eos <end_of_turn>
        Template("paligemma_chat", "<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
                 "{content}<end_of_turn>\n", "{content}", PALIGEMMA_PLUGIN, prefix_bos=True, system_in_user=True,
                 eos_word="<end_of_turn>"),
        # template.py "mimo_vl": chatml, its default system, ReasoningTemplate, replace_eos <|im_end|>, qwen tools
        Template("mimo_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM, QWEN2_VL_PLUGIN, reasoning=True,
                 default_system="You are MiMo, an AI assistant developed by Xiaomi.", eos_word="<|im_end|>",
                 observation=_QWEN_OBSERVATION, function=_QWEN_FUNCTION, tool_format="qwen"),
        # template.py "mistral_small": [INST] turns, [SYSTEM_PROMPT] system before them, BOS prefix, default answer
        # slots (Mistral Small 3.1: model_type mistral3, the Pixtral plugin); tool format mistral
        Template("mistral_small", "[INST]{content}[/INST]", "{content}", "[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]",
                 PIXTRAL_PLUGIN, prefix_bos=True, answer_eos=True),
        # template.py "ministral3" (Ministral 3, model_type mistral3 with a ministral3 text model): pixtral's strings
        # (Llama2Template, the system prompt + "\n\n" inside the first [INST], BOS prefix, default answer slots, no
        # default system, no stop words, no thinking), the Pixtral plugin; tool format mistral
        Template("ministral3", "[INST]{content}[/INST]", "{content}", "{content}\n\n", PIXTRAL_PLUGIN,
                 prefix_bos=True, answer_eos=True, system_in_user=True),
    )
}


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """A LLaMA-Factory training config with the framework's defaults filled in."""

    path: Path
    model: str
    template: Template
    datasets: tuple[str, ...]
    dataset_dir: Path
    media_dir: Path
    cutoff_len: int
    image_max_pixels: int
    image_min_pixels: int
    train_on_prompt: bool
    mask_history: bool
    enable_thinking: bool | None  # None: written thoughts kept, a missing one an untrained empty block
    preserve_thinking: bool
    packing: bool
    default_system: str | None
    max_samples: int | None
    pan_and_scan: bool = False
    crop_to_patches: bool = False
    image_placeholder: str = "<image>"
    video_placeholder: str = "<video>"
    audio_placeholder: str = "<audio>"
    video_max_pixels: int = DEFAULTS["video_max_pixels"]
    video_min_pixels: int = DEFAULTS["video_min_pixels"]
    video_fps: float = DEFAULTS["video_fps"]
    video_maxlen: int = DEFAULTS["video_maxlen"]
    values: dict[str, Any] = field(default_factory=dict)  # as read, for the report
    # eval_dataset: prepared by the same processor as the training rows (a crash there stops the run at its first
    # evaluation); seed: numpy's global generator for dataset_info's num_samples; streaming: num_samples unused
    eval_datasets: tuple[str, ...] = ()
    seed: int = DEFAULTS["seed"]
    # val_size: the share (a fraction) or number (over 1) of the merged training rows split off for evaluation,
    # as written (a whole number stays one: datasets reads an int test_size as a count)
    val_size: float = 0.0
    streaming: bool = False
    stream_shards: int = 1  # with streaming: dataloader_num_workers, the shards a local dataset is streamed in
    # data_args.tool_format: replaces the template's tool and function-call formatters (None: the template's own)
    tool_format: str | None = None
    # finetuning_args.stage: sft, or dpo / rm (both prepare their data with the pairwise processor)
    stage: str = "sft"
    # data_args.mix_strategy / interleave_probs: how merge_dataset joins several datasets (see interleaved_sources);
    # eval_on_each_dataset: the evaluation datasets are kept apart (a dict), never merged
    mix_strategy: str = "concat"
    interleave_probs: tuple[float, ...] | None = None
    eval_on_each_dataset: bool = False
    # stage kto (FeedbackDatasetProcessor): each row's KL sequence borrows the answer of the row before it in its
    # datasets.map batch (preprocessing_batch_size rows of one of preprocessing_num_workers contiguous shards)
    preprocessing_batch_size: int = 1000
    preprocessing_num_workers: int | None = None

    @property
    def pairwise(self) -> bool:
        """The preference stages: ``get_dataset(stage="rm")``, chosen and rejected answers to one prompt."""
        return self.stage in PAIRWISE_STAGES

    @property
    def feedback(self) -> bool:
        """``stage: kto``: ``get_dataset(stage="kto")``, the FeedbackDatasetProcessor (one answer, a KL sequence)."""
        return self.stage == "kto"

    @property
    def oneturn(self) -> bool:
        """The stages whose processor encodes a row with ``Template.encode_oneturn`` (the prompt one piece)."""
        return self.pairwise or self.feedback



# train/dpo/workflow.py and train/rm/workflow.py: get_dataset(stage="rm"), the PairwiseDatasetProcessor
PAIRWISE_STAGES = ("dpo", "rm")
STAGES = ("sft", *PAIRWISE_STAGES, "kto")


def _flag(raw: dict[str, Any], key: str) -> bool:
    """A boolean setting as LLaMA-Factory tests it: ``parse_dict`` passes the YAML value to its field unconverted
    and the code tests its truth, so the text "false" is true (and a null false)."""
    return bool(raw.get(key, DEFAULTS[key]))


def _unconverted(key: str, value: Any, path: Path) -> UsageError:
    return UsageError(f"{path}: {key} is the text {value!r}: LLaMA-Factory passes a config's values to its settings "
                      "unconverted, and the first comparison with it raises (TypeError) before step 1; write it "
                      "without quotes")


def _int(raw: dict[str, Any], key: str, path: Path, *, floats: bool = False) -> int:
    """A whole-number setting as LLaMA-Factory gets it: text raises there (see _unconverted); a float stays a float
    (``floats``: a pixel budget, compared as it is, so a whole one such as 1e5 is that number; elsewhere refused:
    it raises where LLaMA-Factory slices or seeds with it)."""
    value = raw.get(key, DEFAULTS[key])
    if isinstance(value, str):
        raise _unconverted(key, value, path)
    if isinstance(value, float):
        if not floats or not value.is_integer():
            why = ("LLaMA-Factory raises on every sample it has to cut (slice indices must be integers)"
                   if key == "cutoff_len" else "vlmcheck models whole numbers of pixels" if floats else
                   "LLaMA-Factory raises where it uses it (an integer is required)")
            raise UsageError(f"{path}: {key} is the float {value!r}: {why}; write it as a whole number")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}")
    if value <= 0:
        raise UsageError(f"{path}: {key} must be positive, got {value}")
    return value


def _thinking(raw: dict[str, Any]) -> bool | None:
    """enable_thinking (a ``bool | None`` field): None is a mode of its own in ReasoningTemplate: written thoughts
    are kept (only ``is False`` removes them), and a missing one gets an untrained empty block (``not`` it)."""
    value = raw.get("enable_thinking", DEFAULTS["enable_thinking"])
    return None if value is None else bool(value)


# extras/misc.py is_env_enabled: ALLOW_EXTRA_ARGS lets get_train_args ignore keys it does not know
ALLOW_EXTRA_ARGS_ENV = "ALLOW_EXTRA_ARGS"
# keys LLaMA-Factory once read under other names, for the message that refuses them
RENAMED_KEYS = {"image_resolution": "image_max_pixels", "video_resolution": "video_max_pixels",
                "image_max_resolution": "image_max_pixels", "image_min_resolution": "image_min_pixels",
                "video_max_resolution": "video_max_pixels", "video_min_resolution": "video_min_pixels"}


def read_yaml(text: str) -> Any:
    """A YAML config as LLaMA-Factory's ``read_args`` loads it (``OmegaConf.load``): PyYAML's safe loading, except
    that a key written twice in one mapping raises, a number with an exponent is a float without needing a dot or a
    sign (``1e5``, ``3.5e2``) and a date stays text."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def flatten_mapping(self, node: Any) -> None:
            seen: set[str] = set()
            for key, _ in node.value:
                if key.tag != "tag:yaml.org,2002:str" or not isinstance(key.value, str):
                    continue
                if key.value in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key.value}", key.start_mark)
                seen.add(key.value)
            super().flatten_mapping(node)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
        list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _known_keys(raw: dict[str, Any], path: Path, env: Mapping[str, str]) -> None:
    """get_train_args: a key none of LLaMA-Factory's argument classes has stops the run before step 1."""
    from vlmcheck.frameworks.options import LLAMAFACTORY_0_9_5, TRANSFORMERS_4_ONLY

    if env.get(ALLOW_EXTRA_ARGS_ENV, "0").lower() in ("true", "y", "1"):
        return
    # with transformers 4.55-4.57, which LLaMA-Factory 0.9.5 also accepts, TrainingArguments has a few more
    unknown = sorted(str(k) for k in raw if str(k) not in LLAMAFACTORY_0_9_5 | TRANSFORMERS_4_ONLY)
    if unknown:
        hints = [f"{k} is {RENAMED_KEYS[k]} now" for k in unknown if k in RENAMED_KEYS]
        raise UsageError(f"{path}: {', '.join(unknown)}: LLaMA-Factory 0.9.5 knows no such setting and stops before "
                         "step 1 ('Some keys are not used by the HfArgumentParser'; ALLOW_EXTRA_ARGS=1 lets it "
                         "run)" + (f"; {'; '.join(hints)}" if hints else ""))


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The settings LLaMA-Factory runs with for ``raw`` (a parsed YAML), defaults filled in as it fills them.

    ``model`` / ``data`` override ``model_name_or_path`` / ``dataset_dir`` (a config written on another machine);
    ``path_map`` rewrites path prefixes in the config and the data's media paths.
    """
    env = os.environ if env is None else env
    _known_keys(raw, path, env)
    stage = str(raw.get("stage", DEFAULTS["stage"]))
    if stage not in STAGES:
        raise UsageError(f"{path}: stage {stage!r}: vlmcheck models LLaMA-Factory's {', '.join(STAGES)} stages (its "
                         "pt and ppo data paths are not modelled)")
    if stage != "sft":  # hparams/parser.py get_train_args: refused outside sft
        for key in ("predict_with_generate", "neat_packing"):
            if _flag(raw, key):
                raise UsageError(f"{path}: {key} with stage {stage} (LLaMA-Factory refuses: '`{key}` cannot be "
                                 "set as True except SFT')")
        if _flag(raw, "train_on_prompt") or _flag(raw, "mask_history"):
            raise UsageError(f"{path}: train_on_prompt / mask_history with stage {stage} (LLaMA-Factory refuses: "
                             "'`train_on_prompt` or `mask_history` cannot be set as True except SFT')")
    name = raw.get("template")
    if name is None:
        raise UsageError(f"{path}: no template set; LLaMA-Factory then parses the tokenizer's chat template, which "
                         f"vlmcheck does not model. Set template: (one of {', '.join(TEMPLATES)})")
    if name not in TEMPLATES:
        raise UsageError(f"{path}: template {name!r} is not modelled by vlmcheck yet (it models "
                         f"{', '.join(TEMPLATES)}); `vlmcheck scan --exact` counts with the model's own processor")
    model_path = model or raw.get("model_name_or_path")
    if not model_path:
        raise UsageError(f"{path}: model_name_or_path is not set (or pass --model)")
    names = _names(raw.get("dataset"))
    if not names:
        raise UsageError(f"{path}: no dataset set")
    eval_names = _names(raw.get("eval_dataset"))
    val_size = raw.get("val_size") or 0.0
    if isinstance(val_size, str):
        raise _unconverted("val_size", val_size, path)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise UsageError(f"{path}: val_size must be a number, got {val_size!r}")
    if eval_names and val_size > 1e-6:
        raise UsageError(f"{path}: val_size and eval_dataset together (LLaMA-Factory refuses: 'Cannot specify "
                         "`val_size` if `eval_dataset` is not None')")
    streaming = _flag(raw, "streaming")
    if streaming and raw.get("max_samples") is not None:
        raise UsageError(f"{path}: max_samples with streaming (LLaMA-Factory refuses: '`max_samples` is "
                         "incompatible with `streaming`')")
    if streaming and 1e-6 < val_size < 1:
        raise UsageError(f"{path}: a fractional val_size with streaming (LLaMA-Factory refuses: 'Streaming mode "
                         "should have an integer val size')")
    mix, probs = _mixing(raw, path, names, eval_names, streaming)
    if (eval_names or val_size > 1e-6) and _flag(raw, "predict_with_generate"):
        raise UsageError(f"{path}: predict_with_generate prepares the evaluation rows (eval_dataset, val_size) "
                         "without labels (its unsupervised processor), which vlmcheck does not model; check without "
                         "it")
    tokenized = raw.get("tokenized_path")
    if tokenized and streaming and not _saved_dataset(locate(str(tokenized), path, dict(path_map or {}))):
        raise UsageError(f"{path}: tokenized_path with streaming (LLaMA-Factory refuses: 'Turn off `streaming` "
                         "when saving dataset to disk')")
    if tokenized and _saved_dataset(locate(str(tokenized), path, dict(path_map or {}))):
        raise UsageError(f"{path}: tokenized_path {tokenized} holds a saved dataset: LLaMA-Factory trains on it and "
                         "reads none of the rows or data settings; vlmcheck judges rows (unset tokenized_path to "
                         "check the rows it was made from)")
    template = TEMPLATES[name]
    tool_format = raw.get("tool_format")
    if tool_format is not None:  # get_template_and_fix_tokenizer: the config's format, the default function slots
        if str(tool_format) not in TOOL_FORMATS:
            raise UsageError(f"{path}: tool_format {tool_format!r}: LLaMA-Factory raises 'Tool utils not found' "
                             f"(it has {', '.join(TOOL_FORMATS)})")
        # only a template with an observation slot of its own is modelled with tools; elsewhere the tool rows are
        # VC007 (format_observation falls back to the template's own user slot there)
        modelled = str(tool_format) if template.observation else f"{tool_format} (not modelled here)"
        template = replace(template, tool_format=modelled, function="{content}",
                           function_eos=not template.efficient_eos)
    mapping = dict(path_map or {})
    dataset_dir = locate(data or str(raw.get("dataset_dir", DEFAULTS["dataset_dir"])), path, mapping)
    media_raw = raw.get("media_dir")
    media_dir = locate(str(media_raw), path, mapping) if media_raw else dataset_dir
    packing = _flag(raw, "neat_packing") or bool(raw.get("packing") or False)
    cutoff = _int(raw, "cutoff_len", path) - (1 if packing else 0)  # data_args.py: avoid pad_to_multiple_of
    max_pixels = _int(raw, "image_max_pixels", path, floats=True)
    min_pixels = _int(raw, "image_min_pixels", path, floats=True)
    if max_pixels < min_pixels:
        raise UsageError(f"{path}: image_max_pixels cannot be smaller than image_min_pixels (LLaMA-Factory refuses)")
    video_max = _int(raw, "video_max_pixels", path, floats=True)
    video_min = _int(raw, "video_min_pixels", path, floats=True)
    if video_max < video_min:
        raise UsageError(f"{path}: video_max_pixels cannot be smaller than video_min_pixels (LLaMA-Factory refuses)")
    video_fps = raw.get("video_fps", DEFAULTS["video_fps"])
    if isinstance(video_fps, str):
        raise _unconverted("video_fps", video_fps, path)
    if isinstance(video_fps, bool) or not isinstance(video_fps, (int, float)):
        raise UsageError(f"{path}: video_fps must be a number, got {video_fps!r}")
    video_fps = float(video_fps)
    if not math.isfinite(video_fps) or video_fps <= 0:
        raise UsageError(f"{path}: video_fps must be positive, got {video_fps}")
    if _flag(raw, "mask_history") and _flag(raw, "train_on_prompt"):
        raise UsageError(f"{path}: mask_history is incompatible with train_on_prompt (LLaMA-Factory refuses)")
    if _flag(raw, "train_on_prompt") and TEMPLATES[name].efficient_eos:
        raise UsageError(f"{path}: template {name} does not support train_on_prompt (LLaMA-Factory refuses: "
                         "'Current template does not support `train_on_prompt`')")
    workers = raw.get("dataloader_num_workers", 0)
    if streaming and (isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0):
        # loader.py: a local file streamed is to_iterable_dataset(num_shards=dataloader_num_workers): with 0 it
        # yields no row, and align_dataset's first next() raises StopIteration
        raise UsageError(f"{path}: streaming with dataloader_num_workers {workers!r}: LLaMA-Factory streams a local "
                         "file in that many shards, none yields a row, and it stops before step 1 (StopIteration); "
                         "set dataloader_num_workers to 1 or more")
    max_samples = _int(raw, "max_samples", path) if raw.get("max_samples") is not None else None
    batch_size, workers_ = _feedback_batching(raw, path, stage, streaming, val_size)
    return Config(
        path=path, model=str(mapped(str(model_path), mapping)), template=template, datasets=names,
        dataset_dir=dataset_dir, media_dir=media_dir, cutoff_len=cutoff, image_max_pixels=max_pixels,
        image_min_pixels=min_pixels, train_on_prompt=_flag(raw, "train_on_prompt"),
        mask_history=_flag(raw, "mask_history"), enable_thinking=_thinking(raw),
        preserve_thinking=_flag(raw, "preserve_thinking"),
        default_system=raw.get("default_system"),
        max_samples=max_samples,
        pan_and_scan=_flag(raw, "image_do_pan_and_scan"),
        crop_to_patches=_flag(raw, "crop_to_patches"),
        image_placeholder=env.get(IMAGE_PLACEHOLDER_ENV, "<image>"),
        video_placeholder=env.get(VIDEO_PLACEHOLDER_ENV, "<video>"),
        audio_placeholder=env.get(AUDIO_PLACEHOLDER_ENV, "<audio>"),
        video_max_pixels=video_max, video_min_pixels=video_min, video_fps=video_fps,
        video_maxlen=_int(raw, "video_maxlen", path),
        eval_datasets=eval_names, seed=_seed(raw, path), val_size=val_size, streaming=streaming, mix_strategy=mix,
        stream_shards=workers if streaming else 1,
        interleave_probs=probs, eval_on_each_dataset=_flag(raw, "eval_on_each_dataset"),
        tool_format=str(tool_format) if tool_format else None,
        # the pairwise processor never packs (the cutoff_len - 1 of data_args still applies)
        stage=stage, packing=packing and stage == "sft",
        preprocessing_batch_size=batch_size, preprocessing_num_workers=workers_,
        values={k: raw.get(k, DEFAULTS.get(k)) for k in (
            "stage", "template", "cutoff_len", "image_max_pixels", "image_min_pixels", "train_on_prompt", "mask_history",
            "enable_thinking", "packing", "dataset", "dataset_dir", "image_do_pan_and_scan", "crop_to_patches",
            "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen", "eval_dataset", "seed",
            "tool_format", "mix_strategy", "interleave_probs")},
    )


def _feedback_batching(raw: dict[str, Any], path: Path, stage: str, streaming: bool, val_size: float
                       ) -> tuple[int, int | None]:
    """``preprocessing_batch_size`` / ``preprocessing_num_workers`` as ``stage: kto`` needs them (they decide which
    row's answer each KL sequence borrows; other stages' samples do not depend on them): ``datasets.map`` cuts the
    dataset into ``num_proc`` contiguous shards and each shard into batches (a size of 0 or less: the whole
    shard). What vlmcheck does not follow for kto is refused: ``streaming`` (an iterable map) and ``val_size``
    (a shuffled split before the map)."""
    size, workers = raw.get("preprocessing_batch_size", 1000), raw.get("preprocessing_num_workers")
    if stage != "kto":
        return 1000, None
    for key, value in (("preprocessing_batch_size", size), ("preprocessing_num_workers", workers)):
        if value is None and key == "preprocessing_num_workers":
            continue
        if isinstance(value, str):
            raise _unconverted(key, value, path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{path}: {key} must be a whole number, got {value!r}")
    if workers is not None and workers <= 0:
        raise UsageError(f"{path}: preprocessing_num_workers {workers}: datasets' map raises ('num_proc must be an "
                         "integer > 0') and the run stops before step 1")
    if streaming:
        raise UsageError(f"{path}: streaming with stage kto: the KL sequences are made over an iterable dataset's "
                         "batches, which vlmcheck does not model; check without streaming")
    if val_size > 1e-6:
        raise UsageError(f"{path}: val_size with stage kto: LLaMA-Factory splits the rows at random before the map "
                         "whose batches pair each row with another row's answer (its KL sequence), which vlmcheck "
                         "does not follow; check with the evaluation rows in an eval_dataset")
    return size, workers


def _names(value: Any) -> tuple[str, ...]:
    """``dataset`` / ``eval_dataset`` as ``split_arg`` reads them: a comma-separated string (an empty name kept:
    LLaMA-Factory then finds no such dataset) or a list."""
    if isinstance(value, str):
        return tuple(d.strip() for d in value.split(","))
    if isinstance(value, list):
        return tuple(str(d).strip() for d in value)
    return ()


def _seed(raw: dict[str, Any], path: Path) -> int:
    value = raw.get("seed", DEFAULTS["seed"])
    if isinstance(value, str):
        raise _unconverted("seed", value, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{path}: seed must be a whole number, got {value!r} (transformers' set_seed raises)")
    seed = value
    if not 0 <= seed < 2**32:  # transformers.set_seed -> np.random.seed raises at startup
        raise UsageError(f"{path}: seed {seed}: numpy's seed must be between 0 and 2**32 - 1 (LLaMA-Factory's "
                         "set_seed raises)")
    return seed


# data_utils.py merge_dataset: mix_strategy -> datasets.interleave_datasets' stopping_strategy
MIX_STRATEGIES = {"concat": None, "interleave_under": "first_exhausted", "interleave_over": "all_exhausted",
                  "interleave_once": "all_exhausted_without_replacement"}
# the stopping strategies datasets <= 4.0.0 (LLaMA-Factory 0.9.5's pin) implements for map-style datasets
DATASETS_STRATEGIES = ("first_exhausted", "all_exhausted")


def _mixing(raw: dict[str, Any], path: Path, names: tuple[str, ...], eval_names: tuple[str, ...],
            streaming: bool) -> tuple[str, tuple[float, ...] | None]:
    """``mix_strategy`` and ``interleave_probs`` as DataArguments.__post_init__ checks them."""
    mix = str(raw.get("mix_strategy") or DEFAULTS["mix_strategy"])
    if mix not in MIX_STRATEGIES:
        raise UsageError(f"{path}: mix_strategy {mix!r}: LLaMA-Factory takes {', '.join(MIX_STRATEGIES)}")
    value = raw.get("interleave_probs")
    if value is None:
        probs = None
    else:
        if mix == "concat":
            raise UsageError(f"{path}: interleave_probs with mix_strategy concat (LLaMA-Factory refuses: "
                             "'`interleave_probs` is only valid for interleaved mixing')")
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        try:
            if not isinstance(items, list):
                raise TypeError
            probs = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: interleave_probs must be comma-separated numbers or a list, got "
                             f"{value!r} (LLaMA-Factory's float() raises)") from None
        for label, listed in (("dataset", names), ("eval dataset", eval_names)):
            if listed and len(listed) != len(probs):
                raise UsageError(f"{path}: interleave_probs has {len(probs)} values for {len(listed)} datasets "
                                 f"(LLaMA-Factory refuses: 'The length of {label} and interleave probs should be "
                                 "identical.')")
    interleaved = [n for n in (names, eval_names) if len(set(n)) > 1]
    if mix != "concat" and interleaved:
        if MIX_STRATEGIES[mix] not in DATASETS_STRATEGIES:
            raise UsageError(f"{path}: mix_strategy {mix}: datasets <= 4.0.0 (what LLaMA-Factory 0.9.5 installs "
                             f"with) raises '{MIX_STRATEGIES[mix]} is not supported' when it joins the datasets")
        if streaming:
            raise UsageError(f"{path}: mix_strategy {mix} with streaming interleaves iterable datasets, which "
                             "vlmcheck does not model (it models interleaving without streaming)")
        if probs is not None:
            _check_probabilities(probs, path)
    return mix, probs


def _check_probabilities(probs: tuple[float, ...], path: Path) -> None:
    """What numpy's ``Generator.choice(p=...)`` refuses: datasets.interleave_datasets raises on the first draw."""
    try:
        import numpy
    except ImportError:
        raise UsageError("mix_strategy with interleave_probs: vlmcheck draws the sources with numpy, as datasets "
                         "does; install numpy") from None
    try:
        numpy.random.default_rng(0).choice(len(probs), size=1, p=list(probs))
    except ValueError as e:
        raise UsageError(f"{path}: interleave_probs {list(probs)}: numpy raises '{e}' when datasets interleaves "
                         "the datasets (LLaMA-Factory stops)") from None


def interleaved_sources(lengths: Sequence[int], strategy: str, probabilities: Sequence[float] | None,
                        seed: int) -> Iterator[int]:
    """The source of each row of ``datasets.interleave_datasets`` on map-style datasets of these lengths (each
    source's rows are taken in order, from its first again once it is exhausted): ``first_exhausted`` stops when
    one source runs out, ``all_exhausted`` when every one has. Without probabilities the sources take turns (a
    whole round per row index: the shortest's length in rounds, or the longest's); with them a seeded
    ``numpy.random.default_rng`` draws the source 1,000 at a time, and the stop is checked before each row."""
    n = len(lengths)
    if probabilities is None:
        rounds = min(lengths) if strategy == "first_exhausted" else max(lengths)
        for _ in range(rounds):
            yield from range(n)
        return
    import numpy

    rng = numpy.random.default_rng(seed)
    taken = [0] * n
    exhausted = [False] * n
    stop = all if strategy == "all_exhausted" else any
    while True:
        for source in rng.choice(n, size=1000, p=list(probabilities)):
            if stop(exhausted):
                return
            k = int(source)
            yield k
            taken[k] += 1
            if taken[k] >= lengths[k]:
                exhausted[k], taken[k] = True, 0


def _saved_dataset(path: Path) -> bool:
    """``has_tokenized_data``: a folder that exists and is not empty."""
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False






# -- datasets ----------------------------------------------------------------------------------------------------
_COLUMNS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
            "chosen", "rejected", "kto_tag")
_TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
_COLUMN_DEFAULTS: dict[str, str | None] = {
    "prompt": "instruction", "query": "input", "response": "output", "history": None, "messages": "conversations",
    "system": None, "tools": None, "images": None, "videos": None, "audios": None, "chosen": None,
    "rejected": None, "kto_tag": None,
}
_TAG_DEFAULTS: dict[str, str | None] = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}


@dataclass(frozen=True)
class DatasetAttr:
    """One ``dataset_info.json`` entry as LLaMA-Factory's parser reads it."""

    name: str
    file_name: str
    formatting: str
    ranking: bool
    columns: dict[str, str | None]
    tags: dict[str, str | None]
    num_samples: int | None = None  # rows drawn (numpy, seeded) before max_samples; more than the file repeats rows
    split: str = "train"  # load_dataset's split: "train", or slices of it (split_positions)

    @classmethod
    def read(cls, name: str, entry: dict[str, Any]) -> DatasetAttr:
        if any(k in entry for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")):
            raise UsageError(f"dataset {name!r} is loaded from a hub, a script or the cloud; vlmcheck reads local "
                             "files (point file_name at a local copy)")
        if "file_name" not in entry:
            raise UsageError(f"dataset {name!r} has no file_name in dataset_info.json")
        # a "columns"/"tags" object replaces every default of its kind (DatasetAttr.join sets absent keys to None)
        for key in ("columns", "tags"):
            if entry.get(key) and not isinstance(entry[key], dict):  # set_attr calls .get on it: AttributeError
                raise UsageError(f"dataset {name!r}: {key} must be a JSON object in dataset_info.json; LLaMA-Factory "
                                 f"raises reading {entry[key]!r}")
        columns = dict(_COLUMN_DEFAULTS)
        if "columns" in entry:
            given = entry["columns"] or {}
            columns = {k: given.get(k) for k in _COLUMNS}
        tags = dict(_TAG_DEFAULTS)
        if "tags" in entry:
            given = entry["tags"] or {}
            tags = {k: given.get(k) for k in _TAGS}
        split = entry.get("split", "train")
        if not isinstance(split, str):
            raise UsageError(f"dataset {name!r}: split must be text (a split name), got {split!r}")
        num = entry.get("num_samples")
        if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
            raise UsageError(f"dataset {name!r}: num_samples must be a whole number of rows, got {num!r}")
        return cls(name=name, file_name=str(entry["file_name"]), formatting=str(entry.get("formatting", "alpaca")),
                   ranking=bool(entry.get("ranking", False)), columns=columns, tags=tags, num_samples=num,
                   split=split)


# datasets' split syntax (arrow_reader.py): a name, optionally a slice of it, optionally a rounding; "+" joins parts
_SPLIT_PART = re.compile(r"(?P<name>\w+(?:\.\w+)*)(?:\[(?P<start>-?\d+)?(?P<start_pct>%)?:(?P<stop>-?\d+)?"
                         r"(?P<stop_pct>%)?\])?(?:\((?P<rounding>[^)]*)\))?")


def split_positions(split: str, total: int, where: str) -> list[int] | None:
    """The rows (numbers in the files, in order) ``load_dataset(split=...)`` keeps of a local dataset of ``total``
    rows, whose only split is "train": None for "train" itself (every row). A slice counts as a Python slice
    clamped to the rows (a negative bound from the end; percent bounds rounded to the closest row, as
    ``datasets.ReadInstruction`` rounds them), but for a stop one below the start, which reads from the start to
    the end; parts joined by "+" follow each other. datasets raises (the run stops
    before step 1: DatasetError) for another split name, a malformed part, a percent past 100, and an instruction
    all of whose parts are empty slices; a form vlmcheck does not follow (mixed percent and absolute bounds, a
    rounding other than "closest") is refused."""
    if split == "train":
        return None
    rows: list[int] = []
    some = False
    for part in split.split("+"):
        m = _SPLIT_PART.fullmatch(part)
        if m is None:
            raise DatasetError(f"{where}: split {split!r} is not one datasets reads ('Unrecognized instruction "
                               "format'): the run stops before step 1")
        if m["name"] != "train":
            raise DatasetError(f"{where}: split {m['name']!r} of a local dataset (its only split is 'train'): "
                               "datasets raises ('Unknown split') and the run stops before step 1")
        percent = bool(m["start_pct"] or m["stop_pct"])
        if m["rounding"] is not None and (not percent or m["rounding"] != "closest"):
            raise UsageError(f"{where}: split {split!r}: a rounding other than percent slices' default (closest) is "
                             "not modelled by vlmcheck")
        if percent and not (m["start"] is None or m["start_pct"]) or percent and not (m["stop"] is None or
                                                                                       m["stop_pct"]):
            raise UsageError(f"{where}: split {split!r} mixes percent and row bounds, which vlmcheck does not "
                             "model")
        bounds = []
        for value, default in ((m["start"], 0), (m["stop"], total)):
            if value is None:
                bounds.append(default)
                continue
            n = int(value)
            if percent:
                if abs(n) > 100:
                    raise DatasetError(f"{where}: split {split!r}: datasets raises ('Percent slice boundaries must "
                                       "be > -100 and < 100') and the run stops before step 1")
                n = int(round(n * total / 100.0))
            bounds.append(n)
        start, stop = (min(max(total + b, 0) if b < 0 else b, total) for b in bounds)
        # datasets reads `take = stop - start` rows from start: none is no data, -1 reads to the end (a table
        # slice of length -1), less than -1 reads nothing
        take = stop - start
        some = some or take != 0
        rows.extend(range(start, total if take == -1 else stop))
    if not some:
        raise DatasetError(f"{where}: split {split!r} keeps no row of {total}: datasets raises ('corresponds to no "
                           "data') and the run stops before step 1")
    return rows


def read_dataset_info(config: Config, names: Sequence[str] | None = None) -> list[DatasetAttr]:
    """The ``dataset_info.json`` entries of ``names`` (default: the config's training datasets), in order."""
    if names is not None and not names:  # get_dataset_list: no names, no file read (no eval_dataset)
        return []
    names = config.datasets if names is None else names
    info_path = config.dataset_dir / "dataset_info.json"
    try:  # a regular file of at most 64 MiB (a FIFO would block), nested no deeper than vlmcheck reads
        info = parse(json.loads, read_text(info_path), where=str(info_path), error=DatasetError)
    except FileProblem as e:
        why = not_a_file(info_path) if e.kind == "missing" else None
        if why == "a symbolic link loop":
            raise DatasetError(f"{info_path}: {why}") from None
        if e.kind == "missing":
            raise DatasetError(f"{info_path} not found (dataset_dir: {config.dataset_dir}; pass --data DIR for a "
                               "config written on another machine)") from None
        raise DatasetError(f"cannot read {info_path}: {e.message}") from None
    except ValueError as e:
        raise DatasetError(f"cannot read {info_path}: {e}") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{info_path} must hold a JSON object")
    attrs = []
    for name in names:
        if name not in info or not isinstance(info[name], dict):
            raise UsageError(f"dataset {name!r} is not defined in {info_path} (LLaMA-Factory: 'Undefined dataset')")
        attr = DatasetAttr.read(name, info[name])
        if attr.formatting not in ("alpaca", "sharegpt", "openai"):
            raise UsageError(f"dataset {name!r}: formatting {attr.formatting!r} is not one LLaMA-Factory reads")
        if attr.ranking != config.pairwise:  # _get_merged_dataset
            kind = "a ranking (preference)" if attr.ranking else "not a ranking (preference)"
            raise UsageError(f"dataset {name!r} is {kind} dataset and the stage is {config.stage} (LLaMA-Factory "
                             "raises 'The dataset is not applicable in the current training stage')")
        attrs.append(attr)
    return attrs


# extras/constants.py FILEEXT2TYPE: the datasets builder _load_single_dataset loads a file with, by its extension
# (os.path.splitext, as written: ".JSON", ".jsonl.gz" and ".ndjson" are none); one type per dataset
FILE_TYPES = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}


def builder(file: Path) -> str | None:
    """The ``datasets`` builder LLaMA-Factory loads ``file`` with (FILE_TYPES), or None."""
    return FILE_TYPES.get(os.path.splitext(file)[1][1:])


def dataset_files(config: Config, attr: DatasetAttr) -> list[Path]:
    """The files of one dataset: ``file_name`` under ``dataset_dir``, a folder meaning every entry in it in
    ``os.listdir`` order (as ``_load_single_dataset`` lists them: its rows come in that order), all of one type
    that FILE_TYPES names (else it raises before loading)."""
    path = config.dataset_dir / attr.file_name
    if path.is_dir():
        files = [path / name for name in os.listdir(path)]
        if not files:
            raise DatasetError(f"dataset {attr.name!r}: {path} holds no files")
        kinds = {builder(f) for f in files}
        if None in kinds or len(kinds) > 1:
            raise DatasetError(f"dataset {attr.name!r}: {path} holds {', '.join(sorted(f.name for f in files))}: "
                               "LLaMA-Factory raises ('Allowed file types' / 'File types should be identical')")
        return files
    if not path.is_file():
        raise DatasetError(f"dataset {attr.name!r}: {path} {not_a_file(path)}")
    if builder(path) is None:
        raise DatasetError(f"dataset {attr.name!r}: {path.name} is not a file type LLaMA-Factory loads (it takes "
                           f"the extensions {', '.join('.' + k for k in FILE_TYPES)}, as written): it raises "
                           "('Allowed file types') and the run stops before step 1")
    return [path]


@dataclass(frozen=True)
class Origin:
    """Where a judged row comes from: its dataset, its row number in that dataset's files, and the split it is
    prepared for (``train``, or ``eval`` for ``eval_dataset``: the same processor, used at each evaluation)."""

    attr: DatasetAttr
    row: int
    split: str = "train"
    # stage kto: the (row, Origin) whose converted answer this row's KL sequence borrows (Run.rows sets it)
    partner: Any = field(default=None, compare=False, hash=False, repr=False)


# more drawn rows than this are not judged (a hostile num_samples must not exhaust memory)
MAX_DRAWN_ROWS = 10_000_000


def split_refused(val_size: float, rows: int) -> str | None:
    """Why ``split_dataset`` raises on a merged training dataset of ``rows`` rows, or None: it hands
    ``train_test_split`` ``test_size=int(val_size)`` over 1, else ``val_size`` as written, and datasets refuses a
    count that is not under the rows, a fraction not under 1, or a split that leaves no training row (the test share
    rounded up). An empty dataset is not split."""
    if rows == 0 or val_size <= 1e-6:
        return None
    test = int(val_size) if val_size > 1 else val_size
    if isinstance(test, int):
        if test >= rows:
            return f"test_size={test} should be either positive and smaller than the number of samples {rows}"
        return None
    if test >= 1:
        return f"test_size={test} should be ... a float in the (0, 1) range"
    if rows - math.ceil(test * rows) == 0:
        return f"With n_samples={rows}, test_size={test} and train_size=None, the resulting train set will be empty"
    return None


def draw_samples(rows: int, wanted: int, rng: Any) -> list[int]:
    """``_load_single_dataset``'s ``num_samples`` draw on numpy's global generator (``rng``, seeded as
    ``transformers.set_seed`` seeds it): a permutation of the rows cut to ``wanted``, topped up with draws with
    replacement when ``wanted`` is more than the rows."""
    if wanted > MAX_DRAWN_ROWS:
        raise DatasetError(f"num_samples {wanted:,}: more rows than vlmcheck judges ({MAX_DRAWN_ROWS:,})")
    chosen = [int(i) for i in rng.permutation(rows)[:wanted]]
    if wanted > len(chosen):
        if rows == 0:
            raise DatasetError(f"num_samples {wanted} of a dataset with no rows: LLaMA-Factory's np.random.choice "
                               "raises ('a must be greater than 0')")
        chosen += [int(i) for i in rng.choice(rows, wanted - len(chosen))]
    return chosen


def _seeded(seed: int) -> Any:
    try:
        import numpy
    except ImportError:  # LLaMA-Factory itself needs numpy: a machine that runs it has it
        raise UsageError("dataset_info.json num_samples: vlmcheck draws the rows with numpy, as LLaMA-Factory does; "
                         "install numpy") from None
    return numpy.random.RandomState(seed)


# -- rows --------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    """A row as LLaMA-Factory's converter leaves it: alternating user/assistant turns, a system prompt, media."""

    messages: list[tuple[str, str]]  # (role, content), user first, ending with the assistant's answer
    system: str
    images: list[Any]
    videos: list[Any]
    tools: Any = ""  # the row's tools value as loaded (a JSON string when usable)
    audios: list[Any] = field(default_factory=list)  # no modelled plugin takes audio: any stops the run
    # a ranking row: messages end with the chosen answer, this is the rejected one (role, content)
    rejected: tuple[str, str] | None = None
    # a KTO row (stage kto): whether its answer is the desirable one, and its KL sequence's answer (role, content):
    # the answer of the row before it in its datasets.map batch (see Run.rows)
    desirable: bool | None = None
    kl: tuple[str, str] | None = None

    @property
    def rejected_messages(self) -> list[tuple[str, str]]:
        """The prompt with the rejected answer (a ranking row)."""
        assert self.rejected is not None
        return [*self.messages[:-1], self.rejected]

    @property
    def kl_messages(self) -> list[tuple[str, str]]:
        """The prompt with the KL sequence's answer (a KTO row)."""
        assert self.kl is not None
        return [*self.messages[:-1], self.kl]


class NotCounted(Exception):
    """vlmcheck does not model what LLaMA-Factory does with this row (VC007, verdict unknown)."""


# how a dataset's media are typed when vlmcheck cannot say (Run._media_kind): no merge verdict rests on it
UNKNOWN_KIND = "unknown"


def _kind_text(kind: Any) -> str:
    """A media type of Run._media_kind, for a message."""
    if kind == "str":
        return "paths"
    if isinstance(kind, dict):
        return "structs of " + ", ".join(f"{k} ({'null' if v is None else v})" for k, v in kind.items())
    return str(kind)


class Dropped(Exception):
    """LLaMA-Factory skips this row with a warning (the run goes on without it). ``unanswered``: its converter gave
    the row no answer (an empty ``_response``); else a processor drops it. The run-level rules: ``Run._prepared``."""

    def __init__(self, message: str, *, unanswered: bool = True, prompted: bool = False) -> None:
        super().__init__(message)
        self.unanswered = unanswered
        self.prompted = prompted  # its converted ``_prompt`` holds a turn (see Prepared)


class Stops(Exception):
    """LLaMA-Factory raises on this row while preparing the dataset: the whole run stops before step 1."""


@dataclass(frozen=True)
class Prepared:
    """A dataset's rows through LLaMA-Factory's converter and dataset processor, as far as the run-level rules
    need them. ``answered``: a row has an answer after the converter (True), none has (False: datasets types
    ``_response`` as a list of nulls); ``prompted``: the same of ``_prompt`` (empty for a row the converter skips,
    and for a ranking row it misreads as one answer to a one-turn prompt); ``kept``: the processor keeps a row
    (True), none (False: 'Cannot find valid samples'); None where a row vlmcheck does not follow (or one the run
    stops on) comes first, or there are no rows. ``origin`` and ``reason``: where and why the first row is dropped,
    for the message."""

    answered: bool | None
    prompted: bool | None
    kept: bool | None
    rows: int
    origin: str = ""
    reason: str = ""


def _media(value: Any, config: Config) -> list[Any]:
    """``DatasetConverter._find_medias``: a value or a list; relative paths joined to media_dir when that file
    exists (otherwise kept as written, relative to the launch folder); a list of lists (videos given as their
    frames) has each frame joined so."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]

    def found(path: Any) -> Any:
        joined = os.path.join(config.media_dir, path) if isinstance(path, str) else None
        return joined if joined is not None and os.path.isfile(joined) else path

    if items and isinstance(items[0], list):  # "for processed video frames": each frame of each list joined
        return [[found(frame) for frame in item] if isinstance(item, list) else item for item in items]
    return [found(item) for item in items]


def _filled_turns(turns: list[Any], role_tag: str | None, content_tag: str | None,
                  fields: Callable[[], frozenset[str]]) -> list[Any]:
    """The turns as ``datasets`` hands them to the converter: it types a column's turns as one struct, so a turn
    without a key other turns of the dataset have reads None (``fields``: every key a turn of the dataset has). A
    key no turn has raises KeyError; a turn that is no object raises reading its role."""
    filled = []
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise Stops(f"a turn is {_what(turn)}, not an object; LLaMA-Factory raises reading its role")
        missing = [key for key in (role_tag, content_tag) if key not in turn]
        if missing:
            absent = [key for key in missing if key not in fields()]
            if absent:
                raise Stops(f"no turn of the dataset has a {absent[0]!r} field; LLaMA-Factory raises KeyError")
            turn = {**turn, **dict.fromkeys(missing)}
        filled.append(turn)
    return filled


def _turn_fields(config: Config, attr: DatasetAttr) -> frozenset[str]:
    """Every key a turn of the dataset's messages column has, in any row (read once per dataset, and only for a
    dataset where a turn lacks a key)."""
    files = tuple((str(f), f.stat().st_mtime_ns) for f in dataset_files(config, attr))
    return _turn_fields_of(files, attr.columns["messages"] or "")


@lru_cache(maxsize=16)
def _turn_fields_of(files: tuple[tuple[str, int], ...], column: str) -> frozenset[str]:
    keys: set[str] = set()
    for row in iter_rows([Path(name) for name, _ in files]):
        turns = row.get(column) if isinstance(row, Mapping) else None
        for turn in turns if isinstance(turns, list) else ():
            if isinstance(turn, Mapping):
                keys.update(k for k in turn if isinstance(k, str))
    return frozenset(keys)


def _get(row: Mapping[str, Any], key: str | None) -> Any:
    if key is None:
        return None
    if key not in row:
        raise Stops(f"the row has no {key!r} field; LLaMA-Factory raises KeyError while converting it")
    return row[key]


# the columns each converter reads for every row, the rows it skips too (when dataset_info names them): a column
# the dataset lacks raises KeyError there (the openai converter reads its tools and system with .get: no raise)
READ_FOR_EVERY_ROW = {"alpaca": ("images", "videos", "audios", "tools", "system"),
                      "sharegpt": ("images", "videos", "audios", "tools"),
                      "openai": ("images", "videos", "audios")}


def convert(row: Any, attr: DatasetAttr, config: Config) -> Example:
    """One row through LLaMA-Factory's converter for ``attr.formatting``."""
    if not isinstance(row, Mapping):
        raise Stops(f"the row is a {type(row).__name__}, not an object")
    cols, tags = attr.columns, attr.tags
    for column in READ_FOR_EVERY_ROW.get(attr.formatting, ()):
        _get(row, cols[column])
    if attr.formatting == "alpaca":
        messages: list[tuple[str, str]] = []
        history = _get(row, cols["history"]) if cols["history"] else None
        if isinstance(history, list):
            for turn in history:  # `for old_prompt, old_response in history` unpacks any two items
                if not isinstance(turn, (list, tuple, str, dict)) or len(turn) != 2:
                    raise Stops("a history entry is not a [prompt, response] pair: LLaMA-Factory's alpaca converter "
                                "raises unpacking it")
                prompt, answer = list(turn)  # a two-letter text, or an object's two keys, as LLaMA-Factory reads them
                messages += [("user", prompt), ("assistant", answer)]
        query = []
        for key in (cols["prompt"], cols["query"]):
            if key:
                value = _get(row, key)
                if value:
                    if not isinstance(value, str):  # "\n".join(query) raises TypeError
                        raise Stops(f"the {key!r} value is {_what(value)}, not text; LLaMA-Factory's alpaca "
                                    "converter raises joining it")
                    query.append(value)
        messages.append(("user", "\n".join(query)))
        rejected = None
        if attr.ranking:  # AlpacaDatasetConverter: two strings are a pair; anything else is one answer or none
            chosen, rejected_text = _ranked(row, cols["chosen"]), None
            if isinstance(chosen, str):
                rejected_text = _ranked(row, cols["rejected"])
            if not (isinstance(chosen, str) and isinstance(rejected_text, str)):
                answer = row.get(cols["response"]) if cols["response"] else None  # then read as one answer
                raise Dropped("no chosen and rejected strings: LLaMA-Factory's pairwise processor drops the row "
                              "('Dropped invalid example')", unanswered=not isinstance(answer, str), prompted=True)
            messages.append(("assistant", chosen))
            rejected = ("assistant", rejected_text)
        else:
            response = _get(row, cols["response"]) if cols["response"] else None
            if not isinstance(response, str):
                raise Dropped("no response: LLaMA-Factory treats the row as unsupervised and drops it for sft",
                              prompted=True)
            messages.append(("assistant", response))
        system = _get(row, cols["system"]) if cols["system"] else ""
    else:
        turns = _get(row, cols["messages"])
        if not isinstance(turns, list):
            raise Stops(f"{cols['messages']!r} is not a list of turns")
        role_tag, content_tag = tags["role_tag"], tags["content_tag"]
        turns = _filled_turns(turns, role_tag, content_tag, lambda: _turn_fields(config, attr))
        if attr.formatting == "openai":
            return _convert_openai(row, turns, attr, config)
        system_tag = tags["system_tag"]
        if system_tag and turns and turns[0][role_tag] == system_tag:
            system = turns[0][content_tag]
            turns = turns[1:]
        else:
            system = _get(row, cols["system"]) if cols["system"] else ""
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant",
                 tags["observation_tag"]: "observation", tags["function_tag"]: "function"}
        accept = ((tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"]))
        messages = []
        for i, turn in enumerate(turns):
            if turn[role_tag] not in accept[i % 2]:
                raise Dropped(f"turn {i + 1} has role {turn[role_tag]!r} where LLaMA-Factory expects "
                              f"{' or '.join(repr(t) for t in accept[i % 2] if t)}; it skips the row "
                              "('Invalid role tag')")
            messages.append((roles[turn[role_tag]], turn[content_tag]))
        rejected = None
        if attr.ranking:
            rejected = _ranked_pair(row, messages, attr, {**roles, tags["system_tag"]: "system"})
        elif len(messages) % 2 != 0 or not messages:
            raise Dropped(f"{len(messages)} turns after the system prompt: LLaMA-Factory needs user/assistant "
                          "pairs and skips the row ('Invalid message count')")
    answers = [*messages, *([rejected] if rejected else [])]
    for role, content in answers:
        if not isinstance(content, str):
            raise Stops(f"a {role} turn's content is {_what(content)}, not text")
    if system and not isinstance(system, str):  # Template._encode: system + tool_text raises TypeError
        raise Stops(f"the system prompt is {_what(system)}, not text; LLaMA-Factory's template raises adding "
                    "the tools' text to it")
    tools = _get(row, cols["tools"]) if cols["tools"] else ""
    has_tools = bool(tools) or any(role in ("observation", "function") for role, _ in answers)
    if has_tools and config.template.tool_format not in MODELLED_TOOL_FORMATS:
        raise NotCounted(f"tools and tool turns under template {config.template.name} (tool format "
                         f"{config.template.tool_format or 'its own'}) are not counted by vlmcheck yet (it models "
                         "the qwen format of the Qwen-VL templates and the default format of llava / llava_next)")
    images, videos, audios = _medias(row, cols, config)
    return Example(messages=messages, system=system if isinstance(system, str) else "", images=images,
                   videos=videos, tools=tools or "", audios=audios, rejected=rejected)


def _kto_tag(row: Mapping[str, Any], attr: DatasetAttr) -> bool | None:
    """``example[dataset_attr.kto_tag]`` when it is a boolean (the converters then make a KTO example of the row:
    ``_response`` is [answer, empty] when true, [empty, answer] when false), else None (an sft example)."""
    key = attr.columns.get("kto_tag")
    if not key:
        return None
    value = _get(row, key)
    return value if isinstance(value, bool) else None


def convert_supervised(row: Any, attr: DatasetAttr, config: Config) -> Example:
    """One row as ``stage: sft`` (or dpo / rm) prepares it: the converter, then, under sft, the supervised
    processor, which drops a row with other than one answer: a row whose ``kto_tag`` is a boolean is a KTO example
    (its answer and an empty one) and is dropped ('Dropped invalid example')."""
    example = convert(row, attr, config)
    if not config.pairwise and isinstance(row, Mapping) and _kto_tag(row, attr) is not None:
        raise Dropped("its kto_tag is a boolean, so LLaMA-Factory's converter makes it a KTO example (two answers), "
                      "which the supervised processor drops ('Dropped invalid example')", unanswered=False,
                      prompted=True)
    return example


def convert_feedback(row: Any, attr: DatasetAttr, config: Config) -> Example:
    """One row as ``stage: kto`` prepares it: the converter (its kto_tag branch), then
    ``FeedbackDatasetProcessor``: a row that is no KTO example (kto_tag not a boolean: one answer) is dropped
    ('Dropped invalid example'); ``response[0]["content"]`` decides: a true tag with an empty answer is an
    undesirable example with an empty answer."""
    answer: Any = None
    tag = None
    cols = attr.columns
    if attr.formatting == "alpaca" and isinstance(row, Mapping):  # AlpacaDatasetConverter reads the tag first
        tag = _kto_tag(row, attr)
        if tag is not None:
            if not cols["response"]:
                raise Stops("the dataset names no response column: LLaMA-Factory's alpaca converter reads a KTO "
                            "row's answer as example[None] and raises KeyError")
            answer = _get(row, cols["response"])
            if not isinstance(answer, str):  # the converter keeps any value; judged below
                row = {**row, cols["response"]: ""}
    example = convert(row, attr, config)
    role, content = example.messages[-1]
    if attr.formatting != "alpaca":  # the sharegpt / openai converters read it for rows they do not skip
        tag = _kto_tag(row, attr)
    elif tag is not None:
        content = answer
    if tag is None:
        raise Dropped("its kto_tag is not a boolean, so LLaMA-Factory's converter makes it an sft example (one "
                      "answer) and the KTO (feedback) processor drops it ('Dropped invalid example')",
                      unanswered=False, prompted=True)
    if tag and not content:  # response[0] is empty: response[1], the empty turn, is the answer
        role, content = "assistant", ""
    if not isinstance(content, str):
        raise Stops(f"the answer is {_what(content)}, not text; LLaMA-Factory's template raises formatting it")
    example.messages[-1] = (role, content)
    example.desirable = bool(tag and content)
    return example


def feedback_response(row: Any, attr: DatasetAttr, config: Config) -> list[tuple[str, Any]]:
    """The row's converted ``_response`` under ``stage: kto``, as the next row's KL sequence reads it
    (``kl_response``): a KTO row's [answer, empty] / [empty, answer], an sft row's one answer, [] for a row the
    converter skips (or an alpaca row without a text answer)."""
    if not isinstance(row, Mapping):
        raise Stops(f"the row is a {type(row).__name__}, not an object")
    cols = attr.columns
    if attr.formatting == "alpaca":
        tag = _kto_tag(row, attr)
        if tag is None:
            answer = _get(row, cols["response"]) if cols["response"] else None
            return [("assistant", answer)] if isinstance(answer, str) else []
        if not cols["response"]:
            raise Stops("the dataset names no response column: LLaMA-Factory's alpaca converter raises KeyError")
        last: tuple[str, Any] = ("assistant", _get(row, cols["response"]))
    else:
        try:
            last = convert(row, attr, config).messages[-1]
        except Dropped:  # skipped by the converter ("Invalid message count / role tag"), or no turn at all
            return []
        tag = _kto_tag(row, attr)
        if tag is None:
            return [last]
    empty = ("assistant", "")
    return [last, empty] if tag else [empty, last]


def kl_turn(response: Sequence[tuple[str, Any]], where: str) -> tuple[str, str]:
    """``FeedbackDatasetProcessor._encode_data_example``'s KL answer: ``kl_response[0]`` when its content is not
    empty, else ``kl_response[1]`` (IndexError when there is none: the run stops)."""
    if response and response[0][1]:
        turn = response[0]
    elif len(response) >= 2:
        turn = response[1]
    else:
        raise Stops(f"its KL sequence borrows the answer of {where}, which has "
                    f"{'an empty answer and no other' if response else 'no answer after the converter'}: "
                    "LLaMA-Factory's feedback processor raises IndexError (kl_response[1])")
    if not isinstance(turn[1], str):
        raise Stops(f"its KL sequence borrows the answer of {where}, {_what(turn[1])}, not text; LLaMA-Factory's "
                    "template raises formatting it")
    return turn[0], turn[1]


def map_batches(rows: int, workers: int | None, size: int) -> list[int]:
    """The batches ``datasets.map(batched=True, batch_size=size, num_proc=workers)`` hands the function, as row
    counts in order: ``num_proc`` (at most one per row) contiguous shards, the first ``rows % num_proc`` one row
    longer, each cut into batches of ``size`` from its start (0 or less: the whole shard)."""
    shards = max(1, min(workers or 1, rows))
    div, mod = divmod(rows, shards)
    out: list[int] = []
    for index in range(shards):
        length = div + (1 if index < mod else 0)
        step = size if size > 0 else max(length, 1)
        out += [min(step, length - start) for start in range(0, length, step)]
    return out


def _what(value: Any) -> str:
    """A value that is not text, named for a message (a datetime: datasets read an ISO date as a timestamp)."""
    if isinstance(value, datetime):
        return ("a timestamp (datasets loads a JSON Lines field as one when every value of it in the first 10 MiB "
                "is an ISO date)")
    return f"a {type(value).__name__}"


def _ranked(row: Mapping[str, Any], key: str | None) -> Any:
    """``example[dataset_attr.chosen]`` (or ``rejected``): an unset column is ``example[None]``, a KeyError."""
    if key is None:
        raise Stops("the ranking dataset names no chosen / rejected column; LLaMA-Factory raises KeyError")
    return _get(row, key)


def _ranked_pair(row: Mapping[str, Any], messages: list[tuple[str, str]], attr: DatasetAttr,
                 roles: Mapping[str | None, str]) -> tuple[str, str]:
    """A sharegpt / openai ranking row (``messages``: the prompt, appended the chosen answer): the rejected
    answer. The prompt must be an odd number of turns, and chosen / rejected turn objects; a role outside the
    answer tags is only warned about ("Invalid role tag") and the turn kept with that role."""
    if len(messages) % 2 == 0:
        raise Dropped(f"{len(messages)} prompt turns: a ranking row's prompt ends with the user's turn; LLaMA-Factory "
                      "skips the row ('Invalid message count')")
    chosen, rejected = _ranked(row, attr.columns["chosen"]), _ranked(row, attr.columns["rejected"])
    if not (isinstance(chosen, Mapping) and isinstance(rejected, Mapping)):
        raise Dropped("chosen / rejected are not turn objects: LLaMA-Factory reads the row as one answer and its "
                      "pairwise processor drops it ('Dropped invalid example')", unanswered=False,
                      prompted=len(messages) > 1)  # the converter's prompt: all turns but the last
    role_tag, content_tag = attr.tags["role_tag"], attr.tags["content_tag"]
    out = []
    for answer in (chosen, rejected):
        if role_tag not in answer or content_tag not in answer:
            raise Stops(f"a chosen / rejected turn has no {role_tag!r}/{content_tag!r} field; LLaMA-Factory "
                        "raises KeyError")
        role = answer[role_tag]
        if role not in roles:
            raise Stops(f"a chosen / rejected turn's role {role!r} is none of the dataset's tags; LLaMA-Factory "
                        "raises KeyError")
        if roles[role] == "system":
            raise Stops("a chosen / rejected turn has the system role: LLaMA-Factory's template raises "
                        "'Unexpected role'")
        out.append((roles[role], answer[content_tag]))
    messages.append(out[0])
    return out[1]


def _medias(row: Mapping[str, Any], cols: Mapping[str, str | None], config: Config
            ) -> tuple[list[Any], list[Any], list[Any]]:
    """The row's images, videos and audios as every converter finds them (``_find_medias`` of each column)."""
    return tuple(  # type: ignore[return-value]
        _media(_get(row, cols[key]), config) if cols[key] else [] for key in ("images", "videos", "audios"))


# converter.py OpenAIDatasetConverter: without tools, "detailed thinking off" joins the system prompt (or is the
# whole system prompt when there is none), unless the prompt already says "detailed thinking on/off"
OPENAI_THINKING_OFF = "detailed thinking off"


def _convert_openai(row: Mapping[str, Any], turns: list[Any], attr: DatasetAttr, config: Config) -> Example:
    tags, cols = attr.tags, attr.columns
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    if tags["system_tag"] and turns and turns[0][role_tag] == tags["system_tag"]:
        system = turns[0][content_tag]
        turns = turns[1:]
    else:
        system = row.get(cols["system"], "") if cols["system"] else ""
    if system and not isinstance(system, (str, list)):  # `"detailed thinking on" in system` raises TypeError
        raise Stops(f"the system prompt is {_what(system)}, not text; LLaMA-Factory's openai converter raises "
                    "reading it")
    # every role tag maps to a role (an unknown one raises KeyError: the run stops); the system tag maps to
    # "system", which then fails the alternation below
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "observation",
             tags["function_tag"]: "function", tags["system_tag"]: "system"}
    messages: list[tuple[str, Any]] = []
    replies: list[Any] = []  # tool replies (observation-tag turns) waiting for the next other turn
    for turn in turns:
        role, content = turn[role_tag], turn[content_tag]
        if role in (tags["assistant_tag"], tags["function_tag"]) and turn.get("tool_calls"):
            # an assistant / function turn with tool_calls: a function turn of its calls' "function" objects as a
            # JSON list (its own content is not read)
            content, role = _openai_calls(turn["tool_calls"]), tags["function_tag"]
        if role == tags["observation_tag"]:
            replies.append(content)
            continue
        if replies:  # consecutive replies: one observation turn, joined as separate <tool_response> blocks
            if not all(isinstance(reply, str) for reply in replies):
                raise Stops(f"a tool reply is {_what(next(r for r in replies if not isinstance(r, str)))}, not text; "
                            "LLaMA-Factory's openai converter raises joining the replies (TypeError)")
            messages.append(("observation", OPENAI_TOOL_REPLY_JOIN.join(replies)))
            replies = []
        if role not in roles:
            raise Stops(f"role {role!r} is none of the dataset's tags; LLaMA-Factory's openai converter raises "
                        "KeyError")
        messages.append((roles[role], content))
    # replies after the last other turn are never joined: the converter leaves them out of the row
    for i, (role, _) in enumerate(messages):
        expected = (("user", "observation"), ("assistant", "function"))[i % 2]
        if role not in expected:
            raise Dropped(f"turn {i + 1} (tool replies joined, tool calls as function turns) has role {role!r} where "
                          f"LLaMA-Factory expects the {' or '.join(expected)}; it skips the row ('Invalid role tag')")
    rejected = None
    if attr.ranking:
        rejected = _ranked_pair(row, messages, attr, roles)
    elif len(messages) % 2 != 0 or not messages:
        raise Dropped(f"{len(messages)} turns: LLaMA-Factory needs user/assistant pairs and skips the row")
    answers = [*messages, *([rejected] if rejected else [])]
    for role, content in answers:
        if not isinstance(content, str):
            raise Stops(f"a {role} turn's content is {_what(content)}, not text")
    if system and not isinstance(system, str):  # a list: the converter extends it, the template raises
        raise Stops(f"the system prompt is {_what(system)}, not text; LLaMA-Factory's template raises reading it")
    tools = row.get(cols["tools"], "") if cols["tools"] else ""
    if isinstance(tools, (dict, list)):  # a list / object column: written back as JSON text
        try:
            tools = json.dumps(tools, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise Stops(f"the tools value cannot be written as JSON by LLaMA-Factory's openai converter "
                        f"({type(e).__name__}: {str(e)[:120]})") from None
    has_tools = bool(tools) or any(role in ("observation", "function") for role, _ in answers)
    if has_tools and config.template.tool_format not in MODELLED_TOOL_FORMATS:
        raise NotCounted(f"tools and tool turns under template {config.template.name} (tool format "
                         f"{config.template.tool_format or 'its own'}) are not counted by vlmcheck yet (it models "
                         f"the {', '.join(MODELLED_TOOL_FORMATS)} tool formats)")
    system = system if isinstance(system, str) else ""
    if tools:  # with tools the system prompt (when there is one) gets a newline, never the thinking switch
        system += "\n" if system else ""
    elif not system:
        system = OPENAI_THINKING_OFF
    elif "detailed thinking on" not in system and OPENAI_THINKING_OFF not in system:
        system += "\n" + OPENAI_THINKING_OFF
    images, videos, audios = _medias(row, cols, config)
    return Example(messages=messages, system=system, images=images, videos=videos, tools=tools or "",
                   audios=audios, rejected=rejected)


def _as_typed(value: Any, kind: Any) -> Any:
    """``value`` as datasets returns it from the Arrow table whose type for it is ``kind`` (_table_kinds_of's): an
    object holds every field of the type, in the type's order, None where it lacks one; a whole number where the
    type is a decimal one is a float."""
    if isinstance(kind, dict) and isinstance(value, Mapping):
        return {k: _as_typed(value.get(k), v) for k, v in kind.items()}
    if isinstance(kind, tuple) and kind[0] == "list" and isinstance(value, list):
        return [_as_typed(v, kind[1]) for v in value]
    if kind in ("float", "decimal") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@lru_cache(maxsize=16)
def _table_kinds_of(files: tuple[tuple[str, int], ...], columns: tuple[str, ...]) -> dict[str, Any]:
    """The types pyarrow infers for ``columns`` of a JSON dataset (one table, as datasets loads a file up to its
    first 10 MiB chunk): per object its fields in the order they are first met over the rows (in file order, a
    list's items in order), per field number "float" once any of its values is a decimal. Measured on datasets
    4.0.0 (pandas, then pyarrow): rows [{"b": 1, "a": 1}] and [{"a": 2.5, "c": 0}] read back as [{"b": 1, "a": 1.0,
    "c": None}] and [{"b": None, "a": 2.5, "c": 0}]."""
    kinds: dict[str, Any] = {}
    for row in iter_rows([Path(name) for name, _ in files]):
        if isinstance(row, Mapping):
            for column in columns:
                if column in row:
                    kinds[column] = _merged_kind(kinds.get(column), row[column])
    return kinds


def _merged_kind(kind: Any, value: Any) -> Any:
    """``kind`` (None, "float", "value", ("list", item kind) or a dict of field kinds) widened by ``value``."""
    if isinstance(value, Mapping):
        fields = dict(kind) if isinstance(kind, dict) else {}
        for key, item in value.items():
            fields[key] = _merged_kind(fields.get(key), item)
        return fields
    if isinstance(value, list):
        item_kind = kind[1] if isinstance(kind, tuple) else None
        for item in value:
            item_kind = _merged_kind(item_kind, item)
        return ("list", item_kind)
    if isinstance(value, float):
        return "float"
    if value is None or kind is not None:  # a clash of other kinds fails the load before any row is read
        return kind
    return "value"


# converter.py OpenAIDatasetConverter: consecutive tool replies become one observation turn, joined so
OPENAI_TOOL_REPLY_JOIN = "\n</tool_response>\n<tool_response>\n"


def _openai_calls(tool_calls: Any) -> str:
    """An openai turn's ``tool_calls`` as the converter writes them: ``json.dumps([call["function"] for call in
    tool_calls], ensure_ascii=False)`` (every field of each function object, the Arrow-loaded row's nulls too); what
    that raises on (a call without ``function``, a value of no list) stops the run."""
    try:
        return json.dumps([call["function"] for call in tool_calls], ensure_ascii=False)
    except Exception as e:  # KeyError, TypeError
        raise Stops(f"a turn's tool_calls cannot be read as LLaMA-Factory's openai converter reads them "
                    f"({type(e).__name__}: {str(e)[:120]})") from None


# -- images ------------------------------------------------------------------------------------------------------
class ImageRefused(Exception):
    """LLaMA-Factory's own resize fails on this image (PIL refuses a side of 0 px): the run stops."""


def image_size(width: int, height: int, config: Config) -> tuple[int, int]:
    """The (width, height) the processor receives from LLaMA-Factory for an image stored as width x height
    (``_preprocess_image``: budget scaling with int truncation, then the Qwen-VL plugin's side and ratio rules)."""
    return _prescaled(width, height, config.image_max_pixels, config.image_min_pixels, config)


def frame_size(width: int, height: int, config: Config) -> tuple[int, int]:
    """The (width, height) of a video's frames after LLaMA-Factory's pre-scaling: the image rules with the video
    budgets (``_regularize_videos`` -> ``_regularize_images``; ``_get_qwen_video_size_after_regularization`` is
    the same arithmetic on the stream's size)."""
    return _prescaled(width, height, config.video_max_pixels, config.video_min_pixels, config)


def _prescaled(width: int, height: int, max_pixels: int, min_pixels: int, config: Config) -> tuple[int, int]:
    if width * height > max_pixels:
        f = math.sqrt(max_pixels / (width * height))
        width, height = int(width * f), int(height * f)
        _check_side(width, height)
    if width * height < min_pixels:
        f = math.sqrt(min_pixels / (width * height))
        width, height = int(width * f), int(height * f)
        _check_side(width, height)
    if config.template.plugin.qwen_rules:
        if min(width, height) < QWEN_MIN_SIDE:
            width, height = max(width, QWEN_MIN_SIDE), max(height, QWEN_MIN_SIDE)
        if width / height > QWEN_MAX_RATIO:
            width, height = height * QWEN_SQUASHED_RATIO, height
        if height / width > QWEN_MAX_RATIO:
            width, height = width, width * QWEN_SQUASHED_RATIO
    return width, height


def pixtral_grid(width: int, height: int, settings: pixtral.PixtralSettings) -> tuple[int, int]:
    """(rows, columns) of ``[IMG]`` the Pixtral plugin writes for a pre-scaled image. It calls the image processor
    directly, which rounds each side up to its own patch size, and floors that by the processor's patch size x
    spatial merge: the same grid as the processor's where the two agree (Pixtral-12B), fewer rows and columns where
    the image processor's patch is finer (Mistral-Small-3.1: 14 px against 28; the model's patch merger floors the
    same way, so text and features still agree). No row at all: the plugin's ``replace_tokens[-1]`` raises
    IndexError."""
    h, w = pixtral.image_processor_size(width, height, settings)
    rows, cols = h // settings.step, w // settings.step
    if rows <= 0:
        raise ImageRefused(f"the image processor makes it {w}x{h}, under one {settings.step} px row of patches: "
                           "LLaMA-Factory's Pixtral plugin writes no [IMG] row and raises IndexError "
                           "('list assignment index out of range')")
    return rows, cols


def pixtral_expansion(rows: int, cols: int) -> Expansion:
    """The Pixtral plugin's text for a grid; with no column, its rows are bare [IMG_BREAK]s closed by [IMG_END]
    (no image token: the patch merger gives the image no feature either)."""
    if cols <= 0:
        return Expansion(pixtral.IMAGE_BREAK * (rows - 1) + pixtral.IMAGE_END, ())
    return pixtral.expand_grid(rows, cols)


def _check_side(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRefused(f"LLaMA-Factory's pixel scaling makes it {width}x{height}; PIL's resize raises "
                           "'height and width must be > 0'")


# -- tokens ------------------------------------------------------------------------------------------------------
Element = str | int  # a formatted string, tokenized on its own, or a token id (the BOS / EOS slots)


def sampled_frames(info: VideoInfo, config: Config) -> tuple[list[int], int]:
    """(the frame indices the text is counted for, the number of frames the collator decodes) of one video file
    under the Qwen-VL plugins, before ``_regularize_videos`` makes the count even (it repeats the last frame).

    ``_get_video_sample_indices`` reads PyAV's ``stream.frames``: when it is 0 (a fragmented MP4) it takes indices
    0 .. video_maxlen-1, else ``np.linspace(0, frames - 1, n).astype(int32)`` with n = min(frames, video_maxlen,
    max(1, floor(duration x video_fps))). ``process_messages`` counts the text from those indices and the stream's
    size without decoding (``_get_qwen_video_grid_metadata``, which needs a duration and a frame rate, else it
    decodes too); the collator decodes the stream and keeps the frames whose index is among them, so a fragmented
    MP4 shorter than video_maxlen frames gets more video tokens than features."""
    decodable = info.frames
    if info.declared_frames == 0:
        decoded = min(decodable, config.video_maxlen)
        n = config.video_maxlen if info.duration is not None and info.fps else decoded
        _bounded(n)
        return list(range(n)), decoded
    if info.duration is None:
        raise VideoProblem("VC112", "the video stream declares no duration: LLaMA-Factory's frame sampling "
                                    "multiplies by it and raises")
    cap = min(info.declared_frames, config.video_maxlen)
    wanted = info.duration * config.video_fps  # may overflow to inf for a hostile video_fps: then the cap holds
    n = cap if wanted >= cap else min(cap, max(1, math.floor(wanted)))
    _bounded(n)
    return _linspace_int(info.declared_frames - 1, n), n


# more sampled frames than this are not counted (a hostile video_maxlen or header must not exhaust memory)
MAX_COUNTED_FRAMES = 100_000


def _bounded(frames: int) -> None:
    if frames > MAX_COUNTED_FRAMES:
        raise VideoProblem("VC114", f"LLaMA-Factory would sample {frames:,} frames of this video (video_maxlen, "
                                    f"video_fps and its header): more than vlmcheck counts ({MAX_COUNTED_FRAMES:,})")


def _linspace_int(stop: int, num: int) -> list[int]:
    """``np.linspace(0, stop, num).astype(np.int32)``: i x step truncated, the last exactly ``stop``."""
    if num == 1:
        return [0]
    step = stop / (num - 1)
    return [int(i * step) for i in range(num - 1)] + [stop]


def format_turns(example: Example, config: Config, *, images: Sequence[str] | None = None,
                 bos: int | None = None, eos: int | None = None,
                 videos: Sequence[str] | None = None) -> list[list[Element]]:
    """The elements LLaMA-Factory tokenizes for ``example``: per turn (prompt and answer alternating), the
    formatted strings, each tokenized on its own, and the token ids of the BOS / EOS slots. The k-th ``<image>``
    becomes ``images[k]`` (default: ``<|vision_start|><|image_pad|><|vision_end|>``) with the image token written
    once per run of features: the encoder expands it to the run's length (a special token, so its neighbours
    tokenize the same either way)."""
    t = config.template
    plugin = t.plugin
    system = example.system or (config.default_system if config.default_system is not None else t.default_system)
    messages = [list(m) for m in example.messages]
    open_, close = t.thought_words
    if config.oneturn:  # ReasoningTemplate.encode_oneturn: the history's thoughts unless preserved, the answer's
        stripped = messages[1:-2:2] if not config.preserve_thinking else []
        if config.enable_thinking is False:
            stripped.append(messages[-1])
        discard_history = True  # the empty thought block for the last answer only
    else:  # encode_multiturn: every thought without enable_thinking, the history's with mask_history
        discard_history = config.mask_history and not config.preserve_thinking
        stripped = (messages[1::2] if config.enable_thinking is False else messages[1:-2:2] if discard_history
                    else [])
    if t.reasoning:
        for m in stripped:
            m[1] = _remove_thought(m[1], t)
    collapsed = f"{plugin.vision_bos}{plugin.image_token}{plugin.vision_eos}"
    collapsed_video = f"{plugin.vision_bos}{plugin.video_token}{plugin.vision_eos}"
    tools = tool_prompt(example.tools, t.tool_format) if example.tools else ""
    texts = iter(images if images is not None else ())
    video_texts = iter(videos if videos is not None else ())
    out: list[list[Element]] = []
    for i, (role, content) in enumerate(messages):
        elements: list[Element] = []
        system_text = ""
        if i == 0:
            if t.prefix:
                elements.append(t.prefix)
            if t.prefix_bos and bos is not None:
                elements.append(bos)
            if system or example.tools:  # Template._encode: a tools value writes the system slot even when empty
                system_text = t.system.replace("{content}", system + tools)
                if not t.system_in_user:
                    elements.append(system_text)
                    system_text = ""
        # mm_plugin.process_messages replaces each placeholder in turn (a message's images, then its videos),
        # before the template formats the turn
        parts = content.split(config.image_placeholder)
        content = parts[0] + "".join(next(texts, collapsed) + part for part in parts[1:])
        if plugin.counts_videos:
            parts = content.split(config.video_placeholder)
            content = parts[0] + "".join(next(video_texts, collapsed_video) + part for part in parts[1:])
        if role == "user":
            text = t.user.replace("{content}", system_text + content)
            if not t.system_in_user:
                # Template._encode: format_user.apply(content=..., idx=str(i // 2)), and StringFormatter replaces
                # the first "{{idx}}" of the formatted slot: one the user wrote becomes the turn's number
                # (Llama2Template passes no idx)
                text = text.replace("{{idx}}", str(i // 2), 1)
            elements.append(text)
        elif role == "observation":  # a tool's result, on the prompt side of its pair
            elements.append(t.observation.replace("{content}", content))
        elif role == "function":  # a tool call, the answer of its pair
            elements.append(t.function.replace("{content}", function_call_text(content, t)))
            if t.function_eos and eos is not None:
                elements.append(eos)
        else:
            elements.append(t.assistant.replace("{content}", content))
            if t.answer_eos and eos is not None:
                elements.append(eos)
        out.append(elements)
    if t.reasoning:  # ReasoningTemplate.encode_multiturn: an empty thought block where the answer has none
        empty = open_ + close
        for i in ([len(messages) - 2] if discard_history else range(0, len(messages), 2)):
            answer = messages[i + 1][1]
            if open_.strip() not in answer and close.strip() not in answer:
                if config.enable_thinking:  # trained: it opens the answer
                    out[i + 1].insert(0, empty)
                else:  # not trained: it closes the prompt
                    out[i].append(empty)
    return out


def tool_prompt(tools: Any, tool_format: str = "qwen") -> str:
    """``ToolFormatter(tool_format=...)``: the row's tools (a JSON string of a list of functions) as the text joined
    to the system prompt; an empty list adds nothing. ``qwen``: each tool one JSON line, wrapped as
    ``{"type": "function", "function": ...}`` unless it already is one. ``qwen3_5`` (Qwen35ToolUtils): each tool
    one JSON line, a wrapped one unwrapped to its ``function`` (the tool itself when it has none), under
    QWEN35_TOOL_PROMPT's text. ``default``: each tool's name, description and parameters in prose, then the
    Action / Action Input instructions. Whatever LLaMA-Factory's parsing raises on stops the run."""
    try:
        parsed = json.loads(tools)  # a list or dict column (not a string) raises TypeError here too
        if len(parsed) == 0:
            return ""
        if tool_format == "default":
            return _default_tool_prompt(parsed)
        lines = ""
        for tool in parsed:
            if tool_format == "qwen3_5":
                shown = tool.get("function", tool) if tool.get("type") == "function" else tool
            else:
                shown = tool if tool.get("type") == "function" else {"type": "function", "function": tool}
            lines += "\n" + json.dumps(shown, ensure_ascii=False)
    except Exception as e:  # JSONDecodeError ("Invalid JSON format in tool description"), TypeError, AttributeError
        raise Stops(f"the tools value cannot be read as LLaMA-Factory's tool formatter reads it "
                    f"({type(e).__name__}: {str(e)[:120]})") from None
    return (QWEN35_TOOL_PROMPT if tool_format == "qwen3_5" else QWEN_TOOL_PROMPT).format(tool_text=lines)


# tool_utils.py DEFAULT_TOOL_PROMPT (the "default" tool format)
DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)


def _default_tool_prompt(tools: list[Any]) -> str:
    """``DefaultToolUtils.tool_formatter``: per tool its name, description and each parameter's line."""
    text, names = "", []
    for tool in tools:
        tool = tool.get("function", "") if tool.get("type") == "function" else tool
        params = ""
        for name, param in tool["parameters"]["properties"].items():
            required = ", required" if name in tool["parameters"].get("required", []) else ""
            enum = f", should be one of [{', '.join(param['enum'])}]" if param.get("enum", None) else ""
            items = f", where each item should be {param['items'].get('type', '')}" if param.get("items", None) else ""
            params += (f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}"
                       f"{enum}{items}\n")
        text += f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{params}\n"
        names.append(tool["name"])
    return DEFAULT_TOOL_PROMPT.format(tool_text=text, tool_names=", ".join(names))


def function_call_text(content: str, t: Template) -> str:
    """``FunctionFormatter(tool_format=...)``: a function-call turn's JSON (one call or a list) as the format writes
    calls: ``qwen``: ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`` blocks; ``qwen3_5``:
    ``<tool_call>\n<function=NAME>`` then per argument ``\n<parameter=KEY>\nVALUE\n</parameter>`` (a string as is,
    anything else as JSON), then ``\n</function>\n</tool_call>``; ``default``: ``Action:`` / ``Action Input:``
    lines. Text around a ``<tool_call>...</tool_call>`` span in the content is kept before the calls; else a
    thought block is moved before them."""
    import re

    def calls(text: str) -> str:
        try:
            parsed = json.loads(text)
            items = parsed if isinstance(parsed, list) else [parsed]
            # FunctionCall(name, arguments as JSON text): what every tool format's function_formatter reads
            pairs = [(item["name"], json.dumps(item["arguments"], ensure_ascii=False)) for item in items]
            if t.tool_format == "default":  # DefaultToolUtils.function_formatter
                return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in pairs)
            if t.tool_format == "qwen3_5":  # Qwen35ToolUtils.function_formatter: the arguments must be an object
                return "\n".join(_qwen35_call(name, json.loads(arguments)) for name, arguments in pairs)
            blocks = [json.dumps({"name": name, "arguments": json.loads(arguments)}, ensure_ascii=False)
                      for name, arguments in pairs]
        except Exception as e:  # JSONDecodeError ("Invalid JSON format in function message"), KeyError, TypeError,
            # AttributeError (qwen3_5: arguments that are no object)
            raise Stops(f"a function-call turn cannot be read as LLaMA-Factory's function formatter reads it "
                        f"({type(e).__name__}: {str(e)[:120]})") from None
        return "\n".join(f"<tool_call>\n{block}\n</tool_call>" for block in blocks)

    opening, closing = t.tool_call_words
    call = re.search(f"{re.escape(opening)}(.*?){re.escape(closing)}", content, re.DOTALL)
    if call is not None:
        return content.replace(call.group(0), "") + calls(call.group(1))
    thought = re.search(f"{re.escape(t.thought_words[0])}(.*?){re.escape(t.thought_words[1])}", content, re.DOTALL)
    if thought is None:
        return calls(content)
    return thought.group(0) + calls(content.replace(thought.group(0), ""))


def _qwen35_call(name: Any, arguments: Any) -> str:
    """One call as Qwen35ToolUtils writes it (``arguments.items()``: an AttributeError on anything but an object,
    which the caller turns into a stop)."""
    params = "".join(f"\n<parameter={key}>\n{value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
                     "\n</parameter>" for key, value in arguments.items())
    return f"<tool_call>\n<function={name}>{params}\n</function>\n</tool_call>"


def _remove_thought(content: str, t: Template) -> str:
    import re

    pattern = re.compile(f"{re.escape(t.thought_words[0])}(.*?){re.escape(t.thought_words[1])}", re.DOTALL)
    return re.sub(pattern, "", content).lstrip("\n")


# owners (Encoded.image_of) of an image or video token that the row's own text holds: the tokenizer makes the
# model's image token of the string, but no image is behind it
LITERAL_IMAGE = -2
LITERAL_VIDEO = -3


@dataclass
class Encoded:
    """A sample as LLaMA-Factory builds it: per-turn token ids, ``True`` where an id is an image feature slot,
    and which image each slot belongs to."""

    turns: list[list[int]]
    image_of: list[list[int]]  # per turn, per token: image index, -1 (text), or LITERAL_IMAGE / LITERAL_VIDEO
    # PaliGemmaPlugin.process_token_ids: every image's tokens before the first turn, never labelled, never cut
    # (they take their share of cutoff_len first); per token, its image
    prefix: list[int] = field(default_factory=list)
    # efficient_eos templates: the one EOS id after the last pair (always kept, always labelled)
    suffix: int = 0
    # a ranking row (see pairwise): turns are [the prompt, the chosen answer]; this is the rejected answer's ids'
    # owners (image index or -1), the same shape as an image_of entry
    rival: list[int] | None = None
    # a KTO row's sequence (see oneturn): [the prompt, the answer], cut by one infer_seqlen(prompt, answer)
    oneturn: bool = False
    # a KTO row: its KL sequence (the same prompt and images, the borrowed answer), a oneturn Encoded of its own
    kl: Encoded | None = None

    @property
    def total(self) -> int:
        """The sample's tokens; a ranking row's are its longer sequence (prompt and the longer answer)."""
        if self.rival is not None:
            return len(self.turns[0]) + max(len(self.turns[1]), len(self.rival))
        return len(self.prefix) + sum(len(t) for t in self.turns) + self.suffix


def pairwise(chosen: Encoded, rejected: Encoded, *, eos: int | None, image_id: int) -> Encoded:
    """``PairwiseDatasetProcessor._encode_data_example``'s two sequences as one Encoded: the prompt (the chosen
    encoding's turns but the last, after the image prefix of ``process_token_ids``: PaliGemma's, which joins the
    prompt here and can be cut) and the chosen answer, the rejected answer as ``rival``; ``eos``: the EOS id an
    efficient_eos template appends to each answer; ``image_id``: the prefix's token."""
    prompt = [*chosen.prefix, *(k for owner in chosen.image_of[:-1] for k in owner)]
    ids = [image_id] * len(chosen.prefix) + [t for turn in chosen.turns[:-1] for t in turn]
    tail = [] if eos is None else [eos]
    return Encoded(turns=[ids, chosen.turns[-1] + tail], image_of=[prompt, chosen.image_of[-1] + [-1] * len(tail)],
                   rival=rejected.image_of[-1] + [-1] * len(tail))


def oneturn(encoded: Encoded, *, eos: int | None, image_id: int) -> Encoded:
    """One of ``FeedbackDatasetProcessor._encode_data_example``'s sequences (the target or the KL one):
    ``encode_oneturn``'s prompt (after PaliGemma's prefix, which joins it and can be cut) and answer (with an
    efficient_eos template's EOS), the shape :func:`pairwise` gives a chosen answer, cut on its own."""
    return replace(pairwise(encoded, encoded, eos=eos, image_id=image_id), rival=None, oneturn=True)


@dataclass
class Cut:
    """What survives ``cutoff_len``."""

    tokens: int
    labels: int
    image_tokens_kept: list[int]
    kept_per_turn: list[int] = field(default_factory=list)  # tokens kept of each turn (the report's layout bar)
    labelled: list[bool] = field(default_factory=list)  # whether each turn's kept tokens are labels
    # image / video tokens written literally in the row's text (no media behind them) that the cut keeps
    literal_images: int = 0
    literal_videos: int = 0


def pair_budgets(lengths: Sequence[tuple[int, int]], cutoff: int, *, used: int = 0) -> list[tuple[int, int]]:
    """How many tokens of each (prompt, answer) pair survive ``cutoff_len``, pair by pair
    (``_encode_data_example``): each pair gets ``infer_seqlen``'s share of what is left, and the pairs after the
    budget is spent are dropped. ``used``: tokens already taken (the efficient-EOS template's one)."""
    out: list[tuple[int, int]] = []
    for source, target in lengths:
        if used >= cutoff:
            break
        s_len, t_len = infer_seqlen(source, target, cutoff - used)
        used += s_len + t_len
        out.append((s_len, t_len))
    return out


@dataclass
class PerTurn:
    """A conversation as LLaMA-Factory encodes it: its ids, which carry labels, and where each piece ends."""

    input_ids: list[int]
    supervised: list[bool]
    bounds: list[int]  # the end (token index) of each encoded piece, prompt and answer alternating


def encode_pairs(pairs: Sequence[tuple[str, str]], tok: Tok, *, cutoff_len: int | None = None) -> PerTurn:
    """``Template.encode_multiturn`` on rendered (prompt, answer) text pairs: each piece encoded on its own with
    ``add_special_tokens=False``, labels on the answers, truncated pair by pair (:func:`pair_budgets`). Tokens that
    would merge across a turn boundary in the whole text are split here: the model trains on a token sequence
    that inference (which tokenizes the whole conversation) never produces. ``vlmcheck template`` uses it with
    the checkpoint's chat template standing in for LLaMA-Factory's."""
    encoded = [(tok.ids(prompt, add_special_tokens=False), tok.ids(answer, add_special_tokens=False))
               for prompt, answer in pairs]
    if cutoff_len is not None:
        budgets = pair_budgets([(len(s), len(t)) for s, t in encoded], cutoff_len)
        encoded = [(s[:ks], t[:kt]) for (s, t), (ks, kt) in zip(encoded, budgets)]
    ids: list[int] = []
    sup: list[bool] = []
    bounds: list[int] = []
    for source, target in encoded:
        ids += source
        sup += [False] * len(source)
        bounds.append(len(ids))
        ids += target
        sup += [True] * len(target)
        bounds.append(len(ids))
    return PerTurn(ids, sup, bounds)


def truncate(encoded: Encoded, config: Config, *, images: int) -> Cut:
    """``SupervisedDatasetProcessor._encode_data_example``: pair by pair (last pair first with mask_history)."""
    cutoff = config.cutoff_len
    if encoded.rival is not None or encoded.oneturn:
        return _truncate_pair(encoded, cutoff, images=images)
    pairs = [(i, i + 1) for i in range(0, len(encoded.turns), 2)]
    if config.mask_history:
        pairs = pairs[::-1]
    efficient_eos = config.template.efficient_eos
    total = len(encoded.prefix) + (1 if efficient_eos else 0)
    labels = 1 if efficient_eos else 0  # the closing EOS is labelled
    kept = [0] * images
    for k in encoded.prefix:
        kept[k] += 1
    per_turn = [0] * len(encoded.turns)
    labelled = [False] * len(encoded.turns)
    budgets = pair_budgets([(len(encoded.turns[src]), len(encoded.turns[tgt])) for src, tgt in pairs], cutoff,
                           used=total)
    for turn_idx, ((src, tgt), (s_len, t_len)) in enumerate(zip(pairs, budgets)):
        total += s_len + t_len
        per_turn[src], per_turn[tgt] = s_len, t_len
        labelled[src] = config.train_on_prompt
        labelled[tgt] = not (config.mask_history and turn_idx != 0)
        if config.train_on_prompt:
            labels += s_len
        elif efficient_eos and turn_idx != 0:  # the prompt's first label is the EOS id (even of an empty cut)
            labels += 1
        if not (config.mask_history and turn_idx != 0):
            labels += t_len
        for turn, n in ((src, s_len), (tgt, t_len)):
            for k in encoded.image_of[turn][:n]:
                if k >= 0:
                    kept[k] += 1
    kept_owners = [k for turn, n in enumerate(per_turn) for k in encoded.image_of[turn][:n]]
    return Cut(tokens=total, labels=labels, image_tokens_kept=kept, kept_per_turn=per_turn, labelled=labelled,
               literal_images=kept_owners.count(LITERAL_IMAGE), literal_videos=kept_owners.count(LITERAL_VIDEO))


def _truncate_pair(encoded: Encoded, cutoff: int, *, images: int) -> Cut:
    """``PairwiseDatasetProcessor``'s cut: ``infer_seqlen(prompt, the longer answer, cutoff_len)``, the answers'
    share the same for both. The counts are the chosen sequence's (``tokens``: the longer sequence's); an image
    token counts as kept only when both sequences keep it (the collator batches the two, each with the images)."""
    prompt, chosen = encoded.image_of
    rival = chosen if encoded.rival is None else encoded.rival  # a oneturn sequence: its own answer
    s_len, t_len = infer_seqlen(len(prompt), max(len(chosen), len(rival)), cutoff)
    kept = [0] * images
    for k in prompt[:s_len]:
        if k >= 0:
            kept[k] += 1
    for k in range(images):
        kept[k] += min(chosen[:t_len].count(k), rival[:t_len].count(k))
    labels = min(t_len, len(chosen))
    # a literal token left in either sequence: that sequence has more image tokens than features
    literal = [max(prompt[:s_len].count(m) + chosen[:t_len].count(m), prompt[:s_len].count(m) + rival[:t_len].count(m))
               for m in (LITERAL_IMAGE, LITERAL_VIDEO)]
    return Cut(tokens=s_len + t_len, labels=labels, image_tokens_kept=kept, kept_per_turn=[s_len, labels],
               labelled=[False, True], literal_images=literal[0], literal_videos=literal[1])


def _layout_spans(encoded: Encoded, whole: Cut, cut: Cut, *, cutoff: int, first_video: int | None = None
                  ) -> dict[str, Any]:
    """The sample's token layout for the report: turns laid end to end, the labelled turns of the whole sample,
    and what the per-turn cut keeps of each turn."""
    trained: list[bool] = [False] * len(encoded.prefix)
    kept: list[tuple[int, int]] = [(0, len(encoded.prefix))] if encoded.prefix else []
    for t, ids in enumerate(encoded.turns):
        if t < len(cut.kept_per_turn) and cut.kept_per_turn[t]:
            kept.append((len(trained), len(trained) + cut.kept_per_turn[t]))
        trained += [t < len(whole.labelled) and whole.labelled[t]] * len(ids)
    if encoded.suffix:
        kept.append((len(trained), len(trained) + encoded.suffix))
        trained += [True] * encoded.suffix
    image_of = encoded.prefix + [max(k, -1) for owner in encoded.image_of for k in owner] + [-1] * encoded.suffix
    return token_spans(image_of, trained, kept=kept, max_length=cutoff, first_video=first_video)


def iter_rows(files: list[Path]) -> Iterator[Any]:
    """The rows of a dataset's files, each read as the ``datasets`` builder LLaMA-Factory picks for it reads it."""
    for file in files:
        yield from builder_rows(file, builder(file) or "json")


def _setting(key: str, value: Any) -> str:
    """A fix written in LLaMA-Factory's own YAML syntax."""
    return f"{key}: {value}"


# -- the run -----------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    """A LLaMA-Factory training YAML: ``model_name_or_path`` with its own data keys, or a v1 engine config."""
    # the v1 module imports this one: imported late, on use
    from vlmcheck.frameworks._llamafactory_v1 import claims as v1_claims

    return v1_claims(raw) or "model_name_or_path" in raw and any(
        key in raw for key in ("cutoff_len", "template", "dataset_dir", "image_max_pixels", "finetuning_type"))


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run | V1Run:
    """The run a LLaMA-Factory config launches, ready to judge its rows: the v1 engine's for a v1 config or under
    ``USE_V1`` (as ``llamafactory-cli`` picks its launcher), else the default engine's."""
    from vlmcheck.frameworks._llamafactory_v1 import claims as v1_claims
    from vlmcheck.frameworks._llamafactory_v1 import open_run as v1_open_run

    env = os.environ if env is None else env
    if v1_claims(raw) or env.get("USE_V1", "0").lower() in V1_SWITCH:
        return v1_open_run(raw, path=path, model=model, data=data, path_map=path_map, env=env)
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():  # read_args: OmegaConf.load
        import yaml

        try:
            raw = read_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: LLaMA-Factory's config loader (OmegaConf) refuses it: {e}") from None
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map, env=env)
    if config.pan_and_scan and config.template.plugin is not GEMMA3_PLUGIN:
        raise UsageError(f"{path}: image_do_pan_and_scan is modelled for the gemma3 template only")
    spec = load_model(config.model, overrides=Overrides(resize="processor"))
    if config.template.plugin is INTERN_VL_PLUGIN and spec.family.name == "internvl":
        if config.crop_to_patches:
            extra: dict[str, Any] = dict(INTERN_VL_CROP)
        else:  # the image processor's own value (InternVLProcessor's call-time default is not in this path)
            values = read_checkpoint_json(spec.path / "preprocessor_config.json")
            extra = {"crop_to_patches": bool(values.get("crop_to_patches"))}
        spec = load_model(config.model, overrides=Overrides(resize="processor", extra=extra))
    return Run(config, spec)


# cli.py: extras/misc.py is_env_enabled("USE_V1") picks the v1 launcher
V1_SWITCH = ("true", "y", "1")


# stand-ins for the model's image and video tokens in the text vlmcheck writes for media, so that after
# tokenization a token written by an expansion is told apart from the same token written in the row's own text
IMAGE_MARK = "<|vlmcheck-image-mark|>"
VIDEO_MARK = "<|vlmcheck-video-mark|>"


def _run_tokenizer(tokenizer: Any, words: Sequence[str], marks: Mapping[str, str]) -> dict[str, int]:
    """Makes ``tokenizer`` (the run's own, not shared) what ``Template.fix_special_tokens`` leaves (the template's
    stop ``words`` added as special tokens), plus a stand-in special token for each of the model's media tokens
    (``marks``: the token's string -> its stand-in's), added with the token's own flags (strip, single word,
    normalized) so that text around a stand-in is split as around the token; returns the stand-ins' ids by the
    token's string. A media token that is not an added token of the tokenizer gets no stand-in (its expansions are
    then told apart by order)."""
    own = {t.content: t for t in tokenizer.get_added_tokens_decoder().values()}
    missing = [w for w in words if not (w in own and own[w].special)]
    wanted = {token: mark for token, mark in marks.items() if token in own}
    from tokenizers import AddedToken

    if missing:
        tokenizer.add_special_tokens([AddedToken(w, special=True, normalized=False) for w in missing])
    if wanted:
        tokenizer.add_special_tokens([AddedToken(mark, single_word=own[token].single_word, lstrip=own[token].lstrip,
                                                 rstrip=own[token].rstrip, normalized=own[token].normalized,
                                                 special=True)
                                      for token, mark in wanted.items()])
    ids = {token: tokenizer.token_to_id(mark) for token, mark in wanted.items()}
    return {token: i for token, i in ids.items() if i is not None}


@dataclass(frozen=True)
class FrameList:
    """A video given as a list of frame images (``_check_video_is_nested_images``): each frame's stored
    (width, height), read from its image header."""

    sizes: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class VideoCount:
    """One video under a Qwen-VL plugin: ``groups`` runs of ``per_group`` video tokens on the path that writes the
    text (one run under Qwen2-VL; Qwen3-VL writes each frame group apart, after its timestamp ``stamps``), and the
    features its collator's frames give."""

    groups: int
    per_group: int
    features: int
    stamps: tuple[float, ...] = ()

    @property
    def tokens(self) -> int:
        return self.groups * self.per_group


class Run:
    """A LLaMA-Factory run: judges rows the way its default engine prepares them for ``stage: sft``."""

    name = NAME
    versions = VERSIONS
    length_key = "cutoff_len"
    pixels_key = "image_max_pixels"

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        plugin = config.template.plugin
        if spec.family.name not in plugin.model_types:
            raise UsageError(
                f"template {config.template.name} uses LLaMA-Factory's {plugin.name} plugin, made for "
                f"{', '.join(plugin.model_types)}; the model is {spec.family.name}")
        self.config = config
        self.spec = spec
        self.family = spec.family
        self.settings = spec.settings
        words = config.template.stop_words + ((config.template.eos_word,) if config.template.eos_word else ())
        # the run's own tokenizer (one read of the file): the template's words and the stand-ins are added to it
        self.tokenizer = spec.own_tokenizer()
        self.pad_id = self._token_id(plugin.image_token)
        self.video_pad_id = self._token_id(plugin.video_token) if plugin.counts_videos else None
        self.marks = _run_tokenizer(self.tokenizer, words, {
            plugin.image_token: IMAGE_MARK, **({plugin.video_token: VIDEO_MARK} if plugin.counts_videos else {})})
        # the BOS / EOS slots are the tokenizer's own ids (_convert_elements_to_ids); absent: nothing is written
        self.bos_id = self._special_id("bos_token")
        self.eos_id = (self.tokenizer.token_to_id(config.template.eos_word) if config.template.eos_word
                       else self._special_id("eos_token"))
        self.attrs = read_dataset_info(config)
        self.eval_attrs = read_dataset_info(config, config.eval_datasets)
        self._keys: dict[str, set[str]] = {}  # per dataset: the keys of all its rows (its table's columns)
        self._checked: set[str] = set()  # folder datasets whose files' columns were compared
        self._typed: set[str] = set()  # JSON datasets whose columns' types were checked
        self._plans: dict[str, LoadPlan] = {}  # and what their load does to values (timestamps)
        self._splits: dict[str, list[int] | None] = {}  # the file rows each dataset's split keeps
        self._schemas: dict[str, Any] = {}  # a JSON dataset's column types (hfjson.json_type's)
        self.max_length = config.cutoff_len
        # LLaMA-Factory opens images with Image.open: paths as resolved by _media, no EXIF rotation
        self.previews = Previewer(local_path=lambda raw, _what: Path(raw), exif_transpose=False,
                                  max_length=config.cutoff_len, truncation=NAME)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelError(f"the tokenizer in {self.spec.path} has no token {token!r}")
        return int(token_id)

    def _special_id(self, key: str) -> int | None:
        token = self.spec.special_tokens.get(key)
        return None if token is None else self.tokenizer.token_to_id(str(token))

    # -- the run's inputs -------------------------------------------------------------------------------------
    def inputs(self) -> list[Path]:
        """Every file the run reads (never to be written over)."""
        return [self.config.path, *(f for a in (*self.attrs, *self.eval_attrs) for f in dataset_files(self.config, a))]

    def rows(self) -> Iterator[tuple[Any, Origin]]:
        """Rows in LLaMA-Factory's order (:meth:`_rows`); under ``stage: kto`` each Origin names its KL partner:
        ``preprocess_dataset`` pairs each row with the answer of the row before it in its map batch, the batch's
        first row with its last one's (:func:`map_batches`; the training rows are one map, the evaluation rows
        another, or one per dataset with ``eval_on_each_dataset``). The rows of a batch are read before the first is
        handed on."""
        rows = self._rows()
        if not self.config.feedback:
            yield from rows
            return
        cfg = self.config
        counts: dict[tuple[str, str | None], int] = {}
        if (cfg.preprocessing_num_workers or 1) > 1 or cfg.preprocessing_batch_size <= 0:  # the shards need the size
            for _, origin in self._rows():
                counts[self._map_unit(origin)] = counts.get(self._map_unit(origin), 0) + 1
        batch: list[tuple[Any, Origin]] = []
        sizes: list[int] = []
        unit: tuple[str, str | None] | None = None
        for row, origin in rows:
            if self._map_unit(origin) != unit:
                yield from self._paired(batch)
                batch, unit = [], self._map_unit(origin)
                sizes = (map_batches(counts[unit], cfg.preprocessing_num_workers, cfg.preprocessing_batch_size)
                         if counts else [])
            batch.append((row, origin))
            if len(batch) == (sizes[0] if sizes else cfg.preprocessing_batch_size):
                yield from self._paired(batch)
                batch, sizes = [], sizes[1:]
        yield from self._paired(batch)

    def _map_unit(self, origin: Origin) -> tuple[str, str | None]:
        """The ``datasets.map`` call a row is prepared in: the training rows', or the evaluation rows' (one per
        dataset with ``eval_on_each_dataset``)."""
        each = origin.split == "eval" and self.config.eval_on_each_dataset
        return origin.split, origin.attr.name if each else None

    @staticmethod
    def _paired(batch: list[tuple[Any, Origin]]) -> Iterator[tuple[Any, Origin]]:
        """One map batch: row i's KL partner is row i - 1, the first row's the last (``kl_response``)."""
        for i, (row, origin) in enumerate(batch):
            yield row, replace(origin, partner=batch[i - 1])

    def _rows(self) -> Iterator[tuple[Any, Origin]]:
        """Rows in LLaMA-Factory's order: the training datasets joined, then ``eval_dataset``'s. Each dataset is read
        as ``_load_single_dataset`` reads it: ``num_samples`` drawn (seeded, in the order the datasets load), then
        the first ``max_samples``. A name listed twice is loaded twice (two draws) and kept once, at its first
        place, as the last load left it (``_get_merged_dataset`` keeps a dict by name)."""
        rng = None
        for split, attrs in (("train", self.attrs), ("eval", self.eval_attrs)):
            picks: dict[str, tuple[DatasetAttr, list[int] | None]] = {}
            for attr in attrs:
                self._same_columns(attr)
                self._same_types(attr)
                if self.config.streaming:
                    self._shards(attr)
                chosen = None
                if attr.num_samples is not None and not self.config.streaming:
                    loaded = self._loaded_rows(attr)
                    if loaded is not None:
                        rng = rng if rng is not None else _seeded(self.config.seed)
                        chosen = draw_samples(loaded, attr.num_samples, rng)
                picks[attr.name] = (attr, chosen)  # a later load of the same name replaces the earlier
            sources = list(picks.values())
            merged = split == "train" or not self.config.eval_on_each_dataset
            self._merged_features(sources, split, merged)
            if split == "train" and self.config.val_size > 1e-6 and not self.config.streaming:
                self._split(sources)
            yield from self._merged_rows(sources, split, merged)

    def _merged_rows(self, sources: list[tuple[DatasetAttr, list[int] | None]], split: str, merged: bool
                     ) -> Iterator[tuple[Any, Origin]]:
        """The rows of the merged dataset (or of each with ``eval_on_each_dataset``), as ``merge_dataset`` joins them."""
        if self.config.mix_strategy == "concat" or len(sources) < 2 or not merged:
            for attr, chosen in sources:
                yield from self._dataset_rows(attr, chosen, split)
        else:
            yield from self._interleaved(sources, split)

    def _split(self, sources: list[tuple[DatasetAttr, list[int] | None]]) -> None:
        """``val_size``: ``split_dataset`` splits the merged training rows before any is prepared; where datasets'
        ``train_test_split`` refuses the split the run stops before step 1 (DatasetError). Counts the rows, so
        read only when a val_size is set."""
        rows = sum(1 for _ in self._merged_rows(sources, "train", True))
        why = split_refused(self.config.val_size, rows)
        if why is not None:
            raise DatasetError(f"{self.config.path}: val_size {self.config.val_size!r} on {rows:,} training rows: "
                               f"LLaMA-Factory's split_dataset hands it to datasets' train_test_split, which raises "
                               f"('{why}') and the run stops before step 1")

    def _merged_features(self, sources: list[tuple[DatasetAttr, list[int] | None]], split: str, merged: bool
                         ) -> None:
        """The run-level rules of the converted datasets' features, before the first row. ``concatenate_datasets``
        and ``interleave_datasets`` raise ("The features can't be aligned") where two datasets give a column
        different types (null goes with any): a dataset none of whose rows has an answer types its ``_response`` as
        a list of nulls, beside others' lists of turns; media given one way in one dataset (paths) and another in
        the next (a Parquet column of images as an ``Image`` feature, or as structs of bytes and path) type
        ``_images`` (``_videos``, ``_audios``) differently. And a dataset (the merged one, or each with
        ``eval_on_each_dataset``) whose every row is dropped, by the converter or by the dataset processor (a
        ranking row without a chosen / rejected pair, a packed sample over ``cutoff_len``), leaves
        ``_get_preprocessed_dataset`` no sample to print, and it raises ('Cannot find valid samples'). Each stops
        the run before step 1: DatasetError."""
        prepared = {attr.name: self._prepared(attr, chosen, split) for attr, chosen in sources}
        answered = [(name, p.answered) for name, p in prepared.items()]
        what = "eval dataset" if split == "eval" else "dataset"
        if merged and len(sources) > 1 and not self.config.streaming:  # a stream's features are not aligned
            for key in ("images", "videos", "audios"):
                kinds = [(attr.name, self._media_kind(attr, key)) for attr, _ in sources]
                given = [(name, kind) for name, kind in kinds if kind is not None]
                other = next(((name, kind) for name, kind in given if kind != given[0][1]), None)
                if other is not None and UNKNOWN_KIND not in (given[0][1], other[1]):
                    raise DatasetError(
                        f"{what}s {given[0][0]!r} and {other[0]!r} give their {key} as {_kind_text(given[0][1])} "
                        f"and as {_kind_text(other[1])}: LLaMA-Factory's merge of the converted datasets raises ('The "
                        f"features can't be aligned' on _{key}) and the run stops before step 1")
            unprompted = [name for name, p in prepared.items() if p.prompted is False]
            if unprompted and any(p.prompted for p in prepared.values()):
                raise DatasetError(
                    f"{what} {unprompted[0]!r}: no row has a prompt after LLaMA-Factory's converter (each is skipped, "
                    "or a ranking row without chosen / rejected turn objects read as one answer to its one user "
                    "turn), so datasets types its converted `_prompt` as a list of nulls, which cannot be merged "
                    "with the other datasets' prompts: LLaMA-Factory's merge raises ('The features can't be "
                    "aligned') and the run stops before step 1")
            none = [name for name, a in answered if a is False]
            if none and any(a for _, a in answered):
                raise DatasetError(
                    f"{what} {none[0]!r}: no row has an answer (every row is unsupervised or skipped), so datasets "
                    f"types its converted `_response` as a list of nulls, which cannot be merged with the other "
                    f"datasets' answers: LLaMA-Factory's merge raises ('The features can't be aligned') and the run "
                    "stops before step 1")
        names = list(prepared)
        for group in ([names] if merged else [[name] for name in names]):
            if group and all(prepared[name].kept is False for name in group):
                listed = ", ".join(repr(name) for name in group)
                if all(prepared[name].answered is False for name in group):
                    why = "none has an answer"
                else:
                    first = prepared[group[0]]
                    why = f"{sum(prepared[n].rows for n in group):,} rows; {first.origin}: {first.reason}"
                what = f"{what}s" if len(group) > 1 else what
                raise DatasetError(f"{what} {listed}: every row is dropped ({why}), so LLaMA-Factory raises "
                                   "('Cannot find valid samples') and the run stops before step 1")

    def _media_kind(self, attr: DatasetAttr, key: str) -> Any:
        """How ``datasets`` types the items of the converted dataset's ``_images`` (``_videos``, ``_audios``:
        ``key``), inferred from every row's values as its ``map`` infers them (hfjson.json_type: "str" for paths,
        a dict of field types for structs of bytes and path), or the feature a Parquet or Arrow file's metadata gives
        the column (``Image``: the values are decoded); UNKNOWN_KIND where vlmcheck does not say; None when no row
        has one (a column of nulls aligns with any)."""
        column = attr.columns.get(key)
        if not column:
            return None
        files = dataset_files(self.config, attr)
        loader = builder(files[0])
        schema = next(table_schemas(files[0], loader), None) if loader in ("parquet", "arrow") else None
        feature = column_feature(schema, column) if schema is not None else None
        kind: Any = None
        for row in iter_rows(files):
            value = row.get(column) if isinstance(row, Mapping) else None
            if value is None or value == []:  # _find_medias: no media
                continue
            if feature is not None:
                return f"an {feature} feature"
            try:
                for item in value if isinstance(value, list) else [value]:
                    kind = unify_types(kind, json_type(item, column), column)
            except (TypeClash, RecursionError):
                return UNKNOWN_KIND
            if kind == "str":  # paths: one type for the whole table (a struct elsewhere fails the load first)
                return kind
        return kind

    def _prepared(self, attr: DatasetAttr, chosen: list[int] | None, split: str) -> Prepared:
        """What LLaMA-Factory's converter and dataset processor make of the dataset's rows (as the run selects them),
        read until the first row the processor keeps (see :class:`Prepared`)."""
        answered = prompted = False
        rows, first = 0, None
        for row, origin in self._dataset_rows(attr, chosen, split):
            rows += 1
            if isinstance(row, BadRow):
                return Prepared(answered or None, prompted or None, None, rows)
            try:
                (convert_feedback if self.config.feedback else convert_supervised)(
                    self._as_loaded(row, attr, origin.row), attr, self.config)
            except Dropped as e:
                answered, prompted = answered or not e.unanswered, prompted or e.prompted
                first = first or (origin, str(e))
                continue
            except (Stops, NotCounted):
                return Prepared(answered or None, prompted or None, None, rows)
            except Exception:  # a shape the judge reports on the row itself
                return Prepared(answered or None, prompted or None, None, rows)
            # packing: PackedSupervisedDatasetProcessor drops a sample longer than cutoff_len after the cut
            survives, why = self._survives(row, origin) if self.config.packing else (True, "")
            if survives is not False:
                return Prepared(True, True, survives, rows)
            answered = prompted = True
            first = first or (origin, why)
        if not rows:
            return Prepared(None, None, None, 0)
        where = f"row {first[0].row} of {first[0].attr.name!r}" if first else ""
        return Prepared(answered, prompted, False, rows, where, first[1] if first else "")

    def _survives(self, row: Any, origin: Origin) -> tuple[bool | None, str]:
        """Whether the packing processor keeps the converted row, judged as it will be (no preview: those are left
        to that judgement), and why not: None where vlmcheck does not count it, True where the run stops on it (the
        row's own verdict says so)."""
        previews = self.previews
        self.previews = Previewer(local_path=previews.local_path, exif_transpose=False, max_length=None,
                                  truncation=NAME, per_code=0)
        try:
            result = self.judge(0, row, origin)
        finally:
            self.previews = previews
        verdict = (result.framework or {}).get("verdict")
        why = next((f.message for f in result.findings if f.code == "VC204"), "")
        return (None if verdict == "unknown" else verdict != "dropped"), why

    def _interleaved(self, sources: list[tuple[DatasetAttr, list[int] | None]], split: str
                     ) -> Iterator[tuple[Any, Origin]]:
        """The datasets' rows in ``merge_dataset``'s interleaved order, each source read again from its start
        whenever the order wraps around it (oversampling)."""
        lengths = []
        for attr, chosen in sources:
            loaded = len(chosen) if chosen is not None else self._loaded_rows(attr)
            if loaded is None:  # datasets cannot load it: the run stops before the merge; judge the rows as read
                for a, c in sources:
                    yield from self._dataset_rows(a, c, split)
                return
            limit = self.config.max_samples
            lengths.append(loaded if limit is None else min(loaded, max(limit, 0)))
        strategy = MIX_STRATEGIES[self.config.mix_strategy] or "first_exhausted"
        if 0 in lengths and (strategy != "first_exhausted" or self.config.interleave_probs is not None):
            empty = sources[lengths.index(0)][0].name
            raise DatasetError(f"dataset {empty!r} has no rows: datasets' interleaving of an empty dataset (which "
                               "then takes rows of its neighbour) is not modelled by vlmcheck")
        probs = self.config.interleave_probs
        if probs is not None and len(probs) != len(sources):
            raise DatasetError(f"{len(sources)} distinct datasets for {len(probs)} "
                               "interleave_probs: numpy raises ('a and p must have same size') and the run stops")
        if probs is not None and strategy == "all_exhausted" and 0 in probs:
            never = sources[probs.index(0)][0].name
            raise DatasetError(f"interleave_over with probability 0 for dataset {never!r}: it is never drawn, so never "
                               "exhausted, and datasets' interleaving never ends (LLaMA-Factory hangs before step 1)")
        readers: list[Iterator[tuple[Any, Origin]] | None] = [None] * len(sources)
        read = [0] * len(sources)
        total = 0
        for k in interleaved_sources(lengths, strategy, self.config.interleave_probs, self.config.seed):
            total += 1
            if total > MAX_DRAWN_ROWS:
                raise DatasetError(f"mix_strategy {self.config.mix_strategy} makes more than {MAX_DRAWN_ROWS:,} "
                                   "rows, more than vlmcheck judges")
            reader = readers[k]
            if reader is None or read[k] >= lengths[k]:
                reader = readers[k] = self._dataset_rows(*sources[k], split)
                read[k] = 0
            read[k] += 1
            yield next(reader)

    def _same_columns(self, attr: DatasetAttr) -> None:
        """``datasets`` loads each file of a folder dataset as a table of its own and casts the later ones to the
        first one's columns: a later JSON file may lack some (nulls), but one with a column the first lacks fails the
        load (hfjson.json_columns_problem). The tables of the other builders (Parquet, Arrow, CSV: each chunk of
        10,000 rows) are cast to the first one's types too (hfjson.tables_problem). Where that fails the run stops
        before step 1, and where it depends on which file ``os.listdir`` lists first, which differs between machines,
        the check is refused naming the two files."""
        files = dataset_files(self.config, attr)
        kind = builder(files[0])
        if (len(files) < 2 and kind != "csv") or attr.name in self._checked:
            return
        self._checked.add(attr.name)
        if kind in ("parquet", "arrow", "csv", "json"):
            try:
                if kind == "json":
                    json_columns_problem(files)
                else:
                    tables = [(f.name, list(table_schemas(f, kind))) for f in files]
                    if sum(len(t) for _, t in tables) < 2:
                        return
                    tables_problem(tables)
            except TypeClash as e:
                raise DatasetError(f"dataset {attr.name!r}, {e}: datasets cannot load the files, so LLaMA-Factory's "
                                   "loader raises (DatasetGenerationError) and the run stops before step 1") from None
            except ListingOrder as e:
                raise DatasetError(
                    f"dataset {attr.name!r}: whether LLaMA-Factory can load {attr.file_name} depends on the order "
                    f"os.listdir lists its files, which differs between machines and file systems: {e}. vlmcheck "
                    "does not guess: give every file the same columns and types (or merge them into one)") from None

    def _shards(self, attr: DatasetAttr) -> None:
        """_load_single_dataset streams a local dataset as to_iterable_dataset(num_shards=dataloader_num_workers),
        which raises for more shards than rows: the run stops before step 1."""
        loaded = self._loaded_rows(attr)
        if loaded is not None and loaded < self.config.stream_shards:
            raise DatasetError(f"dataset {attr.name!r}: {loaded} rows streamed in dataloader_num_workers="
                               f"{self.config.stream_shards} shards: datasets raises ('Unable to shard a dataset of "
                               f"size {loaded} into {self.config.stream_shards} shards') and the run stops before "
                               "step 1")

    def _same_types(self, attr: DatasetAttr) -> None:
        """A JSON dataset's rows must give each column one type datasets can infer (see json_type): else its loader
        raises and the run stops before step 1."""
        files = dataset_files(self.config, attr)
        if attr.name in self._typed or builder(files[0]) != "json":
            return
        self._typed.add(attr.name)
        plan = LoadPlan()
        try:
            self._schemas[attr.name] = json_schema(files, plan=plan)
            self._plans[attr.name] = plan
        except RecursionError:  # nested past what vlmcheck follows: not judged here
            return
        except TypeClash as e:
            raise DatasetError(f"dataset {attr.name!r}, {e}: datasets cannot load the file, so LLaMA-Factory's "
                               "loader raises (DatasetGenerationError) and the run stops before step 1") from None

    def _loaded_rows(self, attr: DatasetAttr) -> int | None:
        """How many rows ``datasets`` loads from the dataset's files (its ``split``); None when one cannot be read
        (the load fails: the rows are judged as read, and the first bad one stops the run)."""
        count = self._file_rows(attr)
        if count is None:
            return None
        positions = self._split_positions(attr)
        return count if positions is None else len(positions)

    def _file_rows(self, attr: DatasetAttr) -> int | None:
        """How many rows the dataset's files hold; None when one cannot be read."""
        count = 0
        for row in iter_rows(dataset_files(self.config, attr)):
            if isinstance(row, BadRow):
                return None
            count += 1
        return count

    def _split_positions(self, attr: DatasetAttr) -> list[int] | None:
        """The file rows the dataset's ``split`` keeps, in order (split_positions); None: every row."""
        if attr.split == "train":
            return None
        if self.config.streaming:
            raise UsageError(f"dataset {attr.name!r}: split {attr.split!r} while streaming is not modelled by vlmcheck")
        if attr.name not in self._splits:
            total = self._file_rows(attr)
            if total is None:  # the load fails before the split: the rows are judged as read
                return None
            self._splits[attr.name] = split_positions(attr.split, total, f"dataset {attr.name!r}")
        return self._splits[attr.name]

    def _dataset_rows(self, attr: DatasetAttr, chosen: list[int] | None, split: str) -> Iterator[tuple[Any, Origin]]:
        limit = self.config.max_samples
        positions = self._split_positions(attr)
        if positions is not None:  # the drawn rows are places in the split's rows
            chosen = positions if chosen is None else [positions[k] for k in chosen]
        if chosen is None:
            for number, row in enumerate(iter_rows(dataset_files(self.config, attr))):
                if limit is not None and number >= limit:
                    return
                yield row, Origin(attr, number, split)
            return
        chosen = chosen if limit is None else chosen[:max(limit, 0)]
        wanted = set(chosen)
        held = {n: row for n, row in enumerate(iter_rows(dataset_files(self.config, attr))) if n in wanted}
        for number in chosen:
            yield held[number], Origin(attr, number, split)

    def shown_settings(self) -> Any:
        """The processor settings with LLaMA-Factory's pre-scaling, for the report header."""
        if hasattr(self.settings, "pre_max_pixels"):
            return replace(self.settings, resize="prescale", pre_max_pixels=self.config.image_max_pixels,
                           pre_min_pixels=self.config.image_min_pixels)
        return self.settings

    def describe(self) -> dict[str, Any]:
        """The settings the verdicts rest on, for the report."""
        cfg = self.config
        return {
            "name": NAME, "versions": VERSIONS, "config": str(cfg.path), "stage": cfg.stage,
            "template": cfg.template.name,
            "datasets": [a.name for a in self.attrs], "cutoff_len": cfg.cutoff_len, "mix_strategy": cfg.mix_strategy,
            **({"interleave_probs": list(cfg.interleave_probs)} if cfg.interleave_probs is not None else {}),
            **({"eval_datasets": [a.name for a in self.eval_attrs]} if self.eval_attrs else {}),
            "image_max_pixels": cfg.image_max_pixels, "image_min_pixels": cfg.image_min_pixels,
            "dataset_dir": str(cfg.dataset_dir), "media_dir": str(cfg.media_dir), "packing": cfg.packing,
            "train_on_prompt": cfg.train_on_prompt, "mask_history": cfg.mask_history,
            "enable_thinking": cfg.enable_thinking, "length_key": self.length_key, "pixels_key": self.pixels_key,
        }

    # -- images -----------------------------------------------------------------------------------------------
    def _size(self, image: Any) -> tuple[int, int]:
        """The stored (width, height): LLaMA-Factory opens images with ``Image.open``, no EXIF rotation."""
        if isinstance(image, Mapping):  # _regularize_images: image["bytes"], else image["path"]
            for key in ("bytes", "path"):
                if key not in image:
                    raise ImageProblem("VC102", f"an image object without a {key!r} field (no row of the dataset has "
                                                f"one): LLaMA-Factory raises KeyError reading it")
                if key == "bytes" and image["bytes"] is not None:
                    data = image["bytes"]
                    if not isinstance(data, (bytes, bytearray, memoryview)):  # Image.open(BytesIO(data)) raises
                        held = "text (base64 left encoded?)" if isinstance(data, str) else f"a {type(data).__name__}"
                        raise ImageProblem("VC102", f"an image object whose 'bytes' field holds {held}, not bytes: "
                                                    f"LLaMA-Factory's Image.open(BytesIO(image['bytes'])) raises "
                                                    f"TypeError; store the decoded bytes, or give the image as a path")
                    return probe_bytes(bytes(data)).size(exif_transpose=False)
            if not image["path"]:
                raise ImageProblem("VC101", "an image struct with neither bytes nor a path")
            image = image["path"]
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=False)
        if not isinstance(image, str):
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which LLaMA-Factory cannot open")
        if image.startswith(("http://", "https://", "s3://", "gs://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        return probe_path(Path(image)).size(exif_transpose=False)

    def image_tokens(self, sizes: list[tuple[int, int]], config: Config) -> list[int]:
        return [e.features for e in self.expansions(sizes, config)]

    # -- videos (the Qwen2-VL plugin) -------------------------------------------------------------------------
    def _probe_video(self, video: Any) -> VideoInfo | FrameList:
        if isinstance(video, list):
            return self._probe_frames(video)
        if not isinstance(video, str):
            raise VideoProblem("VC114", f"a video given as {type(video).__name__} is not counted by vlmcheck yet")
        if video.startswith(("http://", "https://", "s3://", "gs://")):
            raise VideoProblem("VC111", f"remote video {video} is not downloaded by vlmcheck")
        return probe_video_path(Path(video))

    def _probe_frames(self, video: list[Any]) -> FrameList:
        """A video given as a list of frame images (mm_plugin ``_check_video_is_nested_images``: a list of paths).
        ``_regularize_videos`` raises ValueError('Invalid image found in video frames.') on a path
        ``os.path.exists`` denies (a remote one too), then ``Image.open``s each frame; sizes from the headers."""
        odd = next((frame for frame in video if not isinstance(frame, str)), None)
        if not video or odd is not None:
            what = "no frame" if not video else f"frames given as {type(odd).__name__}"
            raise VideoProblem("VC114", f"a video given as a list of {what} is not counted by vlmcheck yet")
        if len(video) > MAX_COUNTED_FRAMES:
            raise VideoProblem("VC114", f"a list of {len(video):,} frames: more than vlmcheck counts "
                                        f"({MAX_COUNTED_FRAMES:,})")
        sizes = []
        for k, frame in enumerate(video, 1):
            where = f"frame {k} of {len(video)} ({frame[:120]})"
            if not os.path.exists(frame):  # False for a NUL byte, a remote URL, a path too long
                raise VideoProblem("VC111", f"{where} does not exist: LLaMA-Factory's _regularize_videos raises "
                                            "'Invalid image found in video frames.'")
            try:
                sizes.append(self._size(frame))
            except ImageProblem as p:
                raise VideoProblem("VC112", f"{where}: {p.message}") from None
        return FrameList(tuple(sizes))

    def video_count(self, info: VideoInfo | FrameList, *, decoded: bool = False) -> VideoCount:
        """One video: its frame groups and tokens per group on ``process_messages``' path, its features on the
        collator's (the frames of :func:`sampled_frames` at :func:`frame_size`, through the checkpoint's video
        processor, which gets LLaMA-Factory's frames as they are: no sampling of its own, no display rotation).

        A list of frames is taken as sampled already (``_regularize_videos``): every frame, whatever video_fps and
        video_maxlen say, the last repeated to an even count, each pre-scaled as an image; Qwen3-VL's timestamps
        are frame indices 0 .. n-1 at video_fps. ``process_messages``' shortcut (stream metadata) returns None
        for a list, so the whole row is counted on the collator's path (``decoded``: a video file's text counts
        the frames decoded)."""
        family, settings = self.family, self.settings
        plugin = self.config.template.plugin
        if not isinstance(family, VideoFamily) or not isinstance(settings, QwenVLSettings) or settings.video is None:
            raise VideoProblem("VC114", f"{family.name} videos are not counted under LLaMA-Factory")
        if settings.video.do_sample_frames and not plugin.video_timestamps:
            # Qwen2VLPlugin calls the video processor without do_sample_frames (Qwen3VLPlugin passes False)
            raise VideoProblem("VC114", "the checkpoint's video processor samples frames itself (do_sample_frames), "
                                        "on top of LLaMA-Factory's sampling: not counted by vlmcheck yet")
        times: list[float] = []  # Qwen3-VL: each frame's index in video_fps units (frames_indices)
        if isinstance(info, FrameList):
            width, height = self._frame_list_size(info)
            fps: float | None = self.config.video_fps  # fps_per_video: video_fps
            n = len(info.sizes)
            indices, frames, times = list(range(n)), n, [float(i) for i in range(n)]
            decoded = True
        else:
            try:
                width, height = frame_size(*info.size(apply_rotation=False), self.config)
            except ImageRefused as e:
                raise VideoProblem("VC115", f"its frames: {e}") from None
            fps = info.fps
        plain = replace(settings, video=replace(settings.video, resize="processor", cap_pixels_per_frame=False,
                                                do_sample_frames=False))
        factor = settings.video.factor
        if plugin.video_timestamps and min(width, height) < factor:
            # LLaMA-Factory 0.9.5 accepts transformers <= 5.6, whose Qwen3-VL video smart_resize raises on a side
            # under the factor (later versions scale it up)
            raise VideoProblem("VC115", f"frames of {width}x{height} after LLaMA-Factory's pre-scaling: the Qwen3-VL "
                                        f"video resize raises 'height:{height} or width:{width} must be larger than "
                                        f"factor:{factor}' (transformers <= 5.6, which LLaMA-Factory 0.9.5 needs)")
        if isinstance(info, VideoInfo):
            indices, frames = sampled_frames(info, self.config)
            if info.fps:
                # frames_indices = idx / average_fps * video_fps ("hack usage")
                times = [i / info.fps * self.config.video_fps for i in indices]

        def runs(n: int) -> tuple[int, ...]:  # the processor's runs for n frames (made even): per frame group
            return family.expand_video(VideoInfo(width, height, n + n % 2, fps, None), plain, {}).runs

        # on the collator's path the text is counted from the frames decoded, else from the indices
        text = runs(frames if decoded else len(indices))
        per_group = sum(text) // len(text) if plugin.video_timestamps else sum(text)
        stamps: tuple[float, ...] = ()
        if plugin.video_timestamps and times:
            # the processor's _calculate_timestamps(frames_indices, video_fps, merge_size): last index repeated
            # to a whole group, each group the mean of its first and last time
            fps = self.config.video_fps
            merge = plain.video.merge_size if plain.video else 2
            times += [times[-1]] * (-len(times) % merge)
            seconds = [t / fps for t in times]
            stamps = tuple((seconds[i] + seconds[i + merge - 1]) / 2 for i in range(0, len(seconds), merge))
        return VideoCount(groups=len(text) if plugin.video_timestamps else 1, per_group=per_group,
                          features=sum(runs(frames)), stamps=stamps)

    def _frame_list_size(self, info: FrameList) -> tuple[int, int]:
        """The one (width, height) of a frame list's frames after LLaMA-Factory's pre-scaling (each frame an image
        of the video budgets); frames of different sizes there make the video processor's ``np.stack`` raise."""
        sizes: dict[tuple[int, int], int] = {}
        for k, stored in enumerate(info.sizes, 1):
            try:
                sizes.setdefault(frame_size(*stored, self.config), k)
            except ImageRefused as e:
                raise VideoProblem("VC115", f"frame {k}: {e}") from None
        if len(sizes) > 1:
            (a, j), (b, k) = list(sizes.items())[:2]
            raise VideoProblem("VC115", f"frame {j} is {a[0]}x{a[1]} after LLaMA-Factory's pre-scaling and frame {k} "
                                        f"{b[0]}x{b[1]}: the video processor stacks the frames (np.stack) and raises "
                                        "'all input arrays must have the same shape'")
        return next(iter(sizes))

    def expansions(self, sizes: list[tuple[int, int]], config: Config) -> list[Expansion]:
        """What each ``<image>`` becomes after LLaMA-Factory's pre-scaling: the Qwen-VL plugins' wrapped pad, or the
        text the family's processor writes (its runs of image tokens: Gemma 3's pan-and-scan crops)."""
        plugin = config.template.plugin
        out = []
        for w, h in sizes:
            size = image_size(w, h, config)
            if plugin.wrapped:
                text = f"{plugin.vision_bos}{plugin.image_token}{plugin.vision_eos}"
                out.append(Expansion(text, (self.family.image_tokens(*size, self.settings),)))
            elif plugin is PIXTRAL_PLUGIN and isinstance(self.settings, pixtral.PixtralSettings):
                out.append(pixtral_expansion(*pixtral_grid(*size, self.settings)))
            else:
                out.append(self.family.expand(*size, self.settings))
        return out

    def _build(self, example: Example, sizes: list[tuple[int, int]], config: Config,
               found: list[F.Finding], videos: Sequence[tuple[str, tuple[int, ...]]] = ()
               ) -> tuple[list[Expansion], Encoded | None]:
        """The sample's turns with each image and video (``videos``: its text, one video token per run, and its
        runs) expanded; in ``image_of`` image k is owner k and video j owner len(sizes) + j."""
        expansions = self.expansions(sizes, config)
        if example.kl is not None:  # a KTO row: the target and the KL sequence, each cut on its own
            target = self._encode_example(example, expansions, config, found, videos)
            kl = None if target is None else self._encode_example(
                replace(example, messages=example.kl_messages, kl=None), expansions, config, found, videos)
            if target is None or kl is None:
                return expansions, None
            eos = self.eos_id if config.template.efficient_eos else None
            image_id = -1 if self.pad_id is None else self.pad_id
            return expansions, replace(oneturn(target, eos=eos, image_id=image_id),
                                       kl=oneturn(kl, eos=eos, image_id=image_id))
        if example.rejected is not None:  # a ranking row: both sequences, then the pairwise processor's shape
            chosen = self._encode_example(example, expansions, config, found, videos)
            if chosen is None:
                return expansions, None
            rejected = self._encode_example(replace(example, messages=example.rejected_messages, rejected=None),
                                            expansions, config, found, videos)
            if rejected is None:
                return expansions, None
            eos = self.eos_id if config.template.efficient_eos else None
            return expansions, pairwise(chosen, rejected, eos=eos, image_id=-1 if self.pad_id is None else self.pad_id)
        encoded = self._encode_example(example, expansions, config, found, videos)
        if encoded is not None and config.template.efficient_eos:
            encoded.suffix = 1
        return expansions, encoded

    def _encode_example(self, example: Example, expansions: list[Expansion], config: Config,
                        found: list[F.Finding], videos: Sequence[tuple[str, tuple[int, ...]]]) -> Encoded | None:
        if config.template.plugin.prefix_images:  # the placeholders are removed, the tokens go before the turns
            turns = format_turns(example, config, images=[""] * len(expansions), bos=self.bos_id, eos=self.eos_id)
            encoded = self._encode(turns, [], found, images=len(expansions))
            if encoded is not None:
                encoded.prefix = [k for k, e in enumerate(expansions) for _ in range(e.features)]
            return encoded
        plugin = config.template.plugin
        turns = format_turns(example, config, images=[self._marked(e.text, plugin.image_token) for e in expansions],
                             bos=self.bos_id, eos=self.eos_id,
                             videos=[self._marked(text, plugin.video_token) for text, _ in videos])
        runs = [(k, n) for k, e in enumerate(expansions) for n in e.runs]
        video_runs = [(len(expansions) + j, n) for j, (_, video) in enumerate(videos) for n in video]
        return self._encode(turns, runs, found, images=len(expansions), video_runs=video_runs)

    def _marked(self, text: str, token: str) -> str:
        """An expansion's text with the media token written as its stand-in (see _run_tokenizer)."""
        return text.replace(token, IMAGE_MARK if token == self.config.template.plugin.image_token else VIDEO_MARK) \
            if token and token in self.marks else text

    # -- one row ----------------------------------------------------------------------------------------------
    def _as_loaded(self, row: Any, attr: DatasetAttr, number: int = 0) -> Any:
        """The row (``number`` over the dataset's files) as LLaMA-Factory sees it after ``datasets.load_dataset``:
        one table per dataset, so a key that this row lacks but other rows have is there as None (a key no row has
        is missing: KeyError, the run stops), an object of a media column holds every field other rows' objects
        have (None where it lacks one), and a field pyarrow types as a timestamp (hfjson.DATE) holds datetimes
        (cast to text past the first 10 MiB where that chunk's are text)."""
        if not isinstance(row, Mapping):
            return row
        plan = self._plans.get(attr.name)
        if plan:  # ISO-date fields (under datasets 4.0.0 nothing else changes a value)
            row = as_loaded(row, plan, plan.place(number), timestamps=True)
            if isinstance(row, NotFollowed):
                raise NotCounted(f"{row.reason}, which vlmcheck does not follow: the row is not counted")
        schema = self._schemas.get(attr.name)
        if isinstance(schema, dict):
            for key in ("images", "videos", "audios"):
                column = attr.columns.get(key)
                kind = schema.get(column) if column else None
                fields = kind[1] if isinstance(kind, tuple) else kind
                value = row.get(column) if column else None
                if isinstance(fields, dict) and value is not None:
                    items = [{**{f: None for f in fields}, **v} if isinstance(v, Mapping) else v
                             for v in (value if isinstance(value, list) else [value])]
                    row = {**row, column: items if isinstance(value, list) else items[0]}
            if attr.formatting == "openai":  # the turns' tool_calls and a list / object tools column are dumped
                # back to JSON text: every field as the table types it (see _as_typed)
                columns = tuple(c for c in (attr.columns.get("messages"), attr.columns.get("tools")) if c)
                files = tuple((str(f), f.stat().st_mtime_ns) for f in dataset_files(self.config, attr))
                kinds = _table_kinds_of(files, columns)
                typed = copy.copy(row)
                for column in columns:
                    if column in kinds and row.get(column) is not None:
                        typed[column] = _as_typed(row[column], kinds[column])
                row = typed
        missing = [key for key in attr.columns.values() if key and key not in row]
        if not missing:
            return row
        if attr.name not in self._keys and isinstance(schema, dict):  # the columns of the load: known already
            self._keys[attr.name] = set(schema)
        if attr.name not in self._keys:
            keys: set[str] = set()
            for other in iter_rows(dataset_files(self.config, attr)):
                if isinstance(other, Mapping):
                    keys.update(other)
            self._keys[attr.name] = keys
        filled = {key: None for key in missing if key in self._keys[attr.name]}
        return {**row, **filled} if filled else row

    def frame(self, index: int, origin: Origin) -> dict[str, Any]:
        """Where the row comes from, for its verdict record (also when judging it raises unexpectedly)."""
        frame: dict[str, Any] = {"name": NAME, "dataset": origin.attr.name, "row": origin.row}
        if origin.split != "train":
            frame["split"] = origin.split
        return frame

    def judge(self, index: int, row: Any, origin: Origin) -> SampleResult:
        attr = origin.attr
        result = SampleResult(index=index, id=f"{attr.name}:{index}", tokens=None, image_tokens=[],
                              supervised_tokens=None)
        found = result.findings
        frame: dict[str, Any] = {**self.frame(index, origin), "verdict": "ok"}
        result.framework = frame
        if isinstance(row, BadRow):
            found.append(F.make("VC001", f"{row.reason}; LLaMA-Factory's loader fails on the file"))
            frame["verdict"] = "stops"
            return result
        if isinstance(row, Mapping) and isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        try:
            loaded = self._as_loaded(row, attr, origin.row)
            example = (convert_feedback if self.config.feedback else convert_supervised)(loaded, attr, self.config)
            if self.config.feedback:  # after the drop: preprocess_dataset skips an invalid row before its KL
                example.kl = self._kl_answer(origin)
        except Dropped as e:
            found.append(F.make("VC006", f"LLaMA-Factory skips this row: {e}"))
            frame["verdict"] = "dropped"
            return result
        except NotCounted as e:
            found.append(F.make("VC007", str(e)))
            frame["verdict"] = "unknown"
            return result
        except Stops as e:
            found.append(F.make("VC001", f"{e}; LLaMA-Factory stops while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        except (TypeError, ValueError, AttributeError) as e:  # a value of a shape no converter step expects
            found.append(F.make("VC001", f"the row cannot be converted ({type(e).__name__}: {str(e)[:200]}); "
                                         "LLaMA-Factory raises on it while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        if isinstance(loaded, Rewritten) and loaded.surrogates:
            found.append(F.make("VC008", f"datasets returns this row's {', '.join(loaded.surrogates)} without the "
                                         "lone UTF-16 surrogate escape the file writes (ujson, its JSON array "
                                         "reader, drops it): LLaMA-Factory trains on what datasets returns, and "
                                         "vlmcheck counted that", fields=loaded.surrogates,
                                fix="Write the character whole (both halves of the pair, or the character "
                                    "itself), or remove the stray escape."))
        plugin = self.config.template.plugin
        invalid = self._refused_media(example, plugin)
        if invalid is None and example.rejected is not None:  # process_messages runs on each sequence
            invalid = self._refused_media(replace(example, messages=example.rejected_messages), plugin)
        if invalid is None and example.kl is not None:  # and on a KTO row's KL sequence
            invalid = self._refused_media(replace(example, messages=example.kl_messages), plugin)
        if invalid is not None:
            found.append(invalid)
            frame["verdict"] = "stops"
            return result
        if example.videos and not plugin.counts_videos:
            found.append(F.make("VC114", f"videos under LLaMA-Factory's {plugin.name} plugin are not counted by "
                                         "vlmcheck yet"))
            frame["verdict"] = "unknown"
            return result
        if self.config.pan_and_scan and example.images:
            found.append(F.make("VC001", f"{PAN_AND_SCAN_RAISES}: the run stops while preparing the dataset",
                                fix="set image_do_pan_and_scan: false"))
            frame["verdict"] = "stops"
            return result
        sizes: list[tuple[int, int]] = []
        for k, image in enumerate(example.images, 1):
            label = f"image {k} of {len(example.images)} ({str(image)[:120] if isinstance(image, str) else 'bytes'})"
            try:
                size = self._size(image)
                image_size(*size, self.config)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                continue
            except (OSError, ValueError) as e:  # a path the OS refuses (NUL byte, too long, a loop)
                found.append(F.make("VC102", f"{label}: cannot be opened: {str(e)[:200]}", image=k))
                continue
            except ImageRefused as e:
                found.append(F.make("VC107", f"{label}: {e}", image=k))
                continue
            refused = [i for i in self.family.check_image(*image_size(*size, self.config), self.settings)
                       if i.code == "VC107"]
            if refused:  # the model's image processor raises on the pre-scaled image inside datasets.map
                found.append(F.make("VC107", f"{label}: after LLaMA-Factory's pre-scaling, {refused[0].message}",
                                    image=k, **refused[0].data))
                continue
            if self.config.template.plugin is PIXTRAL_PLUGIN and isinstance(self.settings, pixtral.PixtralSettings):
                try:
                    pixtral_grid(*image_size(*size, self.config), self.settings)
                except ImageRefused as e:
                    found.append(F.make("VC107", f"{label}: {e}", image=k))
                    continue
            sizes.append(size)
        if len(sizes) != len(example.images):
            # LLaMA-Factory's Image.open / resize raise inside datasets.map; where the plugin's text does not depend
            # on the image, it is first opened by the collator, at the training step that reaches the row
            frame["verdict"] = "stops" if self.config.template.plugin.opens_images else "crash"
            result.image_tokens = [None] * len(example.images)
            if self.previews.wants(result):  # (preview: hook)
                result.preview = self.previews.make(result, images=image_refs(example.images))
            return result
        video_counts = self._videos(example, found)
        if video_counts is None:
            frame["verdict"] = "unknown" if {f.code for f in found} == {"VC114"} else "stops"
            result.image_tokens = [None] * len(example.images)
            result.video_tokens = [None] * len(example.videos)
            return result
        try:
            video_texts = self._video_texts(example, video_counts)
        except Stops as e:
            found.append(F.make("VC001", f"{e}; LLaMA-Factory stops while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        videos = [sum(runs) for _, runs in video_texts]
        try:
            expansions, encoded = self._build(example, sizes, self.config, found, video_texts)
        except Stops as e:  # a tools value or a function call LLaMA-Factory's formatters cannot read
            found.append(F.make("VC001", f"{e}; LLaMA-Factory stops while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        counts = [e.features for e in expansions] + videos
        result.image_tokens = list[int | None](counts[:len(expansions)])
        result.video_tokens = list[int | None](videos)
        if encoded is None:
            frame["verdict"] = "stops"
            return result
        full = truncate(encoded, replace(self.config, cutoff_len=encoded.total + 1), images=len(counts))
        result.tokens = encoded.total
        result.supervised_tokens = full.labels
        result.text_only_tokens = encoded.total - sum(counts)
        cut = truncate(encoded, self.config, images=len(counts))
        frame.update(kept_tokens=cut.tokens, kept_supervised=cut.labels,
                     kept_image_tokens=cut.image_tokens_kept[:len(expansions)])
        if cut.literal_images or cut.literal_videos:  # media tokens the row's own text holds, kept by the cut
            frame.update(kept_literal_image_tokens=cut.literal_images, kept_literal_video_tokens=cut.literal_videos)
        if encoded.rival is not None:  # a ranking row: the counts above are the chosen sequence's
            prompt, rival = len(encoded.turns[0]), len(encoded.rival)
            frame["pair"] = {"chosen_tokens": prompt + len(encoded.turns[1]), "rejected_tokens": prompt + rival,
                             "kept_rejected_supervised": min(cut.tokens - cut.kept_per_turn[0], rival)}
        if videos:
            frame["kept_video_tokens"] = cut.image_tokens_kept[len(expansions):]
            frame["video_features"] = [c.features for c in video_counts]
            if self.config.template.plugin.video_timestamps:  # the frame groups as written
                frame["video_runs"] = [list(runs) for _, runs in video_texts]
        self._verdict(result, encoded, cut, counts, sizes, example, video_counts, video_texts)
        if encoded.kl is not None:
            frame["kto_tag"] = example.desirable
            self._kl_verdict(result, encoded, counts, len(expansions), origin)
        if result.findings and self.previews.wants(result):  # (preview: hook)
            result.preview = self.previews.make(result, images=image_refs(example.images),
                                                spans=_layout_spans(encoded, full, cut, cutoff=self.config.cutoff_len,
                                                                    first_video=len(expansions)))
        return result

    def _refused_media(self, example: Example, plugin: Plugin) -> F.Finding | None:
        """``process_messages``' checks before anything is tokenized (``_validate_input``: media of a kind the
        template has no token for; ``_validate_messages``: as many placeholders as media, for images, videos and
        audios): each raises, and the run stops."""
        cfg = self.config
        if example.videos and not plugin.takes_videos:
            return F.make("VC001", f"{len(example.videos)} video(s) under template {cfg.template.name}: LLaMA-Factory "
                                   "raises 'This model does not support video input' and the run stops")
        if example.audios:  # no modelled template has an audio token
            return F.make("VC001", f"{len(example.audios)} audio(s) under template {cfg.template.name}: LLaMA-Factory "
                                   "raises 'This model does not support audio input' and the run stops")
        for kind, placeholder, media in (("images", cfg.image_placeholder, example.images),
                                         ("videos", cfg.video_placeholder, example.videos),
                                         ("audios", cfg.audio_placeholder, example.audios)):
            count = sum(content.count(placeholder) for _, content in example.messages)
            if count != len(media):
                data: dict[str, Any] = {"placeholders": count, kind: len(media)}
                return F.make(
                    "VC002", f"{count} {placeholder} placeholder(s) for {len(media)} {kind[:-1]}(s): LLaMA-Factory "
                             f"raises 'The number of {kind} does not match the number of {placeholder} tokens' and "
                             "the run stops", **data)
        return None

    def _videos(self, example: Example, found: list[F.Finding]) -> list[VideoCount] | None:
        """Per video, what the text and the collator make of it; None when one cannot be counted (its finding
        added)."""
        out: list[VideoCount] = []
        probed: list[tuple[int, str, VideoInfo | FrameList]] = []
        for j, video in enumerate(example.videos, 1):
            if isinstance(video, str):
                what = video[:120]
            elif isinstance(video, list) and video and isinstance(video[0], str):
                what = f"{len(video)} frames: {video[0][:100]}, ..."
            else:
                what = "frames"
            label = f"video {j} of {len(example.videos)} ({what})"
            try:
                probed.append((j, label, self._probe_video(video)))
            except VideoProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", video=j, **p.data))
            except (OSError, ValueError) as e:  # a path the OS refuses (NUL byte, too long, a loop)
                found.append(F.make("VC112", f"{label}: cannot be opened: {str(e)[:200]}", video=j))
        # a frame list has no stream metadata: process_messages counts the whole row on the collator's path
        decoded = any(isinstance(info, FrameList) for _, _, info in probed)
        for j, label, info in probed:
            try:
                out.append(self.video_count(info, decoded=decoded))
            except VideoProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", video=j, **p.data))
        return out if len(out) == len(example.videos) else None

    def _video_texts(self, example: Example, counts: list[VideoCount]) -> list[tuple[str, tuple[int, ...]]]:
        """What each ``<video>`` becomes, in placeholder order: the text (one video token per run) and its runs.

        Qwen3VLPlugin.process_messages writes every video with the *first* video's frame-group count
        (``video_grid_thw[0][0]``) and the timestamps of ``video_metadata[i]``, i the index of the message that
        holds the placeholder: a later video with more or fewer frame groups gets tokens that are not its features,
        and a video in a message whose index is past the last video raises IndexError."""
        plugin = self.config.template.plugin
        wrap = f"{plugin.vision_bos}{plugin.video_token}{plugin.vision_eos}"
        if not plugin.video_timestamps:
            return [(wrap, (c.tokens,)) for c in counts]
        first = counts[0].groups if counts else 0
        out: list[tuple[str, tuple[int, ...]]] = []
        for m, (_, content) in enumerate(example.messages):
            for _ in range(content.count(self.config.video_placeholder)):
                if m >= len(counts):
                    raise Stops(f"a video in message {m + 1}: LLaMA-Factory's Qwen3VLPlugin reads the timestamps of "
                                f"video_metadata[{m}] (indexed by message) of {len(counts)} video(s) and raises "
                                "IndexError")
                stamps = counts[m].stamps
                if first > len(stamps):
                    raise Stops(f"LLaMA-Factory's Qwen3VLPlugin writes {first} frame groups (the first video's) with "
                                f"the {len(stamps)} timestamps of video {m + 1} and raises IndexError")
                text = "".join(f"<{stamps[f]:.1f} seconds>{wrap}" for f in range(first))
                out.append((text, (counts[len(out)].per_group,) * first))
        return out

    def _encode(self, turns: list[list[Element]], runs: list[tuple[int, int]], found: list[F.Finding], *,
                images: int, video_runs: Sequence[tuple[int, int]] = ()) -> Encoded | None:
        """Every string element tokenized on its own (``add_special_tokens=False``), id elements kept as they are;
        the k-th image token expanded to the k-th run of features ``runs[k]`` = (owner, length), the j-th video
        token (plugins that count videos) to ``video_runs[j]``."""
        texts = [element for elements in turns for element in elements if isinstance(element, str)]
        # with stand-ins (see _run_tokenizer): a stand-in is an expansion's media token, the token itself a literal one
        plugin = self.config.template.plugin
        unmark: dict[int, int] = {}
        literal: dict[int, tuple[int, int]] = {}
        for token_id, mark_of, owner_kind in ((self.pad_id, plugin.image_token, LITERAL_IMAGE),
                                              (self.video_pad_id, plugin.video_token, LITERAL_VIDEO)):
            if token_id is not None and mark_of in self.marks:
                unmark[self.marks[mark_of]] = token_id
                literal[token_id] = (token_id, owner_kind)
        encoded_texts = iter(self.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else [])
        out_turns: list[list[int]] = []
        image_of: list[list[int]] = []
        k = v = 0
        for elements in turns:
            ids: list[int] = []
            owner: list[int] = []
            for element in elements:
                tokens = next(encoded_texts).ids if isinstance(element, str) else [element]
                for token in tokens:
                    if token in literal:  # the row's own text holds the model's media token
                        ids.append(literal[token][0])
                        owner.append(literal[token][1])
                        continue
                    token = unmark.get(token, token)
                    if self.video_pad_id is not None and token == self.video_pad_id:
                        if v >= len(video_runs):
                            found.append(F.make("VC002", "the text holds a video token of its own beyond the "
                                                         f"{len(video_runs)} video(s): the model sees more video "
                                                         "tokens than features and raises"))
                            return None
                        video, n = video_runs[v]
                        ids += [token] * n
                        owner += [video] * n
                        v += 1
                    elif token == self.pad_id:
                        if k >= len(runs):
                            found.append(F.make("VC002", "the text holds an image token of its own beyond the "
                                                         f"{images} image(s): the model sees more image "
                                                         "tokens than features and raises"))
                            return None
                        image, n = runs[k]
                        ids += [token] * n
                        owner += [image] * n
                        k += 1
                    else:
                        ids.append(token)
                        owner.append(-1)
            out_turns.append(ids)
            image_of.append(owner)
        return Encoded(turns=out_turns, image_of=image_of)

    def _verdict(self, result: SampleResult, encoded: Encoded, cut: Cut, counts: list[int],
                 sizes: list[tuple[int, int]], example: Example,
                 video_counts: Sequence[VideoCount] = (),
                 video_texts: Sequence[tuple[str, tuple[int, ...]]] = ()) -> None:
        config = self.config
        found = result.findings
        frame = result.framework or {}
        total = encoded.total
        cutoff = config.cutoff_len
        n_images = len(counts) - len(video_counts)
        if result.supervised_tokens == 0:
            found.append(F.make("VC003", "no answer tokens to learn from: every label is masked"))
        if config.packing and cut.tokens > cutoff:  # only tokens the cut never takes (PaliGemma's image prefix)
            found.append(F.make("VC204", f"{cut.tokens:,} tokens are left after LLaMA-Factory's cut (its image tokens "
                                         f"go before the turns and are never cut) > cutoff_len={cutoff:,}: with packing "
                                         "it drops the sample ('Dropped lengthy example')",
                                tokens=cut.tokens, max_length=cutoff))
            frame["verdict"] = "dropped"
            return
        plugin = config.template.plugin
        for kind, left, token, media in (("image", cut.literal_images, plugin.image_token, n_images),
                                         ("video", cut.literal_videos, plugin.video_token, len(video_counts))):
            if left:
                found.append(F.make(
                    "VC002", f"the row's text holds {left} {token} of its own (the model's {kind} token written "
                             f"as text, not a placeholder): LLaMA-Factory tokenizes it as a {kind} token, so the model "
                             f"sees {left} more {kind} token(s) than the features of the sample's {media} {kind}(s) "
                             "and raises ('Image features and image tokens do not match')",
                    fix=f"remove {token} from the row's text (LLaMA-Factory expands only {config.image_placeholder} / "
                        f"{config.video_placeholder} placeholders in the messages)",
                    literal_tokens=left))
                frame["verdict"] = "crash"
        for j, (count, (_, runs)) in enumerate(zip(video_counts, video_texts), 1):
            tokens, features = sum(runs), count.features
            if tokens == features:
                continue
            if count.tokens != features:  # its own frames: the stream declares no frame count
                why = (f"its stream declares no frame count, so LLaMA-Factory samples video_maxlen="
                       f"{config.video_maxlen} frame indices for the text but decodes fewer frames")
                fix = "remux the file without fragmentation (ffmpeg -i IN -c copy -movflags +faststart OUT)"
            else:  # Qwen3VLPlugin: the first video's frame-group count
                why = (f"LLaMA-Factory's Qwen3-VL plugin writes every video with the first video's {len(runs)} frame "
                       f"groups, and this one has {count.groups}")
                fix = "keep one video per sample, or give every video of a sample the same sampled frame count"
            found.append(F.make(
                "VC116", f"video {j} of {len(video_counts)}: {tokens:,} video tokens in the text for {features:,} "
                         f"features ({why}): {VIDEO_CRASH}",
                fix=fix + ", or drop the sample", video=j, video_tokens=tokens, features=features))
            frame["verdict"] = "crash"
        if cut.tokens >= total:
            result.fits_max_pixels = config.image_max_pixels  # whole at the current budget
            if encoded.kl is not None and truncate(encoded.kl, config, images=len(counts)).tokens < encoded.kl.total:
                result.fits_max_pixels = self._fit_pixels(sizes, example, video_texts) if sizes else None
            return
        whole = self._whole_cutoff(encoded, counts)
        fits = self._fit_pixels(sizes, example, video_texts) if sizes else None
        result.fits_max_pixels = fits
        cut_images = [k for k, n in enumerate(counts) if cut.image_tokens_kept[k] < n]
        cut_name = f"prompt / answer cut ({config.stage})" if config.oneturn else "per-turn cut"
        for k in cut_images:
            fix = f"set {_setting('cutoff_len', whole)}"
            if k >= n_images:
                j = k - n_images
                found.append(F.make(
                    "VC205",
                    f"video {j + 1} of {len(video_counts)} needs {counts[k]:,} tokens, only "
                    f"{cut.image_tokens_kept[k]:,} survive LLaMA-Factory's {cut_name} at cutoff_len={cutoff:,}; the "
                    f"sample is {total:,} tokens: {VIDEO_CRASH}",
                    fix=fix + ", lower video_fps / video_maxlen / video_max_pixels, or drop the sample",
                    video=j + 1, video_tokens=counts[k], kept=cut.image_tokens_kept[k], tokens=total,
                    max_length=cutoff))
                continue
            if fits is not None:
                fix += f", or {_setting('image_max_pixels', fits)} (the sample then fits whole)"
            found.append(F.make(
                "VC201",
                f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {cut.image_tokens_kept[k]:,} "
                f"survive LLaMA-Factory's {cut_name} at cutoff_len={cutoff:,}; the sample is {total:,} tokens: "
                f"{self.config.template.plugin.cut_effect}",
                fix=fix + ", or drop the sample",
                image=k + 1, image_tokens=counts[k], kept=cut.image_tokens_kept[k], tokens=total, max_length=cutoff))
        if cut_images:
            frame["verdict"] = "crash"
        supervised = result.supervised_tokens or 0
        if supervised and not cut.labels:
            found.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at cutoff_len={cutoff:,} "
                         f"(sample is {total:,} tokens)",
                fix=f"set {_setting('cutoff_len', whole)}, shorten the prompt, or drop the sample",
                supervised=supervised, tokens=total, max_length=cutoff))
        elif not cut_images:
            found.append(F.make(
                "VC203", f"{total:,} tokens > cutoff_len={cutoff:,}: {total - cut.tokens:,} text tokens cut, "
                         f"{supervised - cut.labels:,} of {supervised:,} supervised tokens lost",
                fix=f"set {_setting('cutoff_len', whole)} to keep it whole",
                tokens=total, max_length=cutoff, supervised_lost=supervised - cut.labels))

    def _kl_answer(self, origin: Origin) -> tuple[str, str]:
        """A KTO row's KL answer: the converted answer of its partner in the map batch (see rows)."""
        if origin.partner is None:
            raise NotCounted("a KTO row judged outside Run.rows: the row whose answer its KL sequence borrows is "
                             "not known")
        row, where = origin.partner
        name = f"row {where.row} of {where.attr.name!r}"
        if isinstance(row, BadRow):
            raise Stops(f"its KL sequence borrows the answer of {name}, which LLaMA-Factory's loader cannot read")
        try:
            response = feedback_response(self._as_loaded(row, where.attr, where.row), where.attr, self.config)
        except Stops as e:
            raise Stops(f"its KL sequence borrows the answer of {name}, on which LLaMA-Factory stops: {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise Stops(f"its KL sequence borrows the answer of {name}, which cannot be converted "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
        return kl_turn(response, name)

    def _kl_verdict(self, result: SampleResult, encoded: Encoded, counts: list[int], n_images: int,
                    origin: Origin) -> None:
        """A KTO row's KL sequence (``kl_input_ids``): the same prompt and images with another row's answer, cut by
        its own ``infer_seqlen``. KTODataCollatorWithPadding batches it with the row's images, and the trainer's
        KL forward (after the target's) gives the model the target's pixel values with the KL ids: an image span
        cut there crashes as in the target (VC201 / VC205, or the literal tokens of VC002)."""
        kl = encoded.kl
        assert kl is not None and origin.partner is not None
        config, found = self.config, result.findings
        frame = result.framework if result.framework is not None else {}
        cut = truncate(kl, config, images=len(counts))
        full = truncate(kl, replace(config, cutoff_len=kl.total + 1), images=len(counts))
        where = origin.partner[1]
        frame["kl"] = {"dataset": where.attr.name, "row": where.row, "tokens": kl.total,
                       "supervised_tokens": full.labels, "kept_tokens": cut.tokens, "kept_supervised": cut.labels,
                       "kept_image_tokens": cut.image_tokens_kept[:n_images]}
        if len(counts) > n_images:
            frame["kl"]["kept_video_tokens"] = cut.image_tokens_kept[n_images:]
        name = f"the KL sequence (this prompt with the answer of row {where.row} of {where.attr.name!r})"
        plugin = config.template.plugin
        target = truncate(encoded, config, images=len(counts))
        if (cut.literal_images > target.literal_images) or (cut.literal_videos > target.literal_videos):
            found.append(F.make(
                "VC002", f"{name} holds {cut.literal_images + cut.literal_videos} image / video token(s) written as "
                         f"text ({plugin.image_token}): the model sees more media tokens than features and raises at "
                         "the KL forward ('Image features and image tokens do not match')",
                fix=f"remove {plugin.image_token} from that row's answer", literal_tokens=cut.literal_images))
            frame["verdict"] = "crash"
        cutoff = config.cutoff_len
        cut_here = [k for k, n in enumerate(counts) if cut.image_tokens_kept[k] < n <= target.image_tokens_kept[k]]
        if not cut_here:
            return
        fix = f"set {_setting('cutoff_len', self._whole_cutoff(encoded, counts))}"
        if result.fits_max_pixels is not None:
            fix += f", or {_setting('image_max_pixels', result.fits_max_pixels)} (both sequences then fit whole)"
        for k in cut_here:
            video = k >= n_images
            what = f"video {k - n_images + 1} of {len(counts) - n_images}" if video else f"image {k + 1} of {n_images}"
            effect = VIDEO_CRASH if video else plugin.cut_effect
            found.append(F.make(
                "VC205" if video else "VC201",
                f"{what} needs {counts[k]:,} tokens, only {cut.image_tokens_kept[k]:,} survive LLaMA-Factory's prompt / "
                f"answer cut (kto) of {name} at cutoff_len={cutoff:,} (that sequence is {kl.total:,} tokens; the "
                f"target keeps the image whole); the KL forward runs after the target's at every step that reaches "
                f"the row: {effect}",
                fix=fix + ", or drop the sample",
                **({"video": k - n_images + 1, "video_tokens": counts[k]} if video else
                   {"image": k + 1, "image_tokens": counts[k]}),
                kept=cut.image_tokens_kept[k], tokens=kl.total, max_length=cutoff))
        frame["verdict"] = "crash"

    def _whole_cutoff(self, encoded: Encoded, counts: list[int]) -> int:
        """The smallest cutoff_len that keeps the sample whole (infer_seqlen's float share can cut one token
        of a pair that fits exactly); a KTO row's: both of its sequences."""
        if encoded.kl is not None:
            return max(self._whole_cutoff(replace(encoded, kl=None), counts), self._whole_cutoff(encoded.kl, counts))
        for cutoff in range(encoded.total, encoded.total + 64):
            cut = truncate(encoded, replace(self.config, cutoff_len=cutoff), images=len(counts))
            if cut.tokens >= encoded.total:
                return cutoff
        return encoded.total + 64

    def _fit_pixels(self, sizes: list[tuple[int, int]], example: Example,
                    videos: Sequence[tuple[str, tuple[int, ...]]] = ()) -> int | None:
        """The largest image_max_pixels (a multiple of 28*28 at or above image_min_pixels) at which the sample
        keeps every token at this cutoff_len."""
        unit = 28 * 28

        def fits(budget: int) -> bool:
            config = replace(self.config, image_max_pixels=budget)
            if any(min(image_size(w, h, config)) <= 0 for w, h in sizes):
                return False
            try:
                _, encoded = self._build(example, sizes, config, [], videos)
            except (ZeroDivisionError, ValueError):
                return False
            if encoded is None:
                return False
            return all(truncate(e, config, images=len(sizes) + len(videos)).tokens >= e.total
                       for e in (encoded, encoded.kl) if e is not None)

        lo = max(1, math.ceil(self.config.image_min_pixels / unit))
        hi = self.config.image_max_pixels // unit
        try:
            if hi < lo or not fits(lo * unit):
                return None
        except ImageRefused:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                ok = fits(mid * unit)
            except ImageRefused:
                ok = False
            if ok:
                lo = mid
            else:
                hi = mid - 1
        return lo * unit
