"""One options object per command (``ScanOptions``, ``CheckOptions``, ``LintOptions``, ``TemplateOptions``): each
validates once, and the library function and the command's flags both take every field."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.options import CheckOptions, LintOptions, ScanOptions, TemplateOptions
from vlmcheck.templates import check_template

FIELDS = [f.name for f in dataclasses.fields(ScanOptions)]


@pytest.mark.parametrize("given, message", [
    ({"truncation": "middle"}, "truncation must be one of"),
    ({"resize": "squash"}, "resize must be one of"),
    ({"format": "csv"}, "format must be one of"),
    ({"max_length": 0}, "max_length must be positive"),
    ({"max_pixels": -1}, "max_pixels must be positive"),
    ({"limit": 0}, "limit must be positive"),  # scanned nothing and reported a clean dataset
    ({"confine": True, "allow_outside_root": True}, "contradict each other"),
    ({"exact": True, "processor_options": {"fps": 2}}, "processor_options apply to the arithmetic scan"),
    ({"exact": True, "shard": "0/2"}, "shard, resume and objects go with the arithmetic scan"),
    ({"exact": True, "resize": "qwen-vl-utils"}, "does not run qwen-vl-utils"),
    ({"trust_remote_code": True}, "only applies with exact=True"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"resume": True}, "resume needs output"),
    ({"shard": "2/2"}, "shard 2/2"),
    ({"framework": "llamafactory", "truncation": "left"}, "contradicts framework"),
])
def test_every_misuse_is_refused_when_built(given: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ScanOptions(**given)  # type: ignore[arg-type]


def test_a_framework_fills_what_is_left_unset() -> None:
    bare = ScanOptions()
    assert (bare.truncation, bare.resize, bare.exif_rotated) == ("right", "processor", True)
    framed = ScanOptions(framework="llamafactory")
    assert framed.truncation == "llamafactory" and framed.resize == "prescale" and not framed.exif_rotated
    assert ScanOptions(framework="llamafactory", max_length=64).max_length == 64
    assert dataclasses.replace(framed) == framed  # validating again changes nothing
    assert ScanOptions(shard="1/4").shard == (1, 4)


def test_scan_takes_every_field_as_a_keyword() -> None:
    params = inspect.signature(vlmcheck.scan).parameters
    assert [name for name in params if name in FIELDS] == FIELDS
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lenght'"):
        vlmcheck.scan("d.jsonl", model="m", max_lenght=4096)
    with pytest.raises(TypeError, match="not both"):
        vlmcheck.scan("d.jsonl", model="m", options=ScanOptions(), max_length=4096)


def test_repair_takes_its_scan_fields_as_keywords_or_one_options_object() -> None:
    from vlmcheck.repairing import SCAN_FIELDS

    params = inspect.signature(vlmcheck.repair).parameters
    # output is repair's own (the fixed dataset), not scan's records
    assert [name for name in params if name in FIELDS and name != "output"] == list(SCAN_FIELDS)
    assert params["max_length"].default is inspect.Parameter.empty  # required, as before
    assert {"output", "dry_run", "on_overlong", "pixel_cap_key", "hold", "options"} <= set(params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lenght'"):
        vlmcheck.repair("d.jsonl", model="m", max_lenght=4096)
    with pytest.raises(TypeError, match="unexpected keyword argument 'workers'"):  # not a repair option
        vlmcheck.repair("d.jsonl", model="m", max_length=64, workers=2)
    with pytest.raises(TypeError, match="'max_length'"):
        vlmcheck.repair("d.jsonl", model="m")
    with pytest.raises(TypeError, match="not both"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions(max_length=64), max_length=64)
    with pytest.raises(UsageError, match="repair does not take workers"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions(max_length=64, workers=2))
    with pytest.raises(UsageError, match="repair needs max_length"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions())
    with pytest.raises(UsageError, match="max_length must be positive"):
        vlmcheck.repair("d.jsonl", model="m", max_length=0)


def test_every_field_is_a_flag_of_vlmcheck_scan() -> None:
    """Adding an option is a field and its flag: the flag's parameter is the field's name."""
    command = main.commands["scan"]
    names = {p.name for p in command.params}
    assert set(FIELDS) <= names, sorted(set(FIELDS) - names)


# The parameters of each command that are not options: its inputs (what scan's ``model`` is to ScanOptions),
# a launch script the command line reads for defaults, and how the report is written and the exit code chosen.
NOT_OPTIONS = {
    "scan": {"dataset", "model", "qwen_vl_utils", "json_path", "html_path", "fail_on", "show", "quiet"},
    "check": {"config", "json_path", "html_path", "fail_on", "show", "quiet"},
    "lint": {"config", "json_path", "fail_on"},
    "template": {"dataset", "tokenizer", "launch", "json_path", "fail_on"},
}
COMMANDS = [("scan", ScanOptions), ("check", CheckOptions), ("lint", LintOptions), ("template", TemplateOptions)]


@pytest.mark.parametrize("command, options", COMMANDS)
def test_every_field_is_a_flag_and_every_flag_a_field(command: str, options: type) -> None:
    """Adding an option is a field and its flag: each flag's parameter is the field of its name, and a flag
    that is neither a field nor one of the command's inputs or output settings is an option outside the object."""
    flags = {p.name for p in main.commands[command].params}
    fields = {f.name for f in dataclasses.fields(options)}
    assert fields - flags == set(), f"fields of {options.__name__} without a flag of vlmcheck {command}"
    assert flags - fields - NOT_OPTIONS[command] == set(), f"flags of vlmcheck {command} that are no field"
    assert NOT_OPTIONS[command] <= flags  # the list above stays true


