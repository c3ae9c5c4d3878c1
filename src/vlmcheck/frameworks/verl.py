"""verl: the one home of its facts (its launch scripts and Hydra overrides, ``RLHFDataset``'s parquet layout and
prompt building, the overlong-prompt filter, and what the rollout does with a prompt over its budget).

Modelled on verl 0.9.1 (``verl.trainer.main_ppo``, ``utils/dataset/rl_dataset.py``,
``experimental/agent_loop/agent_loop.py``):

- **Config**: the overrides of a launch script (``python3 -m verl.trainer.main_ppo data.max_prompt_length=1024
  ...``, shell variables such as ``$HOME`` and ``${1:-vllm}`` expanded) or a Hydra YAML. Defaults
  (``trainer/config/data/legacy_data.yaml``, ``rollout/rollout.yaml``): ``data.prompt_key`` ``prompt``,
  ``data.image_key`` ``images``, ``data.max_prompt_length`` 512, ``data.filter_overlong_prompts`` False,
  ``data.image_patch_size`` 14, ``actor_rollout_ref.rollout.prompt_length`` = ``data.max_prompt_length``.
  ``data.truncation`` is read by ``RLHFDataset`` but no longer applied in 0.9.1: the rollout decides.
- **Rows** (``RLHFDataset._build_messages``): ``prompt`` is a chat list with no assistant turn (RL prompts are
  prompts); when the row has images, each ``<image>`` in a string content becomes an image part, in order, and
  the count must equal the images or verl's assertion fails. Without images the text is left as it is.
- **Images**: ``qwen_vl_utils.process_vision_info`` resizes every image first (factor ``image_patch_size`` * 2,
  4 to 16,384 tokens; images opened with ``Image.open``, no EXIF rotation), then the processor.
- **Tokens**: the checkpoint's chat template with the generation prompt, then the processor on the text and
  images (``tokenizer(..., add_special_tokens=False)`` for text-only prompts).
- **Filter** (``maybe_filter_out_long_prompts``, ``filter_overlong_prompts=True``): prompts longer than
  ``max_prompt_length`` are dropped, and so are rows whose length cannot be computed (the exception is printed
  and the row counted as too long).
- **Rollout** (``AgentLoopWorker``, ``AgentLoopBase.ct_build_initial_tokens``): a prompt with images over
  ``rollout.prompt_length`` raises "Multimodal prompt produced N tokens, exceeding rollout.prompt_length" and the run
  stops; a text-only one is cut from the left (its last ``rollout.prompt_length`` tokens go to the server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.chat import render_chat
from vlmcheck.data.files import not_a_file
from vlmcheck.data.images import ImageProblem, probe_bytes, probe_path
from vlmcheck.data.nesting import nested_message, parse, too_deep
from vlmcheck.errors import UsageError
from vlmcheck.families import Expansion, Overrides
from vlmcheck.families.qwen2_vl import Qwen2VLFamily
from vlmcheck.frameworks._run import (
    ProcessorRun,
    json_loadable,
    loaded_rows,
    mapped,
    run_version,
    section,
    truthy,
    whole_number,
)
from vlmcheck.frameworks._shell import launch_commands, startable
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.results import SampleResult

NAME = "verl"
VERSIONS = "0.9.1, RLHFDataset + agent-loop rollout"
# verl leaves datasets unpinned: the one installed beside vlmcheck, else the newest (5.2.0)
VERL_DATASETS = "5.2.0"
# no `vlmcheck scan --framework verl`: its prompts are judged against max_prompt_length, which a scan does not model
SCAN_DEFAULTS: dict[str, Any] | None = None

# trainer/config/data/legacy_data.yaml
DEFAULTS: dict[str, Any] = {
    "prompt_key": "prompt",
    "image_key": "images",
    "video_key": "videos",
    "max_prompt_length": 512,
    "filter_overlong_prompts": False,
    "truncation": "error",
    "train_max_samples": -1,
    "image_patch_size": 14,
    "shuffle": True,
}
# `vlmcheck lint`: concept -> (verl's option path, its default). verl/trainer/config/_generated_ppo_trainer.yaml:
# algorithm.adv_estimator=gae, actor_rollout_ref.rollout.n=1, temperature=1.0, data.train_batch_size=1024,
# trainer.n_gpus_per_node=8, trainer.nnodes=1.
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    "adv_estimator": ("algorithm.adv_estimator", "gae"),
    "num_generations": ("actor_rollout_ref.rollout.n", 1),
    "temperature": ("actor_rollout_ref.rollout.temperature", 1.0),
    "train_batch_size": ("data.train_batch_size", 1024),
    "max_length": ("data.max_prompt_length", DEFAULTS["max_prompt_length"]),
    "n_gpus_per_node": ("trainer.n_gpus_per_node", 8),
    "nnodes": ("trainer.nnodes", 1),
    "model": ("actor_rollout_ref.model.path", None),
}
# algorithm.adv_estimator values that sample groups of responses per prompt (GRPO-style advantages)
GROUP_ESTIMATORS = ("grpo", "rloo", "grpo_passk", "dapo", "gspo")


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads (``grpo`` or None): an advantage estimator over sampled groups."""
    name, default = LINT_OPTIONS["adv_estimator"]
    return "grpo" if str(options.get(name, default)).lower() in GROUP_ESTIMATORS else None


