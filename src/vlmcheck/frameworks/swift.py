"""ms-swift: the one home of its facts (``swift sft``, ``swift rlhf --rlhf_type grpo`` and the paired types' launch
lines and the ``MAX_PIXELS`` environment, its ``messages`` dataset layout with absolute image paths, its own ChatML
template encode, which tokens are trained, ``--truncation_strategy``, what GRPO does with each row's prompt and the
paired types with each row's pair).

Modelled on ms-swift 4.6 (``swift/template/base.py``, ``template/templates/qwen.py``, ``templates/gemma.py``,
``arguments/base_args/template_args.py``, ``model/models/qwen.py``) for its ``qwen2_vl`` / ``qwen2_5_vl`` /
``qwen3_vl`` templates, Gemma 3's ``gemma3_vision`` (see ``GEMMA3_VISION``: its own strings, the system prompt
folded into the first question, answers stripped of newlines, 260 tokens per image, and a cut that can take the
soft image tokens under transformers 5.15+, a crash), LLaVA-1.5's ``llava1_5_hf`` (``LLAVA1_5_HF``), InternVL -hf's
``internvl_hf`` (``INTERNVL_HF``: tiles of the image processor called with ``crop_to_patches=True``) and Llama 3.2
Vision's ``llama3_2_vision`` (``LLAMA3_2_VISION``: a dated system block, and a cross-attention mask not cut with
the ids, VC207). Each ``.json`` / ``.jsonl`` dataset first loads as ``datasets`` loads it (``data.hfjson``):

- **Launch**: a shell command ``[VAR=value ...] swift sft --model ... --dataset a.jsonl ... --max_length 2048``,
  read as bash runs it (``_shell.shell_commands``: quotes, comments, variables, pipes, redirections; ``export
  VAR=...`` lines and earlier ``VAR=...`` assignments count too), its options as ms-swift's argparse parser reads
  them (``--key=value``; an option given no value stops it). ``--max_length`` unset: the model's
  ``max_position_embeddings``; ``--truncation_strategy`` ``delete`` (the template raises ``MaxLengthError`` and the
  row is skipped); ``--system`` unset: the template's default system prompt.
- **Images**: ``MAX_PIXELS`` / ``MIN_PIXELS`` become qwen-vl-utils' token budgets (``value // 28**2``, Qwen3-VL
  ``value // 32**2``); ``--max_pixels`` first rescales an image over it (``rescale_image``); ``fetch_image``
  resizes, and the processor then runs with ``do_resize=False``.
- **Rows**: ``messages`` with an optional leading system turn (an empty one means no system block) and
  ``images``; missing ``<image>`` tags are put at the start of the first turn.
- **Tokens**: ``<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n`` before each response; the
  pieces with the same loss are joined and each joined piece is tokenized on its own (``add_special_tokens=False``).
  Every response and the ``<|im_end|>\\n`` after it are trained (``loss_scale`` ``default``), unless a message sets
  ``loss: false``.
- **Cut**: ``left`` / ``right`` keep every (Qwen) image token and cut text only (the first label is then masked);
  ``delete`` drops the row.
- **Encoding while loading** (``Tokenize``, ``_tokenize``): ``--lazy_tokenize`` false (its default with
  ``--packing``, ``--streaming``, ``--group_by_length``) encodes every row before training, so a row whose encode
  raises is deleted there (``dropped_at`` ``preprocess``; VC208 only when every training row is), not skipped at
  fetch; ``--packing`` / ``--padding_free`` refused where ms-swift raises (flash attention, the template, the rlhf
  type).
- **GRPO** (``swift rlhf --rlhf_type grpo``, templates ``GRPO_TEMPLATES``): the rows load as under ``swift sft``; the
  last answer is removed (``remove_response``) and the prompt is judged as the rollout encodes it, earlier answers
  untrained (loss scale ``last_round``). ``--truncation_strategy`` ``left`` (its default: the rollout's prompt cut
  from the left, the training step on the whole prompt) or ``delete`` (the length check before the rollout replaces
  the row; too many replaced rows stop the run, VC208: ``resample_failures``); a raise in the rollout stops the run.
  The run-level checks RLHFArguments, GRPOConfig and GRPOTrainer make before step 1 (``_grpo``: generation batch vs
  ``--num_generations``, the eval batch, a reward source) are refusals.
- **DPO, ORPO, SimPO, CPO** (``swift rlhf``, ``--rlhf_type dpo`` its default, and ``PAIRED_TYPES``; templates
  ``DPO_TEMPLATES``): the rows load as under
  ``swift sft`` (a ``rejected_response`` that is null or the same as the answer deletes the row); the template's
  ``rlhf`` encode makes two sequences, the chosen (the row) and the rejected (the messages up to the last question,
  then the ``rejected_response``; the same images), each encoded and cut on its own (``_encode_truncated``): a
  ``MaxLengthError`` on either deletes the row. Loss scale ``last_round``: earlier answers untrained. The record's
  counts are the chosen sequence's, the rejected's in ``framework.pair``. The four types share that encode (the
  template's ``rlhf`` mode); they differ in the run-level checks (``_pairs``: a ``--ref_model``, several
  ``--loss_type`` values, ``--sequence_parallel_size``), which are refusals.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.data.files import not_a_file
from vlmcheck.data.hfjson import LoadPlan
from vlmcheck.data.images import ImageProblem, probe_bytes, probe_path
from vlmcheck.data.readers import BadRow
from vlmcheck.errors import DatasetError, UsageError, VlmcheckError
from vlmcheck.families import Expansion, Overrides, gemma3, internvl, mllama
from vlmcheck.frameworks._run import (
    ProcessorRun,
    json_loadable,
    loaded_rows,
    mapped,
    run_version,
    version_tuple,
)
from vlmcheck.frameworks._shell import ShellCommand, launch_commands, startable
from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS, UNSET
from vlmcheck.model import ModelSpec, load_model, read_checkpoint_json, resolve_model_path
from vlmcheck.results import SampleResult

NAME = "swift"
# `vlmcheck scan --framework swift`: its default truncation_strategy and the qwen-vl-utils resize MAX_PIXELS feeds
SCAN_DEFAULTS: dict[str, Any] = {"truncation": "delete", "resize": "qwen-vl-utils"}
# `vlmcheck lint`: concept -> (ms-swift's option name, its default). ms-swift 4.x: swift/trainers/arguments.py
# (per_device_train_batch_size=1, gradient_checkpointing=True), rlhf_args.py (num_generations=8,
# temperature=0.9), base_args.py (tuner_type, formerly train_type, defaults to lora), template_args.py
# (max_length=None, max_pixels=None).
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    **TRAINING_ARGUMENTS_OPTIONS,
    "per_device_train_batch_size": ("per_device_train_batch_size", 1),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", UNSET),  # derived at run time
    "num_generations": ("num_generations", 8),
    "temperature": ("temperature", 0.9),
    "bf16": ("bf16", None),
    "gradient_checkpointing": ("gradient_checkpointing", True),
    "lora": ("tuner_type", "lora"),
    "max_length": ("max_length", None),
    "max_pixels": ("max_pixels", None),
    "model": ("model", None),
}
# ms-swift 4 renamed train_type -> tuner_type; transformers 5 calls torch_dtype `dtype`
LINT_ALIASES: dict[str, tuple[str, ...]] = {"tuner_type": ("train_type",), "torch_dtype": ("dtype",)}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads (``grpo`` or None): ``swift rlhf --rlhf_type grpo`` is GRPO."""
    return "grpo" if entry == "rlhf" and str(options.get("rlhf_type", "")).lower() == "grpo" else None


# template/templates/qwen.py: the default system prompt of each template (QwenTemplateMeta's DEFAULT_SYSTEM;
# qwen3_vl registers default_system=None: no system block unless the row or --system gives one). The qwen3_vl
# template's thinking_prefix is written only with enable_thinking, which is off for it (is_thinking False), and
# with thinking off history thoughts are kept (preserve_thinking): its text is the qwen2_vl template's.
@dataclass(frozen=True)
class ChatTemplate:
    """One ms-swift template as ``Template._swift_encode`` writes it: its TemplateMeta strings and the rules of its
    template class. Each round is ``prompt`` (``{query}``) then the answer; ``chat_sep`` follows every answer but
    the last (untrained, but ``_add_dynamic_eos`` trains its first ``suffix`` tokens after a trained answer),
    ``suffix`` follows the last one (trained: a SUFFIX context)."""

    name: str
    model_types: tuple[str, ...]
    default_system: str | None
    prefix: str
    system_prefix: str  # {system}: replaces the prefix when there is a system prompt
    prompt: str
    chat_sep: str
    suffix: str
    image_text: str  # what replace_tag writes for <image>
    fold_system: bool = False  # Gemma3Template: the row's system prompt opens the first query ("{system}\n\n")
    strip_answers: bool = False  # Gemma3Template: answers lose their leading and trailing newlines
    qwen_vl_utils: bool = True  # images sized by qwen-vl-utils (MAX_PIXELS); else by the model's image processor
    # the token each image's text is spliced in at: None, the model's image token, repeated once per feature (Qwen,
    # LLaVA); else this token, replaced by the processor's whole image sequence (Gemma 3's <start_of_image>)
    anchor: str | None = None
    # Template._truncate keeps the processor's image_token_id: the image token itself, except under transformers from
    # this version on, where it is the anchor (Gemma 3); None: always the image token
    image_token_protected_before: tuple[int, int] | None = None
    # options the template passes the image processor on every call (Overrides.extra: they win over the checkpoint's)
    processor_options: Mapping[str, Any] = field(default_factory=dict)
    # Llama3_2VisionTemplate: cross_attention_mask is built from the whole sample and not cut with the ids
    cross_attention: bool = False
    # TemplateMeta.stop_words (QwenTemplateMeta: <|endoftext|>)
    stop_words: tuple[str, ...] = ()
    # the processor's video token, which Template._init_placeholder_tokens protects at the cut too
    video_token: str | None = None
    # TemplateMeta.agent_template: what writes a row's tools into the system prompt (QwenTemplateMeta: hermes,
    # Llama3TemplateMeta: llama3); None: a row with tools makes encode raise ('Failed to automatically match an
    # agent_template') unless --agent_template names one
    agent_template: str | None = None


def _chatml(name: str, default_system: str | None, *also: str) -> ChatTemplate:
    """template/templates/utils.py ChatmlTemplateMeta, with Qwen2VLTemplate.replace_tag (templates/qwen.py); the
    model's own type and ``also`` those ms-swift's registry gives it too."""
    return ChatTemplate(name=name, model_types=(name, *also), default_system=default_system, prefix="",
                        system_prefix="<|im_start|>system\n{system}<|im_end|>\n",
                        prompt="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
                        chat_sep="<|im_end|>\n", suffix="<|im_end|>\n",
                        image_text="<|vision_start|><|image_pad|><|vision_end|>", stop_words=("<|endoftext|>",),
                        video_token="<|video_pad|>", agent_template="hermes")


# template/templates/gemma.py: GemmaTemplateMeta with Gemma3VisionTemplate (a Gemma3Template): <image> becomes
# <start_of_image>, which _encode replaces with the processor's full_image_sequence (256 soft tokens; the image
# processor called with the processor's defaults: no pan and scan)
GEMMA3_VISION = ChatTemplate(
    name="gemma3_vision", model_types=("gemma3",), default_system=None, prefix="<bos>",
    system_prefix="<bos><start_of_turn>system\n{system}<end_of_turn>\n",
    prompt="<start_of_turn>user\n{query}<end_of_turn>\n<start_of_turn>model\n", chat_sep="<end_of_turn>\n",
    suffix="<end_of_turn>", image_text="<start_of_image>", fold_system=True, strip_answers=True, qwen_vl_utils=False,
    anchor=gemma3.BOI_TOKEN, image_token_protected_before=(5, 15), processor_options={"do_pan_and_scan": False})
# template/templates/llava.py: TemplateMeta llava1_5_hf with LlavaHfTemplate (transformers >= 4.47: each <image> id
# repeated to the processor's feature count, from the image processor's output size)
LLAVA1_5_HF = ChatTemplate(
    name="llava1_5_hf", model_types=("llava",), default_system=None, prefix="<s>", system_prefix="<s>{system}\n",
    prompt="USER: {query}\nASSISTANT:", chat_sep="</s>", suffix="</s>", image_text="<image>\n", qwen_vl_utils=False)
# where replace_tag puts a list of ids ([-100]) that _encode replaces by the image's feature tokens: the text on
# either side is tokenized apart, and an image token the row's own text holds stays one token (a private-use
# character: a row holding it is not counted)
SPLICE = "\ue000"
# template/templates/internvl.py: ChatmlTemplateMeta internvl_hf (no default system) with InternvlhfTemplate: <image>
# becomes "<img>", the processor's image_seq_length <IMG_CONTEXT> per tile, "</img>\n"; the tiles from the image
# processor called with crop_to_patches=True (its min_patches / max_patches from preprocessor_config.json), whatever
# the checkpoint's crop_to_patches; InternvlTemplate.placeholder_tokens (<IMG_CONTEXT>) protected at the cut
INTERNVL_HF = ChatTemplate(
    name="internvl_hf", model_types=("internvl",), default_system=None, prefix="",
    system_prefix="<|im_start|>system\n{system}<|im_end|>\n",
    prompt="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n", chat_sep="<|im_end|>\n",
    suffix="<|im_end|>\n", image_text=f"{internvl.START_TOKEN}{SPLICE}{internvl.END_TOKEN}\n",
    qwen_vl_utils=False, processor_options={"crop_to_patches": True}, video_token="<video>")
# template/templates/llama.py: Llama3_2TemplateMeta llama3_2_vision with Llama3_2VisionTemplate: a system block
# dated the day the template is built (_get_llama3_2_prefix: "%d %b %Y", so the day training starts) even without a
# system prompt; <image> becomes one <|image|>, the image reaching the text through cross-attention; the
# processor's image_token_id (<|image|>) protected at the cut
_LLAMA3_2_SYSTEM = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                    "December 2023\nToday Date: {date}\n\n{system}<|eot_id|>")
LLAMA3_2_VISION = ChatTemplate(
    name="llama3_2_vision", model_types=("mllama",), default_system=None,
    prefix=_LLAMA3_2_SYSTEM.replace("{system}", ""), system_prefix=_LLAMA3_2_SYSTEM,
    prompt="<|start_header_id|>user<|end_header_id|>\n\n{query}<|eot_id|><|start_header_id|>assistant"
           "<|end_header_id|>\n\n", chat_sep="<|eot_id|>", suffix="<|eot_id|>", image_text=mllama.IMAGE_TOKEN,
    qwen_vl_utils=False, cross_attention=True, agent_template="llama3")
TEMPLATES: dict[str, ChatTemplate] = {
    "qwen2_vl": _chatml("qwen2_vl", "You are a helpful assistant."),
    "qwen2_5_vl": _chatml("qwen2_5_vl", "You are a helpful assistant."),
    "qwen3_vl": _chatml("qwen3_vl", None, "qwen3_vl_moe"),  # model/models/qwen.py: Qwen3-VL MoE gets qwen3_vl
    "gemma3_vision": GEMMA3_VISION,
    "llava1_5_hf": LLAVA1_5_HF,
    "internvl_hf": INTERNVL_HF,
    "llama3_2_vision": LLAMA3_2_VISION,
}
VERSIONS = f"4.6, {' / '.join(TEMPLATES)} templates"
# the templates `swift rlhf --rlhf_type grpo` is modelled with (proved against ms-swift's GRPO path in
# tests/frameworks/test_swift_grpo.py); the others are refused under GRPO
GRPO_TEMPLATES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava1_5_hf")
# the templates the paired `swift rlhf` types (PAIRED_TYPES) are modelled with (their 'rlhf' encode proved against
# ms-swift's in tests/frameworks/test_swift_dpo.py); the others are refused under them
DPO_TEMPLATES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava1_5_hf")
# model_type -> the template ms-swift's model registry gives it
MODEL_TYPES = {t: name for name, template in TEMPLATES.items() for t in template.model_types}
# model/models/qwen.py: the image_patch_size each loader passes compat_qwen_vl_utils (Qwen2VLLoader 14,
# Qwen3VLLoader 16); with SPATIAL_MERGE_SIZE 2 the factor MAX_PIXELS is divided by, squared
IMAGE_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_vl_moe": 16}  # Qwen3VLMoeLoader: Qwen3VLLoader's
SPATIAL_MERGE = 2
IMAGE_TAG = "<image>"
# transformers' config classes: max_position_embeddings when config.json leaves it out (LlamaConfig,
# Gemma3TextConfig, Qwen2VLTextConfig)
CONFIG_DEFAULT_POSITIONS = {"llama": 2048, "gemma3_text": 131072, "qwen2_vl": 32768, "qwen2": 32768, "qwen3": 32768,
                            "mllama_text_model": 131072}
