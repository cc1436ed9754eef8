"""``pushsvc listen``: watch a patient's messages with the Python client (acks them as it goes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Annotated

import msgspec
import typer
from rich.console import Console

from cli.settings import build, check_secret_flags, fail
from pushsvc.auth import TokenIssuer
from pushsvc.client import ClientError, PushClient, State

out = Console(highlight=False, soft_wrap=True)


def listen(
    user: Annotated[
        str | None, typer.Option(help="Patient id (mints a token with the secret).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="A client token to use instead of --user.")
    ] = None,
    topic: Annotated[list[str] | None, typer.Option(help="A topic to read (with --user).")] = None,
    url: Annotated[str, typer.Option(help="The node's WebSocket URL.")] = "ws://127.0.0.1:8080/ws",
    device: Annotated[str | None, typer.Option(help="Device id. [cli-<hostname>]")] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per message.")
    ] = False,
    count: Annotated[int, typer.Option(help="Stop after this many messages (0: never).")] = 0,
) -> None:
    """Connect as a patient's device and print every message as it arrives (Ctrl-C to stop)."""
    check_secret_flags()
    if token is None:
        if user is None:
            fail("give --user (and PUSHSVC_TOKEN_SECRET) or --token")
        settings = build()
        if not settings.token_secret:
            fail("no token secret: set PUSHSVC_TOKEN_SECRET (make run keeps it in .run/dev.env)")
        token = TokenIssuer(settings.token_secret).mint(user, topic or [], 3600)
    name = device or f"cli-{socket.gethostname()}"
    with contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(_listen(url, token, name, json_lines, count))
        raise typer.Exit(code)


async def _listen(url: str, token: str, device: str, json_lines: bool, count: int) -> int:
    def state(s: State) -> None:
        if not json_lines:
            out.print(f"[dim]· {s.value}[/]")

    seen = 0
    async with PushClient(url, token, device, on_state=state) as client:
        try:
            async for m in client:
                if json_lines:
                    print(msgspec.json.encode(m).decode(), flush=True)
                else:
                    data = msgspec.json.encode(m.data).decode()
                    tag = " [dim](replay)[/]" if m.replay else ""
                    out.print(
                        f"[bold]{m.event}[/] {data}  [dim]{m.stream} {m.offset} {m.id}[/]{tag}"
                    )
                seen += 1
                if count and seen >= count:
                    return 0
        except ClientError as exc:
            fail(str(exc), code=1)
    return 0
