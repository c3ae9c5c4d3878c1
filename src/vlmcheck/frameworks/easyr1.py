"""EasyR1 (hiyouga/EasyR1, a verl fork): the one home of its facts (its launch scripts and YAML config, its
``RLHFDataset``'s row layout, format prompt and image pre-scaling, the overlong-prompt filter, and the right cut).

Modelled on EasyR1 at commit b44b311b (``verl/trainer/config.py``, ``verl/trainer/main.py``,
``verl/trainer/data_loader.py``, ``verl/utils/dataset.py``); the proof is tests/assets/easyr1_golden/:

- **Config**: ``python3 -m verl.trainer.main config=examples/config.yaml data.train_files=... key=value``: the
  ``config=`` YAML, then the overrides over it (OmegaConf's merge), or that YAML alone. Defaults
  (``DataConfig``): ``prompt_key`` ``prompt``, ``answer_key`` ``answer``, ``image_key`` ``images``,
  ``max_prompt_length`` 512, ``min_pixels`` 262,144, ``max_pixels`` 4,194,304, ``filter_overlong_prompts`` True,
  no ``format_prompt``. Relative paths are taken from the working directory; a ``format_prompt``,
  ``image_dir`` or ``override_chat_template`` that is not found there is dropped (EasyR1 prints "not found" and
  runs without it); vlmcheck also looks beside the config and its parent folders (a script under ``examples/``
  run from the repository root).
- **Rows** (``_build_messages``): ``prompt_key`` is a string; the format prompt (Jinja, ``content`` = the
  string) wraps it; when the dataset has an ``image_key`` column the one user turn becomes a list of parts, each
  ``<image>`` an image part; without the column it stays a string and goes through the tokenizer's template.
- **Images** (``process_image``): scaled by sqrt(budget / pixels), sides truncated to whole pixels, first down
  to ``max_pixels``, then up to ``min_pixels``, then the processor with the checkpoint's own settings. Images
  given as paths are opened with ``Image.open`` (no EXIF rotation), joined to ``image_dir`` when set; images a
  Parquet file stores as ``datasets`` Image features are decoded by ``datasets``, which applies EXIF rotation.
- **Tokens**: the chat template with the generation prompt, then the processor (``add_special_tokens=False``).
- **Filter** (``filter_overlong_prompts``, on by default): ``datasets.filter`` drops prompts over
  ``max_prompt_length``; a row the filter raises on (an image the processor refuses, more ``<image>`` tags than
  images, a missing file) stops the whole run before training: nothing catches it.
- **The cut** (filter off): ``create_dataloader`` passes ``truncation="right"``: the prompt keeps its first
  ``max_prompt_length`` tokens. A cut through an image's tokens leaves fewer image tokens than the image's
  features, and the actor's forward raises; a cut in text only loses the end of the prompt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.chat import render_chat
from vlmcheck.data.files import not_a_file, read_parsed
from vlmcheck.data.images import ImageProblem, probe_bytes, probe_path
from vlmcheck.errors import UsageError
from vlmcheck.families import Expansion, Overrides
from vlmcheck.frameworks._run import (
    ProcessorRun,
    json_loadable,
    largest_budget,
    loaded_rows,
    mapped,
    run_version,
    section,
    truthy,
    whole_number,
)
from vlmcheck.frameworks.verl import GROUP_ESTIMATORS, launch_overrides
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.results import SampleResult

NAME = "easyr1"
VERSIONS = "EasyR1 at b44b311b (0.3.3.dev0), RLHFDataset"
# EasyR1's requirements leave datasets unpinned: the one installed beside vlmcheck, else the newest (5.2.0)
EASYR1_DATASETS = "5.2.0"
SCAN_DEFAULTS: dict[str, Any] | None = None  # prompts are judged against max_prompt_length: `vlmcheck check` only

# verl/trainer/config.py DataConfig
DEFAULTS: dict[str, Any] = {
    "prompt_key": "prompt",
    "answer_key": "answer",
    "image_key": "images",
    "video_key": "videos",
    "image_dir": None,
    "max_prompt_length": 512,
    "format_prompt": None,
    "override_chat_template": None,
    "min_pixels": 262144,
    "max_pixels": 4194304,
    "filter_overlong_prompts": True,
}
# `vlmcheck lint`: concept -> (EasyR1's option path, its default). verl/trainer/config.py (DataConfig:
# max_prompt_length=512, rollout_batch_size=512, max_pixels=4194304; AlgorithmConfig.adv_estimator="grpo";
# TrainerConfig n_gpus_per_node=8, nnodes=1), verl/workers/rollout/config.py (n=1, temperature=1.0),
# verl/workers/actor/config.py (global_batch_size=256, micro_batch_size_per_device_for_experience=16).
LINT_OPTIONS: dict[str, tuple[str, Any]] = {
    "adv_estimator": ("algorithm.adv_estimator", "grpo"),
    "num_generations": ("worker.rollout.n", 1),
    "temperature": ("worker.rollout.temperature", 1.0),
    "rollout_batch_size": ("data.rollout_batch_size", 512),
    "global_batch_size": ("worker.actor.global_batch_size", 256),
    "micro_batch_size_for_experience": ("worker.actor.micro_batch_size_per_device_for_experience", 16),
    "max_length": ("data.max_prompt_length", DEFAULTS["max_prompt_length"]),
    "max_pixels": ("data.max_pixels", DEFAULTS["max_pixels"]),
    "n_gpus_per_node": ("trainer.n_gpus_per_node", 8),
    "nnodes": ("trainer.nnodes", 1),
    "model": ("worker.actor.model.model_path", None),
}


def lint_run_kind(*, entry: str | None, calls: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The kind of run ``vlmcheck lint`` reads (``grpo`` or None): an advantage estimator over sampled groups, as
    for verl."""
    name, default = LINT_OPTIONS["adv_estimator"]
    return "grpo" if str(options.get(name, default)).lower() in GROUP_ESTIMATORS else None


