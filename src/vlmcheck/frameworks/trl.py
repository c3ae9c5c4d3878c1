"""TRL: the one home of its facts (``trl sft`` / ``trl grpo`` / ``trl dpo`` config keys and defaults, where the data
comes from, the vision collator's route from a row to tokens, which tokens are trained, and what happens at the cut).

Modelled on TRL 1.16 with transformers 5.x processors:

- **Config** (``scripts/utils.py`` ``TrlParser``, ``trainer/sft_config.py``, ``trainer/grpo_config.py``): the YAML
  given to ``trl sft --config`` / ``trl grpo --config``. ``max_length`` 1024, ``truncation_mode`` ``keep_start``,
  ``completion_only_loss`` unset (on for prompt-completion rows), ``assistant_only_loss`` off,
  ``dataset_train_split`` ``train``; GRPO: ``num_generations`` 8 (at least 2), ``max_completion_length`` 512. The
  scripts parse with ``fail_with_unknown_args=False``: a key TRL does not know (``max_prompt_length``,
  ``max_seq_length`` of older releases) is ignored without a word.
- **Data** (``scripts/sft.py``): ``load_dataset(dataset_name, name=dataset_config)[dataset_train_split]`` (or the
  ``datasets:`` mixture). vlmcheck reads local files and folders only.
- **Rows** (``data_utils.prepare_multimodal_messages``): string contents become typed parts, and *all* of a row's
  images are put before the text of the first user turn, whatever the text says (an ``<image>`` written in the
  text stays text). The number of image parts must equal the number of images, or TRL raises.
- **SFT tokens** (``sft_trainer.DataCollatorForVisionLanguageModeling``): a vision dataset is not prepared ahead;
  the collator renders the checkpoint's chat template and calls the processor with ``add_special_tokens=False``
  (a template that writes no BOS gets none) and ``truncation=True, max_length=max_length`` from the right. Every
  kept token is trained (image placeholders too) unless the row is prompt-completion: then the prompt and the
  completion are processed separately, concatenated, sliced to ``max_length`` and only the completion is trained;
  or ``assistant_only_loss`` is on: then only tokens overlapping the template's ``{% generation %}`` blocks are,
  with TRL's own training template swapped in for a checkpoint template without them.
- **At the cut**: with ``messages`` the processor counts the image tokens left after truncation and raises
  "Mismatch in `image` token count" in the collator; with prompt-completion the slice keeps every image's
  features and the model raises "Image features and image tokens do not match". Either way the run stops at the
  step that reaches the sample.
- **GRPO** (``grpo_trainer._tokenize_prompts``): rows are prompts only (``prompt``, images), rendered with the
  generation prompt and tokenized by the processor; TRL 1.16 never cuts a prompt. With vLLM
  (``use_vllm: true``) a prompt must fit ``vllm_max_model_length``.
- **DPO** (``dpo_config.py``, ``dpo_trainer.DataCollatorForVisionPreference``): a dataset with an ``image`` /
  ``images`` column is not prepared ahead; per row the prompt is processed with the images, the chosen and the
  rejected answer each on its own (``add_special_tokens=False``), and each sequence (prompt + answer) is sliced to
  ``max_length`` (1024) keeping its start; only the answer is trained. The prompt is shared, so a cut through its
  image tokens is in both sequences and the model raises "Image features and image tokens do not match"
  (``DPOTrainer.compute_loss`` re-raises it as "The current `max_length` (N) is too short ..."). Refused for a
  vision dataset: ``truncation_mode: keep_end``, ``precompute_ref_log_probs``, ``pad_to_multiple_of``.
- **DPO, text dataset** (no ``image`` / ``images`` in the first row; ``DPOTrainer._prepare_dataset``,
  ``DataCollatorForPreference``): tokenized ahead with the processor: ``extract_prompt`` when there is no
  ``prompt`` column, the EOS appended to a standard dataset's answers, prompt / prompt+chosen / prompt+rejected
  tokenized whole (``apply_chat_template`` with ``tools`` and ``chat_template_kwargs``, or ``processor(text=...)``)
  and the prompt cut back to their common prefix; a row whose prompt alone is ``max_length`` or more is dropped
  (``keep_start`` only); each sequence is cut to ``max_length`` keeping its start or its end (``keep_end`` allowed).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vlmcheck import findings as F
from vlmcheck.chat import render_chat, render_chat_with_generation_spans
from vlmcheck.data.images import ImageProblem, decode_data_url, probe_bytes, probe_path
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.families import Expansion, Overrides
from vlmcheck.frameworks._run import ProcessorRun, json_loadable, largest_budget, loaded_rows, locate, mapped
from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS, UNSET
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.preview import Previewer, image_refs, token_spans
from vlmcheck.results import SampleResult

NAME = "trl"
VERSIONS = "1.16, transformers 5.x processors"

# trainer/sft_config.py (SFTConfig) and scripts/utils.py (ScriptArguments) defaults
SFT_DEFAULTS: dict[str, Any] = {
    "max_length": 1024,
    "truncation_mode": "keep_start",
    "completion_only_loss": None,
    "assistant_only_loss": False,
    "packing": False,
    "padding_free": False,
    "dataset_text_field": "text",
    "dataset_train_split": "train",
    "dataset_config": None,
}
# trainer/grpo_config.py (GRPOConfig) defaults
GRPO_DEFAULTS: dict[str, Any] = {
    "num_generations": 8,
    "max_completion_length": 512,
    "use_vllm": False,
    "vllm_max_model_length": None,
    "dataset_train_split": "train",
    "dataset_config": None,
}
# keys only GRPOConfig has: a config holding one is launched with `trl grpo`
GRPO_KEYS = ("num_generations", "max_completion_length", "reward_funcs", "reward_model_name_or_path", "beta",
             "use_vllm", "vllm_mode", "vllm_max_model_length", "num_iterations", "reward_weights", "epsilon")
# trainer/dpo_config.py (DPOConfig) defaults; pad_to_multiple_of "auto" is None off AWS Neuron (__post_init__)
DPO_DEFAULTS: dict[str, Any] = {
    "max_length": 1024,
    "truncation_mode": "keep_start",
    "padding_free": False,
    "pad_to_multiple_of": None,
    "precompute_ref_log_probs": False,
    "loss_type": ["sigmoid"],
    "dataset_train_split": "train",
    "dataset_config": None,
}
# keys only DPOConfig has (not SFTConfig, not GRPOConfig): a config holding one is launched with `trl dpo`
DPO_KEYS = ("precompute_ref_log_probs", "precompute_ref_batch_size", "ld_alpha", "f_divergence_type",
            "f_alpha_divergence_coef", "label_smoothing", "use_weighting", "discopop_tau", "loss_weights")
# DPOConfig.loss_type's values (GRPOConfig's loss_type takes others: grpo, dapo, dr_grpo, ...)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# GRPO keys DPOConfig shares (beta) or older DPOConfigs had (max_completion_length): not GRPO when the data is pairs
GRPO_WEAK_KEYS = ("beta", "max_completion_length")
# keys of older TRL releases that TRL 1.16 no longer has: ``trl sft`` / ``trl grpo`` parse the config with
# ``fail_with_unknown_args=False``, so they are ignored without a word and TRL's own defaults apply
IGNORED_KEYS = {
    "max_prompt_length": "TRL 1.16 never cuts a GRPO prompt",
    "max_seq_length": "renamed max_length in TRL 0.20; max_length's default (1024) applies",
}
# SFTConfig's chat_template_path is no GRPOConfig key: `trl grpo` renders with the checkpoint's chat template
GRPO_IGNORED_KEYS = {
    **IGNORED_KEYS,
    "chat_template_path": "not a GRPOConfig key (SFTConfig's): the checkpoint's chat template applies",
}
# the same for `trl dpo`: DPOConfig's keys of TRL 0.x that 1.16 no longer has
DPO_IGNORED_KEYS = {
    "max_prompt_length": "TRL 1.16's DPO does not cut the prompt on its own: max_length cuts prompt and answer "
                         "together, keeping their start",
    "max_completion_length": "TRL 1.16's DPO does not cut the answer on its own: max_length cuts prompt and answer "
                             "together, keeping their start",
    "max_seq_length": "not a DPOConfig key; max_length's default (1024) applies",
    "rpo_alpha": "removed in TRL 1.x (RPO is loss_type [sigmoid, sft]); ignored",
    "chat_template_path": "not a DPOConfig key (SFTConfig's): the checkpoint's chat template applies",
}
# datasets' split names in file names (data_files patterns): train.jsonl, train-00000-of-00001.parquet, ...
SPLITS = ("train", "test", "validation", "valid", "dev", "eval")
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".pq")
# TRL 1.x requires datasets >= 4.7.0, whose JSON loader keeps a field of mixed types as JSON text (data.hfjson):
# every datasets a TRL run can have loads JSON as 4.7.0 does
DATASETS_ASSUMED = "4.7.0"
# `vlmcheck scan --framework trl`: SFT's default max_length and right cut, the processor's own resize
SCAN_DEFAULTS: dict[str, Any] = {"max_length": SFT_DEFAULTS["max_length"], "truncation": "right",
                                 "resize": "processor"}
# `vlmcheck lint`: concept -> (TRL's option name, its default). TRL 1.16 trl/trainer/grpo_config.py,
# sft_config.py, base_config.py: temperature=1.0, gradient_checkpointing=True, bf16=None (-> True unless fp16).
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    **TRAINING_ARGUMENTS_OPTIONS,
    "num_generations": ("num_generations", GRPO_DEFAULTS["num_generations"]),
    "temperature": ("temperature", 1.0),
    "bf16": ("bf16", None),
    "gradient_checkpointing": ("gradient_checkpointing", True),
    "lora": ("use_peft", False),
    "max_length": ("max_length", SFT_DEFAULTS["max_length"]),
    "max_prompt_length": ("max_prompt_length", None),
    "packing": ("packing", SFT_DEFAULTS["packing"]),
    "padding_free": ("padding_free", SFT_DEFAULTS["padding_free"]),
    "assistant_only_loss": ("assistant_only_loss", SFT_DEFAULTS["assistant_only_loss"]),
    "truncation_mode": ("truncation_mode", SFT_DEFAULTS["truncation_mode"]),
    "max_pixels": ("max_pixels", UNSET),
}
# option spellings TRL accepts for the same option (transformers 5 accepts activation_checkpointing* for
# gradient_checkpointing*; TRL 1.x and transformers 5 call torch_dtype `dtype` in model init kwargs)
LINT_ALIASES: dict[str, tuple[str, ...]] = {
    "gradient_checkpointing": ("activation_checkpointing",),
    "gradient_checkpointing_kwargs": ("activation_checkpointing_kwargs",), "torch_dtype": ("dtype",)}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads (``grpo``, ``dpo``, ``sft``): ``trl grpo``, a GRPOConfig or
    num_generations make it GRPO; ``trl dpo`` or a DPOConfig DPO (lint has no DPO rules: neither GRPO nor SFT);
    anything else SFT."""
    name = (entry or "").lower()
    if "grpo" in name or "GRPOConfig" in calls or "num_generations" in options:
        return "grpo"
    return "dpo" if "dpo" in name or "DPOConfig" in calls else "sft"


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """A ``trl sft`` / ``trl grpo`` / ``trl dpo`` config with TRL's defaults filled in."""

    path: Path
    trainer: str  # "sft", "grpo" or "dpo"
    model: str
    datasets: tuple[Path, ...]
    split: str
    max_length: int | None
    truncation_mode: str
    completion_only_loss: bool | None
    assistant_only_loss: bool
    packing: bool
    padding_free: bool
    text_field: str
    num_generations: int
    max_completion_length: int | None
    use_vllm: bool
    vllm_max_model_length: int | None
    chat_template_path: Path | None = None
    precompute_ref_log_probs: bool = False  # DPO
    pad_to_multiple_of: int | None = None  # DPO ("auto": None off AWS Neuron)
    trainer_from: str = ""  # what told the trainer apart, for the report
    values: dict[str, Any] = field(default_factory=dict)  # as read, for the report
    ignored: dict[str, str] = field(default_factory=dict)  # keys TRL 1.16 ignores, and what applies instead


