"""`vlmcheck explain CODE`: a finding code's catalogue entry."""

from __future__ import annotations

import click

from vlmcheck.errors import VlmcheckError


@click.command("explain")
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
