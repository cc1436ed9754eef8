"""No regression on one node: the code before a change beside the code now, in one run.

Run from the repository root::

    python -m bench.regression --before c15fec4            # 19,000 connections, 2 pairs
    python -m bench.regression --before c15fec4 --pairs 3 --algorithms RS256,ES256

The ``--before`` commit is exported with ``git archive`` into a temporary directory and the node of
its runs imports ``pushsvc`` and ``cli`` from there; the runs of the code now use the working
tree. Each run is ``python -m bench.fanout --start-server -n N --user-duration 0`` with HS256
tokens minted by the clients, interleaved before, now, before, now, … on fresh nodes. Then, for
each of ``--algorithms``, one run of the code now whose clients present RS256 / ES256 tokens (the
node verifies them with the public key it is given): the handshake cost of an identity provider's
tokens, measured, without a before (the code before may not verify them).

The figures, per arm, are medians over runs: broadcast publish → last client (median of each
run's undisturbed broadcasts), server CPU per handshake during the ramp, RSS per connection.
Targets: the broadcast within 5 % of before, the handshake CPU within 10 % of before, RSS per
connection ≤ 5 KiB. Prints a table and writes ``bench/results/regression-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import runner, stats
from bench.report import Row, print_table, rows_json, write_json
from bench.targets import (
    TARGET_REGRESSION_BROADCAST_PCT,
    TARGET_REGRESSION_HANDSHAKE_PCT,
    TARGET_REGRESSION_RSS_KIB,
)
from bench.workers import REPO_ROOT

FIGURES = (
    ("last_ms", "broadcast publish → last client", "ms", TARGET_REGRESSION_BROADCAST_PCT),
    ("handshake_us", "server CPU per handshake (HS256)", "µs", TARGET_REGRESSION_HANDSHAKE_PCT),
    ("rss_kib", "RSS per connection", "KiB", None),
    ("delivery_us", "server CPU per delivery", "µs", None),
)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = runner.split_fanout_args(argv)
    p = argparse.ArgumentParser(
        prog="python -m bench.regression",
        description="The code before beside the code now, interleaved, on one node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--before", required=True, help="commit of the code before (git archive)")
    p.add_argument("-n", "--connections", type=int, default=19_000)
    p.add_argument("--pairs", type=int, default=2, help="before/now pairs (runs = 2 x pairs)")
    p.add_argument("--broadcasts", type=int, default=5, help="undisturbed broadcasts per run")
    p.add_argument(
        "--algorithms", default="RS256", help="comma-separated: extra runs of the code now with "
        "these token algorithms (RS256, ES256); empty for none",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=600.0, help="limit per run, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/regression-<time>.json")
    return p.parse_args(argv), extra


def export(commit: str, into: Path) -> str:
    """Export ``commit``'s tree into ``into``; return its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", full], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return full


def figures(run: dict[str, object]) -> dict[str, object]:
    d, n = runner.dig, runner.num
    return {
        "exit_status": run.get("exit_status"),
        "last_ms": n(d(run, "broadcast", "last_ms_median")),
        "handshake_us": n(d(run, "cpu", "per_handshake_us")),
        "rss_kib": n(d(run, "memory", "rss_per_connection_kib")),
        "delivery_us": n(d(run, "broadcast", "server_cpu_per_delivery_us_median")),
        "connected": d(run, "ramp", "ok"),
        "failed": d(run, "ramp", "failed"),
        "counted": d(run, "broadcast", "counted"),
        "missing": d(run, "broadcast", "missing_total"),
        "other_cpu_s": n(d(run, "ramp", "cpu", "other_cpu_seconds")),
    }


def main(argv: list[str] | None = None) -> int:
    a, extra = parse_args(argv)
    json_path = a.json or runner.RESULTS / f"regression-{runner.stamp()}.json"
    doc = runner.header("regression", a.label, {**vars(a), "extra": extra})
    algorithms = [x.strip() for x in a.algorithms.split(",") if x.strip()]
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="pushsvc-before-") as tmp:
        doc["before_commit"] = export(a.before, Path(tmp))
        plan = [(pair, arm, "HS256") for pair in range(a.pairs) for arm in ("before", "now")]
        plan += [(0, "now", algorithm) for algorithm in algorithms]
        for pair, arm, algorithm in plan:
            args = [
                "--start-server", "-n", str(a.connections),
                "--broadcasts", str(a.broadcasts), "--user-duration", "0",
                "--timeout", str(a.timeout), "--token-algorithm", algorithm,
                "--label", f"regression pair {pair + 1} {arm} {algorithm}",
            ]  # fmt: skip
            if arm == "before":
                for key, value in runner.code_env(Path(tmp)).items():
                    args += ["--server-env", f"{key}={value}"]
            path = json_path.with_suffix(f".{pair + 1}-{arm}-{algorithm}.json")
            run = runner.run_fanout([*args, *extra], path, a.timeout)
            runs.append(
                {"pair": pair + 1, "arm": arm, "algorithm": algorithm, "json": str(path),
                 **figures(run)}
            )  # fmt: skip
    doc["runs"] = runs
    rows, summary = table(runs)
    doc["summary"] = summary
    doc["table"] = rows_json(rows)
    write_json(json_path, doc)
    title = f"pushsvc now vs {doc['before_commit']:.7} · N={a.connections:,} · {a.pairs} pairs"
    print_table(title, rows)
    print(f"JSON: {json_path}")
    return 0


def table(runs: list[dict[str, object]]) -> tuple[list[Row], dict[str, object]]:
    def col(arm: str, key: str, algorithm: str = "HS256") -> list[float]:
        return [runner.num(r[key]) for r in runs if r["arm"] == arm and r["algorithm"] == algorithm]

    rows: list[Row] = []
    summary: dict[str, object] = {}
    for key, what, unit, limit in FIGURES:
        before, now = col("before", key), col("now", key)
        m_before, m_now = stats.median(before), stats.median(now)
        diff = (m_now - m_before) / m_before * 100 if m_before else float("nan")
        summary[key] = {"before": before, "now": now, "median_before": m_before,
                        "median_now": m_now, "difference_pct": diff}  # fmt: skip
        value = (
            f"before {m_before:.1f} {unit} [{_span(before)}] · "
            f"now {m_now:.1f} {unit} [{_span(now)}] · Δ {diff:+.1f} %"
        )
        if limit is not None:
            rows.append(Row(what, value, f"Δ ≤ +{limit:g} %", met=diff <= limit))
        elif key == "rss_kib":
            target = f"≤ {TARGET_REGRESSION_RSS_KIB:g} KiB"
            rows.append(Row(what, value, target, met=m_now <= TARGET_REGRESSION_RSS_KIB))
        else:
            rows.append(Row(what, value))
    for algorithm in sorted({str(r["algorithm"]) for r in runs} - {"HS256"}):
        cpu = col("now", "handshake_us", algorithm)
        summary[f"handshake_us_{algorithm}"] = cpu
        rows.append(Row(f"server CPU per handshake ({algorithm}), now", f"{_span(cpu)} µs"))
    return rows, summary


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.1f}" if low == high else f"{low:.1f}-{high:.1f}"


if __name__ == "__main__":
    sys.exit(main())
