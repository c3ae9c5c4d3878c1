"""`vlmcheck scan`: parse, build one :class:`~vlmcheck.options.ScanOptions`, call :func:`vlmcheck.scan`, format."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck.cli.shared import (
    Progress,
    check_json_path,
    fail_on_option,
    framework_option,
    json_option,
    media_options,
    read_template,
    write_html,
    write_json,
)
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity


@click.command("scan")
@click.argument("dataset", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", required=True, help="Checkpoint folder or Hugging Face model id.")
@click.option("--max-length", type=click.IntRange(min=1), help="The framework's max_length / cutoff_len.")
@media_options
@click.option("--qwen-vl-utils", is_flag=True, help="Images go through qwen-vl-utils first (= --resize qwen-vl-utils).")
@click.option("--split", help="Split of a DatasetDict save_to_disk folder (default: train).")
@click.option("--workers", "-j", type=click.IntRange(min=1),
              help="Processes (default: one per core for a dataset of 4,096 rows or more, else 1).")
@click.option("--limit", type=click.IntRange(min=1), help="Scan only the first N rows.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: count the rows on Ray Data actors, one per CPU of the cluster; same records and summary "
                   "(needs vlmcheck[ray]).")
@click.option("--ray-address", metavar="ADDRESS",
              help="With --engine ray: the Ray cluster to connect to (default: RAY_ADDRESS, else a local one).")
@click.option("--shard", metavar="I/N",
              help="Scan only the rows whose index is I modulo N (I counts from 0); `vlmcheck merge` joins the "
                   "--json summaries of all N shards into the whole's.")
@click.option("--resume", is_flag=True,
              help="With --output: make the scan resumable, and go on from where an interrupted one with the same "
                   "settings stopped (OUTPUT.partial).")
@click.option("--exact", is_flag=True,
              help="Count with the checkpoint's own transformers processor, sample by sample: any model_type, "
                   "slower (needs vlmcheck[exact]).")
@click.option("--trust-remote-code", is_flag=True,
              help="With --exact: run the checkpoint's own processor code (auto_map). Read it first.")
@json_option("the summary")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str),
              help="Write one JSON record per sample (.jsonl).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the report as one self-contained HTML page (charts, previews; needs matplotlib).")
@framework_option()
@fail_on_option()
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Findings to print.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; use the exit code.")
def scan_command(dataset: tuple[str, ...], model: str, qwen_vl_utils: bool, json_path: str | None,
                 html_path: str | None, fail_on: Severity, show: int, quiet: bool, **given: Any) -> None:
    """Count every sample's tokens as the model's processor would and report what will break.

    DATASET: .json/.jsonl (also .gz, .bz2, .xz, .zst), .parquet, a WebDataset .tar, a save_to_disk folder, a
    folder of data files or a glob, local or at an fsspec URL (s3://...); several are read as one dataset, in
    order."""
    import sys

    from vlmcheck.options import ScanOptions
    from vlmcheck.scan import scan

    # every other flag is the ScanOptions field of its name: an option is one field and its flag
    if qwen_vl_utils:
        if given["resize"] not in ("processor", "qwen-vl-utils"):
            raise click.UsageError("--qwen-vl-utils contradicts --resize " + given["resize"])
        given["resize"] = "qwen-vl-utils"
    output = given["output"]
    others = tuple(("a dataset", other) for other in dataset[1:])
    check_json_path(json_path, dataset[0], ("the --output records", output), *others)
    check_json_path(html_path, dataset[0], ("the --output records", output), ("the --json summary", json_path),
                    *others, option="--html")
    given["chat_template"] = read_template(given["chat_template"])
    progress = Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        options = ScanOptions(**given)
        report = scan(dataset[0] if len(dataset) == 1 else list(dataset), model=model, options=options,
                      progress=progress)
    except VlmcheckError as e:
        progress.close()
        raise click.UsageError(str(e)) from None
    progress.close()
    write_json(report, json_path)
    write_html(report, html_path)
    if not quiet and "-" not in (json_path, output):  # standard output carries the data: keep it clean
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))
