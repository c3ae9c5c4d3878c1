"""`vlmcheck check`: parse, build one :class:`~vlmcheck.options.CheckOptions`, call :func:`vlmcheck.check`, format."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck.cli.shared import Progress, check_json_path, fail_on_option, json_option, write_html, write_json
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity


def _path_map(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in values:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise click.BadParameter(f"{item!r} is not FROM=TO", ctx=ctx, param=param)
        mapping[src] = dst
    return mapping


@click.command("check")
@click.argument("config", type=click.Path(path_type=str))
@click.option("--model", "-m", help="Use this checkpoint instead of the config's model (a config from another machine).")
@click.option("--data", help="Use this data instead of the config's: LLaMA-Factory's dataset_dir, or the dataset file(s) of "
                   "the other frameworks.")
@click.option("--path-map", "path_map", multiple=True, metavar="FROM=TO", callback=_path_map,
              help="Rewrite a path prefix in the config and the data, e.g. /mnt/data=./data (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Judge only the first N rows.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: judge the rows on Ray actors, one per CPU of the cluster; same records and summary "
                   "(needs vlmcheck[ray]).")
@click.option("--ray-address", metavar="ADDRESS",
              help="With --engine ray: the Ray cluster to connect to (default: RAY_ADDRESS, else a local one).")
@json_option("the summary")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str),
              help="Write one JSON record per sample (.jsonl), with the framework's verdict.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the report as one self-contained HTML page (charts, previews; needs matplotlib).")
@fail_on_option()
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Findings to print.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; use the exit code.")
def check_command(config: str, json_path: str | None, html_path: str | None, fail_on: Severity, show: int,
                  quiet: bool, **given: Any) -> None:
    """Judge every sample the way your training framework will, from the config you launch.

    CONFIG is what you start training with: a LLaMA-Factory, TRL, verl or EasyR1 YAML, a launch script (swift sft, verl,
    EasyR1, VLM-R1, LLaVA's train.py), or an Unsloth script or notebook."""
    import sys

    from vlmcheck.checking import check
    from vlmcheck.options import CheckOptions

    # every other flag is the CheckOptions field of its name: an option is one field and its flag
    output = given["output"]
    check_json_path(json_path, config, ("the --output records", output))
    check_json_path(html_path, config, ("the --output records", output), ("the --json summary", json_path),
                    option="--html")
    progress = Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        report = check(config, options=CheckOptions(**given), progress=progress)
    except VlmcheckError as e:
        progress.close()
        raise click.UsageError(str(e)) from None
    progress.close()
    write_json(report, json_path)
    write_html(report, html_path)
    if not quiet and "-" not in (json_path, output):  # standard output carries the data: keep it clean
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))