# the transformers ms-swift 4.6 accepts (its requirement: >=4.33,<5.20); the newest is what pip installs with it
SWIFT_TRANSFORMERS = "5.19.0"
SWIFT_TRANSFORMERS_BELOW = (5, 20)
# ms-swift 4.6 requires datasets >= 4.0, < 4.8.5; from 4.7 a JSON field of mixed types loads (see data.hfjson)
SWIFT_DATASETS = "4.8.4"
SWIFT_DATASETS_FROM = (4, 0)
SWIFT_DATASETS_BELOW = (4, 8, 5)
# arguments/base_args/template_args.py
TRUNCATIONS = ("delete", "left", "right")
# qwen-vl-utils' budgets in merged tokens (vision_process.py IMAGE_MIN_TOKEN_NUM / IMAGE_MAX_TOKEN_NUM)
UTILS_MIN_TOKENS, UTILS_MAX_TOKENS = 4, 16384


# -- launch lines ---------------------------------------------------------------------------------------------------
# ms-swift's training commands besides `swift sft`, `swift rlhf --rlhf_type grpo` and the paired types: pretraining,
# and the other `swift rlhf` types (RLHFArguments.rlhf_type: kto, rm, ppo, gkd), which encode rows their own way
# (KTO's KL completions drawn from a shuffled batch, a value model, a teacher)
UNMODELLED_COMMANDS = ("rlhf", "pt")
GRPO = "grpo"
DPO = "dpo"
RLHF_DEFAULT_TYPE = DPO  # arguments/rlhf_args.py RLHFArguments.rlhf_type
# the `swift rlhf` types whose rows are a chosen and a rejected sequence: pipelines/train/rlhf.py
# SwiftRLHF._prepare_template sets the template's 'rlhf' mode for every type but kto, gkd, ppo and grpo (rm's
# seq_cls encode drops the labels); RLHFArguments._init_simpo runs simpo as cpo with loss_type simpo
PAIRED_TYPES = (DPO, "orpo", "simpo", "cpo")


# the options of `swift sft` vlmcheck reads that take a value (arguments/: their types): given none (last, or
# before another option, or as an unset `$VAR`, which bash drops), ms-swift's argument parser stops ("argument
# --max_length: expected one argument"); its booleans (--streaming, --strict, --disable_auto_column_mapping,
# --ignore_args_error) alone are true
VALUE_OPTIONS = ("model", "dataset", "val_dataset", "split_dataset_ratio", "eval_strategy", "save_strategy",
                 "truncation_strategy", "template", "loss_scale", "columns", "model_kwargs", "system", "agent_template",
                 "max_length", "max_pixels", "tuner_type", "train_type", "packing_length", "attn_impl")
# nargs="+": "expected at least one argument"
LIST_OPTIONS = ("dataset", "val_dataset", "reward_funcs", "reward_model", "loss_type")
FLAG_OPTIONS = ("streaming", "strict", "disable_auto_column_mapping", "ignore_args_error", "lazy_tokenize", "packing",
                "padding_free", "group_by_length")
# ms-swift's options whose names start one of those (of SftArguments' and RLHFArguments' options besides those
# read: RLHFArguments' num_generations and teacher_model are read under GRPO): not abbreviations
PREFIX_OPTIONS = ("stream",)
# the options of `swift rlhf --rlhf_type grpo` vlmcheck reads besides those (arguments/rlhf_args.py,
# rlhf_trainers/args_mixin.py, trainers/arguments.py): the batch sizes GRPOConfig checks, the reward sources the
# trainer needs, what is refused as not modelled (vLLM rollouts, multi-turn schedulers)
GRPO_VALUE_OPTIONS = ("rlhf_type", "num_generations", "num_generations_eval", "per_device_train_batch_size",
                      "per_device_eval_batch_size", "gradient_accumulation_steps", "generation_batch_size",
                      "steps_per_generation", "max_completion_length", "reward_funcs", "reward_model",
                      "teacher_model", "teacher_model_server", "vllm_mode", "multi_turn_scheduler", "num_iterations")
# --dynamic_sample and --dataset_shuffle change how the rows a delete run replaces add up (VC208)
GRPO_FLAG_OPTIONS = ("use_vllm", "dynamic_sample", "dataset_shuffle")
# the options of the paired `swift rlhf` types vlmcheck reads besides VALUE_OPTIONS: what RLHFArguments checks
# before step 1 (a reference model, several loss types, sequence parallelism)
PAIRED_VALUE_OPTIONS = ("rlhf_type", "ref_model", "loss_type", "sequence_parallel_size")
# SftArguments._check_padding_free: the attention implementations --packing and --padding_free need
FLASH_ATTENTION = ("flash_attn", "flash_attention_2", "flash_attention_3", "flash_attention_4")
# the modelled templates whose class sets support_padding_free (Qwen2VLTemplate, InternvlTemplate); the others leave it
# None, which SwiftSft._prepare_template reads as false for a multimodal model: --packing / --padding_free raise
PADDING_FREE_TEMPLATES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl_hf")
# RLHFArguments._check_padding_free: the rlhf types that take --packing / --padding_free
PADDING_FREE_TYPES = ("grpo", "dpo", "kto", "gkd")
# trl's DPOConfig option that RLHFArguments (ms-swift 4.6) does not have: its parser leaves it in remaining_argv
NOT_AN_OPTION = "precompute_ref_log_probs"


def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The options of the first ``swift sft`` or ``swift rlhf --rlhf_type grpo`` command of a shell script, read as
    bash runs it (quotes, comments, variables, pipes and redirections: see ``_shell.shell_commands``), with the
    environment it sets; None without one. ``--key=value`` is ``--key value``, as ms-swift's argparse reads it; a
    word that follows no option is kept in ``stray`` (ms-swift stops on it), the words as swift gets them in
    ``argv``; ``stage`` is ``sft``, ``grpo`` or one of ``PAIRED_TYPES``."""
    env = os.environ if env is None else env
    unmodelled = ""
    for command in launch_commands(text, env=env, path=path, program=r"\bswift\b"):
        words = command.words
        if "swift" not in words[:-1]:
            continue
        at = words.index("swift")
        if words[at + 1] == "sft":
            return _launch(command, at + 2, path, stage="sft")
        if words[at + 1] == "rlhf":
            rlhf_type = _options(words[at + 2:])[0].get("rlhf_type", RLHF_DEFAULT_TYPE)
            if rlhf_type == GRPO or rlhf_type in PAIRED_TYPES:
                return _launch(command, at + 2, path, stage=rlhf_type)
        if words[at + 1] in UNMODELLED_COMMANDS:
            options = _options(words[at + 2:])[0]
            named = options.get("rlhf_type")
            unmodelled = unmodelled or f"swift {words[at + 1]}" + (
                f" --rlhf_type {named}" if isinstance(named, str) else
                f" (--rlhf_type {RLHF_DEFAULT_TYPE}, its default)" if words[at + 1] == "rlhf" else "")
    if unmodelled:
        raise UsageError(f"{path}: `{unmodelled}` is not modelled by vlmcheck yet (it models `swift sft` and `swift "
                         f"rlhf --rlhf_type` {', '.join((GRPO, *PAIRED_TYPES))}); ms-swift's pre-training and its "
                         "other preference and RL stages encode rows their own way")
    return None


def _options(argv: Sequence[str]) -> tuple[dict[str, Any], list[tuple[int, str | None]]]:
    """ms-swift's options of ``argv`` as its argparse parser reads them: ``--key value...`` (several values: a
    list; none: None) or ``--key=value`` (that one value), the last of a repeated key winning, dashes in names read
    as underscores; and (index in argv, the option it gives a value to, None for a stray word) of each word."""
    options: dict[str, Any] = {}
    owners: list[tuple[int, str | None]] = []
    key: str | None = None
    for i, word in enumerate(argv):
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            name = name.replace("-", "_")
            options[name] = value if eq else None
            key = None if eq else name
            owners.append((i, name))
        elif key is None:
            owners.append((i, None))
        else:
            current = options[key]
            options[key] = word if current is None else [*(current if isinstance(current, list) else [current]), word]
            owners.append((i, key))
    return options, owners


def _launch(command: ShellCommand, first: int, path: Path, *, stage: str) -> dict[str, Any]:
    """The raw settings of the ``swift sft`` (``stage`` sft) or ``swift rlhf`` (grpo) command whose options start at
    word ``first``."""
    words = command.words
    argv = words[first:]
    startable(command, first, path=path, program="swift sft" if stage == "sft" else "swift rlhf")
    launch_env = dict(command.variables)
    launch_env.update(command.assignments)
    for word in words[:first - 2]:  # env A=1 swift sft ..., nohup, ...
        if "=" in word:
            name, value = word.split("=", 1)
            launch_env[name] = value
    options, owners = _options(argv)
    owner = dict(owners)
    unset: dict[str, list[str]] = {}
    unexpanded: dict[str, list[str]] = {}
    reading: str | None = None  # the option whose values are being read
    vanished: dict[int, list[str]] = {}
    for at, names in command.vanished:
        vanished.setdefault(at, []).extend(names)
    for i in range(len(argv) + 1):
        if first + i in vanished and reading is not None:  # a word bash dropped: it was the option's value
            unset.setdefault(reading, []).extend(vanished[first + i])
        if i == len(argv):
            break
        key = owner[i]
        if argv[i].startswith("--") and len(argv[i]) > 2:
            reading = None if "=" in argv[i] else key
        elif key is None:
            reading = None
        if key is not None:
            unset.setdefault(key, []).extend(command.unset.get(first + i, ()))
            unexpanded.setdefault(key, []).extend(command.unexpanded.get(first + i, ()))
    return {"__launch__": NAME, "stage": stage, "options": options, "env": launch_env, "argv": list(argv),
            "stray": [argv[i] for i, key in owners if key is None],
            "unset": {k: v for k, v in unset.items() if v}, "unexpanded": {k: v for k, v in unexpanded.items() if v},
            "line": command.line}


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grpo:
    """What ``swift rlhf --rlhf_type grpo`` adds to a run's settings (RLHFArguments, GRPOConfig), as checked."""

    num_generations: int
    generation_batch_size: int
    steps_per_generation: int
    world_size: int  # torchrun's processes: NPROC_PER_NODE x NNODES (1 without them)
    # the loss scale the template groups the prompt's pieces by: RLHFArguments._set_loss_scale makes it last_round
    # (earlier answers untrained, so tokenized with the text around them); --loss_scale default trains them
    loss_scale: str
    max_completion_length: int
    iterations: int = 1  # --num_iterations: the resample iterator yields each row that many times in a row
    # --dynamic_sample: DAPO's resampling rounds encode more batches the same way (resample_encode_failed_inputs)
    dynamic_sample: bool = False
    shuffle: bool = True  # --dataset_shuffle: RepeatSampler's shuffle, the main and the resample iterators'


@dataclass(frozen=True)
class Pairs:
    """What a paired ``swift rlhf`` type (``PAIRED_TYPES``: dpo, RLHFArguments' default, orpo, simpo, cpo) adds to
    a run's settings, as checked."""

    # RLHFArguments._set_loss_scale: last_round (an earlier answer untrained unless its loss is true, so tokenized
    # with the text around it); --loss_scale default trains every answer. (ORPO gets default on a model that is not
    # multimodal; every template modelled here is.)
    loss_scale: str
    rlhf_type: str = DPO  # as given (--rlhf_type)
    trainer: str = DPO  # the trainer that runs it (TrainerFactory): simpo runs cpo's, loss_type simpo


@dataclass(frozen=True)
class Tokenize:
    """How ms-swift 4.6 encodes the training rows (BaseArguments._init_lazy_tokenize, SwiftSft._encode_dataset and
    _post_process_datasets), as checked: ``lazy`` (``--lazy_tokenize``, by default true for a multimodal model unless
    --streaming, --packing or --group_by_length) encodes each row when the training dataset fetches it
    (LazyLLMDataset, which skips a row whose encode raises); otherwise every row is encoded while loading
    (AddLengthPreprocessor; EncodePreprocessor on a --streaming dataset) and one whose encode raises is deleted
    (``--strict false``) or stops the run. ``packing``: the encoded rows are packed by their lengths into
    ``packing_length`` bins (None: --max_length)."""

    lazy: bool = True
    why: str = ""  # the option that makes a run encode its rows while loading (--lazy_tokenize false, --packing, ...)
    packing: bool = False
    packing_length: int | None = None
    padding_free: bool = False