# verl/trainer/main.py, run as a module or as a file
ENTRY_POINTS = ("verl.trainer.main", "verl/trainer/main.py")
# keys only EasyR1's config has (verl's is data.train_batch_size / actor_rollout_ref)
DISTINCT_DATA_KEYS = ("answer_key", "rollout_batch_size", "mini_rollout_batch_size", "format_prompt",
                      "override_chat_template")
# the checkpoints EasyR1 trains whose processor transformers 4.x (EasyR1 pins transformers<5) gives: Qwen3-VL MoE has
# Qwen3-VL's processor there (processing_auto, 4.57); Qwen3.5 (qwen3_5, qwen3_5_moe) came with transformers 5
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
NEEDS_TRANSFORMERS_5 = ("qwen3_5", "qwen3_5_moe")


# -- config -------------------------------------------------------------------------------------------------------
def read_launch(text: str, *, path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The config a launch script runs EasyR1 with: its ``config=`` YAML with the script's overrides merged over
    it; None when the script does not launch EasyR1."""
    overrides = launch_overrides(text, path=path, entry_points=ENTRY_POINTS, env=env)
    if overrides is None:
        return None
    base: dict[str, Any] = {}
    named = overrides.pop("config", None)
    if named is not None:
        found = locate(str(named), near=path)
        if found is None or not found.is_file():
            raise UsageError(f"{path}: config={named} " + ((not_a_file(found) or "not found") if found else "not found") +
                             " (looked in the working directory and beside the script)")
        base = _yaml(found)
    merged = _merge(base, overrides)
    merged["__launch__"] = NAME
    return merged


def _yaml(file: Path) -> dict[str, Any]:
    import yaml

    try:  # at most 64 MiB, a regular file (a FIFO would block), nested no deeper than vlmcheck reads
        raw = read_parsed(file, yaml.safe_load, what=f"the config={file.name} YAML")
    except yaml.YAMLError as e:
        raise UsageError(f"cannot read {file}: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{file} must hold a mapping of settings")
    return raw


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """OmegaConf.merge for plain mappings: nested keys merged, values replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def locate(value: str, *, near: Path, path_map: Mapping[str, str] | None = None) -> Path | None:
    """A path as EasyR1 finds it (``get_abs_path``: from the working directory), or beside the config and its
    parent folders (a script in ``examples/`` is run from the repository root); None when it is nowhere."""
    text = os.path.expanduser(mapped(value, path_map or {}))
    candidate = Path(text)
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    if candidate.exists():
        return candidate.resolve()
    for folder in list(near.resolve().parents)[:3]:
        if (folder / candidate).exists():
            return folder / candidate
    return None


@dataclass(frozen=True)
class Config:
    """An EasyR1 run's data settings with EasyR1's defaults filled in."""

    path: Path
    model: str
    files: tuple[Path, ...]
    prompt_key: str
    image_key: str
    video_key: str
    image_dir: Path | None
    max_prompt_length: int
    min_pixels: int | None
    max_pixels: int | None
    filter_overlong_prompts: bool
    format_prompt: str | None  # the template's text
    chat_template: str | None  # override_chat_template's text
    notes: tuple[str, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)


def _data_files(source: str, *, path: Path, path_map: Mapping[str, str]) -> list[Path]:
    """``data.train_files`` as ``RLHFDataset`` loads it: a file or a folder, with an optional ``@split``."""
    name = source.split("@", 1)[0] if "@" in source else source
    found = locate(name, near=path, path_map=path_map)
    if found is None:
        raise UsageError(f"{path}: data.train_files={source} is not a local file or folder (EasyR1 would load it "
                         "from the Hugging Face Hub, which vlmcheck does not download): pass --data FILE, or "
                         "--path-map for a config written on another machine")
    if found.is_dir():
        entries = sorted(os.listdir(found))
        if not entries:
            raise UsageError(f"{path}: data folder {found} is empty")
        # RLHFDataset takes the file type from the folder's first entry and loads every file of that type
        suffix = os.path.splitext(entries[0])[1]
        files = [found / e for e in entries if e.endswith(suffix)]
    else:
        files = [found]
    for file in files:
        if file.suffix not in (".parquet", ".json", ".jsonl"):
            raise UsageError(f"{path}: {file}: vlmcheck reads EasyR1 data from .parquet, .json and .jsonl files")
    return files


def _optional(raw: Any) -> int | None:
    return None if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("null", "none", "")) else raw


