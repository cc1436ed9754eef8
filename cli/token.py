"""``pushsvc token``: mint a client token with the configured secret."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.settings import build, fail, flags_of
from pushsvc.auth import TokenIssuer
from pushsvc.errors import AuthError
from pushsvc.settings import NodeSettings


@flags_of(NodeSettings, ("token_secret",))
def token(
    user: Annotated[str, typer.Option(help="Patient (user) id: the token's sub.")],
    topic: Annotated[list[str] | None, typer.Option(help="A topic the token may read.")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds the token is valid.")] = 3600,
    **flags: Any,
) -> None:
    """Mint a client token (HS256 JWT) for USER."""
    settings = build(**flags)
    if not settings.token_secret:
        fail("no token secret: set PUSHSVC_TOKEN_SECRET")
    try:
        issuer = TokenIssuer(settings.token_secret, max_ttl=settings.token_max_ttl)
        print(issuer.mint(user, topic or [], ttl))
    except AuthError as exc:
        fail(exc.message)