# the entry points whose overrides a launch script passes
ENTRY_POINTS = ("verl.trainer.main_ppo", "verl.trainer.main_dapo", "verl/trainer/main_ppo.py")
# RLHFDataset._build_messages splits string contents on these
MEDIA_TAGS = re.compile("(<image>|<video>|<audio>)")


# -- launch scripts -------------------------------------------------------------------------------------------------
def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The Hydra overrides a shell launch script passes to verl's trainer, as a nested config; None when the
    script does not launch verl."""
    config = launch_overrides(text, path=path, entry_points=ENTRY_POINTS, env=env)
    if config is not None:
        config["__launch__"] = NAME
    return config


def launch_overrides(text: str, *, path: Path, entry_points: tuple[str, ...],
                     env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The ``key.sub=value`` overrides a shell launch script passes to the first command whose program word is
    one of ``entry_points`` (verl's and its forks' entry points share this syntax), as a nested config; None
    when no line runs one."""
    import yaml

    env = os.environ if env is None else env
    program = "|".join(re.escape(entry) for entry in entry_points)
    for command in launch_commands(text, env=env, path=path, program=program):
        words = command.words
        at = next((i for i, w in enumerate(words) if any(w.endswith(entry) for entry in entry_points)), None)
        if at is None:  # the name is part of another word (verl.trainer.main in verl.trainer.main_ppo)
            continue
        startable(command, at + 1, path=path, program=words[at])
        config: dict[str, Any] = {}
        for word in words[at + 1:]:
            if "=" not in word or word.startswith("-"):
                continue
            key, expanded = word.split("=", 1)
            key = key.lstrip("+")
            if key.startswith("~"):
                continue
            try:
                parsed = parse(yaml.safe_load, expanded, where=f"{path}: override {key}") if expanded else None
            except yaml.YAMLError:
                parsed = expanded
            node = config
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UsageError(f"{path}: override {key} sets inside a value")
            node[parts[-1]] = parsed
        if too_deep(config):  # a key of hundreds of dotted parts
            raise UsageError(nested_message(f"{path}: the overrides"))
        return config
    return None


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """A verl run's data settings with verl's defaults filled in."""

    path: Path
    model: str
    files: tuple[Path, ...]
    prompt_key: str
    image_key: str
    video_key: str
    max_prompt_length: int
    rollout_prompt_length: int
    rollout_length_key: str  # the override that sets the rollout budget
    filter_overlong_prompts: bool
    truncation: str
    max_samples: int
    image_patch_size: int
    values: dict[str, Any] = field(default_factory=dict)


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Config:
    """The data settings verl runs with for ``raw`` (overrides or a Hydra YAML), defaults filled in."""
    written = section(raw, "data")
    value = {k: written.get(k, d) for k, d in DEFAULTS.items()}
    if section(written, "custom_cls").get("path"):
        raise UsageError(f"{path}: data.custom_cls replaces RLHFDataset with your own class, which vlmcheck "
                         "cannot model")
    if section(written, "mm_processor_kwargs"):  # passed to the processor call, which resizes again after
        raise UsageError(f"{path}: data.mm_processor_kwargs (the processor's own resize after qwen-vl-utils, with "
                         "these settings) is not modelled by vlmcheck yet")
    model_path = model or section(raw, "actor_rollout_ref", "model").get("path")
    if not model_path:
        raise UsageError(f"{path}: actor_rollout_ref.model.path is not set (or pass --model)")
    mapping = dict(path_map or {})
    sources: Any = [data] if data is not None else written.get("train_files")
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise UsageError(f"{path}: data.train_files is not set (or pass --data)")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        # RLHFDataset takes a path or a list of paths; anything else fails in verl's copy_to_local
        raise UsageError(f"{path}: data.train_files must be a file path or a list of file paths, got "
                         f"{sources!r:.80}")
    files = []
    for source in sources:
        file = Path(mapped(os.path.expanduser(str(source)), mapping))
        if not file.is_absolute() and not file.exists() and (path.parent / file).exists():
            file = path.parent / file
        if file.suffix not in (".parquet", ".json", ".jsonl"):
            raise UsageError(f"{path}: {source}: verl reads .parquet, .json and .jsonl files only "
                             "('Unsupported file format')")
        if not file.is_file():
            raise UsageError(f"{path}: data file {source} {not_a_file(file)} ({file}); pass --data FILE, or --path-map for a "
                             "config written on another machine")
        files.append(file)
    max_prompt = whole_number(value["max_prompt_length"], "data.max_prompt_length", path)
    rollout = section(raw, "actor_rollout_ref", "rollout").get("prompt_length")
    rollout_key = "data.max_prompt_length"
    rollout_length = max_prompt
    if rollout is not None and not (isinstance(rollout, str) and rollout.startswith("${")):
        rollout_length = whole_number(rollout, "actor_rollout_ref.rollout.prompt_length", path)
        rollout_key = "actor_rollout_ref.rollout.prompt_length"
    return Config(
        path=path, model=mapped(str(model_path), mapping), files=tuple(files), prompt_key=str(value["prompt_key"]),
        image_key=str(value["image_key"]), video_key=str(value["video_key"]), max_prompt_length=max_prompt,
        rollout_prompt_length=rollout_length, rollout_length_key=rollout_key,
        filter_overlong_prompts=truthy(value["filter_overlong_prompts"]), truncation=str(value["truncation"]),
        max_samples=whole_number(value["train_max_samples"], "data.train_max_samples", path),
        image_patch_size=whole_number(value["image_patch_size"], "data.image_patch_size", path),
        values={k: value[k] for k in ("prompt_key", "image_key", "max_prompt_length", "filter_overlong_prompts",
                                      "truncation", "shuffle")},
    )


