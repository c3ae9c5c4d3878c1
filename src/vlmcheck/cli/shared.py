"""The flags and helpers the commands share, so that they mean the same everywhere.

- ``--json PATH``: write the report's ``to_dict()`` as JSON to PATH; ``-`` is standard output, and then the text
  report is not printed (standard output carries the data). A bare ``--json`` (the old flag of ``lint``,
  ``template`` and ``families``) still means ``-``.
- ``--fail-on LEVEL``: exit 1 when a finding is at or above LEVEL (default ``error``), else 0; a usage error
  exits 2. See :mod:`vlmcheck.contract`.
- :func:`media_options`: how ``scan`` and ``repair`` read the dataset's media and the model's processor; each
  flag's parameter is the :class:`~vlmcheck.options.ScanOptions` field of its name.
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


def framework_option() -> Callable[[F], F]:
    """``--framework NAME``: that framework's truncation, resize route and defaults for every setting left unset
    (the ScanOptions field of that name; the frameworks a bare dataset can be judged for)."""
    return click.option(
        "--framework", type=click.Choice(["llamafactory", "trl", "swift"]),
        help="Apply this framework's truncation, resize route and defaults to every setting left unset "
             "(vlmcheck check reads the framework's config instead).",
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
    from vlmcheck.util import output_target, report_target

    try:
        output_target(json_path)
    except UsageError as e:
        raise click.UsageError(str(e)) from None
    target = Path(json_path).resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise click.UsageError(f"--json would replace the {what.replace('_', ' ')} ({path}): name another "
                                   "file, or - for standard output")
    try:
        report_target(json_path)  # nor any other file vlmcheck did not write
    except UsageError as e:
        raise click.UsageError(str(e)) from None


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


class Progress:
    """A one-line progress display on stderr for long scans (only on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        import sys
        import time

        self.enabled = enabled
        self.stream = sys.stderr
        self.time = time.perf_counter
        self.started = self.time()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = self.time()
        if not self.enabled or (now - self.last < 0.2 and done != total):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            line = f"\rscanning [{bar}] {done:,}/{total:,} ({rate:,.0f}/s)"
        else:
            line = f"\rscanning {done:,} samples ({rate:,.0f}/s)"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def parse_key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    import json

    from vlmcheck.data.nesting import parse
    from vlmcheck.errors import UsageError

    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            options[key.strip()] = parse(json.loads, raw, where=f"the value of {key.strip()}")
        except UsageError as e:  # nested deeper than vlmcheck reads
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        except ValueError:
            options[key.strip()] = raw
    return options


def read_template(path: str | None) -> str | None:
    """The ``--chat-template`` file, as UTF-8 text; anything else is a usage error (a FIFO or device is never
    opened: it would block the read forever)."""
    if path is None:
        return None
    from pathlib import Path

    from vlmcheck.data.files import FileProblem, read_text

    try:
        return read_text(Path(path))
    except UnicodeDecodeError as e:
        raise click.UsageError(f"--chat-template {path} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    except FileProblem as e:
        raise click.UsageError(f"--chat-template cannot be read: {e.message}") from None
    except OSError as e:
        raise click.UsageError(f"--chat-template {path} cannot be read: {e}") from None


def check_json_path(json_path: str | None, dataset: str, *others: tuple[str, str | None],
                    option: str = "--json") -> None:
    """``--json`` (``--html``) is written after the run: it must not replace the dataset (or an output of the run)."""
    from pathlib import Path

    if json_path is None:
        return
    from vlmcheck.errors import UsageError
    from vlmcheck.util import STDOUT, output_target, report_target

    try:
        for path in (json_path, *(other for _, other in others)):
            if path is not None:
                output_target(path)
    except UsageError as e:
        raise click.UsageError(str(e)) from None
    if json_path == STDOUT:
        if any(other == STDOUT for _, other in others):
            raise click.UsageError("--json - and --output - would both write to standard output: pick one")
        return
    target = Path(json_path).resolve()
    for what, other in (("the dataset", dataset), *others):
        if other is not None and Path(other).resolve() == target:
            raise click.UsageError(f"{option} would replace {what} ({other}): name another file")
    try:
        report_target(json_path)  # nor any other file vlmcheck did not write
    except UsageError as e:
        raise click.UsageError(str(e)) from None


def write_html(report: Any, html_path: str | None) -> None:
    """``--html``: the report as one self-contained page, written atomically."""

    from vlmcheck.util import atomic_write_text

    if html_path:
        try:
            page = report.to_html()
        except ImportError as e:
            raise click.UsageError(f"--html needs matplotlib ({e}): pip install 'vlmcheck[html]'") from None
        atomic_write_text(html_path, page)

def media_options(f: F) -> F:
    """The options ``scan`` and ``repair`` share: how the dataset's media are read and the model's processor
    sizes them. Each parameter is named after its :class:`~vlmcheck.options.ScanOptions` field."""
    from vlmcheck.data.formats import FORMATS
    from vlmcheck.families.base import RESIZE_MODES
    from vlmcheck.layout import TRUNCATIONS

    for option in reversed([
        click.option("--truncation", type=click.Choice(TRUNCATIONS), default="right", show_default=True,
                     help="right: transformers/TRL; llamafactory: cutoff_len split per turn; left/delete: ms-swift."),
        click.option("--format", type=click.Choice(FORMATS), help="Force the dataset format (default: detect)."),
        click.option("--image-root", type=click.Path(file_okay=False, path_type=str),
                     help="Folder image paths are relative to (default: the dataset's folder)."),
        click.option("--max-pixels", type=click.IntRange(min=1), help="Pixel budget per image (see --resize)."),
        click.option("--min-pixels", type=click.IntRange(min=1), help="Minimum pixels per image (see --resize)."),
        click.option("--resize", type=click.Choice(RESIZE_MODES), default="processor", show_default=True,
                     help="How --max/--min-pixels apply: processor kwargs (TRL); prescale (LLaMA-Factory "
                          "image_max_pixels, EasyR1/verl); qwen-vl-utils (ms-swift MAX_PIXELS)."),
        click.option("--exif/--no-exif", "exif_transpose", default=None,
                     help="Whether images are seen EXIF-rotated (default: yes with --resize processor, where "
                          "transformers loads paths; no otherwise, and for images passed as opened PIL images)."),
        click.option("--confine", "--strict-root", "confine", is_flag=True,
                     help="Refuse media paths that resolve outside the image root (VC104): for data you do not "
                          "trust."),
        click.option("--allow-outside-root", is_flag=True,
                     help="Read paths outside the image root (the default; kept for old scripts)."),
        click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=str),
                     help="A Jinja chat template file to use instead of the checkpoint's."),
        click.option("--processor-option", "processor_options", multiple=True, metavar="KEY=VALUE",
                     callback=parse_key_values,
                     help="A call-time processor option the family reads (repeatable; `vlmcheck families` lists "
                          "them), e.g. do_pan_and_scan=true (Gemma 3), fps=2 (Qwen video). VALUE is JSON, else a "
                          "string."),
    ]):
        f = option(f)
    return f
