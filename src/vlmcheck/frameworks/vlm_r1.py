"""VLM-R1 (om-ai-lab/VLM-R1): the one home of its facts (its ``grpo_jsonl.py`` launch scripts, its jsonl layout and
question templates, its image loading, and what its GRPO trainer does with a prompt).

Modelled on VLM-R1 at commit 90052f47 (``src/open-r1-multimodal/src/open_r1/grpo_jsonl.py``,
``vlm_modules/qwen_module.py``, ``trainer/grpo_trainer.py``; it pins transformers 4.49.0 and trl 0.17.0); the
proof is tests/assets/vlm_r1_golden/:

- **Config**: the flags a launch script passes to ``src/open_r1/grpo_jsonl.py`` (through ``torchrun``,
  ``python`` or ``accelerate launch``; shell variables such as ``data_paths="a:b"`` expanded). Defaults:
  ``--max_pixels`` 12,845,056, ``--min_pixels`` 3,136, ``--max_prompt_length`` 512, ``--task_type`` none.
- **Data**: ``--data_file_paths`` and ``--image_folders``, each ``:``-separated, one folder per file (a count that
  differs stops the run). Each line: ``image`` (a path or a list of paths under its folder, or absent) and
  ``conversations``, whose first turn's ``value`` with every ``<image>`` removed is the question; a row without
  them, or an ``image`` of another type, stops the run while loading; so does an image file that does not exist
  (the dataset ``map`` asserts it).
- **Prompt**: one user turn, an image part per image first, then the question in the Qwen module's template for
  ``task_type``; the processor's chat template with the generation prompt; the processor with
  ``add_special_tokens=False``.
- **Images**: ``PIL.Image.open`` (no EXIF rotation); an image with a side under 28 px is scaled so that side is
  28, keeping the ratio (sides truncated to whole pixels); then the processor, whose ``min_pixels`` /
  ``max_pixels`` the trainer sets from the flags. An image over ratio 200 then makes the processor raise in the
  training step.
- **The budget**: the trainer sets ``max_prompt_length`` to None ("Setting max_prompt_length is currently not
  supported"): no prompt is cut or filtered, whatever the flag says.
- **Images per prompt**: the trainer asserts one ``image_grid_thw`` per prompt of the batch: a row with several
  images fails it, and the run stops there.
- **grpo_rec.py** (``run_grpo_rec.sh``): ``--dataset_name`` a YAML file whose ``datasets`` name JSON / JSON Lines
  files (``sampling_strategy`` ``first:N``, ``end:N``, ``N%``; ``random`` is a shuffle); ``--image_root`` joined
  to each row's ``image``; a row holds ``problem`` and ``solution``; the prompt is one user turn, the image then the
  ``rec`` question template, for every row. ``__getitem__`` (in the training loop, not while loading) replaces a
  row whose image file is missing by a random other row; a text-only row reaches the trainer with ``image`` None
  and its assertion "The key image is not found in the input" fails; a row without ``problem`` / ``solution``
  raises KeyError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.chat import render_chat
from vlmcheck.data.files import not_a_file, read_parsed
from vlmcheck.data.images import probe_path
from vlmcheck.data.readers import iter_rows as read_rows
from vlmcheck.errors import UsageError
from vlmcheck.families import Overrides
from vlmcheck.frameworks._run import ProcessorRun, mapped, whole_number
from vlmcheck.frameworks._shell import launch_commands, startable
from vlmcheck.frameworks.options import TRAINING_ARGUMENTS_OPTIONS
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.results import SampleResult

NAME = "vlm-r1"
VERSIONS = "VLM-R1 at 90052f47 (grpo_jsonl.py, VLMGRPOTrainer; transformers 4.49.0, trl 0.17.0)"
SCAN_DEFAULTS: dict[str, Any] | None = None  # its prompts are judged by its trainer: `vlmcheck check` only

SCRIPTS = ("open_r1/grpo_jsonl.py", "open_r1/grpo_rec.py")
REC_SCRIPT = "grpo_rec.py"
# grpo_rec.py: SYSTEM_PROMPT, the first message of a text-only row (which then fails the trainer's image assertion)
# GRPOScriptArguments / GRPOConfig defaults
DEFAULTS: dict[str, Any] = {"max_pixels": 12845056, "min_pixels": 3136, "max_prompt_length": 512,
                            "task_type": None}
# `vlmcheck lint`: concept -> (VLM-R1's option name, its default). It pins trl==0.17.0 / transformers==4.49.0
# (src/open-r1-multimodal/setup.py); its script arguments (grpo_jsonl.py) default max_pixels=12845056;
# TrainingArguments 4.49 defaults bf16=False, gradient_checkpointing=False. max_prompt_length: None, as the
# trainer sets it (see the budget above).
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    **TRAINING_ARGUMENTS_OPTIONS,
    "num_generations": ("num_generations", 8),
    "temperature": ("temperature", 1.0),
    "bf16": ("bf16", False),
    "gradient_checkpointing": ("gradient_checkpointing", False),
    "lora": ("use_peft", False),
    "max_prompt_length": ("max_prompt_length", None),
    "max_pixels": ("max_pixels", DEFAULTS["max_pixels"]),
}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads: VLM-R1's trainer is GRPO."""
    return "grpo"