@dataclass(frozen=True)
class Config:
    """A ``swift sft``, ``swift rlhf --rlhf_type grpo`` or paired ``swift rlhf`` run's settings with ms-swift's
    defaults filled in."""

    path: Path
    model: str
    template: str
    datasets: tuple[Path, ...]
    max_length: int | None
    truncation: str
    system: str | None
    max_pixels: int | None
    min_pixels: int | None
    train_type: str
    strict: bool = False
    # --val_dataset: encoded by the same template for evaluation; --split_dataset_ratio (0 with --val_dataset)
    val_datasets: tuple[Path, ...] = ()
    split: float = 0.0
    streaming: bool = False  # --streaming: nothing is sampled (an empty file does not raise)
    agent_template: str | None = None  # --agent_template: over the template's own
    # --columns (renames before ms-swift's own: a JSON object, or a JSON file); --disable_auto_column_mapping
    columns: dict[str, str] = field(default_factory=dict)
    auto_columns: bool = True
    rescale: int | None = None  # --max_pixels: the template's own rescale before qwen-vl-utils (see rescaled)
    values: dict[str, Any] = field(default_factory=dict)
    grpo: Grpo | None = None  # `swift rlhf --rlhf_type grpo`; None: `swift sft`
    pairs: Pairs | None = None  # `swift rlhf --rlhf_type dpo` (orpo, simpo, cpo): a chosen and a rejected sequence
    tokenize: Tokenize = field(default_factory=Tokenize)  # --lazy_tokenize, --packing, --padding_free

    @property
    def preencoded(self) -> bool:
        """Every training row is encoded while loading (``--lazy_tokenize false``, as --packing, --streaming and
        --group_by_length make it), so a row whose encode raises is deleted there (or the run stops before step 1),
        not skipped at fetch. Never under GRPO: SwiftSft._prepare_dataset encodes nothing for it."""
        return self.grpo is None and not self.tokenize.lazy


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _int(value: Any, key: str, path: Path, note: str = "") -> int:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}{note}") from None
    if number <= 0:
        raise UsageError(f"{path}: {key} must be positive, got {number}")
    return number


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Config:
    options: dict[str, Any] = raw.get("options") or {}
    env: dict[str, str] = raw.get("env") or {}
    mapping = dict(path_map or {})
    grpo = raw.get("stage") == GRPO
    paired = raw.get("stage") in PAIRED_TYPES
    _check_command(raw, path, overridden=(("model",) if model else ()) + (("dataset",) if data is not None else ()),
                   grpo=grpo, paired=paired)
    # --model_kwargs: each key, upper-cased, is set in the environment (over the script's): MAX_PIXELS, ...
    env = {**env, **{k.upper(): str(v) for k, v in _json_object(options.get("model_kwargs"), "--model_kwargs", path,
                                                                 mapping).items()}}
    model_path = model or options.get("model")
    if not model_path or isinstance(model_path, list):
        raise UsageError(f"{path}: --model is not set (or pass --model)")
    sources = [data] if data is not None else _as_list(options.get("dataset"))
    if not sources:
        raise UsageError(f"{path}: --dataset is not set (or pass --data)")
    files = _dataset_files(sources, "--dataset", path, mapping)
    val_files = _dataset_files(_as_list(options.get("val_dataset")), "--val_dataset", path, mapping)
    try:
        split = float(str(options.get("split_dataset_ratio", 0)))
    except ValueError:
        raise UsageError(f"{path}: --split_dataset_ratio must be a number, got "
                         f"{options['split_dataset_ratio']!r}") from None
    if not 0 <= split <= 1:
        raise UsageError(f"{path}: --split_dataset_ratio must be between 0 and 1, got {split}")
    streaming = _flag(options, "streaming", path)
    # no split with --val_dataset or --streaming (DataArguments), nor without evaluation (SftArguments:
    # --eval_strategy, by default --save_strategy, 'no')
    evaluation = str(options.get("eval_strategy") or options.get("save_strategy") or "steps")
    if val_files or streaming or evaluation == "no":
        split = 0.0
    if split == 1:
        raise UsageError(f"{path}: --split_dataset_ratio 1 puts every row into the evaluation set: ms-swift has no "
                         "training rows and its trainer raises")
    # RLHFArguments._init_grpo: GRPO's default is left, and it raises on anything but left or delete
    truncation = options.get("truncation_strategy", "left" if grpo else "delete")
    if truncation not in (*TRUNCATIONS, "split"):
        raise UsageError(f"{path}: --truncation_strategy {truncation!r}{_unset_note(raw, 'truncation_strategy')} is "
                         "not one of ms-swift's choices (delete, left, right, split): its argument parser stops")
    if grpo and truncation not in GRPO_TRUNCATIONS:
        raise UsageError(f"{path}: --truncation_strategy {truncation}: ms-swift's GRPO raises before training "
                         "(RLHFArguments._init_grpo: \"GRPO requires `truncation_strategy 'left' or 'delete'`, Current "
                         f"value: `truncation_strategy='{truncation}'`.\"); set --truncation_strategy left (its "
                         "default) or delete")
    if truncation not in TRUNCATIONS:
        raise UsageError(f"{path}: --truncation_strategy {truncation}: vlmcheck models {', '.join(TRUNCATIONS)} "
                         "('split' is for pre-training)")
    template = options.get("template")
    if template is not None and template not in TEMPLATES:
        raise UsageError(f"{path}: --template {template} is not modelled by vlmcheck yet (it models "
                         f"{', '.join(TEMPLATES)})")
    loss_scales = (None, "default", "last_round") if grpo or paired else (None, "default")
    if options.get("loss_scale") not in loss_scales:
        raise UsageError(f"{path}: --loss_scale {options['loss_scale']} is not modelled yet "
                         f"({' and '.join(str(v) for v in loss_scales[1:])} are)")
    columns = _json_object(options.get("columns"), "--columns", path, mapping)
    if not all(isinstance(v, str) for v in columns.values()):
        raise UsageError(f"{path}: --columns must map column names to names, got {options['columns']!r}")
    system = options.get("system")
    if isinstance(system, str) and system.endswith(".txt"):
        system = Path(mapped(system, mapping)).read_text(encoding="utf-8")
    elif isinstance(system, str):
        system = system.replace("\\n", "\n")
    return Config(
        path=path, model=mapped(str(model_path), mapping), template=str(template or ""), datasets=tuple(files),
        val_datasets=tuple(val_files), split=split, streaming=streaming,
        agent_template=str(options["agent_template"]) if options.get("agent_template") else None,
        max_length=_int(options["max_length"], "--max_length", path, _unset_note(raw, "max_length"))
        if options.get("max_length") is not None else None,
        truncation=truncation, system=system if isinstance(system, str) else None,
        max_pixels=_int(env["MAX_PIXELS"], "MAX_PIXELS", path) if env.get("MAX_PIXELS") else None,
        rescale=_int(options["max_pixels"], "--max_pixels", path, _unset_note(raw, "max_pixels"))
        if options.get("max_pixels") is not None else None,
        min_pixels=_int(env["MIN_PIXELS"], "MIN_PIXELS", path) if env.get("MIN_PIXELS") else None,
        train_type=str(options.get("tuner_type") or options.get("train_type") or "lora"),
        strict=_flag(options, "strict", path), columns=columns,
        auto_columns=not _flag(options, "disable_auto_column_mapping", path),
        values={k: options.get(k) for k in ("max_length", "truncation_strategy", "tuner_type", "train_type", "system",
                                            "max_pixels", "columns", "disable_auto_column_mapping",
                                            "val_dataset", "split_dataset_ratio", "model_kwargs", "streaming",
                                            "eval_strategy", "agent_template", "lazy_tokenize", "packing",
                                            "packing_length", "padding_free", "group_by_length", "attn_impl")},
        grpo=_grpo(options, env, path, raw, evaluates=bool(val_files or split)) if grpo else None,
        pairs=_pairs(options, path, raw) if paired else None,
        tokenize=_tokenize(options, path, raw, streaming=streaming),
    )


def _pairs(options: Mapping[str, Any], path: Path, raw: Mapping[str, Any]) -> Pairs:
    """The settings a paired ``swift rlhf`` type adds, refused where ms-swift 4.6 raises before step 1, in its order:
    the parser (SwiftPipeline._parse_args: an option RLHFArguments lacks), then RLHFArguments.__post_init__
    (_process_loss_type, _check_sequence_parallel, and last the reference model)."""
    where = f"{path}: " + (f"line {raw['line']}: " if raw.get("line") else "")
    given = str(raw.get("stage") or DPO)
    trainer = "cpo" if given == "simpo" else given  # RLHFArguments._init_simpo
    if NOT_AN_OPTION in options and not _flag(options, "ignore_args_error", path):
        argv = raw.get("argv") or []
        left = [argv[i] for i, key in _options(argv)[1] if key == NOT_AN_OPTION]
        raise UsageError(f"{where}--{NOT_AN_OPTION}: ms-swift 4.6's RLHFArguments has no such option and its parser "
                         f"stops ('remaining_argv: {left!r}'); drop it (the reference log-probabilities are computed "
                         "during training)")
    losses = _as_list(options.get("loss_type"))
    if len(losses) > 1 and given != DPO:  # _process_loss_type, before _init_simpo renames the type
        raise UsageError(f"{where}--loss_type {' '.join(losses)}: ms-swift raises before training ('Multiple loss "
                         f"types ({losses!r}) are only supported for DPO. Current rlhf_type: {given}.'); give one")
    _tokenize(options, path, raw, streaming=_flag(options, "streaming", path), rlhf_type=trainer)
    parallel = options.get("sequence_parallel_size")
    if parallel is not None and trainer != DPO and _int(parallel, "--sequence_parallel_size", path) > 1:
        raise UsageError(f"{where}--sequence_parallel_size {parallel}: ms-swift raises before training ('The current "
                         f"rlhf_type '{trainer}' does not support sequence_parallel. Please set "
                         "--sequence_parallel_size to 1.')")
    # RLHFArguments.__post_init__: only dpo (kto, ppo, grpo) under full training takes a reference model
    tuner = str(options.get("tuner_type") or options.get("train_type") or "lora")
    if options.get("ref_model") is not None and (given != DPO or tuner != "full"):
        fix = ("drop --ref_model (the model without its adapter is the reference) or train with --tuner_type full"
               if given == DPO else f"drop --ref_model ({given} trains without a reference model)")
        raise UsageError(f"{where}--ref_model with --rlhf_type {given} and --tuner_type {tuner}: ms-swift raises "
                         "before training ('CPO/ORPO or LoRA training does not require a ref_model to be passed "
                         f"in.'); {fix}")
    return Pairs(loss_scale=str(options.get("loss_scale") or "last_round"), rlhf_type=given, trainer=trainer)


# RLHFArguments._init_grpo: the truncation strategies GRPO takes
GRPO_TRUNCATIONS = ("left", "delete")


def _grpo(options: Mapping[str, Any], env: Mapping[str, str], path: Path, raw: Mapping[str, Any], *,
          evaluates: bool) -> Grpo:
    """The settings ``swift rlhf --rlhf_type grpo`` adds, refused where ms-swift 4.6 raises before step 1, in the order
    it checks them: RLHFArguments.__post_init__ (_init_rollout, then GRPOConfig's _init_generation_batch_params from
    SftArguments, then _check_teacher), then GRPOTrainer.__init__ (a reward source). ``evaluates``: a validation set
    is loaded (--val_dataset, or a split), so the eval batch is checked too unless --eval_strategy is no."""
    where = f"{path}: " + (f"line {raw['line']}: " if raw.get("line") else "")
    use_vllm = _flag(options, "use_vllm", path)
    if use_vllm:
        raise UsageError(f"{where}--use_vllm true is not modelled by vlmcheck yet: ms-swift's vLLM rollout encodes the "
                         "prompt in its vllm mode (one token per image, expanded by vLLM with its own processor) "
                         "and vLLM checks its own max_model_len; without --use_vllm the prompt is what vlmcheck "
                         "judges")
    if options.get("vllm_mode") is not None:  # RLHFArguments._init_rollout
        raise UsageError(f"{where}--vllm_mode {options['vllm_mode']} without --use_vllm true: ms-swift raises before "
                         "training ('vllm_mode is not supported when use_vllm is false')")
    if options.get("multi_turn_scheduler") is not None:
        raise UsageError(f"{where}--multi_turn_scheduler is not modelled by vlmcheck yet (each turn's prompt is "
                         "written by the scheduler, and the loss scale becomes default)")
    _tokenize(options, path, raw, streaming=_flag(options, "streaming", path), rlhf_type=GRPO)

    def number(key: str, default: int | None, *, positive: bool = True) -> int | None:
        if options.get(key) is None:
            return default
        return (_int if positive else _count)(options[key], f"--{key}", path, _unset_note(raw, key))

    generations = number("num_generations", 8, positive=False) or 0
    if generations <= 0:
        raise UsageError(f"{where}--num_generations {generations}: ms-swift's argument checks let it pass (they "
                         "refuse 1), and what its trainer then does is not modelled by vlmcheck; GRPO needs 2 or more")
    world = 1
    for key in ("NPROC_PER_NODE", "NNODES"):  # cli/main.py: torchrun --nproc_per_node / --nnodes
        value = env.get(key)
        if value is not None:
            world *= _int(value, key, path, " (vlmcheck needs the number of processes torchrun starts)")
    per_device = number("per_device_train_batch_size", 1) or 1
    accumulation = number("gradient_accumulation_steps", 1) or 1  # RLHFArguments._set_default: 1 for GRPO
    given_batch = number("generation_batch_size", None, positive=False)
    given_steps = number("steps_per_generation", None, positive=False)
    # GRPOArgumentsMixin._init_generation_batch_params (GRPOConfig.__post_init__)
    global_batch = per_device * world
    shape = (f"per_device_train_batch_size {per_device} x {world} process(es)")
    if given_batch is None:
        steps = accumulation if given_steps is None else given_steps
        batch = global_batch * steps
    elif given_steps is None:
        batch = given_batch
        if batch % global_batch:
            raise UsageError(f"{where}--generation_batch_size {batch} is not a multiple of the global batch size "
                             f"({shape} = {global_batch}): ms-swift raises before training ('generation_batch_size "
                             f"({batch}) must be divisible by the global batch size ({global_batch}).')")
        steps = batch // global_batch
    else:
        batch, steps = given_batch, given_steps
        if batch != global_batch * steps:
            raise UsageError(f"{where}--generation_batch_size {batch} with --steps_per_generation {steps}: ms-swift "
                             f"raises before training ('generation_batch_size ({batch}) must equal "
                             "per_device_train_batch_size * world_size * steps_per_generation = "
                             f"{global_batch * steps}.')")
    if steps <= 0:
        raise UsageError(f"{where}{steps} steps per generation: ms-swift raises before training "
                         f"('steps_per_generation must be > 0, got {steps}.')")
    if generations > 1 and batch % generations:
        fits = [n for n in range(2, batch + 1) if batch % n == 0]
        made = (f"--generation_batch_size {batch}" if options.get("generation_batch_size") is not None else
                f"the generation batch ({shape} x {steps} step(s) per generation = {batch})")
        raise UsageError(f"{where}{made} is not a multiple of --num_generations {generations}: ms-swift raises before "
                         f"training ('generation_batch_size ({batch}) must be evenly divisible by num_generations "
                         f"({generations}). Valid values: {fits}.'); raise --per_device_train_batch_size or "
                         f"--gradient_accumulation_steps (or --generation_batch_size) to a multiple of {generations}, "
                         "or lower --num_generations")
    evaluation = str(options.get("eval_strategy") or options.get("save_strategy") or "steps")
    if generations > 1 and evaluates and evaluation != "no":
        eval_generations = number("num_generations_eval", None, positive=False) or generations
        eval_batch = (number("per_device_eval_batch_size", 1) or 1) * world
        if eval_batch % eval_generations:
            fits = [n for n in range(1, eval_batch + 1) if eval_batch % n == 0]
            raise UsageError(f"{where}the eval batch (per_device_eval_batch_size x {world} process(es) = "
                             f"{eval_batch}) is not a multiple of {eval_generations} generations: ms-swift raises "
                             f"before training ('The global eval batch size ({world} x {eval_batch // world}) must be "
                             f"evenly divisible by num_generations_eval ({eval_generations}). Valid values: {fits}.'); "
                             "set --per_device_eval_batch_size or --num_generations_eval to fit, or --eval_strategy no")
    teacher = options.get("teacher_model") is not None or options.get("teacher_model_server") is not None
    if generations == 1 and not teacher:  # RLHFArguments._check_teacher
        raise UsageError(f"{where}--num_generations 1: ms-swift raises before training ('num_generations must be "
                         "greater than 1 for GRPO'): GRPO compares the completions of one prompt")
    if not options.get("reward_funcs") and options.get("reward_model") is None and not teacher:
        raise UsageError(f"{where}no --reward_funcs, --reward_model or --teacher_model: ms-swift's GRPOTrainer raises "
                         "before training ('You must specify reward_funcs or reward_model')")
    completion = next((options[k] for k in ("response_length", "max_new_tokens") if options.get(k) is not None),
                      options.get("max_completion_length"))  # RLHFArguments._init_max_completion_length
    return Grpo(num_generations=generations, generation_batch_size=batch, steps_per_generation=steps,
                world_size=world, loss_scale=str(options.get("loss_scale") or "last_round"),
                max_completion_length=_count(completion, "--max_completion_length", path) if completion is not None
                else 512, iterations=number("num_iterations", 1) or 1,
                dynamic_sample=_flag(options, "dynamic_sample", path),
                shuffle=_flag(options, "dataset_shuffle", path) if "dataset_shuffle" in options else True)