def _flag(raw: Mapping[str, Any], key: str, default: Any) -> Any:
    value = raw.get(key, default)
    if isinstance(value, str):
        if value.strip().lower() in ("none", "null", ""):
            return None
        return value.strip().lower() in ("true", "1", "yes")
    return value if value is None else bool(value)


def _int(raw: Mapping[str, Any], key: str, default: int | None, path: Path) -> int | None:
    value = raw.get(key, default)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: YAML's .inf (nan is a ValueError)
        raise UsageError(f"{path}: {key} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise UsageError(f"{path}: {key} must be positive, got {number}")
    return number






def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Config:
    """The settings ``trl sft`` / ``trl grpo`` / ``trl dpo`` runs with for ``raw``, TRL's defaults filled in.

    ``model`` / ``data`` override ``model_name_or_path`` / ``dataset_name``; ``path_map`` rewrites path prefixes.
    """
    model_path = model or raw.get("model_name_or_path")
    if not model_path:
        raise UsageError(f"{path}: model_name_or_path is not set (or pass --model)")
    mapping = dict(path_map or {})
    sources: list[str] = []
    if data is not None:
        sources = [data]
    elif raw.get("datasets"):  # DatasetMixtureConfig: used instead of dataset_name when both are set
        entries = raw["datasets"]
        if not isinstance(entries, list):
            raise UsageError(f"{path}: datasets must be a list of {{path: ...}} entries")
        for entry in entries:
            if not isinstance(entry, Mapping) or not entry.get("path"):
                raise UsageError(f"{path}: each datasets entry needs a path")
            if entry.get("columns") or entry.get("name") or entry.get("data_files"):
                raise UsageError(f"{path}: datasets entries with columns / name / data_files are not modelled by "
                                 "vlmcheck yet; point dataset_name at the data folder")
            sources.append(str(entry["path"]))
    elif raw.get("dataset_name"):
        sources = [str(raw["dataset_name"])]
    if not sources:
        raise UsageError(f"{path}: no dataset_name or datasets set (TRL: 'Either `datasets` or `dataset_name` must "
                         "be provided'); or pass --data")
    if raw.get("dataset_config"):
        raise UsageError(f"{path}: dataset_config {raw['dataset_config']!r}: a dataset's named configuration is a "
                         "hub dataset feature; vlmcheck reads local files (point dataset_name at them)")
    located = tuple(locate(s, path, mapping) for s in sources)
    for source, where in zip(sources, located):
        if not where.exists():
            raise UsageError(f"{path}: dataset {source!r} is not a local file or folder ({where} not found); vlmcheck "
                             "reads local data (pass --data PATH, or --path-map for a config from another machine)")
    trainer, why = _trainer_of(raw, located, str(raw.get("dataset_train_split", "train")))
    defaults = {"grpo": GRPO_DEFAULTS, "dpo": DPO_DEFAULTS}.get(trainer, SFT_DEFAULTS)
    truncation_mode = str(raw.get("truncation_mode", SFT_DEFAULTS["truncation_mode"]))
    if truncation_mode not in ("keep_start", "keep_end"):
        raise UsageError(f"{path}: truncation_mode {truncation_mode!r}: TRL accepts keep_start or keep_end")
    generations = _int(raw, "num_generations", GRPO_DEFAULTS["num_generations"], path) or 0
    if trainer == "grpo" and generations < 2:
        raise UsageError(f"{path}: num_generations {generations}: GRPO compares completions of one prompt and TRL "
                         "refuses fewer than 2; set num_generations: 2 or more")
    return Config(
        path=path, trainer=trainer, model=mapped(str(model_path), mapping), datasets=located,
        split=str(raw.get("dataset_train_split", defaults["dataset_train_split"])),
        max_length=_int(raw, "max_length", SFT_DEFAULTS["max_length"], path),
        truncation_mode=truncation_mode,
        completion_only_loss=_flag(raw, "completion_only_loss", SFT_DEFAULTS["completion_only_loss"]),
        assistant_only_loss=bool(_flag(raw, "assistant_only_loss", False)),
        packing=bool(_flag(raw, "packing", False)), padding_free=bool(_flag(raw, "padding_free", False)),
        text_field=str(raw.get("dataset_text_field", SFT_DEFAULTS["dataset_text_field"])),
        num_generations=generations,
        max_completion_length=_int(raw, "max_completion_length", GRPO_DEFAULTS["max_completion_length"], path),
        use_vllm=bool(_flag(raw, "use_vllm", False)),
        vllm_max_model_length=_int(raw, "vllm_max_model_length", None, path),
        chat_template_path=locate(str(raw["chat_template_path"]), path, mapping) if raw.get("chat_template_path")
        else None,
        precompute_ref_log_probs=bool(_flag(raw, "precompute_ref_log_probs", False)),
        pad_to_multiple_of=_pad_multiple(raw, path),
        trainer_from=why,
        values={k: raw.get(k, defaults.get(k, SFT_DEFAULTS.get(k))) for k in (
            "max_length", "truncation_mode", "completion_only_loss", "assistant_only_loss", "dataset_name",
            "dataset_train_split", "num_generations", "max_completion_length", "use_vllm", "precompute_ref_log_probs",
            "pad_to_multiple_of", "loss_type") if k in raw or k in defaults},
        ignored={k: why for k, why in {"dpo": DPO_IGNORED_KEYS, "grpo": GRPO_IGNORED_KEYS}.get(
            trainer, IGNORED_KEYS).items() if k in raw},
    )


def _pad_multiple(raw: Mapping[str, Any], path: Path) -> int | None:
    """DPOConfig.pad_to_multiple_of: "auto" (the default) is None off AWS Neuron, "none" / null is None."""
    value = raw.get("pad_to_multiple_of", "auto")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "none", "null")):
        return None
    return _int(raw, "pad_to_multiple_of", None, path)


