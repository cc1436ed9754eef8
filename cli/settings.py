"""Building the process's one :class:`Settings` from env and flags, and reporting bad ones."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console

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
    settings end the command with exit 2 and say what is wrong."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return kind(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")
    except ConfigError as exc:
        fail(exc.message)
