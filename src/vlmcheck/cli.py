"""The `vlmcheck` command. Each subcommand parses options, calls the library function of the same
name, formats the result and owns the exit code: 0 clean, 1 findings at or above --fail-on,
2 usage error, 3 a crash of vlmcheck itself, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck import __version__
from vlmcheck.cli_options import check_json_target, fail_on_option, finish, json_option, write_json
from vlmcheck.data.formats import FORMATS
from vlmcheck.errors import VlmcheckError
from vlmcheck.families.base import RESIZE_MODES
from vlmcheck.findings import Severity
from vlmcheck.layout import TRUNCATIONS

# Exit codes beyond 0 (clean), 1 (findings) and 2 (usage): vlmcheck's own crash, and the shell's for
# SIGINT / SIGTERM, so that a CI gate never reads an interrupted or crashed run as a finished one.
EXIT_CRASH = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary files."""


class _Group(click.Group):
    """The ``vlmcheck`` group: owns the exit codes no subcommand chooses (3 crash, 130 Ctrl-C, 143 SIGTERM)."""

    def invoke(self, ctx: click.Context) -> Any:
        import signal
        import sys
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            def terminate(_signum: int, _frame: Any) -> None:
                raise _Terminated()

            try:
                previous = signal.signal(signal.SIGTERM, terminate)
            except ValueError:  # not the main interpreter
                previous = None
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("vlmcheck: interrupted; nothing was written", err=True)
            sys.exit(EXIT_SIGINT)
        except _Terminated:
            click.echo("vlmcheck: terminated (SIGTERM); nothing was written", err=True)
            sys.exit(EXIT_SIGTERM)
        except Exception:
            import traceback

            traceback.print_exc()
            click.echo(f"vlmcheck crashed: this is a bug in vlmcheck, not a finding in your data (exit code "
                       f"{EXIT_CRASH}). Please report it with the traceback above.", err=True)
            sys.exit(EXIT_CRASH)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vlmcheck")
def main() -> None:
    """Check vision-language training data, templates and configs before training."""


# Subcommands are registered below, one line each.


class _Progress:
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


def _parse_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    import json

    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    return options


def _read_template(path: str | None) -> str | None:
    """The ``--chat-template`` file, as UTF-8 text; anything else is a usage error."""
    if path is None:
        return None
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise click.UsageError(f"--chat-template {path} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    except OSError as e:
        raise click.UsageError(f"--chat-template {path} cannot be read: {e}") from None


def _check_json_path(json_path: str | None, dataset: str, *others: tuple[str, str | None],
                     option: str = "--json") -> None:
    """``--json`` (``--html``) is written after the run: it must not replace the dataset (or an output of the run)."""
    from pathlib import Path

    if json_path is None:
        return
    from vlmcheck.errors import UsageError
    from vlmcheck.util import STDOUT, output_target

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


@main.command("scan")
@click.argument("dataset", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", required=True, help="Checkpoint folder or Hugging Face model id.")
@click.option("--max-length", type=click.IntRange(min=1), help="The framework's max_length / cutoff_len.")
@click.option("--truncation", type=click.Choice(TRUNCATIONS), default="right", show_default=True,
              help="right: transformers/TRL; llamafactory: cutoff_len split per turn; left/delete: ms-swift.")
@click.option("--format", "format_", type=click.Choice(FORMATS), help="Force the dataset format (default: detect).")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=str),
              help="Folder image paths are relative to (default: the dataset's folder).")
@click.option("--max-pixels", type=click.IntRange(min=1), help="Pixel budget per image (see --resize).")
@click.option("--min-pixels", type=click.IntRange(min=1), help="Minimum pixels per image (see --resize).")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="processor", show_default=True,
              help="How --max/--min-pixels apply: processor kwargs (TRL); prescale (LLaMA-Factory "
                   "image_max_pixels, EasyR1/verl); qwen-vl-utils (ms-swift MAX_PIXELS).")
