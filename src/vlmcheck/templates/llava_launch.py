"""Read a LLaVA training launch script (``scripts/v1_5/finetune.sh`` and the like) for what ``vlmcheck template``
needs: ``--version``, ``--model_name_or_path``, ``--model_max_length``, ``--data_path``, ``--image_folder``,
``--mm_use_im_start_end``.

Defaults are LLaVA's own dataclass defaults (llava/train/train.py: ``ModelArguments.version = "v0"``,
``TrainingArguments.model_max_length = 512``, ``ModelArguments.mm_use_im_start_end = False``). Booleans are read as
``HfArgumentParser`` reads them (``True``/``False``/``yes``/``no``/``1``/``0``; a bare flag is True). Shell
variables set in the script (``MODEL=...``) or in the environment are expanded; a setting that needs one that is
not set is left out and named in ``unresolved`` (LLaVA's own scripts leave ``$PROMPT_VERSION`` for the user to
set).

>>> launch = read_launch("scripts/v1_5/finetune.sh")  # doctest: +SKIP
>>> launch.version, launch.model_max_length  # doctest: +SKIP
('v1', 2048)
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from vlmcheck.errors import UsageError

# llava/train/train.py: ModelArguments.version, TrainingArguments.model_max_length
DEFAULT_VERSION = "v0"
DEFAULT_MODEL_MAX_LENGTH = 512
_ENTRY = re.compile(r"(^|/)(train|train_mem|train_xformers)\.py$")
_TRUE, _FALSE = {"true", "yes", "1", "t", "y"}, {"false", "no", "0", "f", "n"}
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class LlavaLaunch:
    """The settings of one LLaVA training command, as ``train()`` would receive them."""

    script: Path
    version: str | None  # None: set through a shell variable the script does not set (see ``unresolved``)
    model_name_or_path: str | None
    model_max_length: int
    data_path: str | None
    image_folder: str | None
    mm_use_im_start_end: bool
    unresolved: dict[str, str]  # setting -> the shell variable it needs

    def need(self, name: str) -> str:
        """Why a setting is missing, for a usage error."""
        if name in self.unresolved:
            return (f"{self.script} sets --{name} from ${self.unresolved[name]}, which is not set in the script "
                    "or the environment")
        return f"{self.script} has no --{name}"


def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return True
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"--{name} {value!r} is not a boolean (HfArgumentParser reads True/False)")


class _Unset(Exception):
    pass


def _expand(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise _Unset(name)
        return env[name]

    return _VAR.sub(sub, text)


def read_launch(path: str | Path) -> LlavaLaunch:
    """The settings of the first command in ``path`` that runs LLaVA's ``llava/train/train*.py``."""
    script = Path(path)
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the launch script {script}: {e}") from None
    env = dict(os.environ)
    joined = re.sub(r"\\\r?\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise UsageError(f"{script}: cannot split {line[:60]!r}: {e}") from None
        if words[:1] == ["export"]:
            words = words[1:]
        assign = re.fullmatch(r"(?:export\s+)?(\w+)=(.*)", line)
        if assign and len(words) == 1:
            try:
                env[assign.group(1)] = _expand(words[0].split("=", 1)[1], env)
            except _Unset:
                env.pop(assign.group(1), None)
            continue
        at = next((k for k, w in enumerate(words) if _ENTRY.search(w)), None)
        if at is None:
            continue
        return _settings(script, words[at + 1:], env)
    raise UsageError(f"{script}: no command runs llava/train/train.py, train_mem.py or train_xformers.py")


def _settings(script: Path, args: list[str], env: dict[str, str]) -> LlavaLaunch:
    values: dict[str, str | None] = {}
    unresolved: dict[str, str] = {}
    k = 0
    while k < len(args):
        word = args[k]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            raw: str | None = None
            if eq:
                raw = value
            elif k + 1 < len(args) and not args[k + 1].startswith("--"):
                raw = args[k + 1]
                k += 1
            try:
                values[name] = None if raw is None else _expand(raw, env)
            except _Unset as e:
                unresolved[name] = str(e)
        k += 1
    raw_length = values.get("model_max_length")
    try:
        length = int(raw_length) if raw_length is not None else DEFAULT_MODEL_MAX_LENGTH
    except ValueError:
        raise UsageError(f"{script}: --model_max_length {raw_length!r} is not an integer") from None
    version = None if "version" in unresolved else (values.get("version") or DEFAULT_VERSION)
    return LlavaLaunch(script, version, values.get("model_name_or_path"), length,
                       values.get("data_path"), values.get("image_folder"),
                       _flag("mm_use_im_start_end", values["mm_use_im_start_end"])
                       if "mm_use_im_start_end" in values else False, unresolved)
