"""How a failed command ends: one line ``turbolm: error: ...`` on stderr, exit code 2, no
traceback, for every failure a user can fix: a bad flag, a bad path, a workspace that does not
load, a missing optional package. Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import difflib
import sys
from typing import Iterable, Optional

import click

USAGE_EXIT = 2

# optional module -> (what needs it, the extra that installs it)
EXTRAS = {
    "fastapi": ("serving", "serve"),
    "uvicorn": ("serving", "serve"),
    "prometheus_client": ("serving", "serve"),
    "fastapi_offline": ("serving", "serve"),
    "httpx": ("serving", "serve"),
    "gradio": ("the web UI", "serve"),
    "torch": ("turbolm lite (quantization)", "lite"),
    "transformers": ("turbolm lite (quantization)", "lite"),
    "accelerate": ("turbolm lite (quantization)", "lite"),
}


def closest(word: str, candidates: Iterable[str]) -> str:
    """The candidate nearest to ``word`` (always one, however far)."""
    candidates = sorted(set(candidates))
    best = difflib.get_close_matches(word, candidates, n=1, cutoff=0.0)
    return best[0] if best else "--help"


def _option_names(command: click.Command, ctx: click.Context) -> list:
    return [o for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden for o in p.opts
            if o.startswith("--")]


def usage_line(e: click.UsageError) -> str:
    """A click usage error as one line, naming the closest valid flag for an unknown one."""
    ctx = e.ctx
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    if isinstance(e, click.NoSuchOption) and ctx is not None:
        name = e.option_name
        owners = []
        if isinstance(ctx.command, click.Group):  # a flag of a subcommand given before its name
            owners = [f"'{ctx.command_path} {n}'" for n, c in sorted(ctx.command.commands.items())
                      if name in _option_names(c, ctx)]
        if owners:
            return f"no such option: {name} (it is a flag of {', '.join(owners)}: put it after the command name)"
        hint = (e.possibilities or [None])[0] or closest(name, _option_names(ctx.command, ctx))
        return f"no such option: {name} (did you mean {hint}?){where}"
    msg = e.format_message().strip().replace("\n", " ")
    return (msg[:1].lower() + msg[1:]).rstrip(".") + where


def missing_extra(e: ImportError) -> Optional[str]:
    top = (getattr(e, "name", None) or "").split(".")[0]
    if top not in EXTRAS:
        return None
    what, extra = EXTRAS[top]
    return f'{what} needs {top}; install it with: pip install "turbolm[{extra}]"'


def _loader_codes() -> set:
    """The functions that load a model; an error raised inside one is the model's, not a bug."""
    codes = set()
    tm = sys.modules.get("turbolm.turbomind.turbomind")
    if tm is not None:
        codes.add(tm.TurboMind.__init__.__code__)
    rs = sys.modules.get("turbolm.turbomind.resolve")
    if rs is not None:
        codes.add(rs.resolve_workspace.__code__)
    return codes


def raised_while_loading(e: BaseException) -> bool:
    codes, tb = _loader_codes(), e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def load_error_line(e: Exception) -> str:
    msg = " ".join(str(e).split())
    # UserError, ConfigError (ValueError), OSError and the engine's EngineError already name the file.
    if isinstance(e, (ValueError, OSError)) or type(e).__name__ == "EngineError":
        return msg
    return f"cannot load the model: {type(e).__name__}: {msg}"


def fail(message: str, code: int = USAGE_EXIT) -> int:
    print(f"turbolm: error: {message}", file=sys.stderr)
    return code
