"""`vlmcheck families`: the model families vlmcheck counts."""

from __future__ import annotations

import click

from vlmcheck.cli.shared import check_json_target, json_option, write_json


@click.command("families")
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