@click.option("--qwen-vl-utils", is_flag=True, help="Images go through qwen-vl-utils first (= --resize qwen-vl-utils).")
@click.option("--exif/--no-exif", default=None,
              help="Whether images are seen EXIF-rotated (default: yes with --resize processor, where "
                   "transformers loads paths; no otherwise, and for images passed as opened PIL images).")
@click.option("--confine", "--strict-root", "confine", is_flag=True,
              help="Refuse media paths that resolve outside the image root (VC104): for data you do not trust.")
@click.option("--allow-outside-root", is_flag=True,
              help="Read paths outside the image root (the default; kept for old scripts).")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A Jinja chat template file to use instead of the checkpoint's.")
@click.option("--split", help="Split of a DatasetDict save_to_disk folder (default: train).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Processes.")
@click.option("--limit", type=click.IntRange(min=1), help="Scan only the first N rows.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: analyze the rows on Ray Data actors, one per CPU of the cluster; same records and summary "
                   "(needs vlmcheck[ray]).")
@click.option("--ray-address", metavar="ADDRESS",
              help="With --engine ray: the Ray cluster to connect to (default: RAY_ADDRESS, else a local one).")
@click.option("--shard", metavar="I/N",
              help="Scan only the rows whose index is I modulo N (I counts from 0); `vlmcheck merge` joins the "
                   "--json summaries of all N shards into the whole's.")
@click.option("--resume", is_flag=True,
              help="With --output: make the scan resumable, and go on from where an interrupted one with the same "
                   "settings stopped (OUTPUT.partial).")
@click.option("--processor-option", "processor_options", multiple=True, metavar="KEY=VALUE",
              callback=_parse_options,
              help="A call-time processor option the family reads (repeatable; `vlmcheck families` lists them), "
                   "e.g. do_pan_and_scan=true (Gemma 3), fps=2 (Qwen video). VALUE is JSON, else a string.")
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
@click.option("--framework", type=click.Choice(["llamafactory", "trl", "swift"]),
              help="Apply this framework's truncation, resize route and defaults to every setting left unset "
                   "(vlmcheck check reads the framework's config instead).")
@fail_on_option()
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Findings to print.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; use the exit code.")
def scan_command(dataset: tuple[str, ...], model: str, max_length: int | None, truncation: str, format_: str | None,
                 image_root: str | None, max_pixels: int | None, min_pixels: int | None, resize: str,
                 qwen_vl_utils: bool, exif: bool | None, confine: bool, allow_outside_root: bool, chat_template: str | None,
                 split: str | None, workers: int, limit: int | None, engine: str, ray_address: str | None,
                 shard: str | None, resume: bool, processor_options: dict[str, Any],
                 exact: bool, trust_remote_code: bool, json_path: str | None, output: str | None, html_path: str | None,
                 framework: str | None, fail_on: Severity, show: int, quiet: bool) -> None:
    """Count every sample's tokens as the model's processor would and report what will break.

    DATASET: .json/.jsonl (also .gz, .bz2, .xz, .zst), .parquet, a WebDataset .tar, a save_to_disk folder, a
    folder of data files or a glob, local or at an fsspec URL (s3://...); several are read as one dataset, in
    order."""
    import sys

    from vlmcheck.scan import scan

    if qwen_vl_utils:
        if resize not in ("processor", "qwen-vl-utils"):
            raise click.UsageError("--qwen-vl-utils contradicts --resize " + resize)
        resize = "qwen-vl-utils"
    others = tuple(("a dataset", other) for other in dataset[1:])
    _check_json_path(json_path, dataset[0], ("the --output records", output), *others)
    _check_json_path(html_path, dataset[0], ("the --output records", output), ("the --json summary", json_path),
                     *others, option="--html")
    template = _read_template(chat_template)
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        report = scan(
            dataset[0] if len(dataset) == 1 else list(dataset), model=model, max_length=max_length,
            truncation=truncation, format=format_,
            image_root=image_root, max_pixels=max_pixels, min_pixels=min_pixels, resize=resize,
            exif_transpose=exif, allow_outside_root=allow_outside_root, confine=confine, chat_template=template,
            split=split, workers=workers, limit=limit, output=output, progress=progress, exact=exact,
            trust_remote_code=trust_remote_code, processor_options=processor_options, shard=shard, resume=resume,
            framework=framework, engine=engine, ray_address=ray_address,
        )
    except VlmcheckError as e:
        progress.close()
        raise click.UsageError(str(e)) from None
    progress.close()
    write_json(report, json_path)
    _write_html(report, html_path)
    if not quiet and "-" not in (json_path, output):  # standard output carries the data: keep it clean
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))


