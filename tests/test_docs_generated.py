"""The docs that come from code must match the code: the findings page, the CLI reference, and the
options, codes and dataset examples docs/usage.md quotes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from vlmcheck.cli import main
from vlmcheck.data.formats import FORMATS, detect_format, to_conversation
from vlmcheck.families.base import RESIZE_MODES
from vlmcheck.findings import CATALOGUE, render_markdown
from vlmcheck.layout import TRUNCATIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGENERATE = "run `python scripts/gen_docs.py` and commit the result"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_findings_page_is_generated_from_the_catalogue() -> None:
    assert (DOCS / "findings.md").read_text(encoding="utf-8") == render_markdown(), REGENERATE


def test_findings_page_command() -> None:
    done = subprocess.run([sys.executable, "-m", "vlmcheck.findings"], capture_output=True, text=True, check=True)
    assert done.stdout == (DOCS / "findings.md").read_text(encoding="utf-8")


def test_every_code_has_an_anchor() -> None:
    page = (DOCS / "findings.md").read_text(encoding="utf-8")
    for code in CATALOGUE:
        assert f'<a id="{code.lower()}"></a>' in page


def test_template_codes_are_generated_from_the_catalogue() -> None:
    from vlmcheck.templates.catalogue import CATALOGUE as TEMPLATE_CODES
    from vlmcheck.templates.catalogue import render_markdown as template_codes

    page = (DOCS / "templates.md").read_text(encoding="utf-8")
    assert template_codes() in page, REGENERATE
    for code in TEMPLATE_CODES:
        assert f'<a id="{code.lower()}"></a>' in page


def test_cli_reference_is_generated_from_the_help() -> None:
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == _gen_docs().cli_reference(), REGENERATE


def test_cli_reference_covers_every_command_and_option() -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, command in main.commands.items():
        assert f"## vlmcheck {name}" in page
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in page, f"{name} {opt}"


def test_gen_docs_check_mode() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


# -- docs/usage.md ----------------------------------------------------------------------------------
USAGE = (DOCS / "usage.md").read_text(encoding="utf-8")


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}


def test_usage_mentions_only_real_options() -> None:
    known = set().union(*(_options(c) for c in main.commands.values()))
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", USAGE))
    assert mentioned - known == set()


def test_usage_links_only_real_codes() -> None:
    for code, anchor in re.findall(r"\[(VC\d{3})\]\(findings\.md#(vc\d{3})\)", USAGE):
        assert code in CATALOGUE and anchor == code.lower()


def test_usage_documents_every_mode() -> None:
    for value in (*TRUNCATIONS, *RESIZE_MODES, *FORMATS):
        assert f"`{value}`" in USAGE, value


def _examples() -> list[tuple[str, str]]:
    return re.findall(r"<!-- format: (\w+) -->\n```json\n(.*?)```", USAGE, flags=re.S)


def test_usage_has_an_example_per_format() -> None:
    assert {name for name, _ in _examples()} == set(FORMATS)


@pytest.mark.parametrize(("name", "text"), _examples())
def test_usage_format_examples_are_detected_as_documented(name: str, text: str) -> None:
    row = json.loads(text)
    assert detect_format(row) == name
    conversation = to_conversation(row, name)
    assert conversation.mismatch is None and conversation.images


def test_readme_console_block_is_the_real_output() -> None:
    """The README's example is the real output of the command it shows (only the timings vary)."""
    from click.testing import CliRunner

    from vlmcheck.demo.checkpoints import qwen_checkpoint

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ (vlmcheck scan .*?)\n(.*?)```", readme, flags=re.S)
    assert block is not None
    command, shown = block.groups()
    model = str(qwen_checkpoint("qwen2_vl"))
    args = command.split()[1:]
    args = [model if a == "~/.cache/vlmcheck/checkpoints/qwen2_vl" else a for a in args]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    timing = re.compile(r"\(\d+\.\d+ s, [\d,.]+ samples/s\)")
    assert "samples/s" in result.output
    assert timing.sub("(T)", shown) == timing.sub("(T)", result.output)


def test_readme_check_block_is_the_real_output() -> None:
    """The README's first example, `vlmcheck check` on the bundled LLaMA-Factory run, is the command's real output."""
    from click.testing import CliRunner

    from vlmcheck.demo.checkpoints import qwen_checkpoint

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ (vlmcheck check .*?)\n(.*?)```", readme, flags=re.S)
    assert block is not None
    command, shown = block.groups()
    model = str(qwen_checkpoint("qwen2_vl"))
    args = [model if a == "~/.cache/vlmcheck/checkpoints/qwen2_vl" else a for a in command.split()[1:]]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    timing = re.compile(r"\(\d+\.\d+ s, [\d,.]+ samples/s\)")
    assert timing.sub("(T)", shown) == timing.sub("(T)", result.output)