# -- the run ------------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    """A verl launch script, or a Hydra YAML with ``data.train_files`` / ``actor_rollout_ref``."""
    if raw.get("__launch__") == NAME:
        return True
    data = raw.get("data")
    return isinstance(data, Mapping) and ("train_files" in data or "actor_rollout_ref" in raw)


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map)
    spec = load_model(config.model, overrides=Overrides(resize="qwen-vl-utils"))
    return Run(config, spec)


class Unbuildable(Exception):
    """``RLHFDataset`` raises on this row while building its messages."""


class Run(ProcessorRun):
    """A verl run: judges each prompt against the overlong filter and the rollout's prompt budget."""

    name = NAME
    versions = VERSIONS
    length_key = "data.max_prompt_length"
    pixels_key = "max_pixels"
    config: Config

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        if not isinstance(spec.family, Qwen2VLFamily):  # the Qwen-VL processors: qwen-vl-utils' factor is theirs
            raise UsageError(f"verl resizes every image with qwen-vl-utils before the processor; vlmcheck models "
                             f"that route for the Qwen-VL processors (Qwen2-VL to Qwen3.5), not {spec.model_type}")
        if spec.chat_template is None:
            raise UsageError(f"{spec.path} has no chat template; verl renders every prompt with it")
        if config.image_patch_size != spec.settings.patch_size:
            raise UsageError(f"data.image_patch_size={config.image_patch_size} differs from the processor's "
                             f"patch size {spec.settings.patch_size}: not modelled")
        self.config = config
        self.use_model(spec)
        self.max_length = config.max_prompt_length
        self.hf_datasets, self.hf_datasets_assumed = run_version("datasets", newest=VERL_DATASETS, below=(1 << 30,))

    def inputs(self) -> list[Path]:
        return [self.config.path, *self.config.files]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        # _read_files_and_tokenize: load_dataset("json", data_files=file), file by file
        plans = [json_loadable([file], datasets_version=self.hf_datasets, loader="RLHFDataset's load_dataset")
                 for file in self.config.files]
        count = 0
        for file, plan in zip(self.config.files, plans):
            for row in loaded_rows(file, plan):
                if self.config.max_samples > 0 and count >= self.config.max_samples:
                    return
                count += 1
                yield row, file

    def settings_shown(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "template": "the checkpoint's chat template",
            "datasets": [str(f) for f in cfg.files], "max_prompt_length": cfg.max_prompt_length,
            "rollout_prompt_length": cfg.rollout_prompt_length, "filter_overlong_prompts": cfg.filter_overlong_prompts,
            "truncation": cfg.truncation, "prompt_key": cfg.prompt_key, "image_key": cfg.image_key,
            "image_max_pixels": self.settings.pre_max_pixels, "image_min_pixels": self.settings.pre_min_pixels,
            "media_dir": "inside the data files",
            "train_max_samples_shuffled": cfg.max_samples > 0 and truthy(cfg.values.get("shuffle")),
            "datasets_library": self.hf_datasets + (" (assumed: the newest)" if self.hf_datasets_assumed
                                                    else " (installed here)"),
        }

    # -- one row --------------------------------------------------------------------------------------------------
    def messages(self, row: Mapping[str, Any], images: list[Any]) -> list[dict[str, Any]]:
        """``RLHFDataset._build_messages``: ``<image>`` in string contents becomes image parts when the row has
        images."""
        prompt = row.get(self.config.prompt_key) if self.config.prompt_key in row else None
        if prompt is None:
            raise Unbuildable(f"the row has no {self.config.prompt_key!r} column (data.prompt_key)")
        if not isinstance(prompt, list) or not all(isinstance(m, Mapping) and "content" in m for m in prompt):
            raise Unbuildable(f"{self.config.prompt_key!r} is not a chat list of {{role, content}} messages")
        messages = [dict(m) for m in prompt]
        if not images:
            return messages
        k = 0
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                continue
            parts: list[dict[str, Any]] = []
            for segment in (s for s in MEDIA_TAGS.split(content) if s):
                if segment == "<image>":
                    if k >= len(images):
                        raise Unbuildable(f"more <image> tags than the row's {len(images)} image(s): verl's "
                                          "assertion 'image_offset < len(images)' fails")
                    parts.append({"type": "image", "image": f"image {k}"})
                    k += 1
                elif segment in ("<video>", "<audio>"):
                    raise Unbuildable(f"{segment} in the prompt: videos and audio are not modelled by vlmcheck yet")
                else:
                    parts.append({"type": "text", "text": segment})
            message["content"] = parts
        if k != len(images):
            raise Unbuildable(f"{k} <image> tag(s) for {len(images)} image(s): verl's assertion "
                              "'image_offset == len(images)' fails")
        return messages

    def _size(self, image: Any) -> tuple[int, int]:
        """qwen-vl-utils opens images with ``Image.open``: no EXIF rotation."""
        if isinstance(image, Mapping):
            data, where = image.get("bytes"), image.get("path") or image.get("image")
            if data:
                return probe_bytes(bytes(data)).size(exif_transpose=False)
            image = where
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=False)
        if not isinstance(image, str) or not image:
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which verl cannot open")
        if image.startswith(("http://", "https://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        return probe_path(Path(image.removeprefix("file://"))).size(exif_transpose=False)

    def _tokens(self, text: str, expansions: list[Expansion], *, special: bool) -> int:
        tags = text.count(self.family.placeholder)
        if tags != len(expansions):
            raise Unbuildable(f"the prompt holds {tags} image token(s) for {len(expansions)} image(s)")
        ids = self.expanded_ids(text, expansions, special=special)
        runs = [n for e in expansions for n in e.runs]
        placeholders = sum(1 for t in ids if t == self.image_token_id)
        if placeholders != len(runs):
            raise Unbuildable("the prompt's text holds image tokens of its own")
        return len(ids) - placeholders + sum(runs)

    def judge(self, index: int, row: Any, source: Path) -> SampleResult:
        result, frame = self.start(index, row, unloadable="datasets cannot load the file and verl stops")
        if frame["verdict"] != "ok":
            return result
        found = result.findings
        cfg = self.config
        extra = row.get("extra_info")
        if not isinstance(row.get("id"), (str, int)) and isinstance(extra, Mapping) and isinstance(
                extra.get("index"), (str, int)):  # a row without an id of its own: verl's examples' index
            result.id = str(extra["index"])
        if row.get(cfg.video_key):
            found.append(F.make("VC114", "videos under verl are not counted by vlmcheck yet"))
            frame["verdict"] = "unknown"
            return result
        images = row.get(cfg.image_key) or []
        if not isinstance(images, list):
            images = [images]
        try:
            messages = self.messages(row, images)
            expansions = self._expansions(images, found)
            if expansions is None:
                raise Unbuildable("qwen-vl-utils or the processor raises on an image")
            text = render_chat(self.spec.chat_template or "", messages, special_tokens=self.spec.special_tokens,
                               add_generation_prompt=True)
            counts = [e.features for e in expansions]
            result.image_tokens = list(counts)
            total = self._tokens(text, expansions, special=bool(images))
        except Unbuildable as e:
            self._unbuildable(result, str(e), images)
            return result
        result.tokens = total
        result.text_only_tokens = total - sum(counts)
        frame["prompt_tokens"] = total
        if cfg.filter_overlong_prompts and total > cfg.max_prompt_length:
            found.append(F.make(
                "VC204", f"the prompt is {total:,} tokens > data.max_prompt_length={cfg.max_prompt_length:,}: "
                         "verl's overlong filter drops the row before training",
                fix=f"set {_setting('data.max_prompt_length', total)} to keep it", tokens=total,
                max_length=cfg.max_prompt_length))
            frame["verdict"] = "filtered"
            return result
        budget = cfg.rollout_prompt_length
        if total > budget:
            if images:
                found.append(F.make(
                    "VC206", f"the prompt is {total:,} tokens > {cfg.rollout_length_key}={budget:,}: verl's rollout "
                             f"raises 'Multimodal prompt produced {total} tokens, exceeding rollout.prompt_length' "
                             "and the run stops",
                    fix=f"set {_setting(cfg.rollout_length_key, total)}, or "
                        f"{_setting('data.filter_overlong_prompts', 'True')} to drop such rows", tokens=total,
                    max_length=budget))
                frame["verdict"] = "crash"
            else:
                found.append(F.make(
                    "VC203", f"the text-only prompt is {total:,} tokens > {cfg.rollout_length_key}={budget:,}: verl's "
                             f"rollout keeps its last {budget:,} tokens", tokens=total, max_length=budget,
                    fix=f"set {_setting(cfg.rollout_length_key, total)} to keep it whole"))
                frame["verdict"] = "cut"
                frame["prompt_tokens_kept"] = [total - budget, total]  # _cap_text_prompt_length: ids[-budget:]
        return result

    def _unbuildable(self, result: SampleResult, reason: str, images: list[Any]) -> None:
        frame = result.framework or {}
        if not result.image_tokens:
            result.image_tokens = [None] * len(images)
        if self.config.filter_overlong_prompts:
            result.findings.append(F.make(
                "VC006", f"{reason}; verl's overlong filter counts a row it cannot measure as too long and drops it"))
            frame["verdict"] = "filtered"
        else:
            result.findings.append(F.make(
                "VC001", f"{reason}; verl raises when the rollout reaches this row and the run stops"))
            frame["verdict"] = "stops"

    def _expansions(self, images: list[Any], found: list[F.Finding]) -> list[Expansion] | None:
        probed = self.probe(images, found, size=self._size)
        return None if probed.refused else probed.expansions


def _setting(key: str, value: Any) -> str:
    """A fix written as a verl (Hydra) override."""
    return f"{key}={value}"
