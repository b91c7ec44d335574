"""click, made strict and forgiving in the right places.

- An unknown flag or command is an error that names the closest valid one (``failures.usage_line``).
- ``-`` and ``_`` spell the same flag and command: ``--server-port`` is ``--server_port``,
  ``api-server`` is ``api_server`` (``normalize``, click's ``token_normalize_func``).
- A boolean flag (``bool_option``) takes ``--force`` alone, or a value: ``--kv_sym False``,
  ``--share=true``; a bare flag followed by anything that is not a boolean word means true.
"""
from __future__ import annotations

from typing import List, Sequence

import click

BOOL_WORDS = frozenset({"true", "false", "t", "f", "yes", "no", "y", "n", "on", "off", "1", "0"})  # click.BOOL's


def normalize(token: str) -> str:
    return token.replace("-", "_")


# Set on the root group; every sub-context inherits them.
CONTEXT = {"token_normalize_func": normalize, "help_option_names": ["-h", "--help"], "show_default": True,
           "max_content_width": 100}


class BoolOption(click.Option):
    """``--flag`` (true), ``--flag true|false`` or ``--flag=false``; see ``Command.parse_args``."""

    def __init__(self, *decls, **kwargs):
        kwargs.setdefault("type", click.BOOL)
        kwargs.setdefault("metavar", "[true|false]")
        super().__init__(*decls, **kwargs)


def bool_option(*decls, default: bool = False, help: str = ""):
    return click.option(*decls, cls=BoolOption, default=default, help=help)


def _bare_flags_true(ctx: click.Context, params: Sequence[click.Parameter], args: List[str]) -> List[str]:
    """``--flag`` not followed by a boolean word becomes ``--flag=true`` before click parses."""
    flags = {o for p in params if isinstance(p, BoolOption) for o in p.opts}
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if (arg.startswith("--") and "=" not in arg and "--" + normalize(arg[2:]) in flags
                and (nxt is None or nxt.lower() not in BOOL_WORDS)):
            arg += "=true"
        out.append(arg)
    return out


class Command(click.Command):
    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        return super().parse_args(ctx, _bare_flags_true(ctx, self.params, args))


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(*args, **kwargs)

    def resolve_command(self, ctx: click.Context, args: List[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, normalize(name)) is None:
            from .failures import closest

            raise click.UsageError(f"no such command: {name} (did you mean {closest(name, self.list_commands(ctx))}?)",
                                   ctx)
        return super().resolve_command(ctx, args)