# Qwen2VLModule.get_question_template: the text the question is put in, per task_type
_THINK = "First output the thinking process in <think> </think> tags and then output the final answer in <answer> " \
         "</answer> tags."
_TAGS = ("First thinks about the reasoning process in the mind and then provides the user with the answer. The "
         "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
         "respectively, i.e., <think> reasoning process here </think><answer> {answer} </answer>")
QUESTION_TEMPLATES: dict[str | None, str] = {
    "rec": "{Question} " + _THINK + " Output the final answer in JSON format.",
    "ic": "{Question} " + _TAGS.replace("{answer}", "json format answer here"),
    "odLength": _TAGS.replace("{answer}", "answer here") + "\n{Question}",
    None: "{Question} " + _THINK,  # any other task_type
}
MIN_SIDE = 28  # the trainer scales a side under this up to it
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


# -- launch scripts -------------------------------------------------------------------------------------------------
def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The flags a launch script passes to ``grpo_jsonl.py`` / ``grpo_rec.py``, read as bash runs the script (see
    ``_shell.launch_commands``), as ``{flag: value}``; None when it runs no such script. A flag whose value was an
    empty or unset variable is named in ``__unset__`` with the variables."""
    env = os.environ if env is None else env
    for command in launch_commands(text, env=env, path=path, program="|".join(re.escape(s) for s in SCRIPTS)):
        words = command.words
        at = next((i for i, w in enumerate(words) if w.endswith(SCRIPTS)), None)
        if at is None:
            continue
        startable(command, at + 1, path=path, program=words[at])
        dropped = {i: names for i, names in command.vanished}
        flags: dict[str, Any] = {"__launch__": NAME, "__script__": words[at], "__line__": command.line}
        unset: dict[str, tuple[str, ...]] = {}
        i = at + 1
        while i < len(words):
            word = words[i]
            i += 1
            if not word.startswith("--"):
                continue
            key, eq, value = word[2:].partition("=")
            key = key.replace("-", "_")
            names = command.unset.get(i - 1, ())
            if not eq:
                if i in dropped:  # `--max_pixels $UNSET`: bash dropped the value's word
                    names = names + dropped[i]
                if i < len(words) and not words[i].startswith("--"):
                    value = words[i]
                    names = names + command.unset.get(i, ())
                    i += 1
                else:
                    value = "true"  # a bare flag such as --bf16
            flags[key] = value
            if names:
                unset[key] = names
        flags["__unset__"] = unset
        return flags
    return None


def _unset(raw: Mapping[str, Any], key: str, path: Path) -> None:
    """Refuse a flag vlmcheck reads whose value came from an empty or unset shell variable."""
    names = (raw.get("__unset__") or {}).get(key)
    if names:
        raise UsageError(f"{path}: line {raw.get('__line__')}: --{key} takes its value from "
                         f"{', '.join('$' + n for n in names)}, which the script and the environment leave empty or "
                         "unset: bash passes an empty value or none (HfArgumentParser stops on a flag without its "
                         "value); set it, or pass the setting another way")


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """A VLM-R1 run's data settings with its defaults filled in."""

    path: Path
    model: str
    model_name: str  # what VLM-R1 sees (it picks its module from the name)
    files: tuple[tuple[Path, Path], ...]  # (data file, image folder)
    max_pixels: int
    min_pixels: int
    max_prompt_length: int | None
    task_type: str | None
    question_template: str
    rec: bool = False  # grpo_rec.py: the YAML datasets and --image_root below, instead of ``files``
    rec_files: tuple[tuple[Path, str], ...] = ()  # (json / jsonl file, sampling_strategy)
    image_root: Path | None = None