def _tokenize(options: Mapping[str, Any], path: Path, raw: Mapping[str, Any], *, streaming: bool,
              rlhf_type: str | None = None) -> Tokenize:
    """--lazy_tokenize, --packing, --padding_free as ms-swift 4.6 resolves them, refused where it raises, in its
    order: BaseArguments._init_lazy_tokenize (lazy by default for a multimodal model, which every modelled template
    is, unless --streaming, --packing or --group_by_length; lazy with --packing or --streaming raises), then
    SftArguments._check_padding_free (a flash attention implementation) and RLHFArguments'
    (``rlhf_type``, as RLHFArguments._init_simpo leaves it: the types that take them). The template's own support is
    checked by open_run (SwiftSft._prepare_template)."""
    where = f"{path}: " + (f"line {raw['line']}: " if raw.get("line") else "")
    packing = _flag(options, "packing", path)
    padding_free = _flag(options, "padding_free", path)
    grouped = _flag(options, "group_by_length", path)
    if "lazy_tokenize" in options:
        lazy = _flag(options, "lazy_tokenize", path)
    else:
        lazy = not (streaming or packing or grouped)
    why = ("" if lazy else "--streaming" if streaming else "--lazy_tokenize false" if "lazy_tokenize" in options
           else "--packing" if packing else "--group_by_length")
    if lazy and packing:
        raise UsageError(f"{where}--lazy_tokenize true with --packing: ms-swift raises before training ('Packing and "
                         "lazy_tokenize are incompatible.'); drop --lazy_tokenize (packing encodes every row while "
                         "loading)")
    if lazy and streaming:
        raise UsageError(f"{where}--lazy_tokenize true with --streaming: ms-swift raises before training ('Streaming "
                         "and lazy_tokenize are incompatible.'); drop --lazy_tokenize")
    if packing or padding_free:
        feature = "packing" if packing else "padding_free"
        attn = options.get("attn_impl")
        if attn not in FLASH_ATTENTION:
            impls = ", ".join(f'"{impl}"' for impl in FLASH_ATTENTION)
            raise UsageError(f"{where}--{feature} with --attn_impl {attn if attn is not None else '(unset)'}: ms-swift "
                             f"raises before training ('The \"{feature}\" feature requires a flash attention "
                             f"implementation. Please use one of: {impls}.'); set --attn_impl flash_attn")
        if rlhf_type is not None and rlhf_type not in PADDING_FREE_TYPES:
            raise UsageError(f"{where}--{feature} with --rlhf_type {rlhf_type}: ms-swift raises before training "
                             f"(\"The current rlhf_type '{rlhf_type}' does not support padding_free/packing. Please "
                             "set --padding_free/packing to false.\")")
    length = options.get("packing_length")
    return Tokenize(lazy=lazy, why=why, packing=packing, padding_free=padding_free or packing,
                    packing_length=_int(length, "--packing_length", path, _unset_note(raw, "packing_length"))
                    if packing and length is not None else None)


def _count(value: Any, key: str, path: Path, note: str = "") -> int:
    """A whole number as ms-swift's parser reads it (``int``): zero and negative numbers too."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}{note}") from None


def _unset_note(raw: Mapping[str, Any], key: str) -> str:
    names = (raw.get("unset") or {}).get(key)
    return (f" (${names[0]} is empty or not set, in the script or in the environment vlmcheck runs in)" if names
            else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_command(raw: Mapping[str, Any], path: Path, *, overridden: tuple[str, ...], grpo: bool = False,
                   paired: bool = False) -> None:
    """Refuses what ms-swift's argument parser stops on, or what vlmcheck cannot read, in the options it reads:
    a word that follows no option, an option given no value, an abbreviated option name, a value vlmcheck does not
    expand (a command substitution). ``overridden``: options vlmcheck's own flags replace (given a value, or one
    from a variable vlmcheck's environment lacks); ``grpo`` / ``paired``: a ``swift rlhf --rlhf_type grpo`` (or
    paired type's) command, whose GRPO (pair) options are read too."""
    options: Mapping[str, Any] = raw.get("options") or {}
    line = f"line {raw['line']}: " if raw.get("line") else ""
    stray = raw.get("stray") or []
    argv = raw.get("argv") or []
    if argv and stray and argv[0] == stray[0] and argv[0].endswith((".json", ".yaml", ".yml")):
        raise UsageError(f"{path}: {line}`swift {'rlhf' if grpo or paired else 'sft'} {argv[0]}`: ms-swift reads its "
                         "options from that file, which vlmcheck does not model yet; write them on the command line")
    if stray and not _flag(options, "ignore_args_error", path):
        raise UsageError(f"{path}: {line}{_short(stray[0])} follows no option that takes it (an option written "
                         f"--key=value takes that one value only): ms-swift stops with 'ValueError: remaining_argv: "
                         f"{_short(stray)}'")
    values = (*VALUE_OPTIONS, *(GRPO_VALUE_OPTIONS if grpo else ()), *(PAIRED_VALUE_OPTIONS if paired else ()))
    known = (*values, *FLAG_OPTIONS, *(GRPO_FLAG_OPTIONS if grpo else ()))
    for key in options:
        full = [k for k in known if k.startswith(key) and k != key]
        if key not in known and key not in PREFIX_OPTIONS and full:
            raise UsageError(f"{path}: {line}--{key}: ms-swift's parser takes an abbreviated option for the one it "
                             f"starts (--{full[0]}); vlmcheck reads options written in full: write --{full[0]}")
    for key in values:
        if key not in options:
            continue
        names = (raw.get("unset") or {}).get(key)
        if key in overridden and (names or options[key] is not None):
            continue  # `--model $MODEL`, MODEL set at launch only, and vlmcheck's own --model
        if options[key] is None:
            hint = (f"; set it where vlmcheck runs (`{names[0]}=... vlmcheck check {path.name}`) or in the script"
                    if names else "")
            raise UsageError(f"{path}: {line}--{key} is given no value{_unset_note(raw, key)}: ms-swift's argument "
                             f"parser stops ('argument --{key}: expected "
                             f"{'at least one argument' if key in LIST_OPTIONS else 'one argument'}'){hint}")
        forms = (raw.get("unexpanded") or {}).get(key)
        if forms:
            raise UsageError(f"{path}: {line}--{key} {_short(options[key])}: vlmcheck does not run or expand "
                             f"{_short(forms[0])} (command substitutions, ${{NAME%...}} and the like); write the "
                             "value in the script")


def _dataset_files(sources: list[str], key: str, path: Path, mapping: Mapping[str, str]) -> list[Path]:
    files = []
    for source in sources:
        if "#" in source:
            raise UsageError(f"{path}: {key} {source}: sampling with '#N' is not modelled by vlmcheck")
        file = Path(mapped(os.path.expanduser(source), mapping))
        if not file.is_absolute() and not file.exists() and (path.parent / file).exists():
            file = path.parent / file
        if not file.is_file():
            raise UsageError(f"{path}: {key} {source} is not a local file ({file}: {not_a_file(file)}); vlmcheck reads local "
                             ".jsonl/.json/.parquet files (pass --data, or --path-map)")
        # DatasetLoader._load_dataset_path: the datasets builder is named by the extension as written
        ext = os.path.splitext(file.name)[1].lstrip(".")
        builder = {"jsonl": "json", "txt": "text"}.get(ext) or ext
        if builder in ("csv", "text"):
            raise UsageError(f"{path}: {key} {source}: ms-swift reads it with datasets' {builder} builder, which "
                             "vlmcheck does not model yet (it reads .jsonl/.json/.parquet)")
        if builder not in ("json", "parquet"):
            raise DatasetError(f"{path}: {key} {source}: ms-swift loads a local file with the datasets builder its "
                               f"extension names ({ext or 'none'!r}), and there is none of that name: the run stops "
                               "before step 1 (compressed files are not opened; write .jsonl, .json or .parquet)")
        files.append(file)
    return files


def _flag(options: Mapping[str, Any], key: str, path: Path) -> bool:
    """A boolean option as ms-swift's argument parser reads it: ``--key`` alone is true; true / false, yes / no,
    t / f, y / n, 1 / 0 in any case."""
    if key not in options:
        return False
    value = options[key]
    if value is None:
        return True
    word = str(value).strip().lower()
    if word in ("true", "t", "yes", "y", "1", "on"):
        return True
    if word in ("false", "f", "no", "n", "0", "off"):
        return False
    raise UsageError(f"{path}: --{key} {value!r} is not a boolean")


def _json_object(value: Any, key: str, path: Path, mapping: Mapping[str, str]) -> dict[str, Any]:
    """An option ms-swift reads with ``json_parse_to_dict`` (``--columns``, ``--model_kwargs``): a JSON object,
    or the path of a JSON file holding one (ms-swift tries to repair other text; vlmcheck does not guess)."""
    if value is None:
        return {}
    text = str(value)
    file = Path(mapped(os.path.expanduser(text), mapping))
    if not file.is_absolute() and not file.exists() and (path.parent / file).exists():
        file = path.parent / file
    try:
        if not text.lstrip().startswith("{") and file.is_file():
            text = file.read_text(encoding="utf-8")
        parsed = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: {key} {value!r} is not a JSON object or a JSON file ({e})") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{path}: {key} must be a JSON object, got {value!r}")
    return parsed


# -- rows -----------------------------------------------------------------------------------------------------------
# dataset/preprocessor/core.py: the columns AutoPreprocessor maps (case-insensitively) and the preprocessor it picks
MESSAGE_COLUMNS = ("messages", "conversation", "conversations")
SYSTEM_COLUMNS = ("system", "system_prompt")
QUERY_COLUMNS = ("query", "prompt", "input", "instruction", "question", "problem")
RESPONSE_COLUMNS = ("response", "answer", "output", "targets", "target", "answer_key", "answers", "solution", "text",
                    "completion", "content")
IMAGE_COLUMNS = ("images", "image")
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "bot")
TOOL_CALL_ROLES = ("function_call",)  # MessagesPreprocessor: -> tool_call ('-' read as '_')
TOOL_RESPONSE_ROLES = ("function_response", "observation", "observations")  # -> tool_response
ROLES = ("system", "user", "tool_call", "tool_response", "tool", "assistant")  # _check_messages
MESSAGE_KEYS = ("role", "content", "loss", "loss_scale")


class RenameClash(Exception):
    """ms-swift renames a column onto a name the file already has: the table holds two columns of one name and its
    load raises (KeyError 'Field "query" exists 2 times in schema'), for the whole file."""


