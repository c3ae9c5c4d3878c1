"""Every launch-script reader reads a script as bash runs it: VLM-R1's and LLaVA's flags, verl's and EasyR1's
overrides and ``vlmcheck lint``'s launch commands take their words from the one shell reader
(``frameworks._shell.launch_commands``, whose words test_swift_script.py proves against bash for ``swift sft``).
Here each reader's values are compared with the words bash itself passes when it runs the script with the
launcher (``torchrun``, ``python3``, ``deepspeed``) replaced by a recorder of its argv; then the bounds (a doubling
variable, a long line, a quote never closed) hold for each reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlmcheck.errors import UsageError
from vlmcheck.frameworks import easyr1, llava, verl, vlm_r1
from vlmcheck.frameworks._shell import SHELL_EXPANSION_LIMIT
from vlmcheck.lint.readers import read_config as lint_read

BASH = shutil.which("bash")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/me", "LANG": "C.UTF-8", "SET": "from env"}
# a launcher as bash finds it on the PATH: writes the words of its first run, NUL-separated, then exits
RECORDER = r"""#!/bin/sh
[ ! -e "$ARGV_OUT" ] || exit 0
printf '%s\0' "$@" > "$ARGV_OUT.part" && mv "$ARGV_OUT.part" "$ARGV_OUT"
"""
LAUNCHERS = ("torchrun", "python3", "deepspeed", "accelerate")


def bash_words(script: str, folder: Path) -> list[str]:
    """The words the first launcher that ``bash train.sh`` runs gets (in ``folder``)."""
    (folder / "bin").mkdir(exist_ok=True)
    for name in LAUNCHERS:
        (folder / "bin" / name).write_text(RECORDER)
        (folder / "bin" / name).chmod(0o755)
    record = folder / "argv"
    record.unlink(missing_ok=True)
    (folder / "train.sh").write_text(script)
    subprocess.run([BASH or "bash", "train.sh"], cwd=folder, capture_output=True, timeout=60, check=False,
                   env={**ENV, "PATH": f"{folder / 'bin'}:{ENV['PATH']}", "ARGV_OUT": str(record)})
    return record.read_bytes().decode().split("\0")[:-1]


def after(words: list[str], entry: str) -> list[str]:
    """The words after the program word ending with ``entry``."""
    at = next(i for i, w in enumerate(words) if w.endswith(entry))
    return words[at + 1:]


def flags(words: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` / bare ``--flag`` (true), as HfArgumentParser pairs them."""
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        key, eq, value = words[i][2:].partition("=")
        i += 1
        if not eq:
            if i < len(words) and not words[i].startswith("--"):
                value, i = words[i], i + 1
            else:
                value = "true"
        out[key] = value
    return out


# Each script holds what a line-by-line reader got wrong: a quoted #, a comment hiding an option, continuations,
# quoted values with blanks, variables set by the script and the environment, arithmetic, a pipe.
VLM_R1 = ("MAXP=$((1280*28*28))\nexport DATA=\"my data.jsonl\"; IMGS='#imgs'\n"
          "torchrun --nproc_per_node=\"8\" \\\n    src/open_r1/grpo_jsonl.py --data_file_paths \"$DATA\" \\\n"
          "    --image_folders $IMGS --max_pixels $MAXP --task_type 'rec' --bf16 \\\n"
          "    --run_name \"x # y\" # --max_pixels 5\n")
VERL = ("LEN=$((512*2))\nexport TRAIN=\"$HOME/data/train.parquet\"\n"
        "python3 -m verl.trainer.main_ppo data.train_files=\"$TRAIN\" \\\n  data.max_prompt_length=$LEN \\\n"
        "  'actor_rollout_ref.rollout.n=5' data.image_key=images # data.max_prompt_length=1\\\n"
        "  2>&1 | tee log.txt\n")
EASYR1 = ("MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct  # replace it with your local file path\n"
          "python3 -m verl.trainer.main \\\n    config=examples/config.yaml \\\n"
          "    worker.actor.model.model_path=${MODEL_PATH} \\\n    data.max_prompt_length=\"$((1024 + 24))\" "
          "trainer.experiment_name='a b#c'\n")
LLAVA = ("MODEL=lmsys/vicuna-7b-v1.5; PROMPT_VERSION=v1\n"
         "deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero2.json \\\n"
         "    --model_name_or_path $MODEL --version $PROMPT_VERSION --data_path \"./my data.json\" \\\n"
         "    --image_folder '#images' --model_max_length $((2048*2)) --mm_use_im_start_end False # --version x\n")