def read_config(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None) -> Config:
    """The data settings EasyR1 runs with for ``raw`` (a launch script's merged config or the YAML)."""
    written = section(raw, "data")
    value = {k: written.get(k, d) for k, d in DEFAULTS.items()}
    mapping = dict(path_map or {})
    model_path = model or section(raw, "worker", "actor", "model").get("model_path")
    if not model_path:
        raise UsageError(f"{path}: worker.actor.model.model_path is not set (or pass --model)")
    model_text = mapped(os.path.expanduser(str(model_path)), mapping)
    local_model = locate(model_text, near=path)
    source = data if data is not None else written.get("train_files")
    if not source:
        raise UsageError(f"{path}: data.train_files is not set (or pass --data)")
    files = _data_files(str(source), path=path, path_map=mapping)
    notes = []
    texts: dict[str, str | None] = {}
    for key in ("format_prompt", "override_chat_template"):
        texts[key] = None
        if value[key]:
            found = locate(str(value[key]), near=path, path_map=mapping)
            if found is None or not found.is_file():
                notes.append(f"data.{key}={value[key]} not found: EasyR1 prints 'not found' and runs without it")
                continue
            texts[key] = found.read_text(encoding="utf-8")
    image_dir = None
    if value["image_dir"]:
        image_dir = locate(str(value["image_dir"]), near=path, path_map=mapping)
        if image_dir is None:
            notes.append(f"data.image_dir={value['image_dir']} not found: EasyR1 runs without it")
    pixels = {}
    for key in ("min_pixels", "max_pixels"):
        given = _optional(value[key])
        pixels[key] = None if given is None else whole_number(given, f"data.{key}", path)
    return Config(
        path=path, model=str(local_model) if local_model is not None else model_text, files=tuple(files),
        prompt_key=str(value["prompt_key"]), image_key=str(value["image_key"]), video_key=str(value["video_key"]),
        image_dir=image_dir,
        max_prompt_length=whole_number(value["max_prompt_length"], "data.max_prompt_length", path),
        min_pixels=pixels["min_pixels"], max_pixels=pixels["max_pixels"],
        filter_overlong_prompts=truthy(value["filter_overlong_prompts"]), format_prompt=texts["format_prompt"],
        chat_template=texts["override_chat_template"], notes=tuple(notes),
        values={k: value[k] for k in ("prompt_key", "image_key", "max_prompt_length", "min_pixels", "max_pixels",
                                      "filter_overlong_prompts", "format_prompt", "image_dir")},
    )