def _write_html(report: Any, html_path: str | None) -> None:
    """``--html``: the report as one self-contained page, written atomically."""

    from vlmcheck.util import atomic_write_text

    if html_path:
        try:
            page = report.to_html()
        except ImportError as e:
            raise click.UsageError(f"--html needs matplotlib ({e}): pip install 'vlmcheck[html]'") from None
        atomic_write_text(html_path, page)


def _path_map(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in values:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise click.BadParameter(f"{item!r} is not FROM=TO", ctx=ctx, param=param)
        mapping[src] = dst
    return mapping


@main.command("check")
@click.argument("config", type=click.Path(path_type=str))
@click.option("--model", "-m", help="Use this checkpoint instead of the config's model (a config from another machine).")
@click.option("--data", help="Use this dataset folder instead of the config's (LLaMA-Factory dataset_dir).")
@click.option("--path-map", "path_map", multiple=True, metavar="FROM=TO", callback=_path_map,
              help="Rewrite a path prefix in the config and the data, e.g. /mnt/data=./data (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Judge only the first N rows.")
@json_option("the summary")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str),
              help="Write one JSON record per sample (.jsonl), with the framework's verdict.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the report as one self-contained HTML page (charts, previews; needs matplotlib).")
@fail_on_option()
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Findings to print.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; use the exit code.")
def check_command(config: str, model: str | None, data: str | None, path_map: dict[str, str], limit: int | None,
                  json_path: str | None, output: str | None, html_path: str | None, fail_on: Severity, show: int,
                  quiet: bool) -> None:
    """Judge every sample the way your training framework will, from the config you launch (LLaMA-Factory YAML)."""
    import sys

    from vlmcheck.checking import check

    _check_json_path(json_path, config, ("the --output records", output))
    _check_json_path(html_path, config, ("the --output records", output), ("the --json summary", json_path),
                     option="--html")
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        report = check(config, model=model, data=data, path_map=path_map, limit=limit, output=output,
                       progress=progress)
    except VlmcheckError as e:
        progress.close()
        raise click.UsageError(str(e)) from None
    progress.close()
    write_json(report, json_path)
    _write_html(report, html_path)
    if not quiet and "-" not in (json_path, output):  # standard output carries the data: keep it clean
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))


@main.command("demo")
@click.option("--max-length", type=click.IntRange(min=1), default=4096, show_default=True,
              help="With --scan: the max length (the LLaMA-Factory run reads cutoff_len from its config).")
