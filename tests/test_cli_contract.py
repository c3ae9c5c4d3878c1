"""Every command keeps one contract (vlmcheck.contract, vlmcheck.cli.shared): exit 0 below --fail-on, 1 at or
above it, 2 for a usage error; ``--json -`` prints only the report's JSON; ``--json FILE`` writes the same JSON to
FILE; a bare ``--json`` still means ``-``. Each case is a small input whose worst finding is known."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from builders import image, tokenizer, write_jsonl
from vlmcheck.catalogue import Severity
from vlmcheck.cli import main
from vlmcheck.contract import Reporting
from vlmcheck.lint.records import LintReport
from vlmcheck.repairing import RepairReport
from vlmcheck.report import Report
from vlmcheck.templates.check import TemplateReport

LINT_CONFIGS = Path(__file__).parent / "lint" / "configs"
QA = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."}]
CONVERSATION = [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": "A cat sitting on a red sofa."}]


@pytest.fixture(autouse=True)
def shared_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI loads the model as usual; only the one-second read of tokenizer.json is shared."""
    scan_module = importlib.import_module("vlmcheck.scan")  # the module; `vlmcheck.scan` is the function
    real = scan_module.load_model

    def load_model(model, **kwargs):  # type: ignore[no-untyped-def]
        spec = real(model, **kwargs)
        spec.__dict__["tokenizer"] = tokenizer(Path(spec.path))
        return spec

    monkeypatch.setattr(scan_module, "load_model", load_model)


def _scan(tmp: Path, ckpt: Path, worst: str) -> list[str]:
    image(tmp / "a.png", 280, 224)
    image(tmp / "icon.png", 20, 20)  # below 28 px: a warning
    rows = ([{"id": "i", "messages": QA, "images": ["icon.png"]}] if worst == "warning"
            else [{"id": "m", "messages": QA, "images": ["gone.png"]}])  # a missing image: an error
    return ["scan", str(write_jsonl(tmp / "d.jsonl", rows)), "--model", str(ckpt), "--max-length", "4096"]


