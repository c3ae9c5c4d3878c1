"""How ``vlmcheck check`` reads a ``swift sft`` launch script: the words swift gets are the ones bash passes it (proved
by running each script through bash with ``swift`` replaced by a recorder of its argv and environment), and those
words are ms-swift's options as its argparse parser reads them (``--key=value``, a flag given no value: proved
against ms-swift's own parser, swift_env.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import swift
from vlmcheck.frameworks._shell import SHELL_EXPANSION_LIMIT

BASH = shutil.which("bash")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/me", "LANG": "C.UTF-8", "SET": "from env",
       "SPACED": " a  b "}
# `swift` as bash finds it on the PATH: a program that writes the words of the first `swift sft` and the
# environment it runs with, NUL-separated
RECORDER = r"""#!/bin/sh
[ "$1" = sft ] && [ ! -e "$ARGV_OUT" ] || exit 0
shift
{ printf '%s\0' "$@"; printf '\1\0'; env -0; } > "$ARGV_OUT.part" && mv "$ARGV_OUT.part" "$ARGV_OUT"
"""

SCRIPTS = {
    "key=value, quoted #, comment": "swift sft --model m --max_length=100 --system '#1 rule: be brief' --x \"#y\" "
                                    "a#b \\#c # a comment --max_length 5",
    "pipe to tee": "swift sft --model m --max_length 100 2>&1 | tee log.txt",
    "redirections, background": "nohup swift sft --model m >log.txt 2>&1 --max_length 100 2>/dev/null &",
    "chains": "cd . && swift sft --model m --max_length 100; echo done",
    "heredoc": "cat > notes.txt <<EOF\nswift sft --max_length 5\nEOF\nswift sft --model m --max_length 100",
    "quoted heredoc, tabs, here-string": "cat <<-'END' > n.txt\n\tswift sft --max_length $5\n\tEND\n"
                                         "swift sft --max_length 100 <<< 'x y'",
    "single and double quotes": "swift sft --system 'Use $HOME' \"Use $HOME\" Use\\ $HOME ~ ~/x a~ \"~\" '~'",
    "unset and empty": "swift sft --max_length $UNSET_VAR --x \"$UNSET_VAR\" x$UNSET_VAR ${UNSET_VAR}\"\" $SPACED "
                       "\"$SPACED\" x${SPACED}y",
    "word splitting": "D=\"a.jsonl b.jsonl\"\nswift sft --dataset $D --system \"$D\"",
    "no arguments": "swift sft \"$@\" --x \"$*\" $@ ${1:-one} \"${1:-two words}\" ${1:-two words}",
    "prefixes and exports": "export E1=\"x y\" E2=$SET\nA=1 B=$A MAX_PIXELS=$((1280*28*28)) swift sft --system "
                            "\"$E1\" $E2 \"$B\"",
    "continuations": "swift sft --a \\\n  b \\\n  'c\nd' \"e\\\nf\" $'t\\tu\\nv' $\"w x\"",
    "default forms": "A=x; A+=y; X=\nswift sft $A ${#A} ${A:+set} ${U:+no} \"${U:+}\" ${X:-d1} ${X-d2} "
                     "${U:='r s'} \"$U\"",
    "defaults with quotes": "swift sft \"${U:-'a b'}\" ${U:-'a b'} ${U:-\"a b\"} \"${U:-\"a b\"}\" ${U:-a\\ b} "
                            "\"${U:-a\\ b}\" ${U:-~/x} \"${U:-~/x}\"",
    "escapes": "swift sft \"x\\$y\\\\z\\`w\\\"\" 'a\\b' a\\\\b \"\\a\" --sys='#x y' \\\"q\\\"",
    "condition and group": "if true; then swift sft --max_length 7; fi",
    "command substitution skipped": "X=$(cat <<'EOF'\nit's (here)\nswift sft --max_length 5\nEOF\n)\n"
                                    "W=$(( 3 << 2 )) Y=$(( (1 + 2) * 4 )) Z=$(tr a b <<< \"x ) y\")\n"
                                    "swift sft --max_length $Y --a 'b c'",
}


def bash_run(script: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The words and environment of the first ``swift sft`` that ``bash train.sh`` runs (in ``folder``)."""
    (folder / "bin").mkdir()
    (folder / "bin" / "swift").write_text(RECORDER)
    (folder / "bin" / "swift").chmod(0o755)
    (folder / "train.sh").write_text(script + "\nwait\n")  # wait: for a command started with &
    record = folder / "argv"
    subprocess.run([BASH or "bash", "train.sh"], cwd=folder, capture_output=True, timeout=60, check=False,
                   env={**ENV, "PATH": f"{folder / 'bin'}:{ENV['PATH']}", "ARGV_OUT": str(record)})
    words = record.read_bytes().decode().split("\0")[:-1]
    end = words.index("\1")
    return words[:end], dict(w.split("=", 1) for w in words[end + 1:] if "=" in w)


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_words_swift_gets_are_the_ones_bash_passes(tmp_path: Path, name: str) -> None:
    script = SCRIPTS[name]
    argv, env = bash_run(script, tmp_path)
    raw = swift.read_launch(script, path=tmp_path / "train.sh", env=ENV)
    assert raw is not None and raw["argv"] == argv, (raw and raw["argv"], argv)
    for variable in ("MAX_PIXELS", "E1", "E2", "A", "B"):  # what the script exports or sets before swift
        if variable in env:
            assert raw["env"][variable] == env[variable], variable


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_linux_takes_no_longer_argument_than_the_reader_allows(tmp_path: Path) -> None:
    """MAX_ARG_STRLEN: an argument one byte longer than the reader allows cannot be passed to a program."""
    from vlmcheck.frameworks._shell import MAX_ARG_STRLEN

    def runs(size: int) -> bool:
        return subprocess.run([BASH or "bash", "-c", f'/bin/true "$(head -c {size} /dev/zero | tr "\\0" x)"'],
                              capture_output=True, timeout=60).returncode == 0

    assert runs(MAX_ARG_STRLEN - 1) and not runs(MAX_ARG_STRLEN)
    long = "x" * MAX_ARG_STRLEN
    with pytest.raises(UsageError, match="Argument list too long"):
        swift.read_launch(f"swift sft --model m --system '{long}'\n", path=tmp_path / "t.sh", env=ENV)
    raw = swift.read_launch(f"swift sft --model m --system '{long[1:]}'\n", path=tmp_path / "t.sh", env=ENV)
    assert raw is not None and len(raw["options"]["system"]) == MAX_ARG_STRLEN - 1


