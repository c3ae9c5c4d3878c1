"""`vlmcheck repair`: parse, call :func:`vlmcheck.repair`, format."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck.cli.shared import (
    check_json_path,
    fail_on_option,
    finish,
    framework_option,
    json_option,
    media_options,
    read_template,
)
from vlmcheck.errors import VlmcheckError
from vlmcheck.findings import Severity


@click.command("repair")
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
@media_options
@framework_option()
@json_option("the summary")
@fail_on_option("a sample changed (warning), dropped or held (error)")
def repair_command(dataset: str, model: str, max_length: int, output: str | None, dry_run: bool, on_overlong: str,
                   hold: str | None, pixel_cap_key: str | None, json_path: str | None, fail_on: Severity,
                   **given: Any) -> None:
    """Write a copy of DATASET that trains at --max-length: keep, fix (cap-pixels, truncate-turns), split,
    hold for review or drop each sample, every one accounted for in the manifest. The input is never
    modified. Exit 1 when a sample was dropped or held (--fail-on error, the default), or also changed or
    split (--fail-on warning): the output is not the input whole."""
    from vlmcheck.options import ScanOptions
    from vlmcheck.repairing import repair

    if output is None and not dry_run:
        raise click.UsageError("pass --output FILE (or --dry-run)")
    if output is not None:
        from vlmcheck.repairing import manifest_path, review_path

        check_json_path(json_path, dataset, ("the output", output), ("the manifest", str(manifest_path(output))),
                        ("the review file", str(review_path(output)) if hold else None))
    else:
        check_json_path(json_path, dataset)
    given["chat_template"] = read_template(given["chat_template"])  # the other media options: as for scan
    try:
        # --max-length and the media flags are the ScanOptions fields of their names, as for scan
        options = ScanOptions(max_length=max_length, **given)
        report = repair(dataset, model=model, options=options, output=output, dry_run=dry_run,
                        on_overlong=on_overlong, pixel_cap_key=pixel_cap_key, hold=hold)
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None
    finish(report, json_path=json_path, fail_on=fail_on)
