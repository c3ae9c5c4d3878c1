"""`vlmcheck explain CODE`: a finding code's catalogue entry."""

from __future__ import annotations

import click

from vlmcheck.errors import VlmcheckError


class _RegistryHelp(click.Command):
    """A command whose help names every registered code family (``{families}`` in its docstring), read from the
    catalogue when the help is shown: a family registered later is listed, and ``vlmcheck scan`` does not
    import every command's catalogue to start."""

    @property
    def help(self) -> str | None:
        if self._help is None:
            return None
        from vlmcheck.catalogue import families

        return self._help.replace("{families}", families())

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value


@click.command("explain", cls=_RegistryHelp,
               short_help="Print a finding code's catalogue entry: what breaks and the fix.")
@click.argument("code")
def explain_command(code: str) -> None:
    """Print the catalogue entry of a finding code ({families}) or name: what breaks and the fix.

    Example: vlmcheck explain VC201
    """
    from vlmcheck.explain import explain

    try:
        click.echo(explain(code), nl=False)
    except VlmcheckError as e:
        raise click.UsageError(str(e)) from None
