"""``vlmcheck lint``: parses, builds one :class:`~vlmcheck.options.LintOptions`, calls :func:`vlmcheck.lint.lint`,
formats, owns the exit code."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck.cli.shared import check_json_target, fail_on_option, finish, json_option
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity
from vlmcheck.lint.readers import FRAMEWORKS


@click.command("lint")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None,
              help="Dataset to scan: check the length options against what its samples need.")
@click.option("--model", default=None, help="Checkpoint folder or hub id (image processor, tokenizer).")
@click.option("--framework", type=click.Choice(FRAMEWORKS), default=None, help="Override framework detection.")
@click.option("--num-processes", type=click.IntRange(min=1), default=None,
              help="Processes the run is launched with, when the config does not say.")
@fail_on_option()
@json_option()
def lint_command(config: str, fail_on: Severity, json_path: str | None, **given: Any) -> None:
    """Lint a training CONFIG (YAML/JSON, launch script, or Python script) for settings that crash or
    silently ruin a vision-language run. Codes: docs/lint.md."""
    from vlmcheck.lint.api import lint
    from vlmcheck.options import LintOptions

    # every other flag is the LintOptions field of its name: an option is one field and its flag
    check_json_target(json_path, config=config, dataset=given["data"])
    try:
        report = lint(config, options=LintOptions(**given))
    except VlmcheckError as exc:
        raise click.UsageError(str(exc)) from None
    finish(report, json_path=json_path, fail_on=fail_on)