@click.option("--model-type", type=click.Choice(["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]), default="qwen2_vl",
              show_default=True)
@click.option("--scan", "bare", is_flag=True,
              help="Scan the bundled dataset with the bare processor (vlmcheck scan) instead of the LLaMA-Factory run.")
def demo_command(max_length: int, model_type: str, bare: bool) -> None:
    """Judge the bundled LLaMA-Factory run as LLaMA-Factory will prepare it (vlmcheck check); real images, real
    Qwen2 tokenizer, offline. --scan: the bare-processor scan of the bundled dataset instead.

    Needs the `dashscope` package for the tokenizer's BPE ranks: pip install --no-deps dashscope==2.0.2
    """
    from vlmcheck.demo.run import demo, demo_check

    try:
        if bare:
            report, command = demo(max_length=max_length, model_type=model_type)
        elif model_type == "qwen3_vl":
            raise click.UsageError("the bundled LLaMA-Factory run uses the qwen2_vl template: use --scan for qwen3_vl")
        else:
            report, command = demo_check(model_type=model_type)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"$ {command}\n")
    click.echo(report.render(), nl=False)


@main.command("explain")
@click.argument("code")
def explain_command(code: str) -> None:
    """Print the catalogue entry of a finding code (VC scan, VL lint, VT template) or name: what breaks and the fix.

    Example: vlmcheck explain VC201
    """
    from vlmcheck.explain import explain

    try:
        click.echo(explain(code), nl=False)
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None


@main.command("families")
@json_option("the list")
def families_command(json_path: str | None) -> None:
    """List the model families vlmcheck counts, how exactly, and the settings each reads.

    A model_type not listed here is an error naming these; nothing is guessed:
    `vlmcheck scan --exact` runs the checkpoint's own processor instead.
    """
    import textwrap

    from vlmcheck.families import families

    check_json_target(json_path)
    rows = families()
    write_json(rows, json_path)
    if json_path == "-":
        return
    for row in rows:
        settings = ", ".join(str(s) for s in row["settings"])  # type: ignore[attr-defined]
        click.echo(f"{row['model_type']}: {row['title']}")
        lines = [str(row["exactness"]), f"placeholder {row['placeholder']}; reads {settings}"]
        if row.get("options"):
            lines.append("--processor-option: " + ", ".join(str(o) for o in row["options"]))  # type: ignore[attr-defined]
        for text in lines:
            click.echo(textwrap.fill(text, width=100, initial_indent="    ", subsequent_indent="    ",
                                     break_on_hyphens=False, break_long_words=False))


from vlmcheck.lint.cli import lint_command  # noqa: E402  (lint: registration)

main.add_command(lint_command)


@main.command("repair")  # (repair: registration)
@click.argument("dataset", type=click.Path(path_type=str))
@click.option("--model", "-m", required=True, help="Checkpoint folder or Hugging Face model id.")
@click.option("--max-length", type=click.IntRange(min=1), required=True, help="The framework's max_length / cutoff_len.")
@click.option("--output", "-o", "output", type=click.Path(path_type=str),
              help="The repaired dataset, in DATASET's format (a file, or a folder for a save_to_disk DATASET); "
                   "its manifest goes to OUT.manifest.jsonl.")
@click.option("--dry-run", is_flag=True, help="Print what would change, per strategy; write nothing.")
@click.option("--on-overlong", default="cap-pixels,split,truncate-turns,drop", metavar="STRATEGY[,STRATEGY...]",
              help="Samples over --max-length with an image or all supervision cut: strategies tried in order, "
                   "the first that makes the sample fit whole wins. cap-pixels: resize its images to the "
                   "largest pixel budget that fits; split: into several samples at turn boundaries (with "
                   "cap-pixels also listed, a round too long alone is capped); truncate-turns: drop trailing "
                   "turns; drop. Default: all four, in this order.")
@click.option("--hold", metavar="WHAT[,WHAT...]",
              help="Write rows that would be dropped for these findings, unchanged, to OUT.review.jsonl "
                   "(DATASET's format) for a person to fix, instead of dropping them: error codes (VC002,VC101) "
                   "or broken (every error but the length ones: malformed rows, placeholder mismatches, "
                   "missing or corrupt media), overlong (too long and no strategy fits), all. The review "
                   "file is not training data; fix it, then repair it.")
@click.option("--pixel-cap-key", metavar="KEY",
              help="cap-pixels records the budget in the sample under KEY (e.g. max_pixels: on inline image "
                   "parts, where qwen-vl-utils reads it, else on the row) instead of writing resized images.")
@click.option("--truncation", type=click.Choice(TRUNCATIONS), default="right", show_default=True,
              help="As for scan.")
@click.option("--format", "format_", type=click.Choice(FORMATS), help="Force the dataset format (default: detect).")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=str),
              help="Folder image paths are relative to (default: the dataset's folder).")