# -- the options ------------------------------------------------------------------------------------------------
@pytest.fixture()
def data(tmp_path: Path) -> Path:
    Image.new("RGB", (640, 480)).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
           "images": [str(tmp_path / "a.png")]}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / "train.jsonl"


def config(text: str, path: Path, **kwargs: Any) -> swift.Config:
    raw = swift.read_launch(text, path=path, env=ENV)
    assert raw is not None
    return swift.read_config(raw, path=path, **kwargs)


def test_key_equals_value_is_read_as_key_space_value(tmp_path: Path, data: Path) -> None:
    """ms-swift's argparse parser reads ``--key=value`` as ``--key value``, for every option."""
    options = {"max_length": "100", "truncation_strategy": "left", "system": "a=b c", "max_pixels": "1000",
               "template": "qwen2_vl", "val_dataset": str(tmp_path / "val.jsonl"), "agent_template": "hermes",
               "columns": '{"a": "b"}', "model_kwargs": '{"max_pixels": 5000}', "streaming": "true",
               "strict": "false", "tuner_type": "full", "disable_auto_column_mapping": "true"}
    head = f"swift sft --model m --dataset={data} "
    spaced = config(head + " ".join(f"--{k} '{v}'" for k, v in options.items()), tmp_path / "t.sh")
    joined = config(head + " ".join(f"'--{k}={v}'" for k, v in options.items()), tmp_path / "t.sh")
    assert spaced == joined
    assert (joined.max_length, joined.truncation, joined.system, joined.rescale) == (100, "left", "a=b c", 1000)
    assert joined.streaming and joined.columns == {"a": "b"} and joined.val_datasets == (tmp_path / "val.jsonl",)


