"""`vlmcheck template`: parse, call :func:`vlmcheck.templates.check_template`, format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vlmcheck.errors import VlmcheckError
from vlmcheck.templates.check import FRAMEWORKS


@click.command("template")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", "tokenizer", required=True, type=click.Path(exists=True),
              help="Folder with tokenizer.json (+ tokenizer_config.json, chat template).")
@click.option("--template", "templates", required=True, multiple=True, type=click.Choice(FRAMEWORKS),
              help="A LLaVA --version, or llamafactory / trl / unsloth / chat_template for a chat-template "
                   "model. Repeat to compare frameworks.")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A Jinja chat template file to use instead of the tokenizer folder's.")
@click.option("--legacy/--no-legacy", default=None, help="Override tokenizer.legacy as LLaVA reads it.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Truncate as the trainer would (LLaVA model_max_length, TRL max_length, LLaMA-Factory "
                   "cutoff_len).")
@click.option("--instruction-part", default=None, help="Unsloth's instruction_part (default: from the template).")
@click.option("--response-part", default=None, help="Unsloth's response_part (default: from the template).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def template_command(dataset: str, tokenizer: str, templates: tuple[str, ...], chat_template: str | None,
                     legacy: bool | None, max_length: int | None, instruction_part: str | None,
                     response_part: str | None, as_json: bool) -> None:
    """Check that each framework's label masks fit the tokenizer (find the loss-0 samples).

    DATASET is a .json list or .jsonl of LLaVA `conversations` or `messages` rows. Exit 1 on any finding.
    """
    from vlmcheck.templates import check_template

    text = Path(dataset).read_text(encoding="utf-8")
    try:
        rows = (json.loads(text) if text.lstrip().startswith("[")
                else [json.loads(x) for x in text.splitlines() if x.strip()])
    except json.JSONDecodeError as e:
        raise click.UsageError(f"{dataset} is not a JSON list or JSON Lines file: {e}") from None
    chat = Path(chat_template).read_text(encoding="utf-8") if chat_template else None
    try:
        report = check_template(rows, tokenizer=tokenizer, template=list(templates), legacy=legacy,
                                chat_template=chat, max_length=max_length, instruction_part=instruction_part,
                                response_part=response_part)
    except VlmcheckError as e:  # a usage error exits 2, never 1 (which means findings)
        raise click.UsageError(str(e)) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render(), nl=as_json)
    if report.findings:
        raise SystemExit(1)
