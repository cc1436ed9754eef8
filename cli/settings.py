"""Building the process's one :class:`Settings` from env and flags, and reporting bad ones."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from typer._click.globals import get_current_context  # Typer's own copy of Click

from cli.secret_flags import verdict
from pushsvc.errors import ConfigError
from pushsvc.settings import Settings

err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width
S = TypeVar("S", bound=BaseSettings)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def build(**flags: Any) -> Settings:
    """Settings from ``PUSHSVC_*`` env, overridden by the flags that were given (not None)."""
    return build_as(Settings, **flags)


def build_as(kind: type[S], **flags: Any) -> S:
    """``kind`` from ``PUSHSVC_*`` env, overridden by the flags given (not None); invalid
    settings end the command with exit 2 and say what is wrong, and so does a secret given as a
    flag to a long-running command (:func:`check_secret_flags`)."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = kind(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")
    except ConfigError as exc:
        fail(exc.message)
    check_secret_flags(dev=bool(getattr(settings, "dev", False)))
    return settings


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def check_secret_flags(dev: bool = False) -> None:
    """End the command with exit 2, or warn, when a secret came on its command line
    (:func:`cli.secret_flags.verdict`); outside a Click command, do nothing."""
    ctx = get_current_context(silent=True)
    found = verdict(ctx, dev) if ctx is not None else None
    if found is None:
        return
    if found.refuse:
        fail(found.message)
    warn(found.message)
