"""`vlmcheck template`: parse, build one :class:`~vlmcheck.options.TemplateOptions`, call
:func:`vlmcheck.templates.check_template`, format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vlmcheck.cli.shared import check_json_target, fail_on_option, finish, json_option, read_template
from vlmcheck.data.nesting import parse
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity


def _near(script: Path, value: str) -> str:
    """A path from a launch script: as written when it exists from here, else from the folders above the
    script (LLaVA's scripts run from the repository root)."""
    if Path(value).exists() or Path(value).is_absolute():
        return value
    for folder in [script.parent, *script.parents]:
        if (folder / value).exists():
            return str(folder / value)
    return value


@click.command("template")
@click.argument("dataset", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", "tokenizer", type=click.Path(exists=True),
              help="Checkpoint folder with tokenizer.model and/or tokenizer.json (+ tokenizer_config.json, chat "
                   "template). Default with --launch: its --model_name_or_path.")
@click.option("--template", multiple=True, metavar="NAME",
              help="llamafactory / trl / unsloth / chat_template for a chat-template model, or a LLaVA --version "
                   "(any conv_templates name, v0, v0.5; an unknown one runs as vicuna_v1, as LLaVA does). Repeat "
                   "to compare frameworks. Default with --launch: its --version.")
@click.option("--launch", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A LLaVA training script (deepspeed llava/train/train_mem.py ...): --version, "
                   "--model_name_or_path, --model_max_length, --data_path, --mm_use_im_start_end come from it.")
@click.option("--model-name-or-path", default=None,
              help="LLaVA's --model_name_or_path when it is not the tokenizer folder ('mpt' in it: the fast "
                   "tokenizer).")
@click.option("--mm-use-im-start-end/--no-mm-use-im-start-end", default=None,
              help="LLaVA's --mm_use_im_start_end (default: False, or the launch script's).")
@click.option("--llava-fork", type=click.Choice(["llava", "llava_next"]), default=None,
              help="Which LLaVA train.py: llava (haotian-liu/LLaVA, the default) or llava_next (LLaVA-VL/LLaVA-NeXT: "
                   "its qwen versions and tokenizer routes). Default with --launch: the fork its flags name.")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A Jinja chat template file to use instead of the tokenizer folder's.")
@click.option("--legacy/--no-legacy", default=None, help="Override tokenizer.legacy as LLaVA reads it.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Truncate as the trainer would (LLaVA model_max_length, TRL max_length, LLaMA-Factory "
                   "cutoff_len).")
@click.option("--instruction-part", default=None, help="Unsloth's instruction_part (default: from the template).")
@click.option("--response-part", default=None, help="Unsloth's response_part (default: from the template).")
@fail_on_option()
@json_option()
def template_command(dataset: str | None, tokenizer: str | None, launch: str | None, fail_on: Severity,
                     json_path: str | None, **given: Any) -> None:
    """Check that each framework's label masks fit the tokenizer (find the loss-0 samples).

    DATASET is a .json list or .jsonl of LLaVA `conversations` or `messages` rows (default with --launch: its
    --data_path). Exit 1 on a finding at or above --fail-on (default error: a VT004 token drift alone,
    a warning, exits 0 unless --fail-on warning).
    """
    from vlmcheck.frameworks.llava import launch_settings as read_launch
    from vlmcheck.options import TemplateOptions
    from vlmcheck.templates import check_template

    # every other flag is the TemplateOptions field of its name: an option is one field and its flag; a launch
    # script fills in the ones left unset
    if launch is not None:
        try:
            settings = read_launch(launch)
        except VlmcheckError as e:
            raise click.UsageError(str(e)) from None
        script = Path(launch)
        dataset = dataset or (_near(script, settings.data_path) if settings.data_path else None)
        if tokenizer is None and settings.model_name_or_path:
            tokenizer = _near(script, settings.model_name_or_path)
        # LLaVA picks the fast tokenizer when "mpt" is in its --model_name_or_path, whatever folder is read here
        given["model_name_or_path"] = given["model_name_or_path"] or settings.model_name_or_path
        if not given["template"]:
            if settings.version is None:
                raise click.UsageError(settings.need("version") + "; pass --template")
            given["template"] = (settings.version,)
        given["max_length"] = given["max_length"] or settings.model_max_length
        given["llava_fork"] = given["llava_fork"] or settings.fork
        if given["mm_use_im_start_end"] is None:
            given["mm_use_im_start_end"] = settings.mm_use_im_start_end
    if dataset is None and launch is not None:
        raise click.UsageError(settings.need("data_path") + "; pass DATASET")
    if dataset is None or not Path(dataset).is_file():
        raise click.UsageError(f"no dataset file: {dataset or 'pass DATASET (or --launch with --data_path)'}")
    if tokenizer is None or not Path(tokenizer).exists():
        why = settings.need("model_name_or_path") if launch is not None and tokenizer is None else \
            f"no tokenizer folder {tokenizer or ''}"
        raise click.UsageError(f"{why}: pass --tokenizer with a local copy of the checkpoint's tokenizer files")
    if not given["template"]:
        raise click.UsageError("pass --template (or --launch with --version)")
    check_json_target(json_path, dataset=dataset, launch_script=launch, chat_template=given["chat_template"])
    try:
        text = Path(dataset).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.UsageError(f"cannot read {dataset}: {e}") from None
    try:
        rows = (parse(json.loads, text, where=dataset) if text.lstrip().startswith("[")
                else [parse(json.loads, x, where=f"{dataset} line {n}")
                      for n, x in enumerate(text.splitlines(), 1) if x.strip()])
    except json.JSONDecodeError as e:
        raise click.UsageError(f"{dataset} is not a JSON list or JSON Lines file: {e}") from None
    except VlmcheckError as e:  # nested deeper than vlmcheck reads
        raise click.UsageError(str(e)) from None
    given["chat_template"] = read_template(given["chat_template"])
    given["llava_fork"] = given["llava_fork"] or "llava"
    given["mm_use_im_start_end"] = bool(given["mm_use_im_start_end"])
    try:
        report = check_template(rows, tokenizer=tokenizer, options=TemplateOptions(**given))
    except VlmcheckError as e:  # a usage error exits 2, never 1 (which means findings)
        raise click.UsageError(str(e)) from None
    finish(report, json_path=json_path, fail_on=fail_on)
