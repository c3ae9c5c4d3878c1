"""The `vlmcheck` command. Each subcommand parses options, calls the library function of the same
name, formats the result and owns the exit code: 0 clean, 1 findings at or above --fail-on,
2 usage error, 3 a crash of vlmcheck itself, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

One short module per command (``cli/scan.py``, ``cli/check.py``, ...); the flags and output helpers they share
(``--json PATH``, ``--fail-on``, the media options of scan and repair, the progress line) in ``cli/shared.py``.
This module is the group: it owns the exit codes no command chooses, and registers each command once."""

from __future__ import annotations

from typing import Any

import click

from vlmcheck import __version__

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


from vlmcheck.cli.check import check_command  # noqa: E402  (the commands: one line each)
from vlmcheck.cli.demo import demo_command  # noqa: E402
from vlmcheck.cli.explain import explain_command  # noqa: E402
from vlmcheck.cli.families import families_command  # noqa: E402
from vlmcheck.cli.lint import lint_command  # noqa: E402  (lint: registration)
from vlmcheck.cli.merge import merge_command  # noqa: E402  (merge: registration)
from vlmcheck.cli.repair import repair_command  # noqa: E402  (repair: registration)
from vlmcheck.cli.scan import scan_command  # noqa: E402
from vlmcheck.cli.template import template_command  # noqa: E402  (template: registration)

for _command in (check_command, demo_command, explain_command, families_command, lint_command, merge_command,
                 repair_command, scan_command, template_command):
    main.add_command(_command)


# Commands defined in their own modules get the group's -h too; set here once, because click
# caches a command's help option the first time any context builds it.
for _command in main.commands.values():
    _command.context_settings.setdefault("help_option_names", ["-h", "--help"])
