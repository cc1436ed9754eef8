"""Benchmark output: an aligned table on stdout and a JSON document on disk."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table


def log(msg: str) -> None:
    print(f"[fanout {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table. ``met`` is ``None`` where there is no target."""

    metric: str
    value: str
    target: str = ""
    baseline: str = ""
    met: bool | None = None


def met_text(met: bool | None) -> str:
    if met is None:
        return ""
    return "yes" if met else "NO"


def print_table(title: str, rows: list[Row], console: Console | None = None) -> None:
    console = console or Console(width=200)
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("baselines (same method)")
    table.add_column("met?", justify="center")
    for row in rows:
        met = met_text(row.met)
        style = "red" if row.met is False else None
        table.add_row(row.metric, row.value, row.target, row.baseline, met, style=style)
    console.print(table)


def rows_json(rows: list[Row]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]


def _clean(obj: object) -> object:
    """Replace NaN/inf (not valid JSON) by ``None``, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    path.write_bytes(orjson.dumps(_clean(doc), option=option) + b"\n")


@dataclass
class Results:
    doc: dict[str, object] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
