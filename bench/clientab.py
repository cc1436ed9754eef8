"""The Redis client layer, A/B: the node's commands over our multiplexed connection
(:mod:`pushsvc.broker.redis.mux`, arm ``mux``) against redis-py's pooled ``redis.asyncio.Redis``
(arm ``redis-py``), interleaved in one run.

Run from the repository root::

    python -m bench.clientab                    # 3 rounds: publish API and user fan-out
    python -m bench.clientab --rounds 5 --publish-duration 10

Each round runs both arms, in turn (A B, then B A, …, so a drift of the machine falls on both),
each on fresh processes: ``python -m bench.publish_api --broker redis`` (single and batch
publish on one node) and ``python -m bench.cluster_users --scenario b`` (user-targeted messages
published on node A to clients on node B). The redis-py arm is the same code with
``bench/clientab_site`` on ``PYTHONPATH``: its ``sitecustomize`` swaps the link's transport for
redis-py's pool and pipeline when a node imports it (see ``redispy_link``), so nothing in
``pushsvc/`` ships the alternative and the link's own logic (scripts, WAIT, errors) is the same in
both. The ``mux`` arm has the same ``PYTHONPATH`` and does nothing with it.

The figure per arm is the median over its rounds; the difference is redis-py against mux, with
the per-round differences as its spread. Prints a table and writes
``bench/results/clientab-<UTC time>.json`` (each run's own JSON next to it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import runner, stats
from bench.node import DISTURBED_SHARE
from bench.report import Row, log, print_table, rows_json, write_json
from bench.workers import REPO_ROOT

SITE = Path(__file__).resolve().parent / "clientab_site"
ARMS = {
    "mux": "our multiplexed connection (pushsvc.broker.redis.mux)",
    "redis-py": "redis-py redis.asyncio.Redis, connection pool; pipeline for batches",
}
#: (key, what, unit, higher is better)
FIGURES: tuple[tuple[str, str, str, bool], ...] = (
    ("single_rps", "POST /v1/messages", "requests/s", True),
    ("single_cpu_us", "POST /v1/messages: node CPU per request", "µs", False),
    ("single_redis_cpu_us", "POST /v1/messages: Redis CPU per request", "µs", False),
    ("single_p50_ms", "POST /v1/messages: latency p50", "ms", False),
    ("single_p99_ms", "POST /v1/messages: latency p99", "ms", False),
    ("batch_mps", "POST /v1/messages/batch", "messages/s", True),
    ("batch_cpu_us", "POST /v1/messages/batch: node CPU per message", "µs", False),
    ("batch_p50_ms", "POST /v1/messages/batch: latency p50", "ms", False),
    ("batch_p99_ms", "POST /v1/messages/batch: latency p99", "ms", False),
    ("user_p50_ms", "user-targeted A → B: publish → client p50", "ms", False),
    ("user_p99_ms", "user-targeted A → B: publish → client p99", "ms", False),
    ("user_http_p99_ms", "user-targeted A → B: publish HTTP p99", "ms", False),
    ("user_cpu_us", "user-targeted A → B: CPU of both nodes per message", "µs", False),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.clientab",
        description="Redis client layer A/B: multiplexed connection against redis-py's pool.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every arm once")
    p.add_argument("--arm", action="append", choices=sorted(ARMS), help="default both")
    p.add_argument("--connections", type=int, default=32, help="publish: keep-alive connections")
    p.add_argument("--batch-size", type=int, default=100, help="publish: messages per batch")
    p.add_argument("--publish-duration", type=float, default=8.0, help="seconds per mode")
    p.add_argument("--quiet-wait", type=float, default=5.0, help="passed to bench.publish_api")
    p.add_argument("-n", "--users", type=int, default=1000, help="user fan-out: clients")
    p.add_argument("--rate", type=float, default=1000.0, help="user fan-out: messages/s")
    p.add_argument("--user-duration", type=float, default=10.0, help="user fan-out: seconds")
    p.add_argument("--no-publish", action="store_true", help="skip bench.publish_api")
    p.add_argument("--no-users", action="store_true", help="skip bench.cluster_users")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per run, seconds")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path, help="default bench/results/clientab-<time>.json")
    return p.parse_args(argv)


def arm_env(arm: str) -> dict[str, str]:
    """The environment of one arm's bench process (inherited by the nodes it starts)."""
    path = os.pathsep.join(x for x in (str(SITE), os.environ.get("PYTHONPATH", "")) if x)
    return {**os.environ, "PYTHONPATH": path, "PUSHSVC_BENCH_REDIS_CLIENT": arm}


