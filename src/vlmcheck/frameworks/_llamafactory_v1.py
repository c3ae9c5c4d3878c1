"""LLaMA-Factory's v1 engine (``USE_V1=1``, the ``llamafactory/v1`` package): the one home of its facts.

Modelled on LLaMA-Factory 0.9.5, whose v1 engine is a data path of its own beside the default one
(:mod:`vlmcheck.frameworks.llamafactory` dispatches here):

- **Config** (``v1/config/*_args.py``, ``arg_parser.get_args``): ``model`` (default ``Qwen/Qwen3-4B-Instruct-2507``),
  ``template`` (``qwen3_nothink``), ``train_dataset``, ``cutoff_len`` (2048), ``batching_strategy`` (``normal``).
  ``HfArgumentParser.parse_dict`` refuses every other key unless ``ALLOW_EXTRA_KEYS`` is set: a default-engine
  config (``model_name_or_path``, ``dataset``, ...) under ``USE_V1=1`` stops the run before step 1.
- **Datasets** (``v1/core/data_engine.py``, ``v1/plugins/data_plugins/loader.py``): ``train_dataset`` is a YAML file
  of named entries (``path``, ``source``: ``hf_hub`` by default or ``local``, ``split``, ``converter``, ``size``,
  ``weight``, ``streaming``), or a local file read as one dataset without a converter. Local files load with
  ``datasets.load_dataset`` by extension (one table per file: a key a row lacks but others have reads None).
  ``size`` / ``weight`` draw rows with replacement (``random.choices``): each row is judged once here. Streaming is
  refused by its batch generator ("Iterable dataset is not supported yet").
- **Rows** (``v1/plugins/data_plugins/converter.py``): the ``alpaca`` and ``sharegpt`` converters build text
  messages only (``function_call`` turns become tool calls); a row without a converter must already be in the
  engine's message format (typed content parts). **No image path:** the converters never read ``images`` /
  ``videos``, and an ``image_url`` / ``video_url`` part raises in every template ("Unsupported content type").
  A VLM trained here learns from the text alone, its ``<image>`` tags read as plain text: each row with media
  gets VC108.
- **Templates** (``v1/core/utils/rendering.py``, ``v1/plugins/model_plugins/templates``): ``chatml``,
  ``qwen3_nothink`` and ``qwen3``; each message's text is tokenized on its own (``add_special_tokens=False``) and
  trained when its ``loss_weight`` (assistant 1.0, others 0.0 by default) is over 1e-6: an answer's whole turn,
  ``<|im_start|>assistant`` header included.
- **Truncation** (``v1/utils/helper.py`` ``pad_and_truncate``, ``v1/plugins/trainer_plugins/batching.py``): the
  first ``cutoff_len`` tokens of each sample are kept, under every batching strategy; nothing is dropped. A
  converter or template error is raised by the data loader at the step that reaches the row: the run stops there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.data.files import not_a_file, read_parsed
from vlmcheck.data.hfjson import DATE, LoadPlan, TypeClash, json_schema
from vlmcheck.data.hfjson import as_loaded as hfjson_loaded
from vlmcheck.data.readers import dataset_kind
from vlmcheck.data.readers import iter_rows as read_rows
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.frameworks._run import ProcessorRun, locate, mapped
from vlmcheck.frameworks.llamafactory import NAME
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.results import SampleResult

MODELLED = "0.9.5"  # the v1 package changes from release to release: only this one's is modelled
VERSIONS = f"{MODELLED}, v1 engine (USE_V1=1)"

# v1/config: the fields of ModelArguments, DataArguments, TrainingArguments and SampleArguments (0.9.5), the only
# keys get_args accepts without ALLOW_EXTRA_KEYS
KEYS = frozenset({
    "model", "template", "trust_remote_code", "flash_attn", "model_class", "init_config", "peft_config",
    "kernel_config", "quant_config",
    "train_dataset", "eval_dataset",
    "output_dir", "micro_batch_size", "global_batch_size", "cutoff_len", "learning_rate", "num_train_epochs",
    "max_steps", "max_grad_norm", "bf16", "batching_strategy", "batching_workers", "enable_activation_checkpointing",
    "dist_config", "optim_config", "lr_scheduler_config", "seed", "full_determinism", "resume_from_checkpoint",
    "save_steps", "save_epochs", "save_ckpt_as_hf", "save_total_limit", "logging_steps",
    "sample_backend", "max_new_tokens",
})
DEFAULTS: dict[str, Any] = {
    "model": "Qwen/Qwen3-4B-Instruct-2507",  # ModelArguments.model
    "template": "qwen3_nothink",  # ModelArguments.template
    "cutoff_len": 2048,  # TrainingArguments.cutoff_len
    "batching_strategy": "normal",  # TrainingArguments.batching_strategy
}
TEMPLATES = ("chatml", "qwen3_nothink", "qwen3")
CONVERTERS = ("alpaca", "sharegpt")  # and "pair", whose chosen / rejected samples only the rm trainer reads
BATCHING = ("normal", "padding_free", "dynamic_batching", "dynamic_padding_free")  # v1/config/arg_utils.py
# loader.py _get_builder_name: the extensions a local dataset may have (those vlmcheck reads)
FILE_TYPES = {"json": "json", "jsonl": "json", "parquet": "parquet"}
# the columns users keep media in; the v1 converters read none of them
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
# every template: a content part other than text (tool calls and reasoning in assistant turns) raises
UNSUPPORTED = "Unsupported content type"
# sharegpt_converter's role mapping
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "observation": "tool",
                  "function_call": "assistant"}
TRAINED_ABOVE = 1e-6  # a message's tokens are labels when its loss_weight is over this
# the qwen3 templates' system block for tools (qwen3.py / qwen3_nothink.py, the same strings)
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
              "<args-json-object>}\n</tool_call><|im_end|>\n")


def _env_on(env: Mapping[str, str], name: str) -> bool:
    """v1/utils/env.py ``is_env_enabled``."""
    return env.get(name, "0").lower() in ("true", "yes", "on", "t", "y", "1")


def claims(raw: Mapping[str, Any]) -> bool:
    """A v1 config: ``train_dataset`` with the v1 engine's ``model`` key or its keys only, not the default engine's
    ``model_name_or_path`` (other keys are then refused as the engine's parser refuses them)."""
    return "train_dataset" in raw and "model_name_or_path" not in raw and (
        "model" in raw or all(key in KEYS for key in raw))


# -- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One entry of the ``train_dataset`` YAML, as the data engine loads it."""

    name: str
    path: Path
    converter: str | None
    resampled: bool  # size / weight: rows drawn with replacement


@dataclass(frozen=True)
class Config:
    path: Path
    model: str
    template: str
    cutoff_len: int
    sources: tuple[Source, ...]
    batching: str
    values: dict[str, Any] = field(default_factory=dict)


def read_config(raw: Mapping[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
                path_map: Mapping[str, str] | None = None, env: Mapping[str, str]) -> Config:
    """The settings the v1 engine runs with for ``raw``; ``data`` overrides ``train_dataset``."""
    extra = sorted(k for k in raw if k not in KEYS)
    if extra and not _env_on(env, "ALLOW_EXTRA_KEYS"):
        shape = (" (a default-engine config: unset USE_V1, or write the v1 keys model, template, train_dataset, "
                 "cutoff_len)" if "model_name_or_path" in raw else "")
        raise UsageError(f"{path}: LLaMA-Factory's v1 engine (USE_V1=1) parses this config and refuses the keys "
                         f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''} ('Some keys are not used by the "
                         f"HfArgumentParser'){shape}")
    mapping = dict(path_map or {})
    batching = str(raw.get("batching_strategy", DEFAULTS["batching_strategy"]))
    if batching not in BATCHING:
        raise UsageError(f"{path}: batching_strategy {batching!r} is not one of LLaMA-Factory's ({', '.join(BATCHING)})")
    cutoff = raw.get("cutoff_len", DEFAULTS["cutoff_len"])
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1:
        # parse_dict converts nothing: pad_and_truncate slices each sample with the value as written (a string
        # raises at the first step, a decimal on every sample as long, 0 keeps nothing, -5 all but the last 5)
        raise UsageError(f"{path}: cutoff_len {cutoff!r}: LLaMA-Factory's v1 engine slices each sample with the value "
                         "as written, which raises or keeps the wrong tokens; write a whole number of tokens, at "
                         "least 1")
    dataset = data or raw.get("train_dataset")
    if not dataset:
        raise UsageError(f"{path}: no train_dataset set (or pass --data)")
    sources = _sources(str(dataset), path, mapping)  # the data engine loads before the model and its template
    template = str(raw.get("template", DEFAULTS["template"]))
    if template not in TEMPLATES:
        raise UsageError(f"{path}: template {template!r} is not one vlmcheck models for LLaMA-Factory's v1 engine "
                         f"({', '.join(TEMPLATES)})")
    model_path = model or raw.get("model") or DEFAULTS["model"]
    return Config(path=path, model=mapped(str(model_path), mapping), template=template, cutoff_len=cutoff,
                  sources=sources, batching=batching,
                  values={k: raw.get(k, DEFAULTS.get(k)) for k in ("model", "template", "train_dataset",
                                                                    "cutoff_len", "batching_strategy")})


def _sources(value: str, config: Path, mapping: Mapping[str, str]) -> tuple[Source, ...]:
    """DataEngine._get_dataset_info and _load_dataset, for what vlmcheck can read."""
    where = locate(value, config, mapping)
    if value.endswith(".yaml") and not_a_file(where) != "not found":  # a FIFO there is refused, not sought on the Hub
        import yaml

        try:  # at most 64 MiB, a regular file (a FIFO would block), nested no deeper than vlmcheck reads
            infos = read_parsed(where, yaml.safe_load, what="the dataset list (train_dataset)")
        except yaml.YAMLError as e:
            raise UsageError(f"cannot read the dataset list {where}: {e}") from None
        if not isinstance(infos, dict) or not infos:
            raise UsageError(f"{where}: the dataset list must map dataset names to their entries")
        entries = [(str(name), info) for name, info in infos.items()]
        near = where
    elif value.endswith(".yaml"):
        raise UsageError(f"train_dataset {value}: a dataset list on the Hub; vlmcheck reads local files (point "
                         "train_dataset at a local copy)")
    elif where.exists():
        entries, near = [("default", {"path": value, "source": "local"})], config
    else:
        raise UsageError(f"train_dataset {value}: not a local file, so the v1 engine loads it from the Hub; vlmcheck "
                         "reads local files")
    if any(isinstance(info, Mapping) and info.get("streaming") for _, info in entries):
        raise UsageError(f"{where}: streaming datasets stop the v1 engine ('Iterable dataset is not supported yet')")
    sources = []
    for name, info in entries:
        if not isinstance(info, Mapping) or "path" not in info:
            raise UsageError(f"{where}: dataset {name!r} has no path")
        source = str(info.get("source", "hf_hub"))
        if source == "hf_hub":
            raise UsageError(f"dataset {name!r} is loaded from the Hub (source: hf_hub, the default); vlmcheck reads "
                             "local files (source: local)")
        if source != "local":
            raise UsageError(f"dataset {name!r}: source {source!r} is no loader of the v1 engine (its plugin raises "
                             "'not registered')")
        split = str(info.get("split", "train"))
        if split.startswith("train["):
            raise UsageError(f"dataset {name!r}: split {split!r} (a slice of the file's rows) is not modelled by "
                             "vlmcheck yet")
        if split != "train":
            raise UsageError(f"dataset {name!r}: split {split!r} of a local file (datasets gives it a train split "
                             "only, and raises)")
        converter = info.get("converter")
        if converter is not None and converter not in CONVERTERS:
            why = ("its chosen / rejected samples are the rm trainer's, not modelled" if converter == "pair"
                   else "the data engine raises 'not registered' on the first row")
            raise UsageError(f"dataset {name!r}: converter {converter!r}: {why} (vlmcheck models "
                             f"{', '.join(CONVERTERS)}, or none)")
        file = locate(str(info["path"]), near, mapping)
        if file.is_dir():
            raise UsageError(f"dataset {name!r}: {file} is a folder; vlmcheck reads the v1 engine's single-file "
                             "datasets")
        if not file.is_file():
            raise DatasetError(f"dataset {name!r}: {file} {not_a_file(file)}")
        if FILE_TYPES.get(file.suffix[1:]) is None:
            raise UsageError(f"dataset {name!r}: {file.name}: vlmcheck reads .json, .jsonl and .parquet datasets")
        sources.append(Source(name=name, path=file, converter=None if converter is None else str(converter),
                              resampled=info.get("size") is not None or info.get("weight") is not None))
    return tuple(sources)


# -- rows ---------------------------------------------------------------------------------------------------------
class Timestamp(Exception):
    """A value datasets returns as a datetime (an ISO-date field): what the v1 engine does with it is not followed."""


def as_loaded(value: Any, kind: Any, where: str = "") -> Any:
    """``value`` as ``datasets`` gives it from a table whose column type is ``kind`` (json_type's): an object
    holds every field of its struct, None where this row lacks it; a value of an ISO-date field raises
    Timestamp."""
    if kind == DATE and value is not None:
        raise Timestamp(where)
    if isinstance(kind, dict) and isinstance(value, Mapping):
        return {k: as_loaded(value.get(k), t, f"{where}.{k}" if where else k) for k, t in kind.items()}
    if isinstance(kind, tuple) and isinstance(value, list):
        return [as_loaded(v, kind[1], where + "[]") for v in value]
    return value


def convert(row: Mapping[str, Any], converter: str | None) -> dict[str, Any]:
    """The sample a converter makes of ``row`` (converter.py), raising where it raises."""
    if converter == "alpaca":
        messages: list[dict[str, Any]] = []
        if "system" in row:
            messages.append({"role": "system", "content": [{"type": "text", "value": row["system"]}],
                             "loss_weight": 0.0})
        if "instruction" in row or "input" in row:
            messages.append({"role": "user", "content": [
                {"type": "text", "value": row.get("instruction", "") + row.get("input", "")}], "loss_weight": 0.0})
        if "output" in row:
            messages.append({"role": "assistant", "content": [{"type": "text", "value": row["output"]}],
                             "loss_weight": 1.0})
        return {"messages": messages}
    if converter == "sharegpt":
        messages = []
        for message in row.get("conversations", []):
            tag = message["from"]
            if tag not in SHAREGPT_ROLES:
                continue  # logged and skipped
            if tag == "function_call":
                try:
                    calls = json.loads(message["value"])
                except json.JSONDecodeError:
                    continue  # logged and skipped
                calls = calls if isinstance(calls, list) else [calls]
                messages.append({"role": "assistant", "loss_weight": 1.0,
                                 "content": [{"type": "tool_call", "value": json.dumps(call)} for call in calls]})
            else:
                messages.append({"role": SHAREGPT_ROLES[tag], "content": [{"type": "text", "value": message["value"]}],
                                 "loss_weight": 1.0 if tag == "gpt" else 0.0})
        sample: dict[str, Any] = {"messages": messages}
        tools = row.get("tools")
        if tools:
            try:
                sample["tools"] = json.dumps(json.loads(tools))
            except json.JSONDecodeError:
                pass  # logged; the sample has no tools
        return sample
    return dict(row)


def _trained(weight: Any) -> bool:
    return bool(weight > TRAINED_ABOVE)


def _text(message: Mapping[str, Any]) -> str:
    """A message's text parts joined; any other part raises."""
    text = ""
    for content in message["content"]:
        if content["type"] != "text":
            raise ValueError(f"{UNSUPPORTED}: {content['type']}")
        text += content["value"]
    return text


Pieces = list[tuple[str, bool]]  # each string tokenized on its own, trained or not


def render(sample: Mapping[str, Any], template: str) -> Pieces:
    """The strings a template tokenizes for ``sample``, one per flush, with whether each is trained
    (Renderer.process_samples); raises where the engine raises."""
    if "messages" not in sample:
        raise ValueError("No valid messages or chosen_messages/rejected_messages found in sample.")
    messages = sample["messages"]
    if template == "chatml":
        pieces: Pieces = []
        for message in messages:
            text = "<|im_start|>" + message["role"] + "\n"
            text += _text(message) + "<|im_end|>\n"
            pieces.append((text, _trained(message.get("loss_weight", 1.0 if message["role"] == "assistant" else 0.0))))
        return pieces
    return _render_qwen3(messages, sample.get("tools"), thinking=template == "qwen3")


def _render_qwen3(messages: Sequence[Mapping[str, Any]], tools: Any, *, thinking: bool) -> Pieces:
    """qwen3.py and qwen3_nothink.py: alike but for the assistant turn."""
    pieces: Pieces = []
    text, weight = "", 0.0

    def flush() -> None:
        nonlocal text
        if text:
            pieces.append((text, _trained(weight)))
        text = ""

    if tools:
        text += "<|im_start|>system\n"
        if messages[0]["role"] == "system":
            text += _text(messages[0]) + "\n\n"
            weight = messages[0].get("loss_weight", 0.0)
        text += TOOLS_HEAD
        try:
            listed = json.loads(tools)
        except json.JSONDecodeError:
            raise ValueError(f"Invalid tools format: {tools}.") from None
        for tool in listed if isinstance(listed, list) else [listed]:
            text += "\n" + json.dumps(tool, ensure_ascii=False)
        text += TOOLS_TAIL
    elif messages[0]["role"] == "system":
        text += "<|im_start|>system\n" + _text(messages[0]) + "<|im_end|>\n"
        weight = messages[0].get("loss_weight", 0.0)
    flush()
    last_query = _last_query(messages) if thinking else 0
    for turn, message in enumerate(messages):
        role = message["role"]
        if role == "user" or (role == "system" and turn != 0):
            text += "<|im_start|>" + role + "\n" + _text(message) + "<|im_end|>\n"
            weight = message.get("loss_weight", 0.0)
        elif role == "assistant":
            text += "<|im_start|>" + role + "\n"
            text += (_qwen3_answer(message, turn, last_query, last=turn == len(messages) - 1) if thinking
                     else _nothink_answer(message))
            text += "<|im_end|>\n"
            weight = message.get("loss_weight", 1.0)
        elif role == "tool":
            if turn == 0 or messages[turn - 1]["role"] != "tool":
                text += "<|im_start|>user"
            text += "\n<tool_response>\n" + _text(message) + "\n</tool_response>"
            if turn == len(messages) - 1 or messages[turn + 1]["role"] != "tool":
                text += "<|im_end|>\n"
            weight = message.get("loss_weight", 0.0)
        flush()
    return pieces


def _call_text(call: Mapping[str, Any], arguments: str) -> str:
    return '<tool_call>\n{"name": "' + call["name"] + '", "arguments": ' + arguments + "}\n</tool_call>"


def _nothink_answer(message: Mapping[str, Any]) -> str:
    text = ""
    parts = message["content"]
    for k, content in enumerate(parts):
        kind = content["type"]
        if kind == "text":
            text += content["value"]
        elif kind == "reasoning":  # written without special tokens
            text += "<thinking>\n" + content["value"] + "\n</thinking>\n\n"
        elif kind == "tool_call":
            if k != 0 and parts[k - 1]["type"] in ("text", "tool_call"):
                text += "\n"
            call = _tool_call(content["value"])
            text += _call_text(call, json.dumps(call["arguments"], ensure_ascii=False))
        else:
            raise ValueError(f"{UNSUPPORTED}: {kind}")
    return text


def _tool_call(value: Any) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"Invalid tool call format: {value}.") from None


def _qwen3_answer(message: Mapping[str, Any], turn: int, last_query: int, *, last: bool) -> str:
    answer, reasoning, calls = "", "", []
    for content in message["content"]:
        kind = content["type"]
        if kind == "text":
            answer += content["value"]
        elif kind == "reasoning":
            reasoning += content["value"]
        elif kind == "tool_call":
            calls.append(_tool_call(content["value"]))
        else:
            raise ValueError(f"{UNSUPPORTED}: {kind}")
    if turn > last_query and (last or reasoning):
        text = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n")
    else:
        text = answer
    for k, call in enumerate(calls):
        if k > 0 or answer:
            text += "\n"
        arguments = call.get("arguments")
        text += _call_text(call, arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))
    return text