LINT = ("NPROC=4\nA='--num_generations 1'\n"
        "accelerate launch --num_processes $NPROC train_grpo.py --learning_rate '1e-5 # not a comment' \\\n"
        "  --num_generations $((2 * 4)) --output_dir \"out dir\" # --num_generations 1\n")


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_vlm_r1_reads_the_flags_bash_passes(tmp_path: Path) -> None:
    raw = vlm_r1.read_launch(VLM_R1, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None
    mine = {k: v for k, v in raw.items() if not k.startswith("__")}
    theirs = flags(after(bash_words(VLM_R1, tmp_path), "grpo_jsonl.py"))
    assert mine == theirs and theirs["max_pixels"] == "1003520" and theirs["run_name"] == "x # y"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_verl_reads_the_overrides_bash_passes(tmp_path: Path) -> None:
    raw = verl.read_launch(VERL, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None
    theirs: dict[str, Any] = {}
    for word in after(bash_words(VERL, tmp_path), "verl.trainer.main_ppo"):
        key, value = word.split("=", 1)
        node = theirs
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = yaml.safe_load(value)
    assert {k: v for k, v in raw.items() if k != "__launch__"} == theirs
    assert theirs["data"]["max_prompt_length"] == 1024 and theirs["data"]["train_files"] == "/home/me/data/train.parquet"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_easyr1_reads_the_overrides_bash_passes(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "config.yaml").write_text("data:\n  max_prompt_length: 7\n  image_key: images\n")
    raw = easyr1.read_launch(EASYR1, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None
    words = dict(w.split("=", 1) for w in after(bash_words(EASYR1, tmp_path), "verl.trainer.main"))
    assert raw["data"] == {"max_prompt_length": int(words["data.max_prompt_length"]), "image_key": "images"}
    assert raw["worker"]["actor"]["model"]["model_path"] == words["worker.actor.model.model_path"]
    assert raw["trainer"]["experiment_name"] == words["trainer.experiment_name"] == "a b#c"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_llava_reads_the_flags_bash_passes(tmp_path: Path) -> None:
    raw = llava.read_launch(LLAVA, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None
    mine = {k: v for k, v in raw.items() if not k.startswith("__")}
    theirs = flags(after(bash_words(LLAVA, tmp_path), "train_mem.py"))
    assert {k: "true" if v is None else v for k, v in mine.items()} == theirs
    assert theirs["model_max_length"] == "4096" and theirs["image_folder"] == "#images"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_lint_reads_the_launch_command_bash_runs(tmp_path: Path) -> None:
    (tmp_path / "train.sh").write_text(LINT)
    run = lint_read(tmp_path / "train.sh")
    theirs = flags(after(bash_words(LINT, tmp_path), "train_grpo.py"))
    assert run.options["num_generations"] == int(theirs["num_generations"]) == 8
    assert run.options["learning_rate"] == theirs["learning_rate"] == "1e-5 # not a comment"
    assert run.options["output_dir"] == "out dir" and run.num_processes == 4


def test_an_unset_variable_as_a_flags_value_is_named(tmp_path: Path) -> None:
    """bash drops the word of an unset ``$VAR``: VLM-R1's parser then has ``--max_pixels`` with no value (or the
    next flag as its value), and LLaVA's template is unknown; both name the variable."""
    text = VLM_R1.replace("$MAXP", "$NOPE")
    raw = vlm_r1.read_launch(text, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None and raw["__unset__"] == {"max_pixels": ("NOPE",)}
    with pytest.raises(UsageError, match=r"--max_pixels takes its value from \$NOPE"):
        vlm_r1.read_config(raw, path=tmp_path / "train.sh", model="Qwen/Qwen2-VL-2B-Instruct")
    raw = llava.read_launch(LLAVA.replace("PROMPT_VERSION=v1", ""), path=tmp_path / "train.sh", env=ENV)
    assert raw is not None and raw["__unresolved__"] == {"version": "PROMPT_VERSION"}


READERS = {
    "vlm-r1": (vlm_r1.read_launch, "torchrun src/open_r1/grpo_jsonl.py --task_type $A\n"),
    "verl": (verl.read_launch, "python3 -m verl.trainer.main_ppo data.train_files=$A\n"),
    "easyr1": (easyr1.read_launch, "python3 -m verl.trainer.main data.train_files=$A\n"),
    "llava": (llava.read_launch, "deepspeed llava/train/train_mem.py --data_path $A\n"),
}


@pytest.mark.parametrize("name", list(READERS))
def test_a_doubling_variable_and_a_long_script_are_bounded(tmp_path: Path, name: str) -> None:
    reader, command = READERS[name]
    started = time.perf_counter()
    with pytest.raises(UsageError, match=f"expands past {SHELL_EXPANSION_LIMIT:,}"):
        reader("A=x\n" + "A=$A$A\n" * 40 + command, path=tmp_path / "t.sh", env=ENV)
    long = "echo '" + "x" * 100_000 + "' \"$HOME\" a\\ b # c\n"  # 10 MB: minutes for a quadratic reader
    assert reader(long * 100 + "A=ok\n" + command, path=tmp_path / "t.sh", env=ENV) is not None
    with pytest.raises(UsageError, match="line 2: a ' is never closed"):
        reader("A=x\necho 'oops\n" + command, path=tmp_path / "t.sh", env=ENV)
    assert time.perf_counter() - started < 15


def test_lint_is_bounded_too(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("A=x\n" + "A=$A$A\n" * 40 + "torchrun train.py --x $A\n")
    with pytest.raises(UsageError, match=f"expands past {SHELL_EXPANSION_LIMIT:,}"):
        lint_read(script)