@pytest.mark.parametrize(("line", "words"), [
    ("--max_length", "--max_length is given no value"),
    ("--max_length --system hi", "--max_length is given no value"),
    ("--max_length $UNSET_VAR", "($UNSET_VAR is empty or not set"),
    ("--max_length ${1}", "--max_length is given no value ($1 is"),
    ("--system", "expected one argument"),
    ("--max_length=$UNSET_VAR", "--max_length must be a whole number, got '' ($UNSET_VAR is"),
    ("--max_length ''", "--max_length must be a whole number, got ''"),
    ("--truncation_strategy \"$UNSET_VAR\"", "not one of ms-swift's choices"),
    ("--val_dataset", "expected at least one argument"),
    ("--max_len 100", "write --max_length"),
    ("--system \"$(cat prompt.txt)\"", "does not run or expand '$(cat prompt.txt)'"),
    ("--system=hi extra", "'extra' follows no option"),
])
def test_what_ms_swift_stops_on_is_refused_naming_the_option(tmp_path: Path, data: Path, line: str,
                                                             words: str) -> None:
    with pytest.raises(UsageError) as e:
        config(f"swift sft --model m --dataset {data} {line}\n", tmp_path / "t.sh")
    assert words in str(e.value) and "t.sh: " in str(e.value), str(e.value)


def test_a_bare_boolean_flag_and_a_set_variable_are_read(tmp_path: Path, data: Path) -> None:
    read = config(f"L=64\nswift sft --model m --dataset {data} --streaming --max_length $L --strict\n",
                  tmp_path / "t.sh")
    assert read.streaming and read.strict and read.max_length == 64
    raw = swift.read_launch(f"swift sft --model m --dataset {data} --max_length $L\n", path=tmp_path / "t.sh",
                            env={**ENV, "L": "32"})  # set where vlmcheck runs
    assert raw is not None and swift.read_config(raw, path=tmp_path / "t.sh").max_length == 32


def test_options_vlmcheck_overrides_may_come_from_variables_it_has_not(tmp_path: Path, data: Path) -> None:
    """``--model $MODEL`` with MODEL set only at launch: vlmcheck's own --model / --data replace it. A --dataset
    written with no value stops ms-swift whatever vlmcheck is told."""
    read = config("swift sft --model $MODEL --dataset $DATA --max_length 9\n", tmp_path / "t.sh", model="m",
                  data=str(data))
    assert read.model == "m" and read.datasets == (data,)
    with pytest.raises(UsageError, match="--dataset is given no value"):
        config("swift sft --model m --dataset --max_length 9\n", tmp_path / "t.sh", data=str(data))


def test_stray_words_are_let_through_by_ignore_args_error(tmp_path: Path, data: Path) -> None:
    text = f"swift sft --model m --dataset={data} {tmp_path / 'val.jsonl'} --ignore_args_error"
    assert config(text, tmp_path / "t.sh").datasets == (data,)  # `--dataset=a b`: b is not a dataset


def test_a_config_file_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="reads its options from that file"):
        config("swift sft sft.yaml --max_length 5\n", tmp_path / "t.sh")


def test_a_quote_never_closed_before_the_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="line 2: a ' is never closed"):
        swift.read_launch("echo ok\necho 'oops\nswift sft --model m\n", path=tmp_path / "t.sh", env=ENV)
    # after the command, or in a script of another framework: not this reader's business
    assert swift.read_launch("swift sft --model m\necho 'oops\n", path=tmp_path / "t.sh", env=ENV) is not None
    assert swift.read_launch("python train.py 'oops\n", path=tmp_path / "t.sh", env=ENV) is None


