"""Benchmark output: an aligned table on stdout and a JSON document on disk; and the plot of
the documented figures against their targets that docs/benchmarks.md shows
(``python -m bench.report plot``, from ``bench/figures.toml``)."""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
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


def finish(rows: list[Row], notes: list[str], json_path: Path, *, check: bool) -> int:
    """After the table: print the notes and where the JSON document is; return the exit status
    of ``--check`` (1 when ``check`` and a row missed its target, else 0)."""
    for note in notes:
        print(f"note: {note}")
    print(f"JSON: {json_path}")
    return 1 if check and any(r.met is False for r in rows) else 0


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


# -- plots of the documented figures (python -m bench.report plot) ----------------------------

FIGURES = Path(__file__).resolve().parent / "figures.toml"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "targets.png"


@dataclass(frozen=True, slots=True)
class Figure:
    """One target of docs/benchmarks.md: what was measured against what was asked."""

    name: str
    unit: str
    better: str  # "lower" or "higher"
    limit: float
    runs: tuple[float, ...]
    baselines: dict[str, float]

    def met(self) -> bool:
        worst = max(self.runs) if self.better == "lower" else min(self.runs)
        return worst <= self.limit if self.better == "lower" else worst >= self.limit


def load_figures(path: Path = FIGURES) -> list[Figure]:
    """The figures of ``path`` (see its header for the fields)."""
    with path.open("rb") as f:
        raw = tomllib.load(f)["figure"]
    return [
        Figure(
            name=str(item["name"]), unit=str(item["unit"]), better=str(item["better"]),
            limit=float(item["limit"]), runs=tuple(float(v) for v in item["runs"]),
            baselines={str(k): float(v) for k, v in item["baselines"].items()},
        )
        for item in raw
    ]  # fmt: skip


def plot_targets(figures: list[Figure], out: Path) -> None:
    """One panel per figure: the runs (dots), the target (a line, the side that meets it
    shaded) and the baselines (grey ticks, labelled). Writes a PNG with no timestamp in it."""
    import matplotlib  # noqa: PLC0415 - plotting is a dev extra; the benchmarks run without it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    plt.rcParams.update({"font.size": 8, "svg.hashsalt": "pushsvc", "figure.dpi": 100})
    rows = (len(figures) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 1.45 * rows + 0.6), squeeze=False)
    for ax, figure in zip(axes.flat, figures, strict=False):
        values = [*figure.runs, figure.limit, *figure.baselines.values()]
        low, high = min(0.0, *values), max(0.0, *values)
        pad = (high - low) * 0.08
        low, high = (low - pad if low < 0 else low), high + 2 * pad
        ax.set_xlim(low, high)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        good = (low, figure.limit) if figure.better == "lower" else (figure.limit, high)
        ax.axvspan(*good, color="#e3f1e3", zorder=0)
        ax.axvline(figure.limit, color="#2e7d32", linewidth=1.5, zorder=1)
        ax.annotate(
            f"target {'≤' if figure.better == 'lower' else '≥'} {figure.limit:g}",
            (figure.limit, 0.62), color="#2e7d32", ha="center", fontsize=7,
        )  # fmt: skip
        for label, value in figure.baselines.items():
            ax.plot([value, value], [-0.55, -0.05], color="#8a949b", linewidth=1.2, zorder=2)
            ax.annotate(label, (value, -0.85), color="#5b6770", ha="center", fontsize=6.5)
        colour = "#2e7d32" if figure.met() else "#c62828"
        ax.scatter(figure.runs, [0.15] * len(figure.runs), s=22, color=colour, zorder=3)
        ax.set_title(
            f"{figure.name}  ({figure.unit}; {'met' if figure.met() else 'not met'})",
            fontsize=8, loc="left",
        )  # fmt: skip
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    for ax in axes.flat[len(figures) :]:
        ax.set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report plot [--figures TOML] [--out PNG]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    sub = parser.add_subparsers(dest="command", required=True)
    plot = sub.add_parser("plot", help="plot the documented figures against their targets")
    plot.add_argument("--figures", type=Path, default=FIGURES)
    plot.add_argument("--out", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    plot_targets(load_figures(args.figures), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