# -- the run ------------------------------------------------------------------------------------------------------
def claims(raw: dict[str, Any]) -> bool:
    """An EasyR1 launch script, or its YAML: a ``worker:`` section, or data keys verl does not have."""
    if raw.get("__launch__") == NAME:
        return True
    data = raw.get("data")
    if not isinstance(data, Mapping) or "actor_rollout_ref" in raw:
        return False
    return isinstance(raw.get("worker"), Mapping) or any(k in data for k in DISTINCT_DATA_KEYS)


def open_run(raw: dict[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map)
    spec = load_model(config.model, chat_template=config.chat_template,
                      overrides=Overrides(resize="prescale", min_pixels=config.min_pixels,
                                          max_pixels=config.max_pixels))
    return Run(config, spec)


class Stops(Exception):
    """The filter (or ``__getitem__``) raises on this row."""


class Run(ProcessorRun):
    """An EasyR1 run: judges each prompt against the overlong filter and the right cut."""

    name = NAME
    versions = VERSIONS
    length_key = "data.max_prompt_length"
    pixels_key = "data.max_pixels"
    config: Config

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        if spec.model_type in NEEDS_TRANSFORMERS_5:
            raise UsageError(f"EasyR1 pins transformers<5, which has no {spec.model_type} model; vlmcheck models "
                             f"EasyR1 for {', '.join(QWEN_FAMILIES)} checkpoints")
        if spec.model_type not in QWEN_FAMILIES:
            raise UsageError(f"vlmcheck models EasyR1 for {', '.join(QWEN_FAMILIES)} checkpoints, not "
                             f"{spec.model_type}")
        if spec.chat_template is None:
            raise UsageError(f"{spec.path} has no chat template; EasyR1 renders every prompt with it")
        self.config = config
        self.use_model(spec)
        self.max_length = config.max_prompt_length
        self._decoded: dict[Path, bool] = {}
        self.hf_datasets, self.hf_datasets_assumed = run_version("datasets", newest=EASYR1_DATASETS, below=(1 << 30,))

    def inputs(self) -> list[Path]:
        return [self.config.path, *self.config.files]

    def rows(self) -> Iterator[tuple[Any, Path]]:
        # RLHFDataset: load_dataset(type, data_files=file) or (a folder) load_dataset(type, data_dir=folder)
        plan = json_loadable(self.config.files, datasets_version=self.hf_datasets, loader="RLHFDataset's load_dataset")
        for k, file in enumerate(self.config.files):
            for row in loaded_rows(file, plan, k):
                yield row, file

    def settings_shown(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "template": "override_chat_template" if cfg.chat_template else "the checkpoint's chat template",
            "format_prompt": cfg.values.get("format_prompt") if cfg.format_prompt is not None else None,
            "datasets": [str(f) for f in cfg.files], "max_prompt_length": cfg.max_prompt_length,
            "filter_overlong_prompts": cfg.filter_overlong_prompts, "truncation": "right",
            "prompt_key": cfg.prompt_key, "image_key": cfg.image_key, "image_max_pixels": cfg.max_pixels,
            "image_min_pixels": cfg.min_pixels,
            "media_dir": str(cfg.image_dir) if cfg.image_dir else "the data (bytes, or paths as written)",
            "notes": list(cfg.notes),
            "datasets_library": self.hf_datasets + (" (assumed: the newest)" if self.hf_datasets_assumed
                                                    else " (installed here)"),
        }

    # -- one row --------------------------------------------------------------------------------------------------
    def messages(self, row: Mapping[str, Any], *, with_images: bool) -> list[dict[str, Any]]:
        """``_build_messages``: the format prompt around the prompt string; image parts where the dataset has an
        image column."""
        import jinja2

        if self.config.prompt_key not in row:
            raise Stops(f"the row has no {self.config.prompt_key!r} column (data.prompt_key): KeyError")
        prompt = row[self.config.prompt_key]
        if not isinstance(prompt, str):
            raise Stops(f"{self.config.prompt_key!r} is a {type(prompt).__name__}, not a string")
        if self.config.format_prompt:
            prompt = jinja2.Template(self.config.format_prompt.strip()).render(content=prompt)
        if not with_images:
            return [{"role": "user", "content": prompt}]
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(prompt.split("<image>")):
            if i:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        return [{"role": "user", "content": parts}]

    def _exif(self, source: Path) -> bool:
        """Parquet images stored as ``datasets`` Image features are decoded by ``datasets`` (EXIF rotation
        applied); plain byte structs are opened by ``process_image`` (none)."""
        if source not in self._decoded:
            decoded = False
            if source.suffix == ".parquet":
                import json

                from vlmcheck.data.readers import pyarrow

                try:
                    meta = pyarrow().parquet.read_schema(source).metadata or {}
                    features = json.loads(meta.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
                    decoded = "Image" in json.dumps(features.get(self.config.image_key, {}))
                except (OSError, ValueError, AttributeError):
                    decoded = False
            self._decoded[source] = decoded
        return self._decoded[source]

    def _size(self, image: Any, *, exif: bool) -> tuple[int, int]:
        if isinstance(image, Mapping):
            data = image.get("bytes")
            if not data:
                raise ImageProblem("VC102", "an image struct without bytes, which process_image cannot open")
            return probe_bytes(bytes(data)).size(exif_transpose=exif)
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=exif)
        if not isinstance(image, str) or not image:
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which EasyR1 cannot open")
        if image.startswith(("http://", "https://")):
            raise ImageProblem("VC101", f"remote image {image}: EasyR1 opens images with Image.open, not a URL")
        return probe_path(Path(image)).size(exif_transpose=False)

    def _expansions(self, images: list[Any], found: list[F.Finding], *, exif: bool) -> list[Expansion]:
        folder = self.config.image_dir
        if folder is not None and images and isinstance(images[0], str):  # image_dir joins paths only
            images = [str(folder / i) if isinstance(i, str) else i for i in images]
        probed = self.probe(images, found, size=lambda image: self._size(image, exif=exif))
        self._sizes: list[tuple[int, int]] = probed.sizes
        if probed.refused:
            raise Stops(f"{', '.join(probed.refused)}: process_image or the processor raises")
        return probed.expansions

    def _encode(self, text: str, expansions: list[Expansion]) -> tuple[int, list[int]]:
        """The prompt's token count, and where each image's tokens start in it."""
        tags = text.count(self.family.placeholder)
        if tags < len(expansions):
            raise Stops("fewer <image> tags than images")  # handled before: kept as a guard
        if tags > len(expansions):
            raise Stops(f"{tags} <image> tags for {len(expansions)} image(s): the processor raises "
                        "(IndexError) while expanding them")
        ids = self.expanded_ids(text, expansions)
        runs = [n for e in expansions for n in e.runs]
        total, starts, k = 0, [], 0
        for token in ids:
            if token == self.image_token_id:
                if k >= len(runs):
                    raise Stops("the prompt's text holds image tokens of its own")
                starts.append(total)
                total += runs[k]
                k += 1
            else:
                total += 1
        if k != len(runs):
            raise Stops("the prompt's text holds image tokens of its own")
        return total, starts

    def judge(self, index: int, row: Any, source: Path) -> SampleResult:
        result, frame = self.start(index, row, unloadable="datasets cannot load the file and EasyR1 stops")
        if frame["verdict"] != "ok":
            return result
        found = result.findings
        cfg = self.config
        with_images = cfg.image_key in row
        images = row.get(cfg.image_key) if with_images else []
        if not with_images and row.get(cfg.video_key):
            found.append(F.make("VC114", "videos under EasyR1 are not counted by vlmcheck yet"))
            frame["verdict"] = "unknown"
            return result
        try:
            if images is None or not isinstance(images, list):
                raise Stops(f"{cfg.image_key!r} is {type(images).__name__}, not a list: len() raises")
            messages = self.messages(row, with_images=with_images)
            expansions = self._expansions(images, found, exif=self._exif(source))
            result.image_tokens = [e.features for e in expansions]
            text = render_chat(self.spec.chat_template or "", messages, special_tokens=self.spec.special_tokens,
                               add_generation_prompt=True)
            if text.count(self.family.placeholder) < len(expansions):
                # the processor expands the tags there are and raises on none; the actor's forward meets more
                # image features than image tokens and raises
                total, _ = self._encode(text.replace(self.family.placeholder, ""), [])
                result.tokens = total
                frame["prompt_tokens"] = total
                found.append(F.make(
                    "VC002", f"{text.count(self.family.placeholder)} <image> tag(s) for {len(expansions)} image(s): "
                             "EasyR1 keeps the row, and the model's forward raises 'Image features and image "
                             "tokens do not match'"))
                frame["verdict"] = "crash"
                return result
            total, starts = self._encode(text, expansions)
        except Stops as e:
            if not result.image_tokens:
                result.image_tokens = [None] * (len(images) if isinstance(images, list) else 0)
            why = ("datasets.filter raises, and EasyR1 stops before training" if cfg.filter_overlong_prompts
                   else "RLHFDataset raises when the row is loaded, and the run stops")
            found.append(F.make("VC001", f"{e}; {why}"))
            frame["verdict"] = "stops"
            return result
        counts = [e.features for e in expansions]
        result.tokens = total
        result.text_only_tokens = total - sum(counts)
        frame["prompt_tokens"] = total
        limit = cfg.max_prompt_length
        if total <= limit:
            result.fits_max_pixels = cfg.max_pixels if counts else None
            return result
        result.fits_max_pixels = self._fit_pixels(self._sizes, total - sum(counts), limit) if counts else None
        fix = f"set {_setting('data.max_prompt_length', total)}"
        if result.fits_max_pixels is not None:
            fix += f" (or {_setting('data.max_pixels', result.fits_max_pixels)})"
        if cfg.filter_overlong_prompts:
            found.append(F.make(
                "VC204", f"the prompt is {total:,} tokens > data.max_prompt_length={limit:,}: EasyR1's overlong "
                         "filter drops the row before training", fix=f"{fix} to keep it", tokens=total,
                max_length=limit))
            frame["verdict"] = "filtered"
            return result
        kept = [max(0, min(n, limit - start)) for n, start in zip(counts, starts)]
        frame["image_tokens_kept"] = kept
        if kept != counts:
            found.append(F.make(
                "VC201", f"the prompt is {total:,} tokens > data.max_prompt_length={limit:,}: EasyR1 keeps the first "
                         f"{limit:,} (truncation='right'), which leaves {sum(kept):,} of {sum(counts):,} image tokens, "
                         "and the actor's forward raises 'Image features and image tokens do not match'",
                fix=f"{fix}, or {_setting('data.filter_overlong_prompts', 'true')} to drop such rows",
                tokens=total, max_length=limit))
            frame["verdict"] = "crash"
        else:
            found.append(F.make(
                "VC203", f"the prompt is {total:,} tokens > data.max_prompt_length={limit:,}: EasyR1 keeps the first "
                         f"{limit:,} (truncation='right'): the end of the question and the generation prompt are lost",
                fix=f"{fix} to keep it whole", tokens=total, max_length=limit))
            frame["verdict"] = "cut"
        return result


    def _fit_pixels(self, sizes: list[tuple[int, int]], text: int, limit: int) -> int | None:
        """The largest ``data.max_pixels`` (a multiple of 28*28) at which the prompt fits ``limit``: the text
        stays, each image is pre-scaled to the smaller budget (``min_pixels`` still scales small ones up)."""
        unit = 28 * 28
        cap = self.config.max_pixels if self.config.max_pixels is not None else max(w * h for w, h in sizes)

        def fits(budget: int) -> bool:
            settings = replace(self.settings, pre_max_pixels=budget)
            total = text
            for width, height in sizes:
                issues = self.family.check_image(width, height, settings)
                if any(F.CATALOGUE[i.code].severity >= F.Severity.ERROR for i in issues):
                    return False
                total += self.family.expand(width, height, settings).features
            return total <= limit

        return largest_budget(lo=1, hi=cap // unit, unit=unit, fits=fits)


def _setting(key: str, value: Any) -> str:
    """A fix written as an EasyR1 (OmegaConf) override."""
    return f"{key}={value}"