def _trainer_of(raw: Mapping[str, Any], sources: Sequence[Path], split: str) -> tuple[str, str]:
    """Which of ``trl sft`` / ``trl grpo`` / ``trl dpo`` the config is launched with, and what told: a key only
    DPOConfig has or a DPO loss_type, else a key only GRPOConfig has, else the data (a first row with ``chosen``
    and ``rejected`` is a preference dataset, which only ``trl dpo`` trains on), else ``beta`` /
    ``max_completion_length`` (GRPO's), else SFT."""
    dpo_keys = [k for k in DPO_KEYS if k in raw]
    if dpo_keys:
        return "dpo", f"{dpo_keys[0]} (a DPOConfig key)"
    losses = raw.get("loss_type")
    losses = [losses] if isinstance(losses, str) else losses
    if isinstance(losses, list) and losses and all(str(x) in DPO_LOSS_TYPES for x in losses):
        return "dpo", f"loss_type {losses[0]} (a DPO loss)"
    grpo_keys = [k for k in GRPO_KEYS if k in raw and k not in GRPO_WEAK_KEYS]
    if grpo_keys:
        return "grpo", f"{grpo_keys[0]} (a GRPOConfig key)"
    if _first_row_is_pair(sources, split):
        return "dpo", "the dataset's chosen / rejected columns"
    weak = [k for k in GRPO_WEAK_KEYS if k in raw]
    if weak:
        return "grpo", f"{weak[0]} (a GRPOConfig key)"
    return "sft", "no DPO or GRPO key"


def _first_row_is_pair(sources: Sequence[Path], split: str) -> bool:
    """Whether the first row of the data holds ``chosen`` and ``rejected`` (a preference dataset)."""
    from vlmcheck.data.readers import iter_rows

    try:
        files = dataset_files(sources[0], split)
        for row in iter_rows(files[0]):
            return isinstance(row, Mapping) and "chosen" in row and "rejected" in row
    except Exception:  # unreadable here: the run's own reading of it says why
        return False
    return False


# -- data ---------------------------------------------------------------------------------------------------------
def dataset_files(source: Path, split: str) -> list[Path]:
    """The files ``load_dataset(source)[split]`` reads for a local file or folder: a file is the train split; in a
    folder, files named after a split (``train.jsonl``, ``train-00000-of-00002.parquet``, ``data/train-*``) form
    that split, and when no file is named after any split every data file is the train split."""
    if source.is_file():
        if split != "train":
            raise DatasetError(f"{source}: a single file is the train split; dataset_train_split is {split!r}")
        return [source]
    if (source / "state.json").is_file() or (source / "dataset_dict.json").is_file():
        raise UsageError(f"{source} was written by save_to_disk; TRL's script opens datasets with load_dataset, which "
                         "refuses such folders (use load_from_disk in your own script, or export to Parquet)")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not files:
        raise DatasetError(f"{source} holds no .json, .jsonl or .parquet files")

    def split_of(p: Path) -> str | None:
        for part in reversed(p.relative_to(source).parts):
            stem = part.split(".")[0].lower()
            for name in SPLITS:
                if re.fullmatch(rf"(.*[-_])?{name}([-_].*)?", stem):
                    return "validation" if name in ("valid", "dev", "eval") else name
        return None

    named = {p: split_of(p) for p in files}
    if not any(named.values()):
        if split != "train":
            raise DatasetError(f"{source}: no file is named after a split, so all are train; "
                               f"dataset_train_split is {split!r}")
        return files
    chosen = [p for p, s in named.items() if s == split]
    if not chosen:
        raise DatasetError(f"{source} has no {split!r} split (found: {', '.join(sorted({s for s in named.values() if s}))})")
    return chosen


# -- rows ---------------------------------------------------------------------------------------------------------
_Encoding = TypeVar("_Encoding")  # what a trainer's encode of a row gives


class Stops(Exception):
    """TRL raises on this row: the run stops at the step whose batch holds it."""


def prepare_multimodal_messages(messages: Any, n_images: int) -> list[dict[str, Any]]:
    """``data_utils.prepare_multimodal_messages``: typed parts, the row's images before the first user turn's text
    (when its content is a string); image parts are numbered by the order they are filled."""
    if not isinstance(messages, list) or not messages:
        raise Stops("the conversation is not a list of messages")
    out: list[dict[str, Any]] = []
    included = False
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message:
            raise Stops("a message has no 'role'; TRL raises KeyError")
        role, content = message["role"], message.get("content")
        if role == "user":
            if isinstance(content, str) and not included:
                content = [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": content}]
                included = True
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
        elif role in ("assistant", "system", "tool"):
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
        else:
            raise Stops(f"role {role!r}: TRL raises 'Invalid role in message' (it takes system, user, assistant, tool)")
        if content is not None and not (isinstance(content, list) and all(
                isinstance(p, Mapping) and isinstance(p.get("type"), str) for p in content)):
            raise Stops(f"a {role} message's content is neither text nor a list of typed parts")
        out.append({**message, "content": content})
    holes = sum(1 for m in out if m.get("content") and m["role"] != "tool"
                for p in m["content"] if p["type"] == "image" and "image" not in p)
    if holes != n_images:
        raise Stops(f"{n_images} image(s) for {holes} image part(s): TRL raises 'Number of images provided "
                    f"({n_images}) does not match number of image placeholders ({holes})'")
    k = 0
    for m in out:
        if m.get("content") and m["role"] != "tool":
            parts = []
            for p in m["content"]:
                if p["type"] == "image" and "image" not in p:
                    p = {**p, "image": f"image {k}"}
                    k += 1
                parts.append(p)
            m["content"] = parts
    return out


@dataclass
class Encoded:
    """A sample's tokens as the processor builds them: per token, the image it belongs to (-1: text) and whether
    it carries a label."""

    image_of: list[int]
    trained: list[bool]

    @property
    def total(self) -> int:
        return len(self.image_of)


# -- the run ------------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    """A ``trl sft`` / ``trl grpo`` config: ``model_name_or_path`` with TRL's ``dataset_name`` or ``datasets``."""
    return "model_name_or_path" in raw and ("dataset_name" in raw or "datasets" in raw)


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    """The run a TRL config launches, ready to judge its rows."""
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map)
    return Run(config, load_model(config.model, overrides=Overrides(resize="processor")), env=env)


