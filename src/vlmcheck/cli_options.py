"""The options every reporting command shares, so that they mean the same everywhere.

- ``--json PATH``: write the report's ``to_dict()`` as JSON to PATH; ``-`` is standard output, and then the text
  report is not printed (standard output carries the data). A bare ``--json`` (the old flag of ``lint``,
  ``template`` and ``families``) still means ``-``.
- ``--fail-on LEVEL``: exit 1 when a finding is at or above LEVEL (default ``error``), else 0; a usage error
  exits 2. See :mod:`vlmcheck.contract`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vlmcheck.contract import FAIL_ON, Reporting, Severity

F = TypeVar("F", bound=Callable[..., Any])

STDOUT = "-"


def json_option(what: str = "the report") -> Callable[[F], F]:
    """``--json PATH`` (``-``: standard output; a bare ``--json`` means ``-``)."""
    return click.option(
        "--json", "json_path", is_flag=False, flag_value=STDOUT, default=None, metavar="PATH",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
        help=f"Write {what} as JSON to PATH ('-': standard output, and no text report). A bare --json, the "
             "old flag, means '-'.",
    )


def _parse_fail_on(_ctx: click.Context, _param: click.Parameter, value: str) -> Severity:
    return Severity.parse(value)


def fail_on_option(what: str = "a finding") -> Callable[[F], F]:
    """``--fail-on LEVEL``, given to the command as a :class:`Severity`."""
    return click.option(
        "--fail-on", type=click.Choice(FAIL_ON), default="error", show_default=True, callback=_parse_fail_on,
        help=f"Exit 1 when {what} of this severity or worse is found (else 0; 2 is a usage error).",
    )


def check_json_target(json_path: str | None, **inputs: str | None) -> None:
    """``--json PATH`` must be a file it may replace, and none of the command's inputs (named by keyword): a
    bare ``--json`` before an argument takes the argument as its PATH (``lint --json run.yaml``)."""
    if json_path is None or json_path == STDOUT:
        return
    from pathlib import Path

    from vlmcheck.errors import UsageError
    from vlmcheck.util import output_target

    try:
        output_target(json_path)
    except UsageError as e:
        raise click.UsageError(str(e)) from None
    target = Path(json_path).resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise click.UsageError(f"--json would replace the {what.replace('_', ' ')} ({path}): name another "
                                   "file, or - for standard output")


def write_json(data: Any, json_path: str | None) -> None:
    """Write ``data`` (a report, or plain JSON data) to ``--json``'s PATH, atomically; nothing when None."""
    if json_path is None:
        return
    from vlmcheck.util import atomic_write_text

    payload = data.to_dict() if hasattr(data, "to_dict") else data
    atomic_write_text(json_path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def finish(report: Reporting, *, json_path: str | None, fail_on: Severity, quiet: bool = False,
           text: str | None = None) -> None:
    """Write ``--json``, print the text report (unless quiet or JSON goes to standard output), exit with the
    report's code for ``fail_on``."""
    write_json(report, json_path)
    if not quiet and json_path != STDOUT:
        click.echo(report.render() if text is None else text, nl=False)
    raise SystemExit(report.exit_code(fail_on))