def _check(tmp: Path, ckpt: Path, worst: str) -> list[str]:
    data = tmp / "data"
    (data / "imgs").mkdir(parents=True)
    Image.new("RGB", (640, 480)).save(data / "imgs" / "a.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What is it?"},
                          {"role": "assistant", "content": "A cat."}], "images": ["imgs/a.png"]},
            {"messages": [{"role": "user", "content": "hi"}]}]  # one turn: LLaMA-Factory skips it (a warning)
    (data / "train.json").write_text(json.dumps(rows))
    info = {"mm": {"file_name": "train.json", "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    cutoff = 4096 if worst == "warning" else 300  # 300 cuts the image span: an error
    config = tmp / "train.yaml"
    config.write_text(f"model_name_or_path: {ckpt}\nstage: sft\ntemplate: qwen2_vl\n"
                      f"dataset: mm\ndataset_dir: {data}\ncutoff_len: {cutoff}\n")
    return ["check", str(config)]


def _lint(tmp: Path, ckpt: Path, worst: str) -> list[str]:
    name = "llamafactory_qwen2vl_multi_image.yaml" if worst == "warning" else "vlmr1_grpo_n1.sh"
    return ["lint", str(LINT_CONFIGS / name)]


def _template(tmp: Path, ckpt: Path, worst: str) -> list[str]:
    if worst == "warning":  # "\n\n" after the generation prompt merges across the turn boundary: VT004 drift
        rows = [{"messages": [{"role": "user", "content": "Write a poem."},
                              {"role": "assistant", "content": "\n\nRoses are red."}]}]
        template = "llamafactory"
    else:  # a three-round LLaVA conversation under v1 on a Qwen tokenizer: refused / mismatched
        rows = [{"id": "cat", "conversations": CONVERSATION * 3}]
        template = "v1"
    data = tmp / "d.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    return ["template", str(data), "--tokenizer", str(ckpt), "--template", template]


def _repair(tmp: Path, ckpt: Path, worst: str) -> list[str]:
    image(tmp / "a.png", 280, 224)  # 80 tokens
    if worst == "info":  # too long at 64 tokens; capping the image's pixels makes it fit: changed
        rows, max_length = [{"id": "a", "messages": QA, "images": ["a.png"]}], "64"
    else:  # a missing image: dropped (a warning: the repaired output still trains)
        rows, max_length = [{"id": "m", "messages": QA, "images": ["gone.png"]}], "4096"
    data = write_jsonl(tmp / "d.jsonl", rows)
    return ["repair", str(data), "--model", str(ckpt), "--max-length", max_length, "--dry-run"]


COMMANDS: dict[str, Callable[[Path, Path, str], list[str]]] = {
    "scan": _scan, "check": _check, "lint": _lint, "template": _template, "repair": _repair}
# the two levels each command's inputs reach: a repair that finishes never reports an error (its output trains)
LEVELS: dict[str, tuple[str, str]] = {"repair": ("info", "warning")}
CASES = [(command, worst) for command in COMMANDS for worst in LEVELS.get(command, ("warning", "error"))]


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(("command", "worst"), CASES, ids=[f"{c}-{w}" for c, w in CASES])
def test_exit_code_follows_fail_on(tmp_path: Path, qwen2_vl_checkpoint: Path, command: str, worst: str) -> None:
    args = COMMANDS[command](tmp_path, qwen2_vl_checkpoint, worst)
    level = Severity.parse(worst)
    codes = {}
    for fail_on in ("info", "warning", "error"):
        code, output = invoke([*args, "--fail-on", fail_on])
        codes[fail_on] = code
        assert code == int(level >= Severity.parse(fail_on)), f"--fail-on {fail_on}: {output}"
    assert invoke(args)[0] == codes["error"]  # the default is error
    assert invoke([*args, "--fail-on", "fatal"])[0] == 2


@pytest.mark.parametrize("command", list(COMMANDS))
def test_json_to_stdout_and_to_a_file(tmp_path: Path, qwen2_vl_checkpoint: Path, command: str) -> None:
    worst = LEVELS.get(command, ("warning", "error"))[1]
    args = [*COMMANDS[command](tmp_path, qwen2_vl_checkpoint, worst), "--fail-on", worst]
    code, output = invoke([*args, "--json", "-"])
    assert code == 1
    printed = json.loads(output)  # nothing but the JSON on standard output
    target = tmp_path / "report.json"
    code, output = invoke([*args, "--json", str(target)])
    assert code == 1 and output  # the text report is still printed
    written = json.loads(target.read_text(encoding="utf-8"))
    assert isinstance(printed, dict) and printed.keys() == written.keys()
    assert json.loads(invoke([*args, "--json"])[1]).keys() == printed.keys()  # a bare --json means '-'


def test_families_json(tmp_path: Path) -> None:
    code, output = invoke(["families", "--json", "-"])
    rows = json.loads(output)
    assert code == 0 and {"qwen2_vl", "gemma3"} <= {r["model_type"] for r in rows}
    assert json.loads(invoke(["families", "--json"])[1]) == rows
    code, output = invoke(["families", "--json", str(tmp_path / "f.json")])
    assert code == 0 and "qwen2_vl:" in output  # the text list is still printed
    assert json.loads((tmp_path / "f.json").read_text(encoding="utf-8")) == rows


@pytest.mark.parametrize("cls", [Report, LintReport, TemplateReport, RepairReport])
def test_every_report_type_keeps_the_contract(cls: type) -> None:
    for member in ("ok", "worst", "exit_code", "to_dict", "render"):
        assert hasattr(cls, member), f"{cls.__name__} lacks {member}"
    empty = {Report: lambda: Report(summary={"counts": {}}), LintReport: lambda: LintReport("c.yaml", "trl"),
             TemplateReport: lambda: TemplateReport(frameworks=["trl"], verdicts=[]),
             RepairReport: lambda: RepairReport("d.jsonl", None, None, dry_run=True)}[cls]()
    assert isinstance(empty, Reporting)
    assert empty.ok and empty.worst() is None and empty.exit_code("info") == 0
    assert json.loads(json.dumps(empty.to_dict())) == empty.to_dict() and callable(empty.render)


def test_ok_means_nothing_at_or_above_error() -> None:
    warning_only = Report(summary={"counts": {"VC106": 1}})
    assert warning_only.worst() == Severity.WARNING and warning_only.ok
    assert (warning_only.exit_code(), warning_only.exit_code("warning")) == (0, 1)
    dropped = RepairReport("d.jsonl", None, None, dry_run=True, counts={"dropped": 1}, dropped_codes={"VC002": 1})
    changed = RepairReport("d.jsonl", None, None, dry_run=True, counts={"changed": 1})
    assert (dropped.ok, dropped.worst()) == (True, Severity.WARNING)
    assert (changed.ok, changed.worst()) == (True, Severity.INFO)


@pytest.mark.parametrize("command", ["lint", "template"])
def test_json_never_replaces_an_input(tmp_path: Path, qwen2_vl_checkpoint: Path, command: str) -> None:
    """A bare --json (the old flag) before the argument takes it as PATH: refused, the input is untouched."""
    args = COMMANDS[command](tmp_path, qwen2_vl_checkpoint, "warning")
    source = Path(args[1])
    before = source.read_bytes()
    code, output = invoke([args[0], "--json", *args[1:]])
    assert code == 2 and source.read_bytes() == before, output
    code, output = invoke([*args, "--json", str(source)])
    assert code == 2 and "--json would replace the " in output and source.read_bytes() == before