def test_a_command_substitution_is_not_run_and_its_value_is_refused(tmp_path: Path, data: Path) -> None:
    """``$(...)`` is skipped as bash parses it (its quotes, comments and here-documents), and a value vlmcheck
    reads that holds one, through variables too, is refused rather than read as written."""
    text = textwrap.dedent("""\
        SYS=$(cat <<'EOF'
        You're (a) helper; don't
        EOF
        )
        OUT=$( # the day (it's ")
          date +%F )
        PROMPT="$SYS"; PROMPT+=" Be brief."
        swift sft --model m --dataset {data} --output_dir "out/$OUT" --max_length 100 --system "$PROMPT"
        """).format(data=data)
    raw = swift.read_launch(text, path=tmp_path / "t.sh", env=ENV)
    assert raw is not None and raw["options"]["max_length"] == "100" and raw["unexpanded"]["system"]
    with pytest.raises(UsageError, match="--system .*: vlmcheck does not run or expand"):
        swift.read_config(raw, path=tmp_path / "t.sh")
    # --output_dir is not read: its value does not matter
    read = config(text.replace(' --system "$PROMPT"', ""), tmp_path / "t.sh")
    assert read.max_length == 100


def test_a_required_variable_that_is_not_set_stops_the_script(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"line 1: \$\{MODEL\} is not set"):
        swift.read_launch(": ${MODEL:?set MODEL}\nswift sft --model $MODEL\n", path=tmp_path / "t.sh", env=ENV)


# -- bounds -----------------------------------------------------------------------------------------------------
def test_a_doubling_variable_is_refused_quickly(tmp_path: Path) -> None:
    text = "A=x\n" + "A=$A$A\n" * 40 + "swift sft --model m --system $A\n"
    started = time.perf_counter()
    with pytest.raises(UsageError, match=f"line 22: a variable expands past {SHELL_EXPANSION_LIMIT:,}"):
        swift.read_launch(text, path=tmp_path / "t.sh", env=ENV)
    text = "A=" + "x" * 600_000 + "\nswift sft --model m --system $A$A$A\n"
    with pytest.raises(UsageError, match="a word expands past"):
        swift.read_launch(text, path=tmp_path / "t.sh", env=ENV)
    assert time.perf_counter() - started < 5


def test_vlmcheck_check_of_a_doubling_script_exits_2_quickly(tmp_path: Path) -> None:
    """Every launch-script reader ``check`` tries stops at the limit (before it, 34 doublings took 23 GB)."""
    script = tmp_path / "train.sh"
    script.write_text("A=x\n" + "A=$A$A\n" * 34 + "swift sft --model m --dataset d.jsonl --system $A\n")
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and f"expands past {SHELL_EXPANSION_LIMIT:,} characters" in result.output
    assert time.perf_counter() - started < 10


def test_a_long_script_is_read_in_linear_time(tmp_path: Path) -> None:
    """A 10 MB script (many long quoted lines) is read in seconds, not the minutes a quadratic reader takes."""
    line = "echo '" + "x" * 100_000 + "' \"$HOME\" a\\ b # c\n"
    text = line * 100 + "swift sft --model m --max_length 100\n"
    started = time.perf_counter()
    raw = swift.read_launch(text, path=tmp_path / "t.sh", env=ENV)
    assert raw is not None and raw["options"]["max_length"] == "100"
    assert time.perf_counter() - started < 10


