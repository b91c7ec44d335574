"""The `turbolm` command (click): the groups lite and serve, the commands convert, chat and bench.

Strict: an unknown flag or command fails with exit code 2 and names the closest valid one, and
`--help` prints the real flags of every command without running it (``strict``). Each command
imports its implementation only when it runs, so `turbolm --help` is instant and `turbolm serve`
never imports torch. Every failure a user can fix ends in one line ``turbolm: error: ...`` and
exit code 2 (``failures``).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import click

from . import failures
from .lite import lite
from .serve import serve
from .strict import CONTEXT, Group
from .tools import bench, chat, convert


@click.group(cls=Group, context_settings=CONTEXT)
def cli():
    """turbolm: compress (lite), convert, chat with and serve LLaMA-family models on CPU.

    Flags take - or _ alike (--server-port is --server_port); boolean flags take --flag or
    --flag true|false.
    """


for command in (lite, convert, chat, serve, bench):
    cli.add_command(command)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2; older ones exit 0 themselves


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv``; returns the exit code."""
    from turbolm.errors import UserError

    try:
        rv = cli.main(list(sys.argv[1:] if argv is None else argv), prog_name="turbolm", standalone_mode=False)
        return rv if isinstance(rv, int) else 0  # --help and ctx.exit() return their code
    except _NO_ARGS_IS_HELP as e:  # `turbolm`, `turbolm serve`: the help, as --help prints it
        click.echo(e.ctx.get_help())
        return 0
    except click.UsageError as e:
        return failures.fail(failures.usage_line(e), e.exit_code)
    except click.ClickException as e:
        return failures.fail(e.format_message(), e.exit_code)
    except click.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        return 130
    except UserError as e:
        return failures.fail(str(e))
    except ImportError as e:
        msg = failures.missing_extra(e)
        if msg is None:
            raise
        return failures.fail(msg)
    except Exception as e:
        if not failures.raised_while_loading(e):
            raise
        return failures.fail(failures.load_error_line(e))


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.exit(run(argv))