def run_bench(module: str, args: list[str], arm: str, path: Path, timeout: float) -> bool:
    """Run ``python -m MODULE ARGS --json PATH`` for ``arm`` (its output goes to our stderr);
    whether it wrote its JSON."""
    cmd = [sys.executable, "-m", module, *args, "--json", str(path)]
    log(f"[{arm}] running: {' '.join(cmd)}")
    try:
        subprocess.run(
            cmd, cwd=REPO_ROOT, env=arm_env(arm), stdout=sys.stderr, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        log(f"[{arm}] {module} timed out after {timeout:g} s")
    return path.exists()


def load(path: Path) -> dict[str, object]:
    import orjson  # noqa: PLC0415 - as bench.runner reads result files

    doc = orjson.loads(path.read_bytes())
    return doc if isinstance(doc, dict) else {}


def publish_figures(doc: dict[str, object]) -> dict[str, object]:
    """Requests/s, CPU per item and latency of each mode of a ``bench.publish_api`` result."""
    d, n = runner.dig, runner.num
    out: dict[str, object] = {}
    runs = doc.get("runs")
    for r in runs if isinstance(runs, list) else []:
        if not isinstance(r, dict):
            continue
        mode = str(r.get("mode"))
        items = n(r.get("items_per_request"))
        ok = n(r.get("accepted_in_window"))
        share = n(d(r, "cpu", "seconds")) / n(r.get("seconds"))
        in_window = max(ok * share * items, 1.0)  # items in the CPU window
        per = r.get("latency_ms_per_process")
        lat = per if isinstance(per, list) else []
        rate_key = "requests_per_second" if mode == "single" else "messages_per_second"
        out |= {
            f"{mode}_{'rps' if mode == 'single' else 'mps'}": n(r.get(rate_key)),
            f"{mode}_cpu_us": n(r.get("server_cpu_seconds")) * 1e6 / in_window,
            f"{mode}_redis_cpu_us": n(r.get("redis_cpu_seconds")) * 1e6 / in_window,
            f"{mode}_p50_ms": stats.median([n(x.get("p50")) for x in lat]),
            f"{mode}_p99_ms": max((n(x.get("p99")) for x in lat), default=float("nan")),
            f"{mode}_errors": sum(
                v for s in _list(r.get("statuses")) for k, v in s.items() if k != "202"
            ),
            f"{mode}_disturbed": bool(r.get("disturbed")),
        }
    return out


def user_figures(doc: dict[str, object]) -> dict[str, object]:
    """Latency, publish HTTP p99 and CPU per message of a ``bench.fanout`` user-targeted run."""
    d, n = runner.dig, runner.num
    accepted = max(n(d(doc, "user", "accepted")), 1.0)
    cpu = d(doc, "user", "cpu_while_publishing")
    seconds = n(d(doc, "user", "publish_seconds"))
    errors = d(doc, "user", "errors")
    return {
        "user_p50_ms": n(d(doc, "user", "latency_ms", "p50")),
        "user_p99_ms": n(d(doc, "user", "latency_ms", "p99")),
        "user_http_p99_ms": n(d(doc, "user", "publish_http_ms", "p99")),
        "user_cpu_us": n(d(cpu, "server_cpu_seconds")) * 1e6 / accepted,
        "user_missing": n(d(doc, "user", "missing")),
        "user_duplicates": n(d(doc, "user", "duplicates")),
        "user_errors": sum(v for v in errors.values() if isinstance(v, int))
        if isinstance(errors, dict)
        else 0,
        "user_disturbed": n(d(cpu, "other_cpu_seconds")) > DISTURBED_SHARE * seconds,
    }


def one_run(a: argparse.Namespace, arm: str, round_no: int, base: Path) -> dict[str, object]:
    """Both benches for ``arm`` in round ``round_no``; their figures."""
    run: dict[str, object] = {"round": round_no, "arm": arm}
    tag = f"{round_no}.{arm}"
    if not a.no_publish:
        path = base.with_suffix(f".{tag}.publish.json")
        args = [
            "--broker", "redis",
            "--connections", str(a.connections), "--batch-size", str(a.batch_size),
            "--duration", f"{a.publish_duration:g}", "--quiet-wait", f"{a.quiet_wait:g}",
            "--label", f"clientab round {round_no} {arm}",
        ]  # fmt: skip
        if run_bench("bench.publish_api", args, arm, path, a.timeout):
            run["publish_json"] = str(path)
            run |= publish_figures(load(path))
    if not a.no_users:
        path = base.with_suffix(f".{tag}.users.json")
        args = [
            "--scenario", "b", "-n", str(a.users),
            "--rate", f"{a.rate:g}", "--duration", f"{a.user_duration:g}",
            "--label", f"clientab round {round_no} {arm}",
        ]  # fmt: skip
        fanout = path.with_suffix(".b.json")  # cluster_users writes each scenario's run here
        if run_bench("bench.cluster_users", args, arm, path, a.timeout) and fanout.exists():
            run["users_json"] = str(fanout)
            run |= user_figures(load(fanout))
    return run


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    arms = a.arm or list(ARMS)
    json_path = a.json or runner.RESULTS / f"clientab-{runner.stamp()}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    doc = runner.header("clientab", a.label, vars(a))
    doc["arms"] = {arm: ARMS[arm] for arm in arms}
    runs: list[dict[str, object]] = []
    for round_no in range(1, a.rounds + 1):
        order = arms if round_no % 2 else arms[::-1]
        runs += [one_run(a, arm, round_no, json_path) for arm in order]
    doc["runs"] = runs
    rows, summary = table(runs, arms)
    doc["summary"] = summary
    doc["table"] = rows_json(rows)
    notes = [
        (
            f"{a.rounds} rounds, arms interleaved (order flips each round); figures are medians "
            "over rounds [min-max]; Δ is the last arm against the first, per round in brackets"
        ),
        (
            f"publish: 1 node on CPU 0, {a.connections} connections on CPU 1, "
            f"{a.publish_duration:g} s per mode; users: {a.users} clients on node B, "
            f"{a.rate:g} msg/s for {a.user_duration:g} s published on node A"
        ),
    ]
    disturbed = [
        f"round {r['round']} {r['arm']}: {k.removesuffix('_disturbed')}"
        for r in runs
        for k, v in r.items()
        if k.endswith("_disturbed") and v
    ]
    if disturbed:
        notes.append("disturbed by other processes: " + ", ".join(disturbed))
    doc["notes"] = notes
    write_json(json_path, doc)
    print_table(f"pushsvc Redis client layer A/B · {' vs '.join(arms)}", rows)
    for note in notes:
        print(f"note: {note}")
    print(f"JSON: {json_path}")
    return 0


def table(runs: list[dict[str, object]], arms: list[str]) -> tuple[list[Row], dict[str, object]]:
    """One row per figure: each arm's median over rounds, and the last arm against the first."""

    def col(arm: str, key: str) -> list[float]:
        return [runner.num(r[key]) for r in runs if r["arm"] == arm and key in r]

    rows: list[Row] = []
    summary: dict[str, object] = {}
    first, last = arms[0], arms[-1]
    for key, what, unit, higher in FIGURES:
        cols = {arm: col(arm, key) for arm in arms}
        if not all(cols.values()):
            continue
        medians = {arm: stats.median(v) for arm, v in cols.items()}
        base, other = medians[first], medians[last]
        diff = (other - base) / base * 100 if base else float("nan")
        pairs = _pairs(runs, key, first, last)
        summary[key] = {"values": cols, "medians": medians, "difference_pct": diff, "pairs": pairs}
        text = " · ".join(
            f"{arm} {_fmt(medians[arm])} [{_fmt(min(v))}-{_fmt(max(v))}]" for arm, v in cols.items()
        )
        if len(arms) > 1:
            better = (diff > 0) == higher
            text += (
                f" {unit} · Δ {last} {diff:+.1f} % ({'better' if better else 'worse'}; rounds: "
                + ", ".join(f"{p:+.1f}" for p in pairs)
                + " %)"
            )
        rows.append(Row(what, text))
    for check, label in (
        (lambda r: r.get("single_errors", 0) or r.get("batch_errors", 0), "non-202 answers"),
        (lambda r: r.get("user_missing", 0) or r.get("user_duplicates", 0), "missing/dup"),
        (lambda r: r.get("user_errors", 0), "user publish errors"),
    ):
        rows.append(_check_row(runs, check, label))
    return rows, summary


def _check_row(
    runs: list[dict[str, object]], check: Callable[[dict[str, object]], object], label: str
) -> Row:
    bad = [f"round {r['round']} {r['arm']}" for r in runs if check(r)]
    return Row(f"runs with {label}", ", ".join(bad) or "none", "none", met=not bad)


def _pairs(runs: list[dict[str, object]], key: str, first: str, last: str) -> list[float]:
    by_round: dict[object, dict[object, float]] = {}
    for r in runs:
        if key in r:
            by_round.setdefault(r["round"], {})[r["arm"]] = runner.num(r[key])
    return [
        (v[last] - v[first]) / v[first] * 100
        for v in by_round.values()
        if first in v and last in v and v[first]
    ]


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _list(value: object) -> list[dict[str, int]]:
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


if __name__ == "__main__":
    sys.exit(main())