def _local(value: str, *, near: Path, mapping: Mapping[str, str]) -> Path:
    """A path of the script, as found from here: as written, else beside the script and its parent folders
    (VLM-R1's scripts ``cd src/open-r1-multimodal`` first)."""
    candidate = Path(os.path.expanduser(mapped(value, mapping)))
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for folder in list(near.resolve().parents)[:3]:
        for base in (folder, folder / "src" / "open-r1-multimodal"):
            if (base / candidate).exists():
                return base / candidate
    return candidate


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Config:
    mapping = dict(path_map or {})
    for key in ("model_name_or_path", "data_file_paths", "image_folders", "dataset_name", "image_root", *DEFAULTS):
        _unset(raw, key, path)
    value = {k: raw.get(k, d) for k, d in DEFAULTS.items()}
    name = raw.get("model_name_or_path")
    if not name and not model:
        raise UsageError(f"{path}: --model_name_or_path is not set (or pass --model)")
    name = str(name or model)
    if "qwen" not in name.lower():
        raise UsageError(f"{path}: VLM-R1 picks its module from the model's name, and vlmcheck models its Qwen "
                         f"module only: {name!r} has no 'qwen' in it (VLM-R1 itself raises 'Unsupported model' "
                         "for a name it does not know)")
    if "Qwen2-VL" not in name and "Qwen2.5-VL" not in name:
        raise UsageError(f"{path}: VLM-R1's Qwen module loads a model whose name holds 'Qwen2-VL' or "
                         f"'Qwen2.5-VL', and raises 'Unsupported model' for {name!r}")
    if str(raw.get("__script__", "")).endswith(REC_SCRIPT):
        return _rec_config(raw, path=path, name=name, model=model, data=data, mapping=mapping)
    sources = data if data is not None else raw.get("data_file_paths")
    folders = raw.get("image_folders")
    if not sources:
        raise UsageError(f"{path}: --data_file_paths is not set (or pass --data)")
    files = str(sources).split(":")
    if not folders:
        raise UsageError(f"{path}: --image_folders is not set: VLM-R1 splits it with the data files")
    dirs = str(folders).split(":")
    if len(files) != len(dirs) and data is not None:
        raise UsageError(f"{path}: --data gives {len(files)} file(s) for the script's {len(dirs)} image folder(s): "
                         "give as many ':'-separated files as --image_folders has folders")
    if len(files) != len(dirs):
        raise UsageError(f"{path}: {len(files)} data file(s) for {len(dirs)} image folder(s): VLM-R1 raises "
                         "'Number of data files must match number of image folders'")
    pairs = []
    for file, folder in zip(files, dirs):
        found = _local(file, near=path, mapping=mapping)
        if not found.is_file():
            raise UsageError(f"{path}: data file {file} {not_a_file(found)} ({found}); pass --data FILE, or --path-map for a "
                             "script written on another machine")
        pairs.append((found, _local(folder, near=path, mapping=mapping)))
    task = raw.get("task_type")
    budget = raw.get("max_prompt_length", DEFAULTS["max_prompt_length"])
    return Config(
        path=path, model=mapped(str(model or name), mapping), model_name=name, files=tuple(pairs),
        max_pixels=whole_number(value["max_pixels"], "--max_pixels", path),
        min_pixels=whole_number(value["min_pixels"], "--min_pixels", path),
        max_prompt_length=None if budget in (None, "None") else whole_number(budget, "--max_prompt_length", path),
        task_type=None if task in (None, "None") else str(task),
        question_template=QUESTION_TEMPLATES.get(None if task in (None, "None") else str(task),
                                                 QUESTION_TEMPLATES[None]),
    )