# -- the checks, end to end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", [
    "swift sft --model {model} --dataset {data} --max_length=100",
    "swift sft --model {model} --dataset {data} --system '#1 rule: be brief' --max_length 100",
    "swift sft --model {model} --system '# rules' --dataset {data} --max_length 100",
    "swift sft --model {model} --dataset {data} --max_length 100 2>&1 | tee log.txt",
    "cat > notes.txt <<EOF\nswift sft --model {model} --dataset {data} --max_length 5000\nEOF\n"
    "swift sft --model {model} --dataset {data} --max_length 100",
])
def test_the_run_is_judged_at_the_options_of_the_script(tmp_path: Path, data: Path, qwen2_vl_checkpoint: Path,
                                                        line: str) -> None:
    import vlmcheck

    script = tmp_path / "train.sh"
    script.write_text(line.format(model=qwen2_vl_checkpoint, data=data) + "\n")
    assert vlmcheck.check(script).summary["framework"]["verdicts"] == {"dropped": 1}


def test_an_option_given_no_value_exits_2_naming_it(tmp_path: Path, data: Path, qwen2_vl_checkpoint: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text(f"swift sft --model {qwen2_vl_checkpoint} --dataset {data} --max_length $MAXLEN\n")
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 2 and "--max_length is given no value ($MAXLEN" in result.output, result.output


# -- ms-swift's parser ------------------------------------------------------------------------------------------
PARSER = textwrap.dedent("""
    import contextlib, io, json, sys
    from transformers import HfArgumentParser
    from swift.arguments import SftArguments
    from swift.utils.utils import _patch_get_type_hints

    with _patch_get_type_hints():
        parser = HfArgumentParser([SftArguments])
    out = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns, rest = parser.parse_known_args(argv)
        except SystemExit:
            out.append({"error": err.getvalue().strip().splitlines()[-1]})
            continue
        keys = ("max_length", "system", "dataset", "streaming", "truncation_strategy")
        out.append({"options": {k: getattr(ns, k) for k in keys}, "rest": rest})
    print("ORACLE" + json.dumps(out))
""")


@pytest.mark.slow
def test_the_options_are_those_ms_swifts_parser_reads(tmp_path: Path, data: Path) -> None:
    """Where ms-swift's argparse parser (its SftArguments) stops, or leaves words over (its pipeline then raises
    ValueError), vlmcheck refuses; where it reads the options, vlmcheck reads the same values, or refuses an
    abbreviated name (--max_len) it does not expand."""
    from swift_env import oracle_python

    cases = [["--max_length=100", "--system=#x", "--dataset=a.jsonl"], ["--max_length", "7", "--streaming"],
             ["--max_length"], ["--max_length", "--streaming"], ["--system", "--max_length", "100"], ["--dataset"],
             ["--max_length", ""], ["--truncation_strategy", ""], ["--dataset=a.jsonl", "b.jsonl"],
             ["--max_len", "9"], ["--dataset", "a", "--dataset", "b"], ["--system", "-5", "--max-length", "3"]]
    run = subprocess.run([str(oracle_python()), "-c", PARSER, json.dumps(cases)], capture_output=True, text=True,
                         timeout=600, check=True)
    found = json.loads(run.stdout.split("ORACLE", 1)[1])
    stops = [argv for argv, result in zip(cases, found) if "error" in result or result["rest"]]
    assert len(stops) == 7  # the oracle is the one these cases were written for
    for argv, result in zip(cases, found):
        raw = swift.read_launch(f"swift sft --model m {shlex.join(argv)}\n", path=tmp_path / "t.sh", env=ENV)
        assert raw is not None and raw["argv"] == ["--model", "m", *argv]
        if argv in stops:
            with pytest.raises(UsageError):
                swift.read_config(raw, path=tmp_path / "t.sh", data=str(data))
            continue
        try:
            swift.read_config(raw, path=tmp_path / "t.sh", data=str(data))
        except UsageError as e:
            assert "write --max_length" in str(e), (argv, str(e))
            continue
        options = raw["options"]
        for key, value in result["options"].items():
            if key in options:
                mine = options[key]
                if key == "dataset":
                    mine = mine if isinstance(mine, list) else [mine]
                elif key == "max_length":
                    mine = int(mine)
                elif key == "streaming":
                    mine = True if mine is None else mine == "true"
                assert mine == value, (argv, key)