class Run(ProcessorRun):
    """A TRL run: judges rows the way ``trl sft``'s vision collator or ``trl grpo``'s prompt tokenization does."""

    name = NAME
    versions = VERSIONS
    length_key = "max_length"
    pixels_key = "max_pixels"
    config: Config

    def __init__(self, config: Config, spec: ModelSpec, *, env: Mapping[str, str] | None = None) -> None:
        template = spec.chat_template
        if config.chat_template_path is not None and config.trainer == "sft":  # only SFTConfig has the key
            if config.chat_template_path.suffix != ".jinja" or not config.chat_template_path.is_file():
                raise UsageError(f"chat_template_path {config.chat_template_path}: vlmcheck reads a .jinja file")
            template = config.chat_template_path.read_text(encoding="utf-8")
        if template is None:
            raise UsageError(f"{spec.path} has no chat template; TRL renders every row with it (set "
                             "chat_template_path)")
        if config.assistant_only_loss and not has_generation_markers(template):
            template = training_template(template)
        self.template = template
        self.config = config
        self.spec = spec
        self.family = spec.family
        self.settings = spec.settings
        self.tokenizer = spec.tokenizer
        self.image_token_id = spec.token_id(self.family.image_token)
        self.files = [f for s in config.datasets for f in dataset_files(s, config.split)]
        self.max_length = config.vllm_max_model_length if config.trainer == "grpo" else config.max_length
        self.cwd = Path(os.getcwd())
        self._vision_checked = False
        self._first: Mapping[str, Any] | None = None  # the dataset's first row (DPO decides its route on it)
        self._conversational: bool | None = None  # DPO, text dataset: is its first example conversational
        # datasets' Image feature and transformers' load_image apply the EXIF orientation
        self.previews = Previewer(local_path=lambda raw, _what: self._path(raw), exif_transpose=True,
                                  max_length=self.max_length, truncation="right")

    def inputs(self) -> list[Path]:
        """Every file the run reads (never to be written over)."""
        return [self.config.path, *self.files]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        plans = [(files, json_loadable(files, datasets_version=DATASETS_ASSUMED, loader="the script's load_dataset"))
                 for files in (dataset_files(source, self.config.split) for source in self.config.datasets)]
        for files, plan in plans:  # self.files, source by source
            for k, file in enumerate(files):
                for row in loaded_rows(file, plan, k):
                    yield row, file

    def settings_shown(self) -> dict[str, Any]:
        cfg = self.config
        dpo = {"precompute_ref_log_probs": cfg.precompute_ref_log_probs,
               "pad_to_multiple_of": cfg.pad_to_multiple_of} if cfg.trainer == "dpo" else {}
        return {
            "trainer": cfg.trainer, "trainer_from": cfg.trainer_from, **dpo,
            "template": "the checkpoint's chat template", "datasets": [str(s) for s in cfg.datasets],
            "split": cfg.split, "max_length": cfg.max_length, "truncation_mode": cfg.truncation_mode,
            "completion_only_loss": cfg.completion_only_loss, "num_generations": cfg.num_generations,
            "max_completion_length": cfg.max_completion_length, "use_vllm": cfg.use_vllm,
            "vllm_max_model_length": cfg.vllm_max_model_length, "ignored_by_trl": cfg.ignored,
            "image_max_pixels": getattr(self.settings, "max_pixels", None),
            "image_min_pixels": getattr(self.settings, "min_pixels", None),
            "media_dir": str(self.cwd),
        }

    # -- images ---------------------------------------------------------------------------------------------------
    def _size(self, image: Any, source: Path) -> tuple[int, int]:
        """The size the processor sees: datasets' Image feature and transformers' ``load_image`` both apply the
        EXIF orientation."""
        if isinstance(image, Mapping):
            data, path = image.get("bytes"), image.get("path")
            if data:
                return probe_bytes(bytes(data)).size(exif_transpose=True)
            if not path:
                raise ImageProblem("VC101", "an image struct with neither bytes nor a path")
            image = path
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=True)
        if not isinstance(image, str):
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which the processor cannot load")
        if image.startswith("data:"):
            return probe_bytes(decode_data_url(image)).size(exif_transpose=True)
        if image.startswith(("http://", "https://", "s3://", "gs://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        return probe_path(self._path(image)).size(exif_transpose=True)

    def _path(self, image: str) -> Path:
        """An image path as the run opens it: as written, else beside the config (launched from its folder)."""
        path = Path(image).expanduser()
        if not path.is_absolute() and not path.exists():
            beside = self.config.path.parent / path
            path = beside if beside.exists() else path
        return path

    def _expansions(self, images: list[Any], source: Path, found: list[F.Finding]) -> list[Expansion] | None:
        probed = self.probe(images, found, size=lambda image: self._size(image, source), label=_image_label)
        return None if probed.refused else probed.expansions

    # -- tokens ---------------------------------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, Any]], *, generation_prompt: bool = False,
                continue_final: bool = False) -> str:
        text = render_chat(self.template, messages, special_tokens=self.spec.special_tokens,
                           add_generation_prompt=generation_prompt)
        if continue_final:  # apply_chat_template(continue_final_message=True): the text ends at the last content
            last = messages[-1].get("content")
            tail = last if isinstance(last, str) else "".join(
                p.get("text") or "" for p in last or [] if isinstance(p, Mapping))
            at = text.rfind(tail.strip()) if tail.strip() else -1
            if at >= 0:
                text = text[:at + len(tail.strip())]
        return text

    def _tokens(self, text: str, expansions: list[Expansion], *, trained: bool,
                spans: list[tuple[int, int]] | None = None, special: bool = False) -> Encoded:
        """The processor on ``text`` (``add_special_tokens=False``): the k-th placeholder becomes image k's
        expansion; each run of features is written once and expanded here. With ``spans`` (generation blocks),
        a token is trained when it overlaps one (:func:`processor_assistant_mask`)."""
        placeholder = self.family.placeholder
        pieces = text.split(placeholder)
        if len(pieces) - 1 != len(expansions):
            raise Stops(f"the text holds {len(pieces) - 1} image placeholder(s) for {len(expansions)} image(s); the "
                        "processor raises")
        collapsed = pieces[0] + "".join(e.text + piece for e, piece in zip(expansions, pieces[1:]))
        runs = [(k, n) for k, e in enumerate(expansions) for n in e.runs]
        encoding = self.tokenizer.encode(collapsed, add_special_tokens=special)
        if spans is not None:  # the spans in the collapsed text: each placeholder before them changed length
            ends, gained, at = [], [0], 0
            for e, piece in zip(expansions, pieces[:-1]):
                at += len(piece) + len(placeholder)
                ends.append(at)
                gained.append(gained[-1] + len(e.text) - len(placeholder))
            spans = [(a + gained[sum(1 for x in ends if x <= a)], b + gained[sum(1 for x in ends if x <= b)])
                     for a, b in spans]
        assistant = None if spans is None else processor_assistant_mask(spans, encoding.offsets)
        image_of: list[int] = []
        marks: list[bool] = []
        j = 0
        for at, token in enumerate(encoding.ids):
            mark = trained if assistant is None else assistant[at]
            if token == self.image_token_id:
                if j >= len(runs):
                    raise Stops("the text holds an image token of its own beyond the images; the processor raises")
                k, n = runs[j]
                image_of += [k] * n
                marks += [mark] * n
                j += 1
            else:
                image_of.append(-1)
                marks.append(mark)
        return Encoded(image_of=image_of, trained=marks)

    def encode(self, row: Mapping[str, Any], expansions: list[Expansion]) -> tuple[Encoded, bool]:
        """A row's tokens as the collator builds them, and whether the processor itself checks the image tokens
        after the cut (``messages`` / text rows) or the slice happens after it (prompt-completion)."""
        cfg = self.config
        n = len(expansions)
        if cfg.trainer == "grpo":
            prompt = row.get("prompt")
            if isinstance(prompt, str) and not n:  # a text prompt: the processor on it, special tokens included
                return self._tokens(prompt, [], trained=False, special=True), True
            if not isinstance(prompt, list):
                raise Stops("GRPO with images needs a conversational 'prompt' (TRL: 'Multimodal training requires "
                            "conversational prompts')" if n else "no conversational 'prompt' column")
            messages = prepare_multimodal_messages(prompt, n)
            return self._tokens(self._render(messages, generation_prompt=True), expansions, trained=False), True
        if "messages" in row:
            if cfg.completion_only_loss:
                raise Stops("completion_only_loss with a messages dataset: TRL raises 'The `completion_only_loss` "
                            "argument is not supported for language modeling datasets'")
            messages = prepare_multimodal_messages(row["messages"], n)
            if cfg.assistant_only_loss:  # only the template's {% generation %} blocks are trained
                text, spans = render_chat_with_generation_spans(self.template, messages,
                                                                special_tokens=self.spec.special_tokens)
                return self._tokens(text, expansions, trained=True, spans=spans), True
            return self._tokens(self._render(messages), expansions, trained=True), True
        if cfg.assistant_only_loss:
            raise Stops("assistant_only_loss needs a conversational 'messages' row: TRL raises 'The "
                        "`assistant_only_loss` argument is only supported for conversational language modeling "
                        "datasets'")
        if cfg.text_field in row:
            text = row[cfg.text_field]
            if not isinstance(text, str):
                raise Stops(f"{cfg.text_field!r} is not text")
            return self._tokens(text, expansions, trained=True), True
        if "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                prompt = prepare_multimodal_messages(prompt, n)
                completion = prepare_multimodal_messages(completion, 0)
                last = prompt[-1]["role"]
                alone = self._render(prompt, generation_prompt=last == "user", continue_final=last == "assistant")
                whole = self._render(prompt + completion)
                common = 0  # data_utils.apply_chat_template: the prompt is the common prefix of both renderings
                for a, b in zip(alone, whole):
                    if a != b:
                        break
                    common += 1
                prompt, completion = whole[:common], whole[common:]
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise Stops("prompt and completion must both be text or both be conversations")
            # completion_only_loss unset means on for prompt-completion rows (SFTTrainer)
            head = self._tokens(prompt, expansions, trained=cfg.completion_only_loss is False)
            tail = self._tokens(completion, [], trained=True)
            return Encoded(head.image_of + tail.image_of, head.trained + tail.trained), False
        raise Stops(f"the row has none of 'messages', {cfg.text_field!r}, 'prompt'+'completion': TRL raises "
                    "'Unexpected input keys in examples'")

    # -- one row --------------------------------------------------------------------------------------------------
    def judge(self, index: int, row: Any, source: Path) -> SampleResult:
        result, frame = self.start(index, row, unloadable="datasets cannot load the file and the run stops",
                                   trainer=self.config.trainer)
        if frame["verdict"] != "ok":
            return result
        if self.config.trainer == "dpo":
            return self._judge_pair(result, frame, row, source)
        found = result.findings
        images = row.get("images") if "images" in row else ([row["image"]] if row.get("image") is not None else [])
        images = [] if images is None else images
        if not isinstance(images, list):
            images = [images]
        self._check_vision(bool(images) or "images" in row or "image" in row)
        encoding = self._encoded(result, frame, images, source, lambda expansions: self.encode(row, expansions))
        if encoding is None:
            return result
        counts, (encoded, checked) = encoding
        total = encoded.total
        result.tokens = total
        result.text_only_tokens = total - sum(counts)
        if self.config.trainer == "grpo":
            frame["prompt_tokens"] = total
            self._judge_prompt(result, total)
            return self._preview(result, images, encoded, kept=total)
        result.supervised_tokens = sum(encoded.trained)
        limit = self.config.max_length
        kept = total if limit is None else min(total, limit)
        kept_images = [0] * len(counts)
        for k in encoded.image_of[:kept]:
            if k >= 0:
                kept_images[k] += 1
        labels = sum(encoded.trained[:kept])
        frame.update(kept_tokens=kept, kept_supervised=labels, kept_image_tokens=kept_images)
        if result.supervised_tokens == 0:
            found.append(F.make("VC003", "no completion tokens to learn from: every label is masked"))
        if kept >= total:
            return self._preview(result, images, encoded, kept=kept)
        assert limit is not None
        result.fits_max_pixels = self._fit_pixels(row, images, source, limit) if counts else None
        cut = [k for k, n in enumerate(counts) if kept_images[k] < n]
        raises = ("the processor raises \"Mismatch in `image` token count between text and `input_ids`\" in the "
                  "collator" if checked else "the model raises \"Image features and image tokens do not match\"")
        for k in cut:
            fix = f"set {_setting('max_length', total)}"
            if result.fits_max_pixels is not None:
                fix += f", or cap the processor's max_pixels at {result.fits_max_pixels:,} (the sample then fits whole)"
            found.append(F.make(
                "VC201", f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {kept_images[k]:,} survive "
                         f"TRL's cut at max_length={limit:,}; the sample is {total:,} tokens: {raises} and training "
                         "stops", fix=fix + ", or drop the sample",
                image=k + 1, image_tokens=counts[k], kept=kept_images[k], tokens=total, max_length=limit))
        if cut:
            frame["verdict"] = "crash"
        supervised = result.supervised_tokens
        if supervised and not labels:
            found.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at max_length={limit:,} (sample is "
                         f"{total:,} tokens)", fix=f"set {_setting('max_length', total)}, shorten the prompt, or drop "
                                                   "the sample", supervised=supervised, tokens=total, max_length=limit))
        elif not cut:
            found.append(F.make(
                "VC203", f"{total:,} tokens > max_length={limit:,}: {total - kept:,} tokens cut, "
                         f"{supervised - labels:,} of {supervised:,} trained tokens lost",
                fix=f"set {_setting('max_length', total)} to keep it whole", tokens=total, max_length=limit,
                supervised_lost=supervised - labels))
        return self._preview(result, images, encoded, kept=kept)

    def _encoded(self, result: SampleResult, frame: dict[str, Any], images: list[Any], source: Path,
                 encode: Callable[[list[Expansion]], _Encoding]) -> tuple[list[int], _Encoding] | None:
        """The row's images sized and expanded, then ``encode`` run on them: each image's tokens and what ``encode``
        gives, or None when TRL raises on the row (an image the processor cannot load or refuses, a prompt it cannot
        build): the verdict is then ``stops``, the run stops at the step that reaches it."""
        found = result.findings
        expansions = self._expansions(images, source, found)
        if expansions is None:
            frame["verdict"] = "stops"
            result.image_tokens = [None] * len(images)
            return None
        counts = [e.features for e in expansions]
        result.image_tokens = list(counts)
        try:
            return counts, encode(expansions)
        except Stops as e:
            code = "VC002" if "image" in str(e) and "placeholder" in str(e) else "VC001"
            found.append(F.make(code, f"{e}; the run stops at the step that reaches this sample"))
            frame["verdict"] = "stops"
            return None

    # -- DPO: a row's chosen and rejected sequences -----------------------------------------------------------------
    def encode_pair(self, row: Mapping[str, Any], expansions: list[Expansion]) -> tuple[Encoded, Encoded, Encoded]:
        """``DataCollatorForVisionPreference``: the prompt, the chosen and the rejected answer, each processed on its
        own (``add_special_tokens=False``), the images with the prompt only. A conversational row's prompt is
        rendered with the generation prompt (or continuing a last assistant turn), and cut back to the common
        prefix of its rendering and of the prompt+chosen and prompt+rejected renderings (``apply_chat_template``);
        each answer is the rest of its rendering. A standard row's texts are used as written (no EOS is added: a
        vision dataset is not prepared ahead)."""
        n = len(expansions)
        if "prompt" not in row:  # the collator reads example["prompt"]: no implicit prompt for vision datasets
            raise Stops("the row has no 'prompt': TRL's vision preference collator raises KeyError: 'prompt' (it "
                        "extracts no implicit prompt from chosen / rejected for vision datasets)")
        for key in ("chosen", "rejected"):
            if key not in row:
                raise Stops(f"the row has no {key!r}: TRL's vision preference collator raises KeyError: {key!r}")
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if _is_conversation(prompt):
            messages = prepare_multimodal_messages(prompt, n)
            answers = [prepare_multimodal_messages(a, 0) for a in (chosen, rejected)]
            last = messages[-1]["role"]
            if last not in ("user", "tool", "assistant"):
                raise Stops(f"the prompt ends with a {last} turn: TRL raises 'Invalid role in the last message'")
            text = self._render(messages, generation_prompt=last != "assistant", continue_final=last == "assistant")
            wholes = [self._render(messages + a) for a in answers]
            for whole in wholes:  # data_utils.apply_chat_template: the prompt is the common prefix of all three
                common = 0
                for a, b in zip(text, whole):
                    if a != b:
                        break
                    common += 1
                text = text[:common]
            prompt, chosen, rejected = text, wholes[0][len(text):], wholes[1][len(text):]
        if not all(isinstance(x, str) for x in (prompt, chosen, rejected)):
            raise Stops("prompt, chosen and rejected must all be text or all be conversations")
        return (self._tokens(prompt, expansions, trained=False), self._tokens(chosen, [], trained=True),
                self._tokens(rejected, [], trained=True))

    def _pair_images(self, row: Mapping[str, Any]) -> list[Any]:
        """The collator's images: a single ``image`` (even null) becomes a list of one; ``images`` as given."""
        if "image" in row:
            return [row["image"]]
        images = row.get("images", [])
        if images is None:
            raise Stops("'images' is null: TRL's collator hands None to the processor, which raises TypeError ('only "
                        "a single or a list of entries is supported')")
        return list(images) if isinstance(images, (list, tuple)) else [images]

    def _judge_pair(self, result: SampleResult, frame: dict[str, Any], row: Mapping[str, Any],
                    source: Path) -> SampleResult:
        """A DPO row: the chosen (prompt + chosen) and rejected (prompt + rejected) sequences, each cut to
        ``max_length`` keeping its start. The record's own counts are the chosen sequence's, the rejected's are
        in ``framework.pair``; both share the prompt, so an image the cut reaches is cut in both, and the model's
        forward raises. The verdict is the worse of the two."""
        found = result.findings
        if not self._vision_dataset():
            return self._judge_text_pair(result, frame, row)
        self._check_pair_run()
        try:
            images = self._pair_images(row)
        except Stops as e:
            found.append(F.make("VC001", f"{e}; the run stops at the step that reaches this sample"))
            frame["verdict"] = "stops"
            return result
        encoding = self._encoded(result, frame, images, source, lambda expansions: self.encode_pair(row, expansions))
        if encoding is None:
            return result
        counts, (prompt, chosen, rejected) = encoding
        limit = self.config.max_length
        cuts = [_cut(prompt, answer, limit, len(counts)) for answer in (chosen, rejected)]
        mine, theirs = cuts
        result.tokens = mine.total
        result.text_only_tokens = mine.total - sum(counts)
        result.supervised_tokens = mine.trained
        frame.update(prompt_tokens=prompt.total, kept_tokens=mine.kept, kept_supervised=mine.kept_trained,
                     kept_image_tokens=mine.kept_images)
        frame["pair"] = {"chosen_tokens": mine.total, "rejected_tokens": theirs.total,
                         "rejected_supervised": theirs.trained, "kept_rejected_tokens": theirs.kept,
                         "kept_rejected_supervised": theirs.kept_trained,
                         "kept_rejected_image_tokens": theirs.kept_images}
        for name, cut in (("chosen", mine), ("rejected", theirs)):
            if not cut.trained:
                found.append(F.make("VC003", f"the {name} answer has no tokens: nothing to learn from"))
        longest = max(mine.total, theirs.total)
        whole = f"set {_setting('max_length', longest)}"
        if limit is None or longest <= limit:
            return self._preview(result, images, Encoded(prompt.image_of + chosen.image_of,
                                                         prompt.trained + chosen.trained), kept=mine.kept)
        result.fits_max_pixels = self._fit_pixels(row, images, source, limit) if counts else None
        cut_images = [k for k, c in enumerate(counts) if mine.kept_images[k] < c]
        for k in cut_images:
            fix = whole
            if result.fits_max_pixels is not None:
                fix += f", or cap the processor's max_pixels at {result.fits_max_pixels:,} (the pair then fits whole)"
            found.append(F.make(
                "VC201", f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {mine.kept_images[k]:,} "
                         f"survive TRL's cut at max_length={limit:,}; the prompt is {prompt.total:,} tokens, shared by "
                         "the chosen and rejected sequences: the model raises \"Image features and image tokens do "
                         f"not match\", which DPOTrainer re-raises as \"The current `max_length` ({limit}) is too "
                         "short and causes image placeholder tokens in `input_ids` to be truncated\", and training "
                         "stops", fix=fix + ", or drop the sample",
                image=k + 1, image_tokens=counts[k], kept=mine.kept_images[k], tokens=mine.total, max_length=limit))
        if cut_images:
            frame["verdict"] = "crash"
        for name, cut in (("chosen", mine), ("rejected", theirs)):
            if cut.total <= limit:
                continue
            if cut.trained and not cut.kept_trained:
                found.append(F.make(
                    "VC202", f"the {name} sequence: all {cut.trained:,} answer tokens are cut at max_length="
                             f"{limit:,} (the prompt alone is {prompt.total:,} tokens): the pair gives DPO nothing to "
                             "compare", fix=f"{whole}, shorten the prompt, or drop the sample",
                    supervised=cut.trained, tokens=cut.total, max_length=limit))
            elif not cut_images:
                found.append(F.make(
                    "VC203", f"the {name} sequence: {cut.total:,} tokens > max_length={limit:,}: "
                             f"{cut.total - cut.kept:,} tokens cut, {cut.trained - cut.kept_trained:,} of "
                             f"{cut.trained:,} answer tokens lost", fix=f"{whole} to keep the pair whole",
                    tokens=cut.total, max_length=limit, supervised_lost=cut.trained - cut.kept_trained))
        return self._preview(result, images, Encoded(prompt.image_of + chosen.image_of,
                                                     prompt.trained + chosen.trained), kept=mine.kept)

    def _check_pair_run(self) -> None:
        """DPOTrainer's refusals for a vision dataset, quoting TRL (a text dataset's route refuses none of these
        options: keep_end, precompute_ref_log_probs and pad_to_multiple_of run, padding_free warns and pads)."""
        if self._vision_checked:
            return
        self._vision_checked = True
        cfg = self.config
        if cfg.truncation_mode == "keep_end" and cfg.max_length is not None:
            raise UsageError(f"{cfg.path}: TRL refuses truncation_mode keep_end for vision datasets ("
                             "\"truncation_mode='keep_end' is not supported for vision-language models\"); set "
                             "truncation_mode: keep_start")
        if cfg.precompute_ref_log_probs:
            raise UsageError(f"{cfg.path}: TRL refuses precompute_ref_log_probs for vision datasets "
                             "(\"`precompute_ref_log_probs=True` is not supported for vision datasets\"); set "
                             "precompute_ref_log_probs: false")
        if cfg.pad_to_multiple_of is not None:
            raise UsageError(f"{cfg.path}: pad_to_multiple_of {cfg.pad_to_multiple_of}: TRL's vision preference "
                             "collator raises at the first step (\"Padding to a multiple of a value is not yet "
                             "implemented for vision-language modeling\"); remove pad_to_multiple_of")

    # -- DPO on a text dataset: DPOTrainer._prepare_dataset, then DataCollatorForPreference ------------------------
    def _first_row(self) -> Mapping[str, Any]:
        """The dataset's first row (``next(iter(train_dataset))``: DPOTrainer decides its route on it)."""
        if self._first is None:
            first: Any = next((row for row, _ in self.rows()), None)
            self._first = first if isinstance(first, Mapping) else {}
        return self._first

    def _vision_dataset(self) -> bool:
        """``DPOTrainer._is_vision_dataset``: the first row has an ``image`` or ``images`` key."""
        first = self._first_row()
        return "image" in first or "images" in first

    def _text_form(self) -> bool:
        """Whether ``_prepare_dataset`` sees a conversational dataset (``is_conversational`` of its first example
        after ``extract_prompt``): if not, it appends the EOS token to every row's chosen and rejected."""
        if self._conversational is None:
            try:
                self._conversational = is_conversational(self._text_example(self._first_row()))
            except (Stops, NotModelled):  # that row stops the run (or is not counted): say so on it
                self._conversational = False
        return self._conversational

    def _text_example(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as ``tokenize_fn`` gets it: ``extract_prompt`` applied when the dataset has no ``prompt``."""
        example = dict(row)
        if "prompt" not in self._first_row():
            example.update(extract_prompt(example))
        return example

    def _ids(self, text: str, *, chat: bool) -> list[int]:
        """The processor's ids of ``text``: ``processor(text=...)`` (the tokenizer's special tokens added), or the
        tokenization of ``processor.apply_chat_template(tokenize=True)``, which adds none when the rendering starts
        with the BOS token."""
        bos = self.spec.special_tokens.get("bos_token")
        special = not (chat and bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def _chat_ids(self, messages: Any, example: Mapping[str, Any], *, generation_prompt: bool) -> list[int]:
        """``data_utils._tokenize`` with a processor on a conversation: ``prepare_multimodal_messages`` (no
        images), then ``apply_chat_template`` with the row's ``tools`` (JSON text is parsed) and
        ``chat_template_kwargs``."""
        tools = example.get("tools")
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except ValueError as e:
                raise Stops(f"'tools' is not valid JSON: TRL's json.loads raises ({e})") from None
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, Mapping) for t in tools)):
            raise Stops("'tools' is not a list of JSON schemas: transformers raises 'Tools should either be a JSON "
                        "schema, or a callable function'")
        kwargs = example.get("chat_template_kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise Stops(f"'chat_template_kwargs' is {type(kwargs).__name__}, not a mapping: TRL's ** raises TypeError")
        text = render_chat(self.template, prepare_multimodal_messages(messages, 0),
                           special_tokens=self.spec.special_tokens, add_generation_prompt=generation_prompt,
                           tools=tools, **{str(k): v for k, v in kwargs.items()})
        return self._ids(text, chat=True)

    def encode_text_pair(self, row: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
        """``DPOTrainer._prepare_dataset`` on a text row: the implicit prompt extracted (no ``prompt`` column), the
        EOS appended to the answers of a standard dataset, then ``tokenize_fn``: the prompt (with the generation
        prompt), prompt + chosen and prompt + rejected each tokenized whole, and the prompt cut back to where its ids
        and each whole's ids diverge (``common_prefix_length``). Gives ``prompt_ids``, ``chosen_ids``,
        ``rejected_ids`` as the prepared dataset holds them."""
        example = self._text_example(row)
        conversational = self._text_form()
        for key in ("prompt", "chosen", "rejected"):
            if key not in example:
                raise Stops(f"the row has no {key!r}: TRL raises KeyError: {key!r}")
        prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
        if not conversational:  # add_eos, decided on the dataset's first row
            eos = self.spec.special_tokens.get("eos_token")
            if not isinstance(chosen, str) or not isinstance(rejected, str) or not isinstance(eos, str):
                raise Stops("chosen and rejected must be text in a standard dataset (TRL's add_eos calls "
                            "str.endswith on them with the tokenizer's EOS)")
            chosen = chosen if chosen.endswith(eos) else chosen + eos
            rejected = rejected if rejected.endswith(eos) else rejected + eos
        if is_conversational({**example, "chosen": chosen, "rejected": rejected}):
            if not all(isinstance(x, list) for x in (prompt, chosen, rejected)):
                raise Stops("prompt, chosen and rejected must all be conversations (TRL concatenates prompt + "
                            "answer)")
            ids = [self._chat_ids(prompt, example, generation_prompt=True),
                   self._chat_ids(prompt + chosen, example, generation_prompt=False),
                   self._chat_ids(prompt + rejected, example, generation_prompt=False)]
        else:
            if not all(isinstance(x, str) for x in (prompt, chosen, rejected)):
                raise Stops("prompt, chosen and rejected must all be text (TRL concatenates prompt + answer)")
            ids = [self._ids(prompt, chat=False), self._ids(prompt + chosen, chat=False),
                   self._ids(prompt + rejected, chat=False)]
        alone, with_chosen, with_rejected = ids
        common = min(common_prefix_length(alone, with_chosen), common_prefix_length(alone, with_rejected))
        return alone[:common], with_chosen[common:], with_rejected[common:]

    def _judge_text_pair(self, result: SampleResult, frame: dict[str, Any], row: Mapping[str, Any]) -> SampleResult:
        """A DPO row of a text dataset (no ``image`` / ``images`` column): ``_prepare_dataset`` tokenizes it ahead
        and drops it when its prompt alone fills ``max_length`` (``keep_start``); the survivors are cut per sequence
        by ``DataCollatorForPreference`` (``keep_start``: the first ``max_length`` tokens; ``keep_end``: the last)
        and only the answer is trained (``completion_mask``). Same record shape as the vision route."""
        found = result.findings
        try:
            prompt, chosen, rejected = self.encode_text_pair(row)
        except Stops as e:
            found.append(F.make("VC001", f"{e}; DPOTrainer raises while preparing the dataset (_prepare_dataset), "
                                         "so the run stops before training"))
            frame["verdict"] = "stops"
            return result
        except NotModelled as e:
            found.append(F.make("VC007", f"{e}: the row is not counted"))
            frame["verdict"] = "unknown"
            return result
        cfg = self.config
        limit, mode = cfg.max_length, cfg.truncation_mode
        cuts = [_text_cut(len(prompt), len(answer), limit, mode) for answer in (chosen, rejected)]
        mine, theirs = cuts
        result.image_tokens = []
        result.tokens = result.text_only_tokens = mine.total
        result.supervised_tokens = mine.trained
        frame["prompt_tokens"] = len(prompt)
        longest = max(mine.total, theirs.total)
        whole = f"set {_setting('max_length', longest)}"
        layout = Encoded(image_of=[-1] * mine.total, trained=[False] * len(prompt) + [True] * len(chosen))
        for name, cut in (("chosen", mine), ("rejected", theirs)):
            if not cut.trained:
                found.append(F.make("VC003", f"the {name} answer has no tokens: nothing to learn from"))
        if limit is not None and mode == "keep_start" and len(prompt) >= limit:
            frame.update(kept_tokens=0, kept_supervised=0, kept_image_tokens=[])
            frame["pair"] = {"chosen_tokens": mine.total, "rejected_tokens": theirs.total,
                             "rejected_supervised": theirs.trained, "kept_rejected_tokens": 0,
                             "kept_rejected_supervised": 0, "kept_rejected_image_tokens": []}
            found.append(F.make(
                "VC204", f"the prompt alone is {len(prompt):,} tokens >= max_length={limit:,}: DPOTrainer's "
                         "_prepare_dataset drops the row before training (\"Dropping fully truncated examples\"): "
                         "it is not trained on", fix=f"{whole} to keep the pair whole (max_length: {len(prompt) + 1} "
                                                     "keeps the row), or shorten the prompt",
                tokens=len(prompt), max_length=limit))
            frame["verdict"] = "dropped"
            return self._preview(result, [], layout, kept=0)
        frame.update(kept_tokens=mine.kept, kept_supervised=mine.kept_trained, kept_image_tokens=[])
        frame["pair"] = {"chosen_tokens": mine.total, "rejected_tokens": theirs.total,
                         "rejected_supervised": theirs.trained, "kept_rejected_tokens": theirs.kept,
                         "kept_rejected_supervised": theirs.kept_trained, "kept_rejected_image_tokens": []}
        if limit is not None and longest > limit:
            for name, cut in (("chosen", mine), ("rejected", theirs)):
                if cut.total <= limit:
                    continue
                if cut.trained and not cut.kept_trained:  # unreachable in TRL 1.16 (the filter, keep_end): kept
                    found.append(F.make(
                        "VC202", f"the {name} sequence: all {cut.trained:,} answer tokens are cut at max_length="
                                 f"{limit:,}: the pair gives DPO nothing to compare",
                        fix=f"{whole}, shorten the prompt, or drop the sample", supervised=cut.trained,
                        tokens=cut.total, max_length=limit))
                    continue
                where = "its end" if mode == "keep_start" else "its start (keep_end)"
                lost_prompt = "" if mode == "keep_start" else (
                    f", {min(len(prompt), cut.total - cut.kept):,} of the prompt's {len(prompt):,} tokens lost"
                    + (": the answer is trained without its prompt" if cut.total - cut.kept >= len(prompt) else ""))
                found.append(F.make(
                    "VC203", f"the {name} sequence: {cut.total:,} tokens > max_length={limit:,}: "
                             f"{cut.total - cut.kept:,} tokens cut from {where}, {cut.trained - cut.kept_trained:,} "
                             f"of {cut.trained:,} answer tokens lost{lost_prompt}",
                    fix=f"{whole} to keep the pair whole", tokens=cut.total, max_length=limit,
                    supervised_lost=cut.trained - cut.kept_trained))
        start = mine.total - mine.kept if mode == "keep_end" else 0
        return self._preview(result, [], layout, kept=mine.kept, start=start)

    def _preview(self, result: SampleResult, images: list[Any], encoded: Encoded, *, kept: int,
                 start: int = 0) -> SampleResult:
        """The HTML report's picture of the first samples of each finding: their images and token layout (``kept``
        tokens from ``start`` survive the cut; none when ``kept`` is 0 and the sample is dropped)."""
        if result.findings and self.previews.wants(result):  # (preview: hook)
            limit = None if self.config.trainer == "grpo" else self.config.max_length
            result.preview = self.previews.make(result, images=image_refs(images), spans=token_spans(
                encoded.image_of, encoded.trained, kept=[(start, start + kept)] if kept else None,
                max_length=limit))
        return result

    def _check_vision(self, vision: bool) -> None:
        """SFTTrainer's refusals for a vision dataset (decided on its first row)."""
        if self._vision_checked or self.config.trainer != "sft":
            return
        self._vision_checked = True
        cfg = self.config
        if not vision:
            return
        if cfg.packing:
            raise UsageError(f"{cfg.path}: TRL refuses packing for vision datasets ('Packing is not supported for "
                             "vision datasets'); set packing: false")
        if cfg.padding_free:
            raise UsageError(f"{cfg.path}: TRL refuses padding_free for vision datasets; set padding_free: false")
        if cfg.truncation_mode == "keep_end" and cfg.max_length is not None:
            raise UsageError(f"{cfg.path}: TRL refuses truncation_mode keep_end for vision datasets (the image "
                             "tokens are at the start); set truncation_mode: keep_start")

    def _judge_prompt(self, result: SampleResult, prompt: int) -> None:
        cfg = self.config
        if not (cfg.use_vllm and cfg.vllm_max_model_length):
            return
        budget = cfg.vllm_max_model_length
        if prompt >= budget:
            need = prompt + (cfg.max_completion_length or 1)
            result.findings.append(F.make(
                "VC206", f"the prompt is {prompt:,} tokens, vllm_max_model_length={budget:,}: vLLM refuses a prompt "
                         "that leaves no room to generate",
                fix=f"set {_setting('vllm_max_model_length', need)}, or drop the sample", tokens=prompt,
                max_length=budget))
            assert result.framework is not None
            result.framework["verdict"] = "crash"

    def _fit_pixels(self, row: Mapping[str, Any], images: list[Any], source: Path, limit: int) -> int | None:
        """The largest processor max_pixels (a multiple of the family's pixel unit) at which the sample fits whole."""
        factor = getattr(self.settings, "factor", None)
        min_pixels = getattr(self.settings, "min_pixels", None)
        max_pixels = getattr(self.settings, "max_pixels", None)
        if not factor or not min_pixels or not max_pixels:
            return None
        unit = int(factor) ** 2
        sizes = [self._size(image, source) for image in images]
        original = self.settings

        def fits(budget: int) -> bool:
            settings = self.family.with_max_pixels(original, budget)
            if settings is None:
                return False
            expansions = [self.family.expand(w, h, settings) for w, h in sizes]
            try:
                if self.config.trainer == "dpo":  # both sequences whole
                    prompt, chosen, rejected = self.encode_pair(row, expansions)
                    return prompt.total + max(chosen.total, rejected.total) <= limit
                encoded, _ = self.encode(row, expansions)
            except Stops:
                return False
            return encoded.total <= limit

        return largest_budget(lo=max(1, -(-min_pixels // unit)), hi=max_pixels // unit, unit=unit, fits=fits)


def _is_conversation(value: Any) -> bool:
    """``data_utils.is_conversational`` on one field: a list whose first item is a message with a role."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and "role" in value[0]


@dataclass(frozen=True)
class PairCut:
    """One DPO sequence (the prompt, then an answer) and what survives ``max_length`` (its start is kept)."""

    total: int
    trained: int
    kept: int
    kept_trained: int
    kept_images: list[int]


def _cut(prompt: Encoded, answer: Encoded, limit: int | None, n_images: int) -> PairCut:
    """DataCollatorForVisionPreference's slice ``[:max_length]`` of prompt + answer; only the answer is trained
    (its completion_mask)."""
    total = prompt.total + answer.total
    kept = total if limit is None else min(total, limit)
    kept_images = [0] * n_images
    for k in prompt.image_of[:kept]:
        if k >= 0:
            kept_images[k] += 1
    trained = sum(answer.trained)
    return PairCut(total=total, trained=trained, kept=kept,
                   kept_trained=sum(answer.trained[:max(0, kept - prompt.total)]), kept_images=kept_images)


class NotModelled(Exception):
    """What TRL does with this row is not decided by the row alone: vlmcheck does not count it (VC007)."""


# data_utils.is_conversational: the keys it looks at
_CONVERSATION_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")


def is_conversational(example: Mapping[str, Any]) -> bool:
    """``data_utils.is_conversational``: the value of one of the supported keys (the one ``set.pop`` gives: it
    depends on Python's string hashes) is a list whose first item is a message with a role. When the keys disagree,
    the outcome depends on that hash order: :class:`NotModelled`; an empty list makes TRL raise IndexError."""
    outcomes: set[bool | None] = set()
    for key in _CONVERSATION_KEYS:
        if key in example:
            value = example[key]
            if isinstance(value, list):
                outcomes.add(None if not value else isinstance(value[0], Mapping) and "role" in value[0])
            else:
                outcomes.add(False)
    if not outcomes:
        return False
    if len(outcomes) > 1:
        raise NotModelled("its prompt / chosen / rejected are not all conversations (or one is empty), and TRL's "
                          "is_conversational reads one of them picked by Python's string-hash order")
    outcome = outcomes.pop()
    if outcome is None:
        raise Stops("prompt, chosen and rejected are empty lists: TRL's is_conversational raises IndexError")
    return outcome


def extract_prompt(example: Mapping[str, Any]) -> dict[str, Any]:
    """What ``data_utils.extract_prompt`` gives: the prompt is the common start of chosen and rejected (turns, or
    characters with a space before the first difference moved to the answers). Its quirks kept: when one is a
    prefix of the other (or they are equal) the loop ends without a break and the last common item goes to the
    answers; when they differ at once and chosen ends with a space, the item before index 0 is chosen's last and
    the prompt becomes all of chosen but it."""
    if "chosen" not in example or "rejected" not in example:
        raise Stops(f"the row has no {'chosen' if 'chosen' not in example else 'rejected'!r}: TRL's extract_prompt "
                    "raises KeyError")
    chosen, rejected = example["chosen"], example["rejected"]
    if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)):
        raise Stops("chosen and rejected must be text or conversations: TRL's extract_prompt raises TypeError")
    if not min(len(chosen), len(rejected)):
        raise Stops("chosen or rejected is empty: TRL's extract_prompt raises UnboundLocalError (no prompt column, "
                    "so it extracts one)")
    shared = min(len(chosen), len(rejected))
    first = next((i for i in range(shared) if chosen[i] != rejected[i]), None)
    if first is None:  # no difference: TRL's loop ends on the last shared item, which goes to the answers
        cut = shared - 1
    else:  # a space just before the difference goes to the answers; at 0, index -1 is chosen's last item
        cut = first - 1 if chosen[first - 1] == " " else first
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """``data_utils.common_prefix_length``: how many leading ids the two have in common."""
    length = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        length += 1
    return length


def _text_cut(prompt: int, answer: int, limit: int | None, mode: str) -> PairCut:
    """DataCollatorForPreference's per-sequence slice of prompt + answer: ``[:max_length]`` (keep_start) or
    ``[-max_length:]`` (keep_end); the answer is the completion_mask."""
    total = prompt + answer
    kept = total if limit is None else min(total, limit)
    kept_trained = max(0, kept - prompt) if mode == "keep_start" else min(answer, kept)
    return PairCut(total=total, trained=answer, kept=kept, kept_trained=kept_trained, kept_images=[])


def _image_label(k: int, n: int, image: Any) -> str:
    return f"image {k} of {n} ({image[:120] if isinstance(image, str) else 'bytes'})"


# chat_template_utils.has_generation_markers (whitespace-trim variants included)
_GENERATION_MARKERS = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    """``chat_template_utils.has_generation_markers``: the template marks what the assistant generates."""
    return _GENERATION_MARKERS.search(template) is not None


def shipped_training_templates() -> dict[str, tuple[str, str]] | None:
    """The training templates the installed TRL ships: each ``<name>.jinja``'s text -> (``<name>_training.jinja``,
    its text), as ``get_training_chat_template`` swaps them in; None when TRL is not installed (read from the
    package's files: importing trl imports torch)."""
    import importlib.util

    found = importlib.util.find_spec("trl")
    if found is None or not found.submodule_search_locations:
        return None
    return _shipped(tuple(str(Path(p) / "chat_templates") for p in found.submodule_search_locations))


@functools.lru_cache(maxsize=4)
def _shipped(folders: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for folder in folders:
        for train in sorted(Path(folder).glob("*_training.jinja")):
            original = train.with_name(train.name.replace("_training.jinja", ".jinja"))
            if original.is_file():  # two templates alike: the first in name order, as before
                out.setdefault(original.read_text(encoding="utf-8"), (train.name, train.read_text(encoding="utf-8")))
    return out


@dataclass(frozen=True)
class TrainingTemplate:
    """The chat template ``SFTTrainer(assistant_only_loss=True)`` trains with, or why there is none."""

    template: str | None
    source: str  # "own markers" | "trl:<name>_training.jinja" | why there is none


def find_training_template(template: str) -> TrainingTemplate:
    """What ``SFTTrainer(assistant_only_loss=True)`` does with ``template`` at init (``get_training_chat_template``):
    keeps it when it has ``{% generation %}`` markers, else swaps in the ``<name>_training.jinja`` TRL ships beside
    the ``<name>.jinja`` it equals (read from the installed TRL: its templates are TRL's, not ours), else raises
    ValueError ("The chat template is not training-compatible"). Without TRL installed the swap cannot be told,
    and the answer says so."""
    if has_generation_markers(template):
        return TrainingTemplate(template, "own markers")
    shipped = shipped_training_templates()
    if shipped is None:
        return TrainingTemplate(None, "the chat template has no {% generation %} markers, and TRL is not installed "
                                      "here to tell whether it ships a training variant of it")
    if template in shipped:
        name, text = shipped[template]
        return TrainingTemplate(text, f"trl:{name}")
    return TrainingTemplate(None, "the chat template has no {% generation %} markers and is not one TRL ships a "
                                  "training variant of")


def training_template(template: str) -> str:
    """:func:`find_training_template`'s template, for a run that trains with it; a usage error naming the fix when
    TRL refuses the template or is not installed to tell."""
    found = find_training_template(template)
    if found.template is not None:
        return found.template
    fix = ("install trl so vlmcheck can read the training template TRL would swap in"
           if shipped_training_templates() is None else "TRL refuses it: set chat_template_path to a template with "
           "{% generation %} markers")
    raise UsageError(f"assistant_only_loss: {found.source}; {fix}")


# -- which tokens assistant_only_loss trains ----------------------------------------------------------------------
# Both routes mask the character spans of the template's {% generation %} blocks, as transformers' AssistantTracker
# records them while rendering (vlmcheck.chat.render_chat_with_generation_spans), but they map characters to
# tokens differently: TRL's dataset tokenization of text rows calls the tokenizer's apply_chat_template, its vision
# collator the processor's. vlmcheck template models the first, vlmcheck check's TRL runs the second.


def tokenizer_assistant_mask(spans: Sequence[tuple[int, int]], *, char_to_token: Callable[[int], int | None],
                             length: int) -> list[bool]:
    """``PreTrainedTokenizerBase.apply_chat_template(return_assistant_tokens_mask=True)``: each span is masked
    from ``char_to_token(start)`` to ``char_to_token(end - 1)``; a span whose start has no token ends the loop
    (every later span is left out), and one whose end has no token (or is token 0) runs to the end."""
    mask = [False] * length
    for start_char, end_char in spans:
        start = char_to_token(start_char)
        end = char_to_token(end_char - 1)
        if start is None:
            break
        for t in range(start, end + 1 if end else length):
            mask[t] = True
    return mask


def processor_assistant_mask(spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """``ProcessorMixin._adjust_assistant_masks_indices``: a token is masked when its character offsets overlap a
    span (spans given in the text the tokens were read from); zero-width tokens never are."""
    return [any(start < b and end > a for a, b in spans) for start, end in offsets]


def _setting(key: str, value: Any) -> str:
    """A fix written in TRL's own YAML syntax."""
    return f"{key}: {value}"