def _rec_config(raw: dict[str, Any], *, path: Path, name: str, model: str | None, data: str | None,
                mapping: Mapping[str, str]) -> Config:
    """grpo_rec.py: ``--dataset_name`` (a YAML of ``datasets``) and ``--image_root``."""
    import yaml

    source = data if data is not None else raw.get("dataset_name")
    if not source:
        raise UsageError(f"{path}: --dataset_name is not set (grpo_rec.py reads a YAML of datasets; or pass --data)")
    found = _local(str(source), near=path, mapping=mapping)
    if not str(source).endswith(".yaml"):
        raise UsageError(f"{path}: --dataset_name {source}: grpo_rec.py raises 'Unsupported file type' for anything "
                         "but a .yaml file")
    try:  # at most 64 MiB, a regular file (a FIFO would block), nested no deeper than vlmcheck reads
        config = read_parsed(found, yaml.safe_load, what=f"--dataset_name of {path}")
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: cannot read --dataset_name {found}: {e}") from None
    entries = config.get("datasets") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{found}: no 'datasets' list (grpo_rec.py iterates yaml_data.get('datasets'))")
    files = []
    for entry in entries:
        json_path = str((entry or {}).get("json_path") or "")
        if not json_path.endswith((".json", ".jsonl")):
            raise UsageError(f"{found}: json_path {json_path!r}: grpo_rec.py raises 'Unsupported file type'")
        file = _local(json_path, near=found, mapping=mapping)
        if not file.is_file():
            raise UsageError(f"{found}: {json_path} {not_a_file(file)} ({file}); pass --path-map for a config written on "
                             "another machine")
        files.append((file, str(entry.get("sampling_strategy", "all"))))
    root = raw.get("image_root")
    budget = raw.get("max_prompt_length", DEFAULTS["max_prompt_length"])
    value = {k: raw.get(k, d) for k, d in DEFAULTS.items()}
    return Config(
        path=path, model=mapped(str(model or name), mapping), model_name=name, files=(),
        max_pixels=whole_number(value["max_pixels"], "--max_pixels", path),
        min_pixels=whole_number(value["min_pixels"], "--min_pixels", path),
        max_prompt_length=None if budget in (None, "None") else whole_number(budget, "--max_prompt_length", path),
        task_type="rec", question_template=QUESTION_TEMPLATES["rec"], rec=True, rec_files=tuple(files),
        image_root=None if root in (None, "None") else _local(str(root), near=path, mapping=mapping))


def _sampled(rows: list[Any], strategy: str) -> list[Any]:
    """grpo_rec.py's ``sampling_strategy``: ``first:N``, ``end:N`` (N or N%, rounded up); ``random:N`` shuffles
    first, so which rows it keeps is not known ahead: every row is judged."""
    import math

    if ":" not in strategy:
        return rows
    kind, number = strategy.split(":", 1)
    try:
        n = math.ceil(int(number.split("%")[0]) * len(rows) / 100) if "%" in number else int(number)
    except ValueError:
        raise UsageError(f"sampling_strategy {strategy!r}: grpo_rec.py raises ValueError on {number!r}") from None
    if kind == "first":
        return rows[:n]
    if kind == "end":
        return rows[-n:] if n else rows[len(rows):]  # Python's [-0:] keeps every row
    return rows