def _last_query(messages: Sequence[Mapping[str, Any]]) -> int:
    """qwen3.py _get_last_query_index: the last user turn of plain text that is not a wrapped tool response."""
    for turn in range(len(messages) - 1, -1, -1):
        message = messages[turn]
        if message["role"] != "user":
            continue
        if any(content["type"] != "text" for content in message["content"]):
            continue
        text = "".join(content["value"] for content in message["content"])
        if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
            return turn
    return len(messages) - 1


def _collatable(value: Any) -> bool:
    """A sample's ``extra_info`` that ``pad_and_truncate`` takes: a string (passed through) or a list of numbers
    (a tensor it pads); an object, None, a single number or strings make ``torch.tensor`` or the slice raise."""
    if isinstance(value, str):
        return True

    def shape(v: Any) -> tuple[int, ...] | None:  # a rectangular list of numbers torch can hold, else None
        if isinstance(v, bool) or isinstance(v, float) or isinstance(v, int) and -2**63 <= v < 2**63:
            return ()
        if not isinstance(v, list):
            return None
        inner = {shape(x) for x in v}
        if None in inner or len(inner) > 1:
            return None
        each = inner.pop() if inner else ()
        return None if each is None else (len(v), *each)

    try:
        return isinstance(value, list) and shape(value) is not None
    except RecursionError:
        return False


