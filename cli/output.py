"""How operator commands print: JSON for scripts, Rich tables for people, times as people read them.

Pure formatting: every function that needs the time takes ``now``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False)


def emit_json(data: Any) -> None:
    """``data`` (builtins or msgspec Structs) as indented JSON on stdout."""
    print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode(), flush=True)


def client_text(text: str) -> str:
    """A client-chosen string (a device id) safe to print in a Rich table: its markup escaped,
    control and other non-printable characters shown as ``\\uXXXX``."""
    printable = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return escape(printable)


def table(*columns: str, title: str | None = None) -> Table:
    """A table with ``columns``; a column named with a leading ``>`` is right-aligned."""
    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        right = column.startswith(">")
        t.add_column(column.lstrip(">"), justify="right" if right else "left", no_wrap=True)
    return t


def duration(seconds: float) -> str:
    """``45s``, ``5m 02s``, ``2h 03m``, ``3d 04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600:02d}h"


def ago(ts: float | None, now: float) -> str:
    """How long ago ``ts`` was (``-`` for never)."""
    if ts is None:
        return "-"
    return f"{duration(now - ts)} ago"


def clock(ts: float, now: float) -> str:
    """Local wall-clock time of ``ts``: ``HH:MM:SS`` today, with the date otherwise."""
    when = datetime.fromtimestamp(ts, UTC).astimezone()
    today = datetime.fromtimestamp(now, UTC).astimezone().date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def stamp(ts: float) -> str:
    """Local date and time of ``ts`` to the millisecond, with the UTC offset."""
    when = datetime.fromtimestamp(ts, UTC).astimezone()
    return (
        when.strftime("%Y-%m-%d %H:%M:%S.")
        + f"{when.microsecond // 1000:03d}"
        + when.strftime(" %z")
    )


def seconds(value: float | None) -> str:
    """A short time span: ``850 µs``, ``12 ms``, ``1.25 s`` (``-`` when unknown)."""
    if value is None:
        return "-"
    if value == 0:
        return "0 ms"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def after(ts: float | None, origin: float) -> str:
    """``ts`` as an offset from ``origin``: ``+12 ms`` (``-`` when it never happened)."""
    if ts is None:
        return "-"
    return "+" + seconds(max(0.0, ts - origin))


def rate(value: float | None) -> str:
    """Events per second (``-`` before there are two samples)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"
