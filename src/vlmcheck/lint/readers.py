"""Reading training configs in the forms users have them, into one :class:`RunConfig`.

Supported inputs:

- LLaMA-Factory YAML/JSON (``llamafactory-cli train config.yaml``), or a script running that command;
- TRL / transformers arguments as YAML/JSON (``--config`` of TRL's scripts), or a launch command in
  a shell script: ``torchrun``, ``python -m torch.distributed.run``, ``accelerate launch``,
  ``deepspeed``, ``python script.py --flag value``;
- a Python training script: literal keyword arguments of ``SFTConfig(...)``, ``GRPOConfig(...)``,
  ``TrainingArguments(...)``, ``UnslothVisionDataCollator(...)``, ``FastVisionModel.from_pretrained``;
- ms-swift commands (``swift sft ...``, ``swift rlhf --rlhf_type grpo ...``; ``NPROC_PER_NODE`` and
  ``MAX_PIXELS`` from the environment);
- EasyR1 YAML (``python3 -m verl.trainer.main config=x.yaml key.sub=value ...``) and verl YAML or
  ``python3 -m verl.trainer.main_ppo key.sub=value`` dotted overrides;
- VLM-R1 shell scripts (``torchrun ... src/open_r1/grpo_jsonl.py --num_generations 8 ...``).

Options keep the framework's own names; nested YAML (EasyR1, verl) is flattened to dotted keys, the
form of their command-line overrides. Values are coerced the way the frameworks' parsers do
(``true``/``false``, numbers, JSON for dict options); anything else stays a string.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.data.files import FileProblem, not_a_file, read_text
from vlmcheck.data.nesting import parse
from vlmcheck.errors import UsageError
from vlmcheck.frameworks._shell import launch_commands
from vlmcheck.frameworks.pyscript import Unresolved, read_source

FRAMEWORKS = ("llamafactory", "trl", "unsloth", "swift", "easyr1", "verl", "vlm-r1")


@dataclass
class RunConfig:
    """A training run as the linter sees it."""

    framework: str
    options: dict[str, Any] = field(default_factory=dict)
    #: the path that was read (the YAML, script or command file)
    path: str | None = None
    #: torchrun / accelerate / deepspeed / python / swift / llamafactory-cli
    launcher: str | None = None
    #: the training entry point: a script path, ``-m`` module, or swift subcommand
    entry: str | None = None
    #: processes per node x nodes, when the launch says so
    num_processes: int | None = None
    nproc_per_node: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: Python scripts: constructor name -> its literal keyword arguments
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: launcher flags that switch off plain DDP (deepspeed, fsdp)
    distributed: str | None = None
    #: keys added on purpose with Hydra's ``+key=value`` (not reported as unknown)
    added: set[str] = field(default_factory=set)
    #: how options are written, for fixes: "yaml", "cli" (--key value), "dotted" (key=value), "python"
    style: str = "yaml"
    notes: list[str] = field(default_factory=list)


# -- values --------------------------------------------------------------------------------------


def coerce(text: str) -> Any:
    """A command-line string as the frameworks' parsers read it (HfArgumentParser's string_to_bool,
    OmegaConf's YAML scalars, JSON for dict-valued options)."""
    low = text.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null", "~"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text.strip().startswith(("{", "[")):
        where = f"the value {text[:40]}..." if len(text) > 40 else f"the value {text}"
        try:
            return parse(json.loads, text, where=where)
        except ValueError:
            pass
        try:
            import yaml

            return parse(yaml.safe_load, text, where=where)
        except UsageError:  # nested deeper than vlmcheck reads
            raise
        except Exception:
            return text
    return text


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``worker.rollout.n``), the form of OmegaConf overrides."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_hf_args(tokens: list[str]) -> dict[str, Any]:
    """``--key value``, ``--key=value``, bare ``--flag`` (true) and ``--key v1 v2`` (a list), the
    conventions of HfArgumentParser (TRL, VLM-R1, LLaMA-Factory) and ms-swift. Dashes in names are
    read as underscores, as HfArgumentParser accepts both."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            i += 1
            continue
        name, eq, inline = tok[2:].partition("=")
        name = name.replace("-", "_")
        if eq:
            out[name] = coerce(inline)
            i += 1
            continue
        values = []
        j = i + 1
        while j < len(tokens) and not tokens[j].startswith("--"):
            values.append(tokens[j])
            j += 1
        if not values:
            out[name] = True
        elif len(values) == 1:
            out[name] = coerce(values[0])
        else:
            out[name] = [coerce(v) for v in values]
        i = j
    return out


def parse_dotted(tokens: Iterable[str], added: set[str] | None = None) -> dict[str, Any]:
    """verl / EasyR1 (Hydra, OmegaConf.from_cli) overrides: ``a.b=c``, ``+a.b=c`` (add a key the
    schema does not have; collected in ``added``), ``++a.b=c``."""
    out: dict[str, Any] = {}
    for tok in tokens:
        if "=" not in tok or tok.startswith(("-", "~")):
            continue
        key, _, value = tok.partition("=")
        if key.startswith("+") and added is not None:
            added.add(key.lstrip("+"))
        out[key.lstrip("+")] = coerce(value)
    return out


# -- shell scripts --------------------------------------------------------------------------------

_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# a word naming a launcher lint reads: a script mentioning none of them is not lexed
_LAUNCHERS = r"torchrun|torch\.distributed|accelerate|deepspeed|python|swift|llamafactory-cli"


_PYTHON = re.compile(r"^(?:.*/)?python[0-9.]*$")

# Launcher options that take a value (torchrun: torch/distributed/run.py; accelerate: commands/launch.py;
# deepspeed: launcher/runner.py). Flags not listed take none.
_TORCHRUN_FLAGS = {"--standalone", "--no_python", "--no-python", "--module", "-m", "--run_path", "--run-path"}
_ACCELERATE_FLAGS = {
    "--multi_gpu", "--multi-gpu", "--use_deepspeed", "--use-deepspeed", "--use_fsdp", "--use-fsdp", "--cpu",
    "-m", "--module", "--no_python", "--debug", "-q", "--quiet", "--tpu", "--use_xpu",
}
_DEEPSPEED_FLAGS = {"--no_python", "--no_local_rank", "--module", "--autotune", "--force_multi", "--bind_cores_to_rank"}


def _launcher_opts(tokens: list[str], flags: set[str]) -> tuple[dict[str, str], int]:
    """Options of a launcher up to its script; returns (options, index of the script token)."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-"):
            return opts, i
        name, eq, value = tok.partition("=")
        norm = name.lstrip("-").replace("-", "_")
        if tok in flags or name in flags:
            opts[norm] = "true"
            if name in ("-m", "--module"):
                return opts, i + 1
            i += 1
        elif eq:
            opts[norm] = value
            i += 1
        else:
            opts[norm] = tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 2
    return opts, i


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip().strip('"'))
    except ValueError:
        return None