def _renamed(row: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """``safe_rename_columns`` on a row's keys (every column of its file, in the table's order): matched without
    case, the last of the columns differing only in case taken; two columns bound for one name are both left as
    they are; a rename onto a column the file keeps raises RenameClash."""
    lower = {k.lower(): k for k in row}
    safe = {lower[src.lower()]: dst for src, dst in mapping.items() if src.lower() in lower}
    bound = Counter(safe.values())
    safe = {k: dst for k, dst in safe.items() if bound[dst] == 1 and k != dst}
    clash = [(k, dst) for k, dst in safe.items() if dst in row and dst not in safe]
    if clash:
        raise RenameClash(f"ms-swift renames its column {clash[0][0]!r} to {clash[0][1]!r}, which the file also has")
    return {safe.get(k, k): v for k, v in row.items()}


def standard_row(row: Mapping[str, Any], columns: Mapping[str, str] | None = None,
                 auto: bool = True) -> dict[str, Any] | None:
    """A dataset row as ms-swift's ``AutoPreprocessor`` standardizes it while loading (``messages`` with roles
    user / assistant / system, ``images`` a list): the ``messages`` / ``conversation(s)`` layout (keys role or from,
    content or value; roles human, gpt, bot; a ``system`` / ``system_prompt`` column put first), alpaca's
    ``instruction`` / ``input`` / ``output``, or ``query`` / ``response`` / ``history`` and their other names. None:
    ms-swift keeps no row for it. Raises ValueError (or KeyError, TypeError) where its preprocessor raises: the row
    is deleted from the dataset (the run stops with ``--strict true``).

    ``row`` holds every column of its file (datasets loads a missing one as None): the renames and the
    preprocessor are the file's. ``columns``: ``--columns``, renamed first (``DatasetLoader``); ``auto`` false
    (``--disable_auto_column_mapping``): the preprocessor's own renames are not made."""
    if columns:
        row = _renamed(row, columns)
    keys = set(row)
    mapping = {k: "images" for k in IMAGE_COLUMNS}
    if keys & set(MESSAGE_COLUMNS):
        mapping.update({k: "messages" for k in MESSAGE_COLUMNS})
        mapping.update({k: "system" for k in SYSTEM_COLUMNS})
        out = _renamed(row, mapping if auto else {})
        messages = out["messages"]
        if isinstance(messages, str):  # default_repair_messages
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                messages = ast.literal_eval(messages)
        if not messages or isinstance(messages, str):
            return None
        messages = [dict(m) for m in messages]
        if any(m.get("tool_calls") or isinstance(m.get("content"), list) for m in messages):
            raise NotImplementedError("OpenAI / Anthropic tool or content-block messages are not modelled")
        for m in messages:
            for std, names in (("role", ("role", "from")), ("content", ("content", "value"))):
                for name in names:
                    if name in m:
                        m[std] = m.pop(name)
        system = out.pop("system", None)
        if "role" not in messages[0] and "content" not in messages[0]:  # [{"user": ..., "assistant": ...}] pairs
            raise NotImplementedError("the user / assistant pair layout is not modelled")
        if messages[0]["role"] == "system":
            pass
        elif system is not None:
            messages.insert(0, {"role": "system", "content": system})
        for m in messages:
            if m["role"] in USER_ROLES:
                m["role"] = "user"
            elif m["role"] in ASSISTANT_ROLES:
                m["role"] = "assistant"
            elif isinstance(m["role"], str) and m["role"].replace("-", "_") in TOOL_CALL_ROLES:
                m["role"] = "tool_call"
            elif isinstance(m["role"], str) and m["role"].replace("-", "_") in TOOL_RESPONSE_ROLES:
                m["role"] = "tool_response"
    else:
        alpaca = "instruction" in keys and "input" in keys
        mapping.update({k: "system" for k in SYSTEM_COLUMNS})
        mapping.update({k: "query" for k in QUERY_COLUMNS})
        mapping.update({k: "response" for k in RESPONSE_COLUMNS})
        out = _renamed(row, mapping if auto else {})
        if alpaca:  # AlpacaPreprocessor.concat_inst_input
            instruction, input_ = out.pop("instruction", None), out.pop("input", None)
            output = out.pop("output", None)
            if output is not None:
                out["response"] = output
            out["query"] = f"{instruction}\n{input_}" if instruction and input_ else instruction or input_
            if not isinstance(out["query"], str):
                raise ValueError("neither instruction nor input is text")
        response = out.pop("response", None)
        if isinstance(response, (list, tuple)):
            response = response[0]
        history = out.pop("history", None) or []
        if isinstance(history, str):
            history = ast.literal_eval(history)
        history = [*history, [out.pop("query", None), response]]
        system = out.pop("system", None)
        messages = [{"role": "system", "content": system}] if system is not None else []
        for pair in history:  # history_to_messages: a list's first two items (IndexError on fewer)
            if not isinstance(pair, (list, tuple)) or len(pair) < 2:
                raise ValueError("a history entry that is not a (query, response) pair")
            messages += [{"role": r, "content": c} for r, c in zip(("user", "assistant"), pair[:2]) if c is not None]
    if not messages:
        raise ValueError("no messages")
    if "rejected_response" in out:  # _check_rejected_response: a column of the file, so null where a row lacks it
        rejected = out["rejected_response"]
        if rejected is None or (isinstance(rejected, str) and rejected == messages[-1].get("content")):
            raise ValueError("its rejected_response is null or the same as its last answer")
    for m in messages:  # _check_messages
        for key in set(m) - set(MESSAGE_KEYS):
            m.pop(key)
        if m.get("role") not in ROLES or m.get("content") is None:
            raise ValueError(f"a message with role {m.get('role')!r} and content {str(m.get('content'))[:40]!r}")
    out["messages"] = messages
    images = out.get("images")
    if isinstance(images, (str, Mapping)):  # _cast_mm_data
        out["images"] = [images]
    return out


# what ms-swift's dataset preprocessor raising on a row looks like in standard_row: the row is deleted
DELETED = (ValueError, KeyError, TypeError, IndexError, SyntaxError, MemoryError, RecursionError)


# -- the run ------------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    return raw.get("__launch__") == NAME


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map)
    model_type = _model_type(config.model)
    template = TEMPLATES.get(config.template or MODEL_TYPES.get(model_type, ""))
    packs = config.tokenize.packing or config.tokenize.padding_free
    if template is not None and packs and template.name not in PADDING_FREE_TEMPLATES:  # SwiftSft._prepare_template
        raise UsageError(f"{path}: --{'packing' if config.tokenize.packing else 'padding_free'} with the "
                         f"{template.name} template: ms-swift raises before training ('Template `{template.name}` "
                         "does not support padding free or packing.'); drop it (ms-swift packs the "
                         f"{', '.join(PADDING_FREE_TEMPLATES)} templates)")
    if template is not None and template.fold_system and config.system is not None:
        raise UsageError(f"{path}: --system with the {template.name} template is not modelled by vlmcheck yet "
                         "(its template folds a row's own system prompt into the first question)")
    if config.grpo is not None and template is not None and template.name not in GRPO_TEMPLATES:
        raise UsageError(f"{path}: `swift rlhf --rlhf_type grpo` with the {template.name} template is not modelled by "
                         f"vlmcheck yet (it models GRPO with {', '.join(GRPO_TEMPLATES)}; {template.name} under "
                         "`swift sft`)")
    if config.pairs is not None and template is not None and template.name not in DPO_TEMPLATES:
        kind = config.pairs.rlhf_type
        raise UsageError(f"{path}: `swift rlhf --rlhf_type {kind}` with the {template.name} template is not modelled "
                         f"by vlmcheck yet (it models {kind} with {', '.join(DPO_TEMPLATES)}; {template.name} under "
                         "`swift sft`)")
    if config.grpo is not None and IMAGE_TAG in (config.system or ""):
        raise UsageError(f"{path}: --system holding {IMAGE_TAG} under GRPO is not modelled by vlmcheck yet (the "
                         "rollout writes it into each row as the row's own system prompt, whose tags take images; "
                         "the length check before it does not)")
    if template is not None and not template.qwen_vl_utils:
        return Run(config, load_model(config.model, overrides=Overrides(extra=dict(template.processor_options))),
                   template)
    factor = IMAGE_PATCH.get(model_type, IMAGE_PATCH["qwen2_vl"]) * SPATIAL_MERGE
    f2 = factor * factor
    # compat_qwen_vl_utils: MAX_PIXELS // factor**2 tokens, then qwen-vl-utils' budget is tokens * factor**2
    hi = (config.max_pixels // f2 if config.max_pixels else UTILS_MAX_TOKENS) * f2
    lo = (config.min_pixels // f2 if config.min_pixels else UTILS_MIN_TOKENS) * f2
    spec = load_model(config.model, overrides=Overrides(resize="qwen-vl-utils", max_pixels=hi, min_pixels=lo))
    return Run(config, spec, template)


def rescaled(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """``--max_pixels``: the template loads the image (``Image.open``, no EXIF rotation) and ``rescale_image`` scales
    one over the budget to ``h = int(sqrt(max_pixels / (W / H)))`` and ``w = int(h' x W / H)`` (h' unrounded)
    before qwen-vl-utils sees it; a side of 0 px makes the resize raise."""
    if not max_pixels or max_pixels <= 0 or width * height <= max_pixels:
        return width, height
    ratio = width / height
    scaled = math.sqrt(max_pixels / ratio)
    w, h = int(scaled * ratio), int(scaled)
    if w <= 0 or h <= 0:
        raise ImageProblem("VC107", f"{width}x{height} scaled to --max_pixels {max_pixels:,} is {w}x{h}: ms-swift's "
                                    "rescale_image raises on a side of 0 px")
    return w, h


class Unbuildable(Exception):
    """ms-swift raises on this row while encoding it."""


class NotModelled(Exception):
    """What ms-swift does with this row is not modelled by vlmcheck: the row is not counted (VC007)."""


class Run(ProcessorRun):
    """An ms-swift ``sft`` run with a modelled template (``TEMPLATES``: Qwen-VL's, Gemma 3's, LLaVA-1.5's, InternVL's,
    Llama 3.2 Vision's), a GRPO run (``Config.grpo``) with one of ``GRPO_TEMPLATES``: each row's prompt judged, or a
    paired run (``Config.pairs``: DPO, ORPO, SimPO, CPO) with one of ``DPO_TEMPLATES``: each row's chosen and
    rejected sequences judged."""

    name = NAME
    versions = VERSIONS
    length_key = "--max_length"
    pixels_key = "MAX_PIXELS"
    config: Config

    def __init__(self, config: Config, spec: ModelSpec, chat: ChatTemplate | None) -> None:
        """``chat``: the template ``--template`` names, else the model type's (None: none modelled)."""
        # the Qwen-VL templates on any Qwen-VL model; the others on their own model types only
        qwen = TEMPLATES[MODEL_TYPES[spec.model_type]].qwen_vl_utils if spec.model_type in MODEL_TYPES else False
        if chat is None or not (spec.model_type in chat.model_types or (chat.qwen_vl_utils and qwen)):
            raise UsageError(f"ms-swift's template for {spec.model_type} is not modelled by vlmcheck yet (it models "
                             f"{', '.join(TEMPLATES)}, each on its own models)")
        if chat.qwen_vl_utils:  # the processor runs with do_resize=False: qwen-vl-utils' size is final
            spec.settings = replace(spec.settings, min_pixels=1, max_pixels=1 << 62)
        self.config = config
        self.chat = chat
        self.template = chat.name
        if config.grpo is not None:  # the report's first line names the command
            self.versions = f"{VERSIONS}; swift rlhf --rlhf_type grpo, truncation_strategy {config.truncation}"
        if config.pairs is not None:
            self.versions = (f"{VERSIONS}; swift rlhf --rlhf_type {config.pairs.rlhf_type}, truncation_strategy "
                             f"{config.truncation}")
        self.use_model(spec)
        # ModelInfo.max_model_len: the default --max_length, and under GRPO the rollout engine's budget
        self.model_len = _max_model_len(spec.path)
        self.max_length = config.max_length or self.model_len
        # the id each image's text is spliced in at: Qwen's one <|image_pad|> (repeated per feature), Gemma 3's
        # <start_of_image> (replaced by the tokenized full_image_sequence)
        self.anchor_id = self.image_token_id if chat.anchor is None else spec.token_id(chat.anchor)
        self.suffix_ids = list(self.tokenizer.encode(chat.suffix, add_special_tokens=False).ids)
        # TemplateMeta.init: the template's stop words, its suffix's last word and the tokenizer's EOS; a last answer
        # ending with one gets no suffix (_swift_encode's endswith_stop_words)
        eos = spec.special_tokens.get("eos_token")
        self.stop_words = {w for w in (*chat.stop_words, chat.suffix.strip(), eos if isinstance(eos, str) else "")
                           if w}
        self.transformers, self.transformers_assumed = _transformers_version()
        self.hf_datasets, self.hf_datasets_assumed = _datasets_version()
        # the day the template is built: today, for a run started today
        self.date = datetime.now().strftime("%d %b %Y")
        # Template._truncate's protected ids (see ChatTemplate.image_token_protected_before)
        self.protected = {self.image_token_id}
        if chat.image_token_protected_before is not None:
            self.protected = {self.anchor_id}
            if version_tuple(self.transformers) < chat.image_token_protected_before:
                self.protected.add(self.image_token_id)
        video = self.tokenizer.token_to_id(chat.video_token) if chat.video_token else None
        if video is not None:
            self.protected.add(video)

    def inputs(self) -> list[Path]:
        return [self.config.path, *self.config.datasets, *self.config.val_datasets]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        cfg = self.config
        files = [(file, False) for file in cfg.datasets] + [(file, True) for file in cfg.val_datasets]
        plans = [json_loadable([f], datasets_version=self.hf_datasets, loader="ms-swift's load_dataset")
                 for f, _ in files]
        for (file, val), plan in zip(files, plans):  # load_dataset loads and samples every file before step 1
            # DatasetLoader.post_process samples each file after its preprocessor: none kept, it divides by zero;
            # a split (0 < --split_dataset_ratio < 1) asserts a training row is left after the one it holds out
            need = 0 if cfg.streaming else 2 if 0 < cfg.split < 1 and not val else 1
            self._columns_load(file, plan)
            kept = self._kept(_full_rows(file, plan), need) if need else 0
            if kept < need:
                raise DatasetError(
                    f"{file}: ms-swift's dataset preprocessor keeps " + ("no row of it (each is deleted while "
                    "loading), and load_dataset raises sampling the empty dataset" if not kept else
                    f"one row of it, and --split_dataset_ratio {cfg.split} holds it out: load_dataset's split "
                    "asserts a training row is left") + "; the run stops before step 1")
        for (file, _), plan in zip(files, plans):
            for row in _full_rows(file, plan):
                yield row, file

    def _columns_load(self, file: Path, plan: LoadPlan) -> None:
        """The renames are the file's (every row holds every column): one that lands on a column the file keeps
        stops the load, which the first row shows."""
        for row in _full_rows(file, plan):
            if isinstance(row, Mapping):
                try:
                    standard_row(row, self.config.columns, self.config.auto_columns)
                except RenameClash as e:
                    raise DatasetError(f"{file}: {e}: the table holds two columns of one name and load_dataset "
                                       "raises (KeyError: the field exists 2 times in the schema); the run stops "
                                       "before step 1") from None
                except Exception:  # noqa: BLE001 - the row's own judge reports anything else
                    pass
                return

    def _kept(self, rows: Iterator[Any], need: int) -> int:
        """How many of ``rows`` (up to ``need``) ms-swift's dataset preprocessor keeps: a row vlmcheck does not
        follow (a layout, a value datasets rewrites) counts as kept, as nothing says it is deleted (the row's own
        judge reports it); a row datasets cannot read stops the load anyway (that row's judge says so)."""
        kept = 0
        for row in rows:
            if isinstance(row, BadRow):
                continue
            if not isinstance(row, Mapping):
                kept += 1
            else:
                try:
                    kept += standard_row(row, self.config.columns, self.config.auto_columns) is not None
                except DELETED:
                    continue
                except Exception:  # noqa: BLE001 - NotImplementedError (VC007) and anything the judge reports
                    kept += 1
            if kept >= need:
                break
        return kept

    def settings_shown(self) -> dict[str, Any]:
        cfg = self.config
        shown: dict[str, Any] = {
            "template": self.template,
            "datasets": [str(d) for d in cfg.datasets], "max_length": self.max_length,
            "truncation_strategy": cfg.truncation, "tuner_type": cfg.train_type,
        }
        if cfg.val_datasets:
            shown["eval_datasets"] = [str(d) for d in cfg.val_datasets]
        if cfg.split:
            shown["split_dataset_ratio"] = cfg.split
        if cfg.grpo is None:  # GRPO encodes nothing while loading, whatever --lazy_tokenize
            shown["lazy_tokenize"] = cfg.tokenize.lazy if cfg.tokenize.lazy else f"false ({cfg.tokenize.why})"
        if cfg.tokenize.packing:
            shown["packing_length"] = cfg.tokenize.packing_length or self.max_length
        if cfg.columns:
            shown["columns"] = cfg.columns
        if not cfg.auto_columns:
            shown["disable_auto_column_mapping"] = True
        if self.chat.qwen_vl_utils:
            shown.update({"image_max_pixels": self.settings.pre_max_pixels,
                          "image_min_pixels": self.settings.pre_min_pixels})
        else:
            shown.update({"images": "sized by the model's image processor, as ms-swift calls it",
                          "transformers": self.transformers + (" (assumed: the newest ms-swift 4.6 accepts)"
                                                               if self.transformers_assumed else " (installed here)"),
                          "image_tokens_protected_at_the_cut": self.image_token_id in self.protected})
        if "{date}" in self.chat.prefix:
            shown["system_block_date"] = f"{self.date} (ms-swift writes the day the run starts)"
        shown["datasets_library"] = self.hf_datasets + (" (assumed: the newest ms-swift 4.6 accepts)"
                                                      if self.hf_datasets_assumed else " (installed here)")
        if cfg.grpo is not None:
            shown.update({"command": "swift rlhf --rlhf_type grpo",
                          "judged": "each row's prompt (its last answer removed), as the rollout encodes it",
                          "loss_scale": cfg.grpo.loss_scale, "num_generations": cfg.grpo.num_generations,
                          "generation_batch_size": cfg.grpo.generation_batch_size,
                          "steps_per_generation": cfg.grpo.steps_per_generation, "world_size": cfg.grpo.world_size,
                          "max_completion_length": cfg.grpo.max_completion_length,
                          "rollout_max_model_len": self.model_len})
        if cfg.pairs is not None:
            shown.update({"command": f"swift rlhf --rlhf_type {cfg.pairs.rlhf_type}",
                          "loss_scale": cfg.pairs.loss_scale,
                          **({"trainer": f"{cfg.pairs.trainer} (loss_type simpo)"}
                             if cfg.pairs.trainer != cfg.pairs.rlhf_type else {}),
                          "judged": "each row's chosen and rejected sequences (the rejected_response in place of "
                                    "the answers after the last question), each cut or checked on its own"})
        return {**shown, **({"max_pixels": cfg.rescale} if cfg.rescale else {}),
                "media_dir": "paths as written in the data"}

    # -- one row --------------------------------------------------------------------------------------------------
    def segments(self, row: Mapping[str, Any], n_images: int) -> list[tuple[str, bool]]:
        """The pieces ms-swift tokenizes one by one, and whether each is trained (``Template._swift_encode``)."""
        chat = self.chat
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Unbuildable("no 'messages' list (vlmcheck reads ms-swift's messages layout)")
        if not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages):
            raise Unbuildable("a message without text content")
        system: str | None = self.config.system
        own: str | None = None  # the row's own system prompt
        if messages[0].get("role") == "system":
            system = own = messages[0]["content"]
            messages = messages[1:]
        if system is None:
            system = chat.default_system or ""
        turns = [dict(m) for m in messages]
        if not turns:  # _swift_encode indexes the first question: IndexError
            raise Unbuildable("no message after the system prompt")
        roles = {m.get("role") for m in turns}
        if roles & {"tool", "tool_response", "tool_call"}:
            raise NotModelled("tool calls and results (ms-swift's agent template) are not modelled")
        if not roles <= {"user", "assistant"}:  # a late system turn: _swift_encode asserts on its role
            raise Unbuildable("a turn that is neither user nor assistant after the first")
        if SPLICE in chat.image_text and (any(SPLICE in m["content"] for m in turns) or SPLICE in system):
            raise NotModelled("a row holding the character U+E000 (vlmcheck's own marker)")
        # _add_default_tags (before any turn is merged or added): the tags of the row's own system prompt (not
        # --system's, applied later) and of every message counted, missing ones put at the start of the first
        # message; tags past the images stay text (_pre_tokenize_images replaces the first ones, in order)
        tags = sum(m["content"].count(IMAGE_TAG) for m in turns) + (own or "").count(IMAGE_TAG)
        if n_images > tags:
            turns[0]["content"] = IMAGE_TAG * (n_images - tags) + turns[0]["content"]
        # _swift_prepare_inputs: consecutive user turns are one (their texts joined), consecutive answers one of
        # several parts (each with its own loss); _get_std_messages: an empty question before a leading answer, no
        # answer after a trailing question (its prompt is written, nothing after it)
        queries: list[str] = []
        answers: list[list[tuple[str, bool]] | None] = []  # per round its answer's parts (None: no answer)
        # LossScale.__call__'s is_last_round: the answers after the last question (all of them without one)
        last_user = max((j for j, m in enumerate(turns) if m["role"] == "user"), default=-1)
        for j, m in enumerate(turns):
            if m["role"] == "user":
                if queries and answers[-1] is None:
                    queries[-1] += m["content"]
                else:
                    queries.append(m["content"])
                    answers.append(None)
                continue
            if not queries:
                queries.append("")
                answers.append(None)
            answer = answers[-1] if answers[-1] is not None else []
            answer.append((m["content"], self._answer_trained(m, last_round=j > last_user)))
            answers[-1] = answer
        if chat.strip_answers:  # Gemma3Template._swift_encode: an answer lone in its round loses its leading and
            # trailing newlines; one merged from several (a list of parts by then) keeps them
            answers = [[(said[0][0].strip("\n"), said[0][1])] if said is not None and len(said) == 1 else said
                       for said in answers]
        if chat.fold_system:  # Gemma3Template: a system prompt given (even empty) opens the first question
            if own is not None:
                queries[0] = own + "\n\n" + queries[0]
            system = ""
        pieces: list[tuple[str, bool]] = [(chat.system_prefix.format(system=system, date=self.date) if system
                                           else chat.prefix.format(date=self.date), False)]
        for i, (query, said) in enumerate(zip(queries, answers)):
            pieces.append((chat.prompt.format(query=query), False))
            if said is None:  # a trailing question: nothing is written after its prompt
                continue
            pieces += said
            if i < len(queries) - 1:  # chat_sep after every answer but the last (untrained; see _encode)
                pieces.append((chat.chat_sep, False))
            elif not any(said[-1][0].endswith(word) for word in self.stop_words):
                pieces.append((chat.suffix, True))  # the last answer's suffix: a SUFFIX context (trained)
        left = n_images  # the first tags, in order, become the images' text (_pre_tokenize_images)
        placed: list[tuple[str, bool]] = []
        for text, trained in pieces:
            parts = text.split(IMAGE_TAG)
            out = parts[0]
            for part in parts[1:]:
                if not left:
                    out += IMAGE_TAG + part
                elif trained:  # an answer's image is a context of its own, untrained (loss_scale 0)
                    placed += [(out, True), (chat.image_text, False)]
                    out = part
                else:
                    out += chat.image_text + part
                left = max(left - 1, 0)
            placed.append((out, trained))
        merged: list[tuple[str, bool]] = []  # _simplify_context_list: pieces of the same loss are joined
        for text, trained in placed:
            if merged and merged[-1][1] == trained:
                merged[-1] = (merged[-1][0] + text, trained)
            elif text:
                merged.append((text, trained))
        return merged

    def _answer_trained(self, message: Mapping[str, Any], *, last_round: bool) -> bool:
        """Whether the loss scale trains an answer (LossScale._inner_call), which decides how the pieces are joined
        for tokenizing: under ``default`` (swift sft's) unless its ``loss`` is false or its ``loss_scale`` 0; under
        ``last_round`` (GRPO's and the paired types') an answer of the last round as under ``default``, and one
        before the last question only when its ``loss`` is true (every answer of a GRPO prompt is before its last
        question)."""
        rlhf = self.config.grpo or self.config.pairs
        if rlhf is None or rlhf.loss_scale == "default" or last_round:
            return _trained(message)
        scale = message.get("loss_scale")
        return bool(message.get("loss")) and not (scale is not None and not scale)

    def _size(self, image: Any, source: Path) -> tuple[int, int]:
        """qwen-vl-utils' ``fetch_image`` opens images with ``Image.open``: no EXIF rotation."""
        if isinstance(image, Mapping):
            data, where = image.get("bytes"), image.get("path")
            if data:
                return rescaled(*probe_bytes(bytes(data)).size(exif_transpose=False), self.config.rescale)
            image = where
        if not isinstance(image, str) or not image:
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which ms-swift cannot open")
        if image.startswith(("http://", "https://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        path = Path(image)
        if not path.is_absolute() and not path.exists() and (source.parent / path).exists():
            path = source.parent / path
        return rescaled(*probe_path(path).size(exif_transpose=False), self.config.rescale)

    def judge(self, index: int, row: Any, source: Path) -> SampleResult:
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        found = result.findings
        frame: dict[str, Any] = {"name": NAME, "verdict": "ok"}
        if source in self.config.val_datasets and source not in self.config.datasets:
            frame["split"] = "eval"  # --val_dataset: encoded the same way, for evaluation
        result.framework = frame
        if isinstance(row, BadRow) or not isinstance(row, Mapping):
            found.append(F.make("VC001", f"{row.reason if isinstance(row, BadRow) else 'not an object'}; ms-swift "
                                         "cannot load the dataset and stops"))
            frame["verdict"] = "stops"
            return result
        if isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        try:
            standard = standard_row(row, self.config.columns, self.config.auto_columns)
        except NotImplementedError as e:
            return self._not_counted(result, e)
        except DELETED as e:
            self._refused(result, f"ms-swift's dataset preprocessor raises on this row ({type(e).__name__}: "
                                  f"{str(e)[:120]}) and deletes it from the dataset", at="preprocess")
            return result
        if standard is None:
            found.append(F.make("VC006", "ms-swift's dataset preprocessor keeps no row for it (empty messages)"))
            frame.update(verdict="dropped", dropped_at="preprocess")
            return result
        row = standard
        if row.get("objects"):  # _pre_tokenize: <ref-object> / <bbox> tags written from the objects, boxes rescaled
            found.append(F.make("VC007", "grounding objects (<ref-object> / <bbox> written from the row's objects) "
                                         "are not modelled by vlmcheck yet: the row is not counted"))
            frame["verdict"] = "unknown"
            return result
        if _tools(row.get("tools")):  # Template._preprocess_tools: the agent template writes them into the system
            agent = self.config.agent_template or self.chat.agent_template
            if agent is None:
                self._encode_failed(result, f"the row has tools and template {self.template} has no agent template "
                                            "('Failed to automatically match an agent_template'; --agent_template "
                                            "names one)")
            else:
                found.append(F.make("VC007", f"tools written into the system prompt by the {agent} agent template "
                                             "are not modelled by vlmcheck yet: the row is not counted"))
                frame["verdict"] = "unknown"
            return result
        media = [key for key in ("videos", "video", "audios", "audio") if row.get(key)]
        if media:
            found.append(F.make("VC007", f"the row's {media[0]} are not modelled by vlmcheck yet (ms-swift would "
                                         "write their tokens too): the row is not counted"))
            frame["verdict"] = "unknown"
            return result
        if self.config.grpo is not None:  # the rollout generates the answer: remove_response takes the last one
            row = _prompt_only(row)
            if _ends_with_answer(row):
                found.append(F.make("VC007", "a prompt that still ends with an answer once the last one is removed "
                                             "(ms-swift continues that answer, and its length check writes it "
                                             "otherwise) is not modelled by vlmcheck yet: the row is not counted"))
                frame["verdict"] = "unknown"
                return result
        rejected: dict[str, Any] | None = None
        if self.config.pairs is not None:  # TemplateInputs.from_dict: the pair, sharing the images
            try:
                rejected = _rejected_row(row)
            except Unbuildable as e:
                self._refused(result, str(e))
                return result
            except NotModelled as e:
                return self._not_counted(result, e)
            rejected = _start_image_tag(_image_path_tags(rejected))  # _preprocess_inputs, on each of the pair
        row = _start_image_tag(_image_path_tags(row))
        images = row.get("images") or []
        if rejected is not None and (rejected.get("images") or []) != images:
            found.append(F.make("VC007", "<img>PATH</img> tags that give the chosen and the rejected sequence "
                                         "different images are not modelled by vlmcheck yet: the row is not counted"))
            frame["verdict"] = "unknown"
            return result
        images = images if isinstance(images, list) else [images]
        probed = self.probe(images, found, size=lambda image: self._size(image, source))
        expansions = probed.expansions
        if probed.refused:
            result.image_tokens = [None] * len(images)
            if not self.chat.qwen_vl_utils and any(f.code == "VC107" for f in found):
                frame["verdict"] = "crash"  # the processor's resize runs out of memory: the data loader dies
                return result
            self._encode_failed(result, "an image cannot be loaded" + (" or qwen-vl-utils refuses it"
                                                                       if self.chat.qwen_vl_utils else ""))
            return result
        counts = [e.features for e in expansions]
        result.image_tokens = list(counts)
        try:
            ids, trained, owner = self._encode(self.segments(row, len(images)), expansions)
        except Unbuildable as e:
            self._encode_failed(result, str(e))
            return result
        except NotModelled as e:
            return self._not_counted(result, e)
        if self.config.grpo is not None:
            return self._judge_prompt(result, row, ids, owner, counts)
        self._judge_sequence(result, ids, trained, owner, counts)
        if rejected is None or frame["verdict"] == "dropped":  # MaxLengthError on the chosen: never reaches rejected
            return result
        try:
            other = self._encode(self.segments(rejected, len(images)), expansions)
        except Unbuildable as e:
            self._refused(result, f"the rejected sequence: {e}")
            return result
        except NotModelled as e:
            result.findings[:] = [F.make("VC007", f"the rejected sequence: {e} by vlmcheck yet: the row is not "
                                                  "counted")]
            frame["verdict"] = "unknown"
            return result
        self._judge_rejected(result, *other, counts)
        return result

    def _judge_rejected(self, result: SampleResult, ids: list[int], trained: list[bool], owner: list[int],
                        counts: list[int]) -> None:
        """DPO: the rejected sequence, encoded and cut on its own as the chosen (Template._rlhf_encode runs
        _encode_truncated on each); its numbers go in ``framework.pair`` (the record's own are the chosen's), its
        findings are the row's, and the row's verdict the worse of the two (a MaxLengthError on either deletes it)."""
        frame = result.framework or {}
        mine = SampleResult(index=result.index, id=result.id, tokens=None, image_tokens=list(counts),
                            supervised_tokens=None, framework={"name": NAME, "verdict": "ok"})
        self._judge_sequence(mine, ids, trained, owner, counts)
        theirs = mine.framework or {}
        frame["pair"] = {"chosen_tokens": result.tokens, "rejected_tokens": mine.tokens,
                         "rejected_supervised": mine.supervised_tokens,
                         **{f"kept_rejected_{k[len('kept_'):]}": v for k, v in theirs.items()
                            if k.startswith("kept_")}}
        for finding in mine.findings:
            finding.message = f"the rejected sequence: {finding.message}"
            result.findings.append(finding)
        if VERDICT_RANK[theirs["verdict"]] > VERDICT_RANK[frame["verdict"]]:
            frame["verdict"] = theirs["verdict"]
            if "dropped_at" in theirs:
                frame["dropped_at"] = theirs["dropped_at"]

    def _judge_sequence(self, result: SampleResult, ids: list[int], trained: list[bool], owner: list[int],
                        counts: list[int]) -> SampleResult:
        """One encoded sequence against --max_length as ``Template._encode_truncated`` meets it (``swift sft``'s
        sample, a DPO pair's chosen or rejected sequence): kept whole, dropped (``delete``) or cut."""
        found = result.findings
        frame = result.framework or {}
        total = len(ids)
        result.tokens = total
        result.supervised_tokens = sum(trained)
        result.text_only_tokens = total - sum(1 for o in owner if o >= 0)
        if result.supervised_tokens == 0:
            found.append(F.make("VC003", "no answer tokens to learn from: every label is masked"))
        limit = self.max_length
        if total <= limit:
            frame.update(kept_tokens=total, kept_supervised=sum(trained), kept_image_tokens=self._per_image(owner, counts))
            literal = sum(1 for o in owner if o == len(counts))
            if literal:
                frame["kept_literal_image_tokens"] = literal
            self._literal_images(result, owner, counts)
            return result
        fix = f"set {_setting('--max_length', total)}"
        if self.config.truncation == "delete":
            # LazyLLMDataset (and AddLengthPreprocessor, EncodePreprocessor) re-raise every encode error under
            # --strict, this one too; IterablePackingDataset (--streaming --packing) skips a MaxLengthError all the same
            if self.config.strict and not (self.config.streaming and self.config.tokenize.packing):
                found.append(F.make("VC204", f"{total:,} tokens > --max_length {limit:,}: ms-swift raises "
                                             f"MaxLengthError, and with --strict true {self._stops}", fix=fix,
                                    tokens=total, max_length=limit))
                frame["verdict"] = "stops"
                return result
            if self.config.preencoded:
                found.append(F.make("VC204", f"{total:,} tokens > --max_length {limit:,}: ms-swift raises "
                                             f"MaxLengthError while {self._loading} and deletes the row "
                                             "(truncation_strategy delete)", fix=fix + " to keep it",
                                    tokens=total, max_length=limit))
                frame.update(verdict="dropped", dropped_at="preprocess")
                return result
            found.append(F.make("VC204", f"{total:,} tokens > --max_length {limit:,}: ms-swift raises MaxLengthError "
                                         "and skips the row (truncation_strategy delete)", fix=fix + " to keep it",
                                tokens=total, max_length=limit))
            frame.update(verdict="dropped", dropped_at="encode")
            return result
        kept = self._cut(ids, limit)
        labels = [trained[i] for i in kept]
        if labels:
            labels[0] = False
        kept_owner = [owner[i] for i in kept]
        kept_images = self._per_image(kept_owner, counts)
        frame.update(kept_tokens=len(kept), kept_supervised=sum(labels), kept_image_tokens=kept_images)
        literal = sum(1 for o in kept_owner if o == len(counts))
        if literal:
            frame["kept_literal_image_tokens"] = literal
        cut = [k for k, (n, left) in enumerate(zip(counts, kept_images)) if left < n]
        for k in cut:
            found.append(F.make(
                "VC201", f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {kept_images[k]:,} survive "
                         f"ms-swift's {self.config.truncation} cut at --max_length {limit:,} (the sample is {total:,} "
                         f"tokens; its Template._truncate keeps only {self.chat.anchor} under transformers "
                         f"{self.transformers}): the model raises 'Image features and image tokens do not match' at "
                         "the step that reaches it",
                fix=fix + " or drop the sample", image=k + 1, image_tokens=counts[k], kept=kept_images[k],
                tokens=total, max_length=limit))
        if self.chat.cross_attention and counts:
            self._cross_attention(result, ids, kept, limit)
        if cut:
            frame["verdict"] = "crash"
        elif result.supervised_tokens and not any(labels):
            found.append(F.make("VC202", f"all {result.supervised_tokens:,} supervised tokens are cut at --max_length "
                                         f"{limit:,}", fix=fix, supervised=result.supervised_tokens, tokens=total,
                                max_length=limit))
        else:
            found.append(F.make("VC203", f"{total:,} tokens > --max_length {limit:,}: ms-swift keeps every image token "
                                         f"and cuts {total - len(kept):,} text tokens from the "
                                         f"{self.config.truncation}", fix=fix + " to keep it whole", tokens=total,
                                max_length=limit, supervised_lost=result.supervised_tokens - sum(labels)))
        if not cut:
            frame["verdict"] = "cut"
        self._literal_images(result, kept_owner, counts)
        return result

    def _cut(self, ids: list[int], limit: int) -> list[int]:
        """The positions ``Template._truncate`` keeps (``left`` / ``right``): every protected id, and the text on its
        side of the cut that fits beside them."""
        protected = [t in self.protected for t in ids]  # Template._truncate keeps these ids, cuts around them
        room = limit - sum(protected)
        if room > 0:
            text = [i for i, p in enumerate(protected) if not p]
            for i in (text[-room:] if self.config.truncation == "left" else text[:room]):
                protected[i] = True
        return [i for i, p in enumerate(protected) if p]

    def _judge_prompt(self, result: SampleResult, row: Mapping[str, Any], ids: list[int], owner: list[int],
                      counts: list[int]) -> SampleResult:
        """GRPO: the row's prompt as ms-swift's rollout encodes it (no answer, so nothing is supervised). Under
        ``delete`` GRPOTrainer._rollout_samples first encodes each prompt in training mode
        (rl_core/resample.py resample_encode_failed_inputs): one over --max_length raises MaxLengthError and is
        replaced by another row. The rollout then builds a request of the prompt's messages
        (OnPolicySample.to_infer_request) and TransformersEngine encodes it (strict: a raise stops the run), cut
        from the left under ``left``; set_default_max_tokens raises when it leaves the model's max_model_len no
        room. The training step encodes the whole prompt with the completion, without max_length
        (GRPOTrainer._prepare_batch_inputs under _template_context)."""
        found = result.findings
        frame = result.framework or {}
        total, limit = len(ids), self.max_length
        result.tokens = total
        result.text_only_tokens = total - sum(1 for o in owner if o >= 0)
        frame["prompt_tokens"] = total
        if total > limit and self.config.truncation == "delete":
            found.append(F.make(
                "VC204", f"the prompt is {total:,} tokens > --max_length {limit:,}: ms-swift's GRPO trainer encodes "
                         "each prompt before its rollout (resample_encode_failed_inputs), its template raises "
                         "MaxLengthError and the row is replaced by another row of the dataset (truncation_strategy "
                         "delete)", fix=f"set {_setting('--max_length', total)} to keep it", tokens=total,
                max_length=limit))
            frame["verdict"] = "dropped"
            return result
        # the request's messages are Dict[str, str | list | None]: a loss key of another type makes dacite raise
        typed = [(k, key, m[key]) for k, m in enumerate(row.get("messages") or [], 1) if isinstance(m, Mapping)
                 for key in ("loss", "loss_scale") if m.get(key) is not None and not isinstance(m[key], str)]
        if typed:
            k, key, value = typed[0]
            found.append(F.make(
                "VC001", f"message {k} of the prompt has {key} {value!r}: ms-swift's rollout builds its request from "
                         "the prompt's messages (OnPolicySample.to_infer_request), whose values must be text, and "
                         "dacite raises UnionMatchError; the run stops at the step that reaches this row",
                fix=f"drop the {key} keys of the messages before the last answer (GRPO generates the answer)"))
            frame["verdict"] = "stops"
            return result
        kept = list(range(total)) if total <= limit else self._cut(ids, limit)
        kept_owner = [owner[i] for i in kept]
        frame.update(kept_tokens=len(kept), kept_image_tokens=self._per_image(kept_owner, counts))
        literal = sum(1 for o in kept_owner if o == len(counts))
        if literal:
            frame["kept_literal_image_tokens"] = literal
        if total > limit:
            found.append(F.make(
                "VC203", f"the prompt is {total:,} tokens > --max_length {limit:,}: ms-swift's rollout generates from "
                         f"it cut from the left ({total - len(kept):,} text tokens cut, every image token kept), and "
                         "its training step encodes the whole prompt with the completion (the template runs without "
                         "max_length there)", fix=f"set {_setting('--max_length', total)} to keep it whole",
                tokens=total, max_length=limit))
            frame["verdict"] = "cut"
        if len(kept) >= self.model_len:
            found.append(F.make(
                "VC206", f"the prompt the rollout generates from is {len(kept):,} tokens, and the model's "
                         f"max_model_len is {self.model_len:,}: ms-swift's TransformersEngine raises ('Input length "
                         f"({len(kept)}) leaves no room for generation') and the run stops at the step that reaches "
                         "this row", fix=f"set {_setting('--max_length', self.model_len - 1)} or lower",
                tokens=len(kept), max_length=self.model_len))
            frame["verdict"] = "crash"
        self._literal_images(result, kept_owner, counts)
        return result

    def _encode_failed(self, result: SampleResult, reason: str) -> None:
        """The template's encode raises on the row: under ``swift sft`` skipped or the run stops (``_refused``);
        under GRPO the row is replaced by another (``delete``: the length check before the rollout encodes it
        first) or the rollout's own encode raises and the run stops (``left``)."""
        if self.config.grpo is None:
            self._refused(result, reason)
            return
        frame = result.framework or {}
        if self.config.truncation == "delete":
            result.findings.append(F.make(
                "VC006", f"{reason}; ms-swift's GRPO trainer encodes each prompt before its rollout "
                         "(resample_encode_failed_inputs) and replaces a row whose encode raises with another one"))
            frame["verdict"] = "dropped"
        else:
            result.findings.append(F.make(
                "VC001", f"{reason}; ms-swift's rollout encodes the prompt (TransformersEngine, which raises on an "
                         "encode error) and the run stops at the step that reaches this row"))
            frame["verdict"] = "stops"

    def _cross_attention(self, result: SampleResult, ids: list[int], kept: list[int], limit: int) -> None:
        """Llama3_2VisionTemplate builds cross_attention_mask from the whole sample, and Template._truncate cuts only
        the ids: the model reads the mask's first rows for the ids left (MllamaModel slices it by position), so a
        kept token whose row is another token's attends the wrong images (VC207)."""
        before = mllama.attended_images(ids, self.image_token_id)
        after = mllama.attended_images([ids[i] for i in kept], self.image_token_id)
        wrong = sum(1 for j, images in enumerate(after) if before[j] != images)
        if not wrong:
            return
        (result.framework or {})["misaligned_tokens"] = wrong
        result.findings.append(F.make(
            "VC207", f"{wrong:,} of the {len(kept):,} tokens left after ms-swift's {self.config.truncation} cut at "
                     f"--max_length {limit:,} attend the wrong images (or none): its llama3_2_vision template builds "
                     "cross_attention_mask from the whole sample and cuts only the tokens, and the model reads the "
                     "mask's first rows; nothing raises",
            fix=f"set {_setting('--max_length', len(ids))}, or drop the sample", misaligned=wrong, tokens=len(ids),
            max_length=limit))

    @staticmethod
    def _per_image(owner: list[int], counts: list[int]) -> list[int]:
        """The image tokens of each image among ``owner`` (each position's image, -1 for text)."""
        held = Counter(o for o in owner if o >= 0)
        return [held.get(k, 0) for k in range(len(counts))]

    def _literal_images(self, result: SampleResult, owner: list[int], counts: list[int]) -> None:
        """An image token the row's text holds (Gemma 3's <start_of_image>; LLaVA's <image>, also a tag past the
        images, which stays text) is expanded like the images' own when the row has images (the template splices
        every one): more image tokens than features, a crash."""
        extra = sum(1 for o in owner if o == len(counts))
        if not extra:
            return
        token = self.chat.anchor or self.family.image_token
        result.findings.append(F.make(
            "VC002", f"the row's text holds {token} beyond its {len(counts)} image(s) (written as text, or an <image> "
                     f"tag past the images): ms-swift's {self.template} template expands it like an image, so the "
                     f"model sees {extra:,} image tokens more than the features and raises ('Image features and "
                     "image tokens do not match')",
            fix=f"remove {token} from the row's text, or give each <image> tag its image", literal_tokens=extra))
        (result.framework or {})["verdict"] = "crash"

    def _not_counted(self, result: SampleResult, e: Exception) -> SampleResult:
        """A row whose ``e`` says what in it vlmcheck does not model ("... are not modelled"): VC007, not counted."""
        result.findings.append(F.make("VC007", f"{e} by vlmcheck yet: the row is not counted"))
        (result.framework or {})["verdict"] = "unknown"
        return result

    def _refused(self, result: SampleResult, reason: str, *, at: str = "encode") -> None:
        """``template.encode`` raises (``at`` ``encode``), or the dataset preprocessor does (``preprocess``): with
        ``--strict false`` (the default) ms-swift skips the row (the data loader draws another in its place) or
        deletes it from the dataset; with ``--strict true`` the run stops. The record's ``dropped_at`` says which."""
        frame = result.framework or {}
        if self.config.strict:
            stops = self._stops if at == "encode" and self.config.preencoded else "ms-swift stops"
            result.findings.append(F.make("VC001", f"{reason}; with --strict true {stops}"))
            frame["verdict"] = "stops"
        elif at == "preprocess":
            result.findings.append(F.make("VC006", f"{reason} (--strict false)"))
            frame.update(verdict="dropped", dropped_at=at)
        elif self.config.preencoded:
            result.findings.append(F.make("VC006", f"{reason}; ms-swift's encode raises while {self._loading} and "
                                                   "it deletes the row (--strict false)"))
            frame.update(verdict="dropped", dropped_at="preprocess")
        else:
            result.findings.append(F.make("VC006", f"{reason}; ms-swift's encode raises and it skips the row "
                                                   "(--strict false)"))
            frame.update(verdict="dropped", dropped_at=at)

    @property
    def _loading(self) -> str:
        """Where a pre-encoded run (Config.preencoded) encodes its rows."""
        if self.config.streaming:
            return "the stream yields it (under --streaming each row is encoded there)"
        return (f"loading (under {self.config.tokenize.why} it encodes every row before training: "
                "AddLengthPreprocessor)")

    @property
    def _stops(self) -> str:
        """What --strict true does with a row whose encode raises: its training dataset re-raises at the fetch
        (LazyLLMDataset), or the encode while loading does (a pre-encoded run: before step 1)."""
        if self.config.grpo is None and self.config.streaming:
            return "the stream's encode re-raises it: the run stops when the stream reaches the row"
        if self.config.preencoded:
            return (f"the encode while loading re-raises it (under {self.config.tokenize.why} every row is encoded "
                    "before training: AddLengthPreprocessor): the run stops before step 1")
        return "its dataset re-raises it: the run stops at the step that reaches the row"

    def conclude(self, records: Iterable[Mapping[str, Any]]) -> list[F.Finding]:
        """VC208: ``swift sft`` and the paired ``swift rlhf`` types wrap the training dataset in LazyLLMDataset,
        which (``--strict false``) meets a row whose encode raises by drawing others from a seeded permutation, at
        most 10 tries per fetch (``n_try_fetch``, fewer for a smaller dataset), then raises 'Failed to retrieve the
        dataset' and the run stops. From the training rows' records: every row skipped, the first fetch raises;
        else the expected number of fetches per epoch whose every try meets a skipped row (fetch_failures). GRPO
        replaces rows its own way: ``_conclude_grpo``."""
        if self.config.grpo is not None:
            return self._conclude_grpo(records, self.config.grpo)
        if self.config.streaming or self.config.strict:  # an empty stream's raise is not modelled
            return []
        if self.config.preencoded:  # nothing is skipped at fetch: LazyLLMDataset's retries never run out
            return self._conclude_deleted(records)
        rows = skipped = unknown = 0
        for record in records:
            frame = record.get("framework") or {}
            if frame.get("split") == "eval" or frame.get("dropped_at") == "preprocess":
                continue  # not in the training LazyLLMDataset
            rows += 1
            skipped += frame.get("dropped_at") == "encode"
            unknown += frame.get("verdict") == "unknown"
        if not skipped:
            return []
        expected = fetch_failures(rows, skipped)
        share = f"ms-swift's encode skips {skipped:,} of the {rows:,} training rows"
        said = "Failed to retrieve the dataset. You can avoid this issue by increasing `max_length` or ..."
        if skipped == rows:
            return [F.make("VC208", f"{share}: every row, so LazyLLMDataset's first fetch tries {min(10, rows)} "
                                    f"rows, each skipped, and raises ('{said}'): the run stops at step 1",
                           fix="make the rows fit (raise --max_length, cap --max_pixels) or fix what their encode "
                               "raises on", rows=rows, skipped=skipped)]
        chance = 1 - math.exp(-expected)
        if chance < FETCH_FAILURE_SHOWN:
            return []
        note = (f" ({unknown:,} rows vlmcheck does not count are taken as encoded, so the risk may be higher)"
                if unknown else "")
        return [F.make("VC208", f"{share} ({skipped / rows:.0%}); LazyLLMDataset replaces a skipped row by "
                                f"drawing others, at most {min(10, rows)} tries per fetch, then raises ('{said}'): "
                                f"expected {expected:,.2f} such fetches per epoch, a {chance:.0%} chance that an "
                                f"epoch stops the run{note}",
                       fix="make the skipped rows fit (raise --max_length, cap --max_pixels) or remove them from the "
                           "dataset", rows=rows, skipped=skipped, expected_per_epoch=round(expected, 3))]

    def _conclude_deleted(self, records: Iterable[Mapping[str, Any]]) -> list[F.Finding]:
        """VC208 of a run that encodes its rows while loading (Config.preencoded, ``--strict false``): a row whose
        encode raises is deleted there, so what LazyLLMDataset later fetches always encodes. When every training
        row is deleted, SwiftSft._encode_dataset leaves no training dataset (None) and _show_dataset, reading its
        first row before training, raises: the run stops before step 1."""
        rows = deleted = 0
        for record in records:
            frame = record.get("framework") or {}
            if frame.get("split") == "eval":
                continue
            rows += 1
            deleted += frame.get("verdict") == "dropped"
        if not rows or deleted < rows:
            return []
        said = "TypeError: 'NoneType' object is not iterable"
        where = f"its encode while loading (under {self.config.tokenize.why} every row is encoded before training)"
        return [F.make("VC208", f"ms-swift deletes every one of the {rows:,} training rows, {where} or its dataset "
                                f"preprocessor deleting each, so no training row is left and SwiftSft._show_dataset "
                                f"raises reading the first ('{said}'): the run stops before step 1",
                       fix="make the rows fit (raise --max_length, cap --max_pixels) or fix what their encode raises "
                           "on", rows=rows, skipped=deleted)]

    def _conclude_grpo(self, records: Iterable[Mapping[str, Any]], grpo: Grpo) -> list[F.Finding]:
        """VC208 under GRPO with ``delete``: GRPOTrainer._rollout_samples hands each generation batch to
        resample_encode_failed_inputs (rl_core/resample.py), which replaces the prompts whose encode raises by
        drawing others from its resample iterator, at most ``required x 10`` draws (``required``: the process's rows
        of the batch, each prompt ``--num_generations`` times), then raises 'resample: only collected ...' and the
        run stops (``--strict`` plays no part). Every training row replaced: the first batch raises; else the
        generation batches of an epoch that are expected to raise, and the chance that an epoch stops
        (resample_failures)."""
        if self.config.truncation != "delete" or self.config.streaming:
            return []
        rows = skipped = unknown = 0
        for record in records:
            frame = record.get("framework") or {}
            if frame.get("split") == "eval" or frame.get("dropped_at") == "preprocess":
                continue  # not in the training dataset
            rows += 1
            skipped += frame.get("verdict") == "dropped"
            unknown += frame.get("verdict") == "unknown"
        batches, chance = resample_failures(rows, skipped, generations=grpo.num_generations,
                                            batch=grpo.generation_batch_size, world=grpo.world_size,
                                            iterations=grpo.iterations)
        if not skipped or not batches:
            return []
        share = grpo.generation_batch_size // grpo.world_size
        required = f"{share:,} rows of a generation batch" + (" on each process" if grpo.world_size > 1 else "")
        replaced = f"ms-swift's GRPO trainer replaces {skipped:,} of the {rows:,} training prompts"
        said = f"resample: only collected .../{share} valid samples after ... attempts"
        fix = ("make the replaced prompts fit (raise --max_length, cap --max_pixels) or fix what their encode raises "
               "on, or remove them from the dataset; or --truncation_strategy left (the rollout cuts them instead)")
        if skipped == rows:
            return [F.make("VC208", f"{replaced}: every one, so resample_encode_failed_inputs draws "
                                    f"{share * RESAMPLE_ROUNDS:,} replacements for the {required}, each replaced "
                                    f"too, and raises ('{said}'): the run stops at step 1", fix=fix, rows=rows,
                           skipped=skipped)]
        if not grpo.shuffle:  # a fixed order: which batches fail is not a chance (not modelled yet)
            return []
        expected = batches * chance
        epoch = 1 - (1 - chance) ** batches
        if epoch < FETCH_FAILURE_SHOWN:
            return []
        notes = [f"{unknown:,} rows vlmcheck does not count are taken as encoded"] if unknown else []
        if grpo.dynamic_sample:
            notes.append("--dynamic_sample true replaces more batches the same way")
        note = f" ({'; '.join(notes)}: the risk may be higher)" if notes else ""
        return [F.make("VC208", f"{replaced} ({skipped / rows:.0%}) before each rollout (their encode raises): "
                                f"resample_encode_failed_inputs draws at most {share * RESAMPLE_ROUNDS:,} others for "
                                f"the {required}, then raises ('{said}'): expected {expected:,.2f} such batches of "
                                f"the {batches:,} per epoch, a {epoch:.0%} chance that an epoch stops the run{note}",
                       fix=fix, rows=rows, skipped=skipped, batches_per_epoch=batches,
                       expected_per_epoch=round(expected, 3))]

    def _encode(self, segments: list[tuple[str, bool]], expansions: list[Expansion]
                ) -> tuple[list[int], list[bool], list[int]]:
        """The ids, whether each is trained, and which image each image token belongs to (-1: text; one past the
        last image: a Gemma 3 literal expanded all the same). ``_add_dynamic_eos`` then trains the ``suffix`` ids
        that open an untrained run after a trained one (the separator after each answer but the last)."""
        ids: list[int] = []
        trained: list[bool] = []
        owner: list[int] = []
        k = 0
        for text, mark in segments:
            parts = text.split(SPLICE)
            for j, part in enumerate(parts):
                if j:  # InternvlhfTemplate: the image's feature tokens, spliced in as ids
                    n = expansions[k].features
                    ids += [self.image_token_id] * n
                    trained += [False] * n
                    owner += [k] * n
                    k += 1
                k = self._encode_text(part, mark, expansions, k, ids, trained, owner)
        n, before = len(self.suffix_ids), list(trained)
        for start in range(1, len(ids)):  # each untrained run after a trained one, as the labels were
            if before[start - 1] and not before[start] and ids[start:start + n] == self.suffix_ids \
                    and not any(before[start:start + n]):
                trained[start:start + n] = [True] * n
        if trained:
            trained[0] = False  # Template._encode: labels[0] = -100
        return ids, trained, owner

    def _encode_text(self, text: str, mark: bool, expansions: list[Expansion], k: int, ids: list[int],
                     trained: list[bool], owner: list[int]) -> int:
        """One piece of text tokenized onto ``ids``, ``trained`` and ``owner``, its image tokens expanded as the
        template expands them; the images spent so far (``k`` before)."""
        literal = [len(expansions) if expansions else -1]  # an image token left as written: one more than features
        for token in self.tokenizer.encode(text, add_special_tokens=False).ids:
            if token != self.anchor_id:
                ids.append(token)
                trained.append(mark)
                # Gemma 3: a <image_soft_token> written as text is one image token more for the model
                owner += literal if token == self.image_token_id else [-1]
                continue
            # a token no template expands keeps its label (_extend_tokens masks only the tokens it replaces)
            if SPLICE in self.chat.image_text:  # InternvlhfTemplate: the row's own image token stays one token
                piece, mine, labels = [token], literal, [mark]
            elif self.chat.anchor is None and not self.chat.qwen_vl_utils and not expansions:
                piece, mine, labels = [token], [-1], [mark]  # LlavaHfTemplate._encode expands only with images
            elif self.chat.anchor is None and self.chat.qwen_vl_utils and k >= len(expansions):
                # Qwen2VLTemplate._encode: _extend_tokens gives the features to the first image tokens in order; one
                # past the images stays (its IndexError is caught)
                piece, mine, labels = [token], literal, [mark]
            elif self.chat.anchor is None:
                # LlavaHfTemplate._encode repeats every image token of the text, one written as text too
                piece = [token] * expansions[min(k, len(expansions) - 1)].features
                mine, labels = [min(k, len(expansions))] * len(piece), [False] * len(piece)
            elif not expansions:  # no images: Gemma3VisionTemplate._encode expands nothing
                piece, mine, labels = [token], [-1], [mark]
            else:  # the processor's sequence (each run of image tokens written once in Expansion.text)
                expansion = expansions[min(k, len(expansions) - 1)]
                runs = iter(expansion.runs)
                piece = []
                for t in self.tokenizer.encode(expansion.text, add_special_tokens=False).ids:
                    piece += [t] * next(runs) if t == self.image_token_id else [t]
                mine = [min(k, len(expansions)) if t == self.image_token_id else -1 for t in piece]
                labels = [False] * len(piece)
            ids += piece
            trained += labels
            owner += mine
            if SPLICE not in self.chat.image_text:
                k += 1
        return k


# Template._replace_image_tags (compat): in a row without images, each <img>PATH</img> of a message (not the system
# prompt) becomes <image>, and PATH, when it is a file, one of the row's images
IMAGE_PATH_TAG = re.compile(r"<img>(.+?)</img>")


# a VC208 for a run some of whose rows are skipped is shown from this chance that one epoch stops (1%)
FETCH_FAILURE_SHOWN = 0.01
# swift/dataset/utils.py LazyLLMDataset: n_try_fetch 10 (min with the dataset's length)
N_TRY_FETCH = 10


def fetch_failures(rows: int, skipped: int, tries: int = N_TRY_FETCH) -> float:
    """The expected number of LazyLLMDataset fetches in one epoch that raise 'Failed to retrieve the dataset':
    each of the ``skipped`` rows is fetched once, and fails when the next ``tries - 1`` rows drawn from the
    permutation (the fetched row left out) are all skipped ones too, drawn without replacement. Measured against
    LazyLLMDataset itself in tests/frameworks/test_swift_resample.py."""
    tries = min(tries, rows)
    chance = 1.0
    for j in range(tries - 1):
        chance *= max(skipped - 1 - j, 0) / max(rows - 1 - j, 1)
    return skipped * chance


# rl_core/resample.py resample_encode_failed_inputs: max_resample_rounds, 10 as GRPOTrainer._rollout_samples calls it
# (RolloutTrainerMixin.resample_encode_failed_inputs' default; no option sets it): required x (10 + 1) attempts
RESAMPLE_ROUNDS = 10
# the most window starts resample_failures sums over (evenly spaced) where a window crosses a pass of the dataset
RESAMPLE_STARTS = 64


def resample_failures(rows: int, skipped: int, *, generations: int, batch: int, world: int = 1, iterations: int = 1,
                      rounds: int = RESAMPLE_ROUNDS) -> tuple[int, float]:
    """GRPO under ``delete``: the generation batches of one epoch and the chance that one of them stops the run.

    GRPOTrainer._rollout_samples hands each process's share of a generation batch (``batch`` rows over ``world``
    processes: each of the ``batch // generations`` prompts drawn without replacement from the dataset's shuffled
    epoch, repeated ``generations`` times) to resample_encode_failed_inputs, which replaces the rows whose encode
    raises from the trainer's resample iterator (_prepare_resample_data_iterator: the training dataset reshuffled
    pass after pass, seed + 1, each row ``iterations`` times in a row) and raises 'resample: only collected ...' when
    its ``share x rounds`` draws hold fewer valid rows than it replaces. The draws are taken as a window of that
    stream starting anywhere in a pass, each process's independently. Measured against ms-swift's own trainer code
    in tests/frameworks/test_swift_grpo_resample.py."""
    prompts = batch // generations
    batches = rows // prompts  # RepeatSampler drops the last, incomplete generation batch
    if not batches or not skipped:
        return batches, 0.0
    share = batch // world
    slices = Counter(tuple(min((j + 1) * generations, (p + 1) * share) - max(j * generations, p * share)
                           for j in range(prompts)
                           if j * generations < (p + 1) * share and (j + 1) * generations > p * share)
                     for p in range(world))
    kept = 1.0
    for copies, processes in slices.items():
        failing = _failing_rows(rows, skipped, copies)
        needs = {f: -(-f // iterations) for f in failing if f}
        short = _short_of(rows, rows - skipped, share * rounds // iterations, max(needs.values(), default=0))
        kept *= (1 - sum(failing[f] * short[need] for f, need in needs.items())) ** processes
    return batches, 1 - kept


def _failing_rows(rows: int, skipped: int, copies: tuple[int, ...]) -> dict[int, float]:
    """The chance of each number of rows of one process's share whose encode raises: its prompts (``copies`` of
    each) drawn one after another without replacement from ``rows`` holding ``skipped``."""
    chances: dict[tuple[int, int], float] = {(0, 0): 1.0}  # (skipped prompts drawn, failing rows): chance
    for drawn, count in enumerate(copies):
        after: dict[tuple[int, int], float] = {}
        for (bad, failing), chance in chances.items():
            hit = max(skipped - bad, 0) / max(rows - drawn, 1)
            for state, p in (((bad + 1, failing + count), chance * hit), ((bad, failing), chance * (1 - hit))):
                after[state] = after.get(state, 0.0) + p
        chances = after
    out: dict[int, float] = {}
    for (_, failing), chance in chances.items():
        out[failing] = out.get(failing, 0.0) + chance
    return out


def _short_of(rows: int, valid: int, drawn: int, most: int) -> list[float]:
    """For each ``need`` up to ``most``, the chance that ``drawn`` rows in a row of the resample stream (shuffled
    passes over ``rows`` holding ``valid``) hold fewer than ``need`` valid ones: the window starts with ``left`` rows
    of its pass to go, each of 1..rows alike; it takes a hypergeometric draw from that pass, every row of the full
    passes after it, and a hypergeometric draw from the next."""
    def below(left: int) -> list[float]:  # P(valid rows < v) for v in 0..most
        first = _hypergeometric(rows, valid, min(drawn, left), most)
        if drawn <= left:
            rest = [1.0] + [0.0] * most
        else:
            full, tail = divmod(drawn - left, rows)
            head = _hypergeometric(rows, valid, tail, most)
            rest = [0.0] * (most + 1)
            for v in range(most + 1 - valid * full):
                rest[v + valid * full] = head[v]
        total = [0.0] * (most + 1)
        for a, p in enumerate(first):
            if p:
                for b in range(most + 1 - a):
                    total[a + b] += p * rest[b]
        return [sum(total[:v]) for v in range(most + 1)]

    inside = max(rows - max(drawn, 1) + 1, 0)  # the starts whose window stays in its pass
    parts = [(inside / rows, below(rows))] if inside else []
    crossing = list(range(1, min(drawn, rows + 1)))
    step = max(1, -(-len(crossing) // RESAMPLE_STARTS))
    for k in range(0, len(crossing), step):
        starts = crossing[k:k + step]
        parts.append((len(starts) / rows, below(starts[len(starts) // 2])))
    return [sum(weight * chances[v] for weight, chances in parts) for v in range(most + 1)]


def _hypergeometric(rows: int, valid: int, drawn: int, most: int) -> list[float]:
    """P(X = x) for x in 0..most, X the valid rows among ``drawn`` taken without replacement from ``rows``."""
    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    total = log_choose(rows, drawn)
    return [math.exp(log_choose(valid, x) + log_choose(rows - valid, drawn - x) - total)
            if x <= valid and 0 <= drawn - x <= rows - valid else 0.0 for x in range(most + 1)]


def _full_rows(file: Path, plan: LoadPlan) -> Iterator[Any]:
    """The rows of ``file`` as datasets loads them: every row holds every column of the file's table (a missing
    one None), in the table's column order (two columns differing only in case map to the later one, for the whole
    file), so ms-swift maps the columns and picks its preprocessor per file (``standard_row``)."""
    for row in loaded_rows(file, plan):
        if plan.columns and isinstance(row, dict):
            ordered = {column: row.get(column) for column in plan.columns}
            ordered.update(row)  # a key the table does not list (none expected) stays, after them
            row.clear()  # the same object, reordered: a Rewritten row keeps what datasets changed in it
            row.update(ordered)
        yield row


START_IMAGE_TAG = "<start-image>"
# a DPO row's verdict: the worse of its two sequences' (a dropped sequence deletes the pair before the model sees it)
VERDICT_RANK = {"ok": 0, "cut": 1, "crash": 2, "dropped": 3}
# the pair columns vlmcheck does not follow yet: a rejected conversation of its own (RowPreprocessor's
# rejected_messages, which takes no images but rejected_images), the rejected sequence's own media
REJECTED_COLUMNS = ("rejected_messages", "rejected_images", "rejected_videos", "rejected_audios", "rejected_tools",
                    "rejected_objects")


def _rejected_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """TemplateInputs._compat_rejected_response: the rejected sequence of a DPO row, the messages up to its last
    question (its system prompt with them) and the ``rejected_response`` as the answer, with the row's images
    (from_dict fills the rejected inputs' unset keys from the chosen's). Raises Unbuildable where ms-swift's encode
    raises (no rejected_response: 'inputs.rejected is None'; one that is neither text nor a list), NotModelled for
    what vlmcheck does not follow (a list of rejected messages, the rejected_* columns, a row without a question)."""
    given = [k for k in REJECTED_COLUMNS if row.get(k) is not None]
    if given:
        raise NotModelled(f"a {given[0]} column (the rejected sequence's own) is not modelled")
    if "rejected_response" not in row:
        raise Unbuildable("the row has no rejected_response: ms-swift's rlhf encode raises ('inputs.rejected is "
                          "None'; beside a file that has the column, its rows load with it null: 'rejected_response "
                          "must be a str or list')")
    answer = row["rejected_response"]
    if isinstance(answer, list):
        raise NotModelled("a rejected_response given as a list of messages is not modelled")
    if not isinstance(answer, str):
        raise Unbuildable(f"its rejected_response is {type(answer).__name__}, not text: ms-swift's rlhf encode raises "
                          "('rejected_response must be a str or list')")
    messages = row["messages"]
    last = max((j for j, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last < 0:
        raise NotModelled("a DPO row without a question (its rejected sequence drops the system prompt) is not "
                          "modelled")
    return {**row, "messages": [*messages[:last + 1], {"role": "assistant", "content": answer}]}


def _prompt_only(row: dict[str, Any]) -> dict[str, Any]:
    """utils.remove_response, as GRPO's rollout and its length check apply it: the last message goes when it is an
    answer (the solution a reward function reads is its own column)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], Mapping) \
            or messages[-1].get("role") != "assistant":
        return row
    return {**row, "messages": messages[:-1]}


def _ends_with_answer(row: Mapping[str, Any]) -> bool:
    messages = row.get("messages")
    return (isinstance(messages, list) and bool(messages) and isinstance(messages[-1], Mapping)
            and messages[-1].get("role") == "assistant")


def _start_image_tag(row: dict[str, Any]) -> dict[str, Any]:
    """Template._replace_start_image_tags (compat): a last message that is a question ending with <start-image>
    loses that tag (generate mode)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], Mapping):
        return row
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "user" or not isinstance(content, str) or not content.endswith(START_IMAGE_TAG):
        return row
    return {**row, "messages": [*messages[:-1], {**last, "content": content[:-len(START_IMAGE_TAG)]}]}


def _image_path_tags(row: dict[str, Any]) -> dict[str, Any]:
    messages = row.get("messages")
    if row.get("images") or not isinstance(messages, list):
        return row
    images: list[str] = []
    out = []
    for k, m in enumerate(messages):
        content = m.get("content") if isinstance(m, Mapping) else None
        if not isinstance(content, str) or (k == 0 and m.get("role") == "system") or "<img>" not in content:
            out.append(m)
            continue
        images += [p for p in IMAGE_PATH_TAG.findall(content) if os.path.isfile(p)]
        out.append({**m, "content": IMAGE_PATH_TAG.sub(IMAGE_TAG, content)})
    return {**row, "messages": out, "images": images} if out != messages else row


def _tools(value: Any) -> list[Any]:
    """A row's ``tools`` as RowPreprocessor._normalize_tools leaves them: JSON text decoded (other text is one
    tool), a single value made a list; what Template._preprocess_tools tests for truth."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _trained(message: Mapping[str, Any]) -> bool:
    """Whether ms-swift trains an answer (loss_scale ``default``): not when its ``loss`` is false (False, 0) or its
    ``loss_scale`` is 0."""
    loss, scale = message.get("loss"), message.get("loss_scale")
    return not (loss is not None and not loss) and not (scale is not None and not scale)


def _transformers_version() -> tuple[str, bool]:
    """The transformers the run has (see _run.run_version)."""
    return run_version("transformers", newest=SWIFT_TRANSFORMERS, below=SWIFT_TRANSFORMERS_BELOW)


def _datasets_version() -> tuple[str, bool]:
    """The datasets the run loads its files with (see _run.run_version)."""
    return run_version("datasets", newest=SWIFT_DATASETS, below=SWIFT_DATASETS_BELOW, low=SWIFT_DATASETS_FROM)


def _model_type(model: str) -> str:
    """The checkpoint's model_type (config.json), which picks ms-swift's model loader; '' when unreadable (the
    model load that follows says why)."""
    try:
        return str(read_checkpoint_json(resolve_model_path(model) / "config.json").get("model_type") or "")
    except VlmcheckError:
        return ""


def _max_model_len(folder: Path) -> int:
    """ms-swift's default --max_length: the model's max_position_embeddings."""
    config = read_checkpoint_json(folder / "config.json")
    text = config.get("text_config") or {}
    value = text.get("max_position_embeddings") or config.get("max_position_embeddings")
    if not value:  # ms-swift reads the loaded config: the config class's default for a key the file leaves out
        value = CONFIG_DEFAULT_POSITIONS.get(str(text.get("model_type") or config.get("model_type")))
    return int(value) if value else 1 << 31


def _setting(key: str, value: Any) -> str:
    """A fix written as a swift command-line option."""
    return f"{key} {value}"
