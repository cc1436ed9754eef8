"""``pushsvc stats``: delivery accounting per time bucket (published, expected, sent, acked, lost,
expired, ack ratio).

The per-bucket counters are written by the nodes' accounting and reconciled by the monitor
(DESIGN §7). A cluster whose nodes do not keep them yet has nothing to read: the command says so
and exits 1.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.cluster import ApiKey, ApiUrl, AsJson, RedisUrl, operator_settings
from cli.settings import fail


def parse_since(text: str) -> float:
    """``15m``, ``90s``, ``2h``, ``1d`` (or plain seconds) as seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip().lower()
    factor = units.get(text[-1:], 0)
    number = float(text[:-1] if factor else text)
    value = number * (factor or 1)
    if not value > 0:
        raise ValueError("it must be positive")
    return value


def stats(
    since: Annotated[str, typer.Option(help="How far back: 15m, 2h, 1d.")] = "15m",
    redis_url: RedisUrl = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Per time bucket: published / expected / sent / acked / lost / expired and the ack ratio."""
    try:
        parse_since(since)
    except ValueError as exc:
        fail(f"--since {since!r}: {exc}")
    operator_settings(redis_url=redis_url, api_url=api_url, api_key=api_key)
    fail("accounting not available in this cluster: its nodes keep no per-bucket counters", 1)