def _nproc(value: str | None) -> int | None:
    # torchrun accepts "gpu"/"auto" as well as a number: unknown until run time
    return _int(value)


@dataclass
class _Command:
    launcher: str
    entry: str | None
    args: list[str]
    env: dict[str, str]
    nproc_per_node: int | None = None
    nnodes: int | None = None
    distributed: str | None = None
    module: bool = False


def _parse_command(tokens: list[str], env: dict[str, str]) -> _Command | None:
    """One command line: leading VAR=value pairs, then a launcher we know."""
    local = dict(env)
    while tokens and _ASSIGN.match(tokens[0]) and not tokens[0].startswith("--"):
        m = _ASSIGN.match(tokens[0])
        assert m is not None
        local[m.group(1)] = m.group(2)
        tokens = tokens[1:]
    if not tokens:
        return None
    head = tokens[0]
    rest = tokens[1:]
    if head == "torchrun" or (_PYTHON.match(head) and rest[:2] in (["-m", "torch.distributed.run"],
                                                                    ["-m", "torch.distributed.launch"])):
        if head != "torchrun":
            rest = rest[2:]
        opts, i = _launcher_opts(rest, _TORCHRUN_FLAGS)
        module = opts.get("m") == "true" or opts.get("module") == "true"
        return _Command("torchrun", rest[i] if i < len(rest) else None, rest[i + 1:], local,
                        _nproc(opts.get("nproc_per_node")), _int(opts.get("nnodes", "1").split(":")[-1]),
                        module=module)
    if head == "accelerate" and rest[:1] == ["launch"]:
        opts, i = _launcher_opts(rest[1:], _ACCELERATE_FLAGS)
        args = rest[1:]
        distributed = "deepspeed" if "use_deepspeed" in opts else "fsdp" if "use_fsdp" in opts else None
        nproc = _int(opts.get("num_processes"))
        machines = _int(opts.get("num_machines")) or 1
        return _Command("accelerate", args[i] if i < len(args) else None, args[i + 1:], local,
                        nproc // machines if nproc else None, machines, distributed)
    if head == "deepspeed":
        opts, i = _launcher_opts(rest, _DEEPSPEED_FLAGS)
        return _Command("deepspeed", rest[i] if i < len(rest) else None, rest[i + 1:], local,
                        _int(opts.get("num_gpus")), _int(opts.get("num_nodes")), "deepspeed")
    if head == "swift" and rest:
        nproc = _int(local.get("NPROC_PER_NODE"))
        return _Command("swift", rest[0], rest[1:], local, nproc, _int(local.get("NNODES")))
    if head == "llamafactory-cli" and rest:
        return _Command("llamafactory-cli", rest[0], rest[1:], local, _int(local.get("NPROC_PER_NODE")),
                        _int(local.get("NNODES")))
    if _PYTHON.match(head) and rest:
        if rest[0] == "-m" and len(rest) > 1:
            return _Command("python", rest[1], rest[2:], local, module=True)
        if rest[0].endswith(".py"):
            return _Command("python", rest[0], rest[1:], local)
    return None


def _framework_of_command(cmd: _Command) -> str:
    entry = (cmd.entry or "").replace("\\", "/")
    if cmd.launcher == "swift":
        return "swift"
    if cmd.launcher == "llamafactory-cli" or "llamafactory" in entry or entry.endswith("src/train.py"):
        return "llamafactory"
    if entry == "verl.trainer.main_ppo" or entry.endswith("verl/trainer/main_ppo.py"):
        return "verl"
    if entry == "verl.trainer.main" or entry.endswith("verl/trainer/main.py"):
        return "easyr1"
    if "open_r1" in entry or entry.endswith(("grpo_jsonl.py", "grpo_rec.py")):
        return "vlm-r1"
    return "trl"


def _read_shell(text: str, path: Path | None) -> RunConfig:
    """The first launch command of a script, read as bash runs it (``_shell.launch_commands``: quotes, comments,
    variables from the script and the environment, pipes, redirections), as the check's own readers read it."""
    found: _Command | None = None
    for command in launch_commands(text, env=os.environ, path=path, program=_LAUNCHERS):
        tokens = list(command.words)
        env = {**command.variables, **dict(command.assignments)}
        if tokens and tokens[0] == "env":  # env A=1 torchrun ...
            tokens = tokens[1:]
        found = _parse_command(tokens, env)
        if found is not None:
            break
    if found is None:
        raise UsageError(
            f"{path or 'the command'}: no training command found (looked for torchrun, accelerate launch, "
            "deepspeed, python script.py / -m module, swift, llamafactory-cli)"
        )
    framework = _framework_of_command(found)
    run = RunConfig(framework=framework, path=str(path) if path else None, launcher=found.launcher,
                    entry=found.entry, env=found.env, nproc_per_node=found.nproc_per_node,
                    distributed=found.distributed)
    if found.nproc_per_node is not None:
        run.num_processes = found.nproc_per_node * (found.nnodes or 1)
    base = path.parent if path else Path.cwd()
    if framework in ("verl", "easyr1"):
        run.style = "dotted"
        overrides = parse_dotted(found.args, run.added)
        config_file = overrides.pop("config", None)
        if isinstance(config_file, str):
            loaded = _load_yaml_file(config_file, base, run)
            if loaded is not None:
                run.options.update(flatten(loaded))
        run.options.update(overrides)
    elif framework == "llamafactory" and found.launcher == "llamafactory-cli":
        # llamafactory-cli train config.yaml key=value ...
        files = [a for a in found.args if a.endswith((".yaml", ".yml", ".json"))]
        if files:
            loaded = _load_yaml_file(files[0], base, run)
            if loaded is not None:
                run.options.update(loaded)
        run.options.update(parse_dotted(a for a in found.args if not a.endswith((".yaml", ".yml", ".json"))))
        if run.num_processes is None and env_true(found.env.get("FORCE_TORCHRUN")):
            run.notes.append("FORCE_TORCHRUN without NPROC_PER_NODE: process count unknown")
    else:
        run.style = "cli"
        run.options.update(parse_hf_args(found.args))
        if framework == "swift":
            run.entry = found.entry  # sft / rlhf / pt / infer
    if framework == "trl" and isinstance(run.options.get("config"), str):
        # TRL scripts' --config file.yaml: file values, command-line flags win
        loaded = _load_yaml_file(str(run.options.pop("config")), base, run)
        if loaded is not None:
            run.options = {**loaded, **run.options}
    return run


def env_true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def _load_yaml_file(name: str, base: Path, run: RunConfig) -> dict[str, Any] | None:
    # as given (relative to the working directory), next to the script, then by file name next to it
    for candidate in (Path(name), base / name, base / Path(name).name):
        problem = not_a_file(candidate)
        if problem == "not found":
            continue
        if problem:  # a FIFO or a device is refused, as check refuses it, never taken for no file
            raise UsageError(f"{candidate} (config file {name} of the command): {problem}")
        try:
            text = read_text(candidate)
        except (FileProblem, OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {candidate}: {getattr(e, 'message', e)}") from None
        return _parse_mapping(text, candidate)
    run.notes.append(f"config file {name} referenced by the command was not found; read the overrides only")
    return None


# -- YAML / JSON -----------------------------------------------------------------------------------


def _parse_mapping(text: str, path: Path | None) -> dict[str, Any]:
    if path is not None and path.suffix == ".json":
        try:
            data = parse(json.loads, text, where=str(path))
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from None
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is a dependency
            from vlmcheck.errors import MissingDependencyError

            raise MissingDependencyError("pyyaml", "lint", "Reading YAML configs") from None
        try:
            data = parse(yaml.safe_load, text, where=str(path))
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


# Keys that only one framework uses, to tell YAML files apart (each framework's documented options).
_LLAMAFACTORY_KEYS = {"stage", "finetuning_type", "cutoff_len", "template", "image_max_pixels", "lora_target",
                      "use_reentrant_gc", "disable_gradient_checkpointing", "dataset_dir"}
_SWIFT_KEYS = {"train_type", "rlhf_type", "torch_dtype", "model_type", "lora_rank", "truncation_strategy"}


def detect_framework(options: Mapping[str, Any]) -> str:
    """Which framework a YAML/JSON mapping is written for."""
    if "actor_rollout_ref" in options:
        return "verl"
    if isinstance(options.get("worker"), Mapping) and isinstance(options.get("data"), Mapping):
        return "easyr1"
    if _LLAMAFACTORY_KEYS & set(options):
        return "llamafactory"
    if {"train_type", "rlhf_type"} & set(options):
        return "swift"
    return "trl"


def _read_mapping(text: str, path: Path | None, framework: str | None) -> RunConfig:
    options = _parse_mapping(text, path)
    if not options:  # empty, only comments, `{}` or `null`: check refuses it too, and no setting is a clean one
        raise UsageError(f"{path} holds no settings: there is nothing to lint")
    framework = framework or detect_framework(options)
    if framework == "llamafactory" and path is not None and path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        from vlmcheck.frameworks.llamafactory import read_yaml

        try:  # read as llamafactory-cli reads it (OmegaConf's loader: 1e5 is a number, a duplicate key an error)
            loaded = parse(read_yaml, text, where=str(path))
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: LLaMA-Factory's config loader (OmegaConf) refuses it: {e}") from None
        if isinstance(loaded, dict):
            options = loaded
    if framework in ("easyr1", "verl"):
        options = flatten(options)
    return RunConfig(framework=framework, options=options, path=str(path) if path else None)


# -- Python scripts --------------------------------------------------------------------------------

# Constructors whose literal keyword arguments hold the run's settings.
_CALLS = ("SFTConfig", "GRPOConfig", "DPOConfig", "TrainingArguments", "Seq2SeqTrainingArguments",
          "UnslothVisionDataCollator", "LoraConfig", "get_peft_model", "from_pretrained")
_OWNED = ("from_pretrained", "get_peft_model")  # kept with their owner: FastVisionModel.from_pretrained


def _call_key(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1] in _OWNED and len(parts) > 1 else parts[-1]


def _read_python(text: str, path: Path) -> RunConfig:
    """A script's or notebook's settings: the keyword arguments of the calls above, read by the one static script
    reader (:mod:`vlmcheck.frameworks.pyscript`); a value it cannot know without running the script is a note."""
    script = read_source(text, path=path, every_function=True)
    calls: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for call in script.calls:
        if call.name.split(".")[-1] not in _CALLS:
            continue
        name = _call_key(call.name)
        kwargs = calls.setdefault(name, {})
        for key, value in call.kwargs.items():
            if _holds_unresolved(value):
                notes.append(f"{name}({key}=...) is not a literal; not checked")
            else:
                kwargs[key] = value
    options: dict[str, Any] = {}
    for name in ("TrainingArguments", "Seq2SeqTrainingArguments", "DPOConfig", "SFTConfig", "GRPOConfig"):
        options.update(calls.get(name, {}))
    unsloth = bool(script.imports & {"unsloth", "unsloth_zoo"})
    framework = "unsloth" if unsloth or "UnslothVisionDataCollator" in calls else "trl"
    return RunConfig(framework=framework, options=options, path=str(path), launcher="python", entry=str(path),
                     calls=calls, notes=notes, style="python")


def _holds_unresolved(value: Any) -> bool:
    if isinstance(value, Unresolved):
        return True
    if isinstance(value, dict):
        return any(_holds_unresolved(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_unresolved(v) for v in value)
    return False


# -- entry point -----------------------------------------------------------------------------------


def known_framework(framework: str | None) -> str | None:
    """``framework`` when lint reads it (one of :data:`FRAMEWORKS`) or None; anything else is a usage error."""
    if framework is not None and framework not in FRAMEWORKS:
        raise UsageError(f"unknown framework {framework!r}; use one of: {', '.join(FRAMEWORKS)}")
    return framework


def read_config(config: str | os.PathLike[str], *, framework: str | None = None) -> RunConfig:
    """Read ``config`` (a file path) into a :class:`RunConfig`.

    ``framework`` overrides detection: one of :data:`FRAMEWORKS`.

    >>> run = read_config("tests/lint/configs/verl_grpo_n1.sh")  # doctest: +SKIP
    >>> run.framework, run.options["actor_rollout_ref.rollout.n"]  # doctest: +SKIP
    ('verl', 1)
    """
    known_framework(framework)
    path = Path(config)
    problem = not_a_file(path)
    if problem:
        raise UsageError(f"{path}: {'no such file' if problem == 'not found' else problem}")
    try:  # refused above 64 MiB: no config is, and a sparse one would fill memory
        text = read_text(path, errors="replace")
    except FileProblem as e:
        raise UsageError(f"cannot read the config: {e.message}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    suffix = path.suffix.lower()
    if suffix in (".json", ".py") and all(not line.strip() or (suffix == ".py" and line.lstrip().startswith("#"))
                                          for line in text.splitlines()):
        raise UsageError(f"{path} holds no settings: there is nothing to lint")
    if suffix in (".yaml", ".yml", ".json"):
        run = _read_mapping(text, path, framework)
    elif suffix in (".py", ".ipynb"):
        run = _read_python(text, path)
    else:  # .sh, .txt, a file holding a command line
        run = _read_shell(text, path)
    if framework is not None:
        run.framework = framework
    return run