# -- the run ------------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    """A launch script that runs VLM-R1's ``grpo_jsonl.py``."""
    return raw.get("__launch__") == NAME


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map)
    spec = load_model(config.model, overrides=Overrides(resize="processor", max_pixels=config.max_pixels,
                                                        min_pixels=config.min_pixels))
    return Run(config, spec)


class Stops(Exception):
    """VLM-R1 raises on this row while loading the data: the run stops before training."""


def scaled_up(width: int, height: int) -> tuple[int, int]:
    """The trainer's rule for a side under 28 px: that side becomes 28, the other keeps the ratio (truncated)."""
    if width >= MIN_SIDE and height >= MIN_SIDE:
        return width, height
    if width < height:
        return MIN_SIDE, int(height * (MIN_SIDE / width))
    return int(width * (MIN_SIDE / height)), MIN_SIDE


class Run(ProcessorRun):
    """A VLM-R1 run: each row's prompt as its trainer builds it."""

    name = NAME
    versions = VERSIONS
    length_key = "--max_prompt_length (not enforced)"  # the trainer sets it to None
    pixels_key = "--max_pixels"
    config: Config

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        if spec.model_type not in QWEN_FAMILIES:
            raise UsageError(f"VLM-R1's Qwen module loads Qwen2-VL and Qwen2.5-VL, not {spec.model_type}")
        if spec.chat_template is None:
            raise UsageError(f"{spec.path} has no chat template; VLM-R1 renders every prompt with it")
        self.config = config
        self.use_model(spec)
        self.max_length = None  # the trainer enforces no prompt budget

    def inputs(self) -> list[Path]:
        return [self.config.path, *(f for f, _ in self.config.files), *(f for f, _ in self.config.rec_files)]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        if self.config.rec:
            for file, strategy in self.config.rec_files:
                for row in _sampled(list(read_rows(file)), strategy):
                    yield row, self.config.image_root or Path()
            return
        for file, folder in self.config.files:
            for row in read_rows(file):
                yield row, folder

    def settings_shown(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "template": "the processor's chat template",
            "datasets": [str(f) for f, _ in cfg.files or cfg.rec_files],
            "media_dir": str(cfg.image_root) if cfg.rec else ", ".join(str(d) for _, d in cfg.files),
            "script": "grpo_rec.py" if cfg.rec else "grpo_jsonl.py",
            "task_type": cfg.task_type, "question_template": cfg.question_template,
            "max_prompt_length": cfg.max_prompt_length,
            "notes": ["VLM-R1's trainer sets max_prompt_length to None: no prompt is cut or filtered"],
            "image_max_pixels": cfg.max_pixels, "image_min_pixels": cfg.min_pixels,
        }

    def _images(self, row: Mapping[str, Any], folder: Path) -> list[Path]:
        if "image" not in row:
            return []
        image = row["image"]
        if isinstance(image, str):
            return [folder / image]
        if isinstance(image, list) and all(isinstance(i, str) for i in image):
            return [folder / i for i in image]
        raise Stops(f"'image' is a {type(image).__name__}: VLM-R1 raises 'Unsupported image type' while loading")

    def _question(self, row: Mapping[str, Any]) -> str:
        turns = row.get("conversations")
        try:
            first = turns[0]["value"]  # type: ignore[index]
            turns[1]["value"]  # type: ignore[index]  # the answer, read while loading
        except (TypeError, KeyError, IndexError):
            raise Stops("the row has no 'conversations' with a question and an answer: VLM-R1 raises while "
                        "loading") from None
        if not isinstance(first, str):
            raise Stops("the first turn's 'value' is not a string: VLM-R1 raises while loading")
        return self.config.question_template.format(Question=first.replace("<image>", ""))

    def judge(self, index: int, row: Any, folder: Path) -> SampleResult:
        result, frame = self.start(index, row, unloadable="json.loads raises and VLM-R1 stops while loading")
        if frame["verdict"] != "ok":
            return result
        found = result.findings
        if self.config.rec:
            return self._rec(result, row)
        try:
            paths = self._images(row, folder)
            question = self._question(row)
        except Stops as e:
            found.append(F.make("VC001", str(e)))
            frame["verdict"] = "stops"
            return result
        missing = [p for p in paths if not p.exists()]
        if missing:
            for p in missing:
                found.append(F.make("VC101", f"image {p} does not exist: VLM-R1's dataset map asserts 'Image paths "
                                             "do not exist' and the run stops before training", path=str(p)))
            frame["verdict"] = "stops"
            result.image_tokens = [None] * len(paths)
            return result
        return self._prompt(result, paths, question)

    def _rec(self, result: SampleResult, row: Mapping[str, Any]) -> SampleResult:
        """grpo_rec.py's ``LazySupervisedDataset.__getitem__``, in the training loop."""
        found, frame = result.findings, result.framework
        assert frame is not None
        missing = [k for k in ("problem", "solution") if k not in row]
        if missing:
            found.append(F.make("VC001", f"no {' or '.join(repr(k) for k in missing)}: grpo_rec.py's __getitem__ "
                                         "raises KeyError in the training step that reaches the row"))
            frame["verdict"] = "crash"
            return result
        if "image" not in row:
            found.append(F.make("VC001", "a text-only row: grpo_rec.py hands the trainer image None and its "
                                         "assertion 'The key image is not found in the input' fails in the "
                                         "training step", fix="give every row an image, or use grpo_jsonl.py"))
            frame["verdict"] = "crash"
            return result
        image = row["image"]
        if not isinstance(image, str) or self.config.image_root is None:
            why = ("the launch sets no --image_root" if self.config.image_root is None else
                   f"'image' is a {type(image).__name__}")
            found.append(F.make("VC001", f"{why}: os.path.join raises TypeError in grpo_rec.py's __getitem__"))
            frame["verdict"] = "crash"
            return result
        path = self.config.image_root / image
        if not path.exists():
            found.append(F.make("VC101", f"image {path} does not exist: grpo_rec.py's __getitem__ trains on a random "
                                         "other row in its place (and loops for ever if no image exists)",
                                path=str(path)))
            frame["verdict"] = "replaced"
            result.image_tokens = [None]
            return result
        question = self.config.question_template.format(Question=row["problem"])
        return self._prompt(result, [path], question)

    def _prompt(self, result: SampleResult, paths: list[Path], question: str) -> SampleResult:
        """The trainer's prompt step: the 28 px scale-up, the processor's checks, the chat template's count."""
        found, frame = result.findings, result.framework
        assert frame is not None
        probed = self.probe(paths, found, size=lambda file: scaled_up(*probe_path(file).size(exif_transpose=False)),
                            seen=" (as the trainer scales it)", then="; the processor raises in the training step")
        expansions = probed.expansions
        if probed.refused:
            result.image_tokens = [None] * len(paths)
            frame["verdict"] = "crash"
            return result
        parts: list[dict[str, Any]] = [{"type": "image", "text": None} for _ in paths]
        parts.append({"type": "text", "text": question})
        text = render_chat(self.spec.chat_template or "", [{"role": "user", "content": parts}],
                           special_tokens=self.spec.special_tokens, add_generation_prompt=True)
        ids = self.expanded_ids(text, expansions)
        runs = [n for e in expansions for n in e.runs]
        total = len(ids) - sum(1 for t in ids if t == self.image_token_id) + sum(runs)
        counts = [e.features for e in expansions]
        result.image_tokens = list[int | None](counts)
        result.tokens = total
        result.text_only_tokens = total - sum(counts)
        frame["prompt_tokens"] = total
        if len(paths) > 1:
            found.append(F.make(
                "VC002", f"{len(paths)} images in one prompt: VLM-R1's trainer expects one image grid per prompt and "
                         "its assertion 'len(additional_output) == len(inputs)' fails: the run stops at this row's "
                         "batch", fix="give each row one image"))
            frame["verdict"] = "crash"
        return result