@click.option("--max-pixels", type=click.IntRange(min=1), help="Pixel budget per image (see scan --resize).")
@click.option("--min-pixels", type=click.IntRange(min=1), help="Minimum pixels per image (see scan --resize).")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="processor", show_default=True,
              help="How --max/--min-pixels apply, as for scan.")
@click.option("--exif/--no-exif", default=None, help="Whether images are seen EXIF-rotated, as for scan.")
@click.option("--confine", "--strict-root", "confine", is_flag=True,
              help="Refuse media paths that resolve outside the image root (VC104): for data you do not trust.")
@click.option("--allow-outside-root", is_flag=True,
              help="Read paths outside the image root (the default; kept for old scripts).")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A Jinja chat template file to use instead of the checkpoint's.")
@click.option("--processor-option", "processor_options", multiple=True, metavar="KEY=VALUE",
              callback=_parse_options,
              help="A call-time processor option the family reads (repeatable; `vlmcheck families` lists them), "
                   "e.g. do_pan_and_scan=true (Gemma 3), fps=2 (Qwen video). VALUE is JSON, else a string.")
@json_option("the summary")
@fail_on_option("a sample changed (warning), dropped or held (error)")
def repair_command(dataset: str, model: str, max_length: int, output: str | None, dry_run: bool, on_overlong: str,
                   hold: str | None, pixel_cap_key: str | None, truncation: str, format_: str | None, image_root: str | None,
                   max_pixels: int | None, min_pixels: int | None, resize: str, exif: bool | None,
                   confine: bool, allow_outside_root: bool, chat_template: str | None,
                   processor_options: dict[str, Any],
                   json_path: str | None, fail_on: Severity) -> None:
    """Write a copy of DATASET that trains at --max-length: keep, fix (cap-pixels, truncate-turns), split,
    hold for review or drop each sample, every one accounted for in the manifest. The input is never
    modified. Exit 1 when a sample was dropped or held (--fail-on error, the default), or also changed or
    split (--fail-on warning): the output is not the input whole."""
    from vlmcheck.repairing import repair

    if output is None and not dry_run:
        raise click.UsageError("pass --output FILE (or --dry-run)")
    if output is not None:
        from vlmcheck.repairing import manifest_path, review_path

        _check_json_path(json_path, dataset, ("the output", output), ("the manifest", str(manifest_path(output))),
                         ("the review file", str(review_path(output)) if hold else None))
    else:
        _check_json_path(json_path, dataset)
    template = _read_template(chat_template)
    try:
        report = repair(
            dataset, model=model, max_length=max_length, output=output, dry_run=dry_run, on_overlong=on_overlong,
            truncation=truncation, format=format_, image_root=image_root, max_pixels=max_pixels,
            min_pixels=min_pixels, resize=resize, exif_transpose=exif, allow_outside_root=allow_outside_root, confine=confine,
            chat_template=template, pixel_cap_key=pixel_cap_key, hold=hold, processor_options=processor_options,
        )
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None
    finish(report, json_path=json_path, fail_on=fail_on)


from vlmcheck.templates.cli import template_command  # noqa: E402  (template: registration)

main.add_command(template_command)


@main.command("merge")  # (merge: registration)
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
    try:
        report = merge(list(summaries))
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None
    if output:
        atomic_write_text(Path(output), json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    if not quiet:
        click.echo(report.render(show=show), nl=False)
    sys.exit(report.exit_code(fail_on))


# Commands defined in their own modules get the group's -h too; set here once, because click
# caches a command's help option the first time any context builds it.
for _command in main.commands.values():
    _command.context_settings.setdefault("help_option_names", ["-h", "--help"])