LIBRARY = [  # the function, its options, and its first arguments (what is not an option)
    (vlmcheck.check, CheckOptions, ("x.yaml",), {}),
    (vlmcheck.lint, LintOptions, ("x.yaml",), {}),
    (check_template, TemplateOptions, ([],), {"tokenizer": "t"}),
]


@pytest.mark.parametrize("function, options, args, inputs", LIBRARY)
def test_each_library_function_takes_every_field_as_a_keyword(function: Any, options: Any, args: tuple[Any, ...],
                                                              inputs: dict[str, Any]) -> None:
    names = [f.name for f in dataclasses.fields(options)]
    params = list(inspect.signature(function).parameters)
    after = params.index(list(inputs)[-1] if inputs else "config") + 1
    assert params[after:after + len(names)] == names
    with pytest.raises(TypeError, match=rf"{function.__name__}\(\) got an unexpected keyword argument 'max_lenght'"):
        function(*args, **inputs, max_lenght=4)
    built = options(template="trl") if options is TemplateOptions else options()
    with pytest.raises(TypeError, match="not both"):
        function(*args, **inputs, options=built, **{names[-1]: None})


@pytest.mark.parametrize("build, message", [
    (lambda: CheckOptions(limit=0), "limit must be positive"),  # judged nothing and reported a clean run
    (lambda: CheckOptions(path_map={"": "./data"}), "both the prefix and its replacement"),
    (lambda: CheckOptions(path_map={"/mnt/data": ""}), "both the prefix and its replacement"),
    (lambda: LintOptions(framework="axolotl"), "unknown framework 'axolotl'"),
    (lambda: LintOptions(num_processes=0), "num_processes must be positive"),
    (lambda: TemplateOptions(template=[]), "name at least one template"),
    (lambda: TemplateOptions(template="trl", max_length=0), "max_length must be positive"),
])
def test_every_misuse_of_the_other_commands_is_refused_when_built(build: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build()  # type: ignore[operator]


def test_an_empty_path_map_prefix_is_refused_before_it_rewrites_every_path() -> None:
    """``{"": X}`` is a prefix of every absolute path: the frameworks' path maps would send them all to X."""
    with pytest.raises(UsageError, match="both the prefix and its replacement"):
        vlmcheck.check("missing.yaml", path_map={"": "./data"})


def test_lint_with_zero_processes_is_refused_not_assumed_one() -> None:
    """num_processes=0 used to lint as if one process were launched (``world_size or 1``), silently."""
    with pytest.raises(UsageError, match="num_processes must be positive"):
        vlmcheck.lint("tests/lint/configs/trl_grpo_indivisible.yaml", num_processes=0)


def test_template_names_are_kept_once_in_order() -> None:
    assert TemplateOptions(template=("trl", "v1", "trl")).template == ("trl", "v1")
    assert TemplateOptions(template="trl").template == ("trl",)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'template'"):
        check_template([], tokenizer="t")


def test_template_reads_its_chat_template_flag_as_the_other_commands_do(tmp_path: Path) -> None:
    """A chat template file that is not UTF-8 is a usage error (exit 2) naming the file, not a crash (exit 3)."""
    from click.testing import CliRunner

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    bad = tmp_path / "t.jinja"
    bad.write_bytes(b"{{ '\xe9' }}")
    result = CliRunner().invoke(main, ["template", str(data), "--tokenizer", str(tmp_path), "--template", "trl",
                                       "--chat-template", str(bad)])
    assert result.exit_code == 2, result.output
    assert "is not UTF-8 text" in result.output
