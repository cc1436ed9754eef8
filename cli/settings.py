"""Building the process's one :class:`Settings` from env and flags, and reporting bad ones;
flags made from the settings' fields (:func:`flags_of`)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape
from typer._click.globals import get_current_context  # Typer's own copy of Click

from cli.secret_flags import verdict
from pushsvc.errors import ConfigError
from pushsvc.settings import Settings

err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width
S = TypeVar("S", bound=BaseSettings)
C = TypeVar("C", bound=Callable[..., Any])


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
        fail(f"invalid settings: {problems(exc)}")
    except ConfigError as exc:
        fail(exc.message)
    check_secret_flags(dev=bool(getattr(settings, "dev", False)))
    return settings


def problems(exc: ValidationError) -> str:
    """What is wrong with the settings, on one line."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
    )


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


def flags_of(model: type[BaseSettings], names: Iterable[str]) -> Callable[[C], C]:
    """Give a command one option per field of ``model`` in ``names``, made from the field:
    ``--max-connections`` for ``max_connections``, its type (a path or a list is given as text,
    a bool is an on-only flag), and its help: the description, then the default in brackets
    (a default made by a factory is the description's to state). An option not given is None, so the
    environment or the field's default decides; the command takes them as keyword arguments
    (``**flags``) and passes them to :func:`build_as`.

    The command's own parameters (arguments, and options that are not settings such as
    ``--json``) stay, first; the fields' options follow them."""

    def apply(command: C) -> C:
        fields = model.model_fields
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        params = own + [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_option(name, f)
            )
            for name, f in ((name, fields[name]) for name in names)
        ]
        command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        return command

    return apply


def _option(name: str, field: FieldInfo) -> Any:
    kind = _flag_type(field.annotation)
    text = field.description or name.replace("_", " ")
    help_text = text[0].upper() + text[1:] + "."
    if kind is not bool and field.default not in (None, "") and field.default_factory is None:
        help_text += f" [{field.default}]"
    decls = [f"--{name.replace('_', '-')}"] if kind is bool else []
    # --help renders Rich markup: a default such as "[pushsvc:]" would be taken for a style.
    return Annotated[kind | None, typer.Option(*decls, help=escape(help_text))]


def _flag_type(annotation: Any) -> type:
    """The option type of a field's annotation: ``X | None`` is ``X``; a path or a list is
    given as text (the settings parse it)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = (a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation is Path or get_origin(annotation) is list:
        return str
    assert isinstance(annotation, type), annotation
    return annotation
