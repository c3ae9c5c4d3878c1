"""`vlmcheck merge`: join the summaries of shards (or of datasets) into one."""

from __future__ import annotations

import click

from vlmcheck.cli.shared import fail_on_option
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity


@click.command("merge")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str), help="Write the merged summary as JSON.")
@fail_on_option()
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Findings to print.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; use the exit code.")
def merge_command(summaries: tuple[str, ...], output: str | None, fail_on: Severity, show: int, quiet: bool) -> None:
    """Merge the --json summaries of scans (all N shards of `scan --shard I/N`, or scans of several datasets
    with one model and settings) into one: exact counts, length distribution and recommendations, as one
    scan of all the rows would give."""
    import json
    import sys
    from pathlib import Path

    from vlmcheck.merging import merge
    from vlmcheck.util import atomic_write_text

    if output is not None and any(Path(output).resolve() == Path(s).resolve() for s in summaries):
        raise click.UsageError(f"--output would replace a summary being merged ({output}): name another file")
    if output is not None:
        from vlmcheck.util import report_target

        try:
            report_target(output)
        except VlmcheckError as e:
            raise click.UsageError(str(e)) from None
    try:
        report = merge(list(summaries))
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None
    if output:
        atomic_write_text(Path(output), json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    if not quiet:
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))
