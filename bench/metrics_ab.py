"""Cost of the node's metrics: the fan-out broadcast with ``PUSHSVC_METRICS=false`` (A) and with
metrics on (B, the default), interleaved A, B, A, B, … on fresh nodes, same method.

Run from the repository root::

    python -m bench.metrics_ab                 # 19,000 connections, 3 pairs, 5 broadcasts each
    python -m bench.metrics_ab --pairs 4 -- --client-procs 4

Each run is ``python -m bench.fanout --start-server -n N --user-duration 0`` (arguments after
``--`` are passed on), with ``--server-env PUSHSVC_METRICS=false`` for A. The figure per run is the
median over its undisturbed broadcasts of publish → last client, and the server CPU per delivery;
the difference is B against A, as the ratio of the medians over runs, with the per-pair ratios as
its spread. Prints a table and writes ``bench/results/metrics-ab-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import runner, stats
from bench.report import Row, print_table, rows_json, write_json
from bench.targets import TARGET_METRICS_OVERHEAD_PCT

ARMS = {"A": "metrics off (PUSHSVC_METRICS=false)", "B": "metrics on (default)"}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = runner.split_fanout_args(argv)
    p = argparse.ArgumentParser(
        prog="python -m bench.metrics_ab",
        description="Broadcast with metrics off (A) and on (B), interleaved.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-n", "--connections", type=int, default=19_000)
    p.add_argument("--pairs", type=int, default=3, help="A/B pairs (runs = 2 x pairs)")
    p.add_argument("--broadcasts", type=int, default=5, help="undisturbed broadcasts per run")
    p.add_argument("--server-code", type=Path, help="import the server from this source copy")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per run, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/metrics-ab-<time>.json")
    return p.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    a, extra = parse_args(argv)
    json_path = a.json or runner.RESULTS / f"metrics-ab-{runner.stamp()}.json"
    doc = runner.header("metrics-ab", a.label, {**vars(a), "extra": extra})
    runs: list[dict[str, object]] = []
    for pair in range(a.pairs):
        for arm in ("A", "B"):
            args = [
                "--start-server", "-n", str(a.connections),
                "--broadcasts", str(a.broadcasts), "--user-duration", "0",
                "--timeout", str(a.timeout),
                "--label", f"metrics A/B pair {pair + 1} {arm}: {ARMS[arm]}",
            ]  # fmt: skip
            if arm == "A":
                args += ["--server-env", "PUSHSVC_METRICS=false"]
            for key, value in runner.code_env(a.server_code).items():
                args += ["--server-env", f"{key}={value}"]
            path = json_path.with_suffix(f".{pair + 1}{arm}.json")
            run = runner.run_fanout([*args, *extra], path, a.timeout)
            d, n = runner.dig, runner.num
            bruns = d(run, "broadcast", "runs")
            lasts = [
                n(r.get("last_ms"))
                for r in (bruns if isinstance(bruns, list) else [])
                if isinstance(r, dict) and not r.get("disturbed")
            ]
            runs.append(
                {
                    "pair": pair + 1,
                    "arm": arm,
                    "json": str(path),
                    "exit_status": run.get("exit_status"),
                    "last_ms_median": n(d(run, "broadcast", "last_ms_median")),
                    "last_ms_undisturbed": lasts,
                    "p50_ms_median": n(d(run, "broadcast", "p50_ms_median")),
                    "cpu_per_delivery_us": n(
                        d(run, "broadcast", "server_cpu_per_delivery_us_median")
                    ),
                    "counted": d(run, "broadcast", "counted"),
                    "ramp_cpu_us": n(d(run, "cpu", "per_handshake_us")),
                    "rss_kib": n(d(run, "memory", "rss_per_connection_kib")),
                }
            )
    doc["runs"] = runs
    rows, summary = table(runs, a)
    doc["summary"] = summary
    doc["table"] = rows_json(rows)
    write_json(json_path, doc)
    print_table(
        f"pushsvc metrics overhead · N={a.connections:,} · {a.pairs} A/B pairs, interleaved", rows
    )
    print(f"JSON: {json_path}")
    return 0


def table(
    runs: list[dict[str, object]], a: argparse.Namespace
) -> tuple[list[Row], dict[str, object]]:
    def col(arm: str, key: str) -> list[float]:
        return [runner.num(r[key]) for r in runs if r["arm"] == arm]

    rows: list[Row] = []
    summary: dict[str, object] = {}
    for key, what in (
        ("last_ms_median", "broadcast publish → last client"),
        ("p50_ms_median", "broadcast publish → median client"),
        ("cpu_per_delivery_us", "server CPU per delivery"),
    ):
        off, on = col("A", key), col("B", key)
        unit = "µs" if key.startswith("cpu") else "ms"
        m_off, m_on = stats.median(off), stats.median(on)
        diff = (m_on - m_off) / m_off * 100 if m_off else float("nan")
        pairs = [(b - x) / x * 100 for x, b in zip(off, on, strict=False) if x]
        summary[key] = {
            "off": off,
            "on": on,
            "median_off": m_off,
            "median_on": m_on,
            "difference_pct": diff,
            "pair_differences_pct": pairs,
        }
        spread = ", ".join(f"{p:+.1f}" for p in pairs)
        value = (
            f"off {m_off:.1f} {unit} [{min(off):.1f}-{max(off):.1f}] · "
            f"on {m_on:.1f} {unit} [{min(on):.1f}-{max(on):.1f}] · "
            f"Δ {diff:+.1f} % (pairs: {spread} %)"
        )
        is_target = key == "last_ms_median"
        rows.append(
            Row(
                f"{what} (median of runs)",
                value,
                f"|Δ| ≤ {TARGET_METRICS_OVERHEAD_PCT:g} %" if is_target else "",
                met=abs(diff) <= TARGET_METRICS_OVERHEAD_PCT if is_target else None,
            )
        )
    pooled_off = [x for r in runs if r["arm"] == "A" for x in _floats(r["last_ms_undisturbed"])]
    pooled_on = [x for r in runs if r["arm"] == "B" for x in _floats(r["last_ms_undisturbed"])]
    m_off, m_on = stats.median(pooled_off), stats.median(pooled_on)
    summary["pooled_last_ms"] = {"off": pooled_off, "on": pooled_on}
    rows.append(
        Row(
            "broadcast publish → last client, every undisturbed broadcast pooled (median)",
            f"off {m_off:.1f} ms (n={len(pooled_off)}) · on {m_on:.1f} ms (n={len(pooled_on)}) "
            f"· Δ {(m_on - m_off) / m_off * 100 if m_off else float('nan'):+.1f} %",
        )
    )
    return rows, summary


def _floats(value: object) -> list[float]:
    return [runner.num(x) for x in value] if isinstance(value, list) else []


if __name__ == "__main__":
    sys.exit(main())
