"""``vlmcheck lint``: parses options, calls :func:`vlmcheck.lint.lint`, formats, owns the exit code."""

from __future__ import annotations

import json

import click

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
@click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default="error", show_default=True,
              help="Exit 1 when a finding is at or above this severity.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def lint_command(
    config: str,
    data: str | None,
    model: str | None,
    framework: str | None,
    num_processes: int | None,
    fail_on: str,
    as_json: bool,
) -> None:
    """Lint a training CONFIG (YAML/JSON, launch script, or Python script) for settings that crash or
    silently ruin a vision-language run. Codes: docs/lint.md."""
    from vlmcheck.lint.api import lint

    try:
        report = lint(config, data=data, model=model, framework=framework, num_processes=num_processes)
    except VlmcheckError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.render(), nl=False)
    raise SystemExit(report.exit_code(Severity.parse(fail_on)))