def media(row: Mapping[str, Any]) -> list[str]:
    """The media columns of a row that hold something: what the v1 engine never loads."""
    return [key for key in MEDIA_KEYS if row.get(key) not in (None, "", [], {})]


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    source: Source
    row: int


class Run(ProcessorRun):
    """A LLaMA-Factory run on its v1 engine: text rows cut at ``cutoff_len``, media never loaded."""

    name = NAME
    versions = VERSIONS
    length_key = "cutoff_len"
    pixels_key = "image_max_pixels"

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        self.config = config
        self.use_model(spec)
        self.max_length = config.cutoff_len
        self._kinds: dict[Path, Any] = {}  # per JSON file: its columns' unified types
        self._plans: dict[Path, LoadPlan] = {}  # and what datasets' load does to its rows

    def inputs(self) -> list[Path]:
        return [self.config.path, *(s.path for s in self.config.sources)]

    def rows(self) -> Iterator[tuple[Any, Origin]]:
        """The datasets' rows in the order of the dataset list (the data index before sampling). Every file is
        loaded before the first step: one that datasets cannot load as a table, or that holds no row, stops the
        run (a DatasetError here, as for the default engine)."""
        for source in self.config.sources:
            self._column_types(source.path)
            if next(iter(read_rows(source.path)), None) is None:
                raise DatasetError(f"dataset {source.name!r}: {source.path} holds no rows: datasets' loader raises "
                                   "and LLaMA-Factory's v1 engine stops before step 1")
        for source in self.config.sources:
            plan = self._plans.get(source.path)
            for number, row in enumerate(read_rows(source.path)):
                # as datasets returns it (hfjson: a lone surrogate escape an array drops); dates stay datetimes,
                # which the judge reports as not followed
                yield (hfjson_loaded(row, plan, (0, number), timestamps=True) if plan else row), Origin(source, number)

    def settings_shown(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        resampled = [s.name for s in cfg.sources if s.resampled]
        return {
            "name": NAME, "versions": VERSIONS, "config": str(cfg.path), "engine": "v1", "template": cfg.template,
            "datasets": [s.name for s in cfg.sources], "cutoff_len": cfg.cutoff_len,
            "batching_strategy": cfg.batching,
            "images": "never loaded: the v1 engine's converters and templates read text only",
            "launch": "USE_V1=1 llamafactory-cli train CONFIG (without USE_V1 the default engine runs, and refuses "
                      "these keys)",
            **({"resampled": resampled} if resampled else {}),
            "length_key": self.length_key, "pixels_key": self.pixels_key,
        }

    def _column_types(self, path: Path) -> Any:
        """The column types of the table datasets makes of a JSON file (DatasetError where it cannot load it)."""
        if path not in self._kinds:
            kind: Any = None
            if dataset_kind(path) in ("json", "jsonl"):
                plan = LoadPlan()
                try:
                    kind = json_schema([path], plan=plan)
                    self._plans[path] = plan
                except RecursionError:  # nested past what vlmcheck follows: rows judged as they come
                    kind = None
                except TypeClash as e:
                    raise DatasetError(f"{path}, {e}: datasets cannot load the file as one table, so LLaMA-Factory's "
                                       "loader raises and the run stops before step 1") from None
            self._kinds[path] = kind
        return self._kinds[path]

    def judge(self, index: int, row: Any, origin: Origin) -> SampleResult:
        source = origin.source
        result, frame = self.start(index, row, unloadable="the v1 engine's loader fails on the file",
                                   engine="v1", dataset=source.name)
        frame["row"] = origin.row
        if frame["verdict"] != "ok":
            return result
        if not isinstance(row.get("id"), (str, int)):
            result.id = f"{source.name}:{origin.row}"
        try:
            loaded = as_loaded(row, self._column_types(source.path))
            pieces = render(convert(loaded, source.converter), self.config.template)
        except Timestamp as e:
            result.findings.append(F.make(
                "VC007", f"datasets loads {e} as a timestamp, not text (pyarrow reads a JSON Lines field whose every "
                         "value in its first 10 MiB is an ISO date so), which vlmcheck does not follow for the v1 "
                         "engine: the row is not counted"))
            frame["verdict"] = "unknown"
            return result
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
            result.findings.append(F.make(
                "VC001", f"LLaMA-Factory's v1 engine raises on this row ({type(e).__name__}: {str(e)[:200]}) in its "
                         f"{'converter ' + source.converter + ' or ' if source.converter else ''}template "
                         f"{self.config.template}: the run stops at the step that reaches it"))
            frame["verdict"] = "crash"
            return result
        self._count(result, frame, pieces)
        if source.converter is None and "extra_info" in loaded and not _collatable(loaded["extra_info"]):
            result.findings.append(F.make(
                "VC001", f"the row's extra_info ({type(loaded['extra_info']).__name__}) goes into the model input, "
                         "where pad_and_truncate makes a tensor of every value that is not a string and raises: the "
                         "run stops at the step that reaches it",
                fix="write extra_info as a string (or leave the column out)"))
            frame["verdict"] = "crash"
            return result
        dropped = media(loaded)
        if dropped:
            result.findings.append(F.make(
                "VC108", f"the row's {' and '.join(dropped)} are never loaded: LLaMA-Factory's v1 engine (0.9.5) has no "
                         "image path (its converters read the text only), so the model trains on this row's text "
                         "alone, its image tags read as plain text",
                fix="train this data on the default engine (unset USE_V1, a config with model_name_or_path and "
                    "dataset)", columns=dropped))
            if frame["verdict"] == "ok":
                frame["verdict"] = "trains_without_images"
        return result

    def _count(self, result: SampleResult, frame: dict[str, Any], pieces: Pieces) -> None:
        ids: list[int] = []
        labels: list[bool] = []
        for text, trained in pieces:
            piece = self.tokenizer.encode(text, add_special_tokens=False).ids
            ids += piece
            labels += [trained] * len(piece)
        cutoff = self.config.cutoff_len
        total, supervised = len(ids), sum(labels)
        kept, kept_labels = min(total, cutoff), sum(labels[:cutoff])
        result.tokens, result.supervised_tokens, result.text_only_tokens = total, supervised, total
        frame.update(kept_tokens=kept, kept_supervised=kept_labels)
        if supervised == 0:
            result.findings.append(F.make("VC003", "no answer tokens to learn from: every message's loss_weight is 0"))
        elif kept_labels == 0:
            result.findings.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at cutoff_len={cutoff:,} (the v1 engine keeps "
                         f"the first {cutoff:,} of the sample's {total:,} tokens)",
                fix=f"set cutoff_len: {total}, shorten the prompt, or drop the sample",
                supervised=supervised, tokens=total, max_length=cutoff))
        elif total > cutoff:
            result.findings.append(F.make(
                "VC203", f"{total:,} tokens > cutoff_len={cutoff:,}: the v1 engine keeps the first {cutoff:,}, "
                         f"{supervised - kept_labels:,} of {supervised:,} supervised tokens lost",
                fix=f"set cutoff_len: {total} to keep it whole", tokens=total, max_length=cutoff,
                supervised_lost=supervised - kept_labels))


def open_run(raw: Mapping[str, Any], *, path: Path, model: str | None = None, data: str | None = None,
             path_map: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Run:
    """The run a v1 config launches (``USE_V1=1 llamafactory-cli train CONFIG``)."""
    installed = _installed()
    if installed is not None and installed != MODELLED:
        raise UsageError(f"LLaMA-Factory {installed} is installed here; vlmcheck models the v1 engine of {MODELLED} "
                         "(later ones load images and drop those the cut reaches): check on the default engine, or "
                         f"with LLaMA-Factory {MODELLED}")
    config = read_config(raw, path=path, model=model, data=data, path_map=path_map,
                         env=os.environ if env is None else env)
    return Run(config, load_model(config.model))


def _installed() -> str | None:
    """The version of LLaMA-Factory installed beside vlmcheck, if any (the run's own, when both share an
    environment)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llamafactory")
    except PackageNotFoundError:
        return None
