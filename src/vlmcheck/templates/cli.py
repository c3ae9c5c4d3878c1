"""`vlmcheck template`: parse, call :func:`vlmcheck.templates.check_template`, format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vlmcheck.templates.check import FRAMEWORKS


@click.command("template")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", "tokenizer", required=True, type=click.Path(exists=True),
              help="Folder with tokenizer.json (+ tokenizer_config.json, chat_template.json).")
@click.option("--template", "template", required=True, type=click.Choice(FRAMEWORKS),
              help="LLaVA --version, or per_turn / chat_template for a chat-template model.")
@click.option("--legacy/--no-legacy", default=None, help="Override tokenizer.legacy as the framework reads it.")
@click.option("--max-length", type=int, default=None, help="Truncate as the trainer would.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def template_command(dataset: str, tokenizer: str, template: str, legacy: bool | None, max_length: int | None,
                     as_json: bool) -> None:
    """Check that a framework's label masks fit the tokenizer (find the loss-0 samples).

    DATASET is a .json list or .jsonl of LLaVA `conversations` or `messages` rows. Exit 1 on any finding.
    """
    from vlmcheck.templates import check_template

    text = Path(dataset).read_text(encoding="utf-8")
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    report = check_template(rows, tokenizer=tokenizer, template=template, legacy=legacy, max_length=max_length)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render(), nl=as_json)
    if report.findings:
        raise SystemExit(1)
