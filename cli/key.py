"""``pushsvc api-key``: make an API key entry with a fresh secret, for PUSHSVC_API_KEYS_FILE."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from cli.settings import fail
from pushsvc.apikeys import parse_entry
from pushsvc.errors import ConfigError


def api_key(
    name: Annotated[str, typer.Option(help="Who holds it: the calling system, e.g. pharmacy.")],
    scope: Annotated[
        list[str], typer.Option(help="publish, tokens, read, admin or * (repeatable).")
    ],
    rate: Annotated[
        float | None, typer.Option(help="Publishes per second it may make, cluster-wide.")
    ] = None,
) -> None:
    """Print a new API key entry, name:secret:scopes[:rate=<n>/s], with a 43-character secret."""
    entry = f"{name}:{secrets.token_urlsafe(32)}:{'+'.join(scope)}"
    if rate is not None:
        entry += ":rate=" + f"{rate:.6f}".rstrip("0").rstrip(".") + "/s"
    try:
        parse_entry(entry)
    except ConfigError as exc:
        fail(exc.message)
    print(entry)
