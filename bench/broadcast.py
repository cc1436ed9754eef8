"""The broadcast phase: publish to ``all``, time the arrival at every client, repeat."""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass

from bench import procstat, stats
from bench.api import ApiClient
from bench.common import BROADCAST_EVENT, BroadcastArrivals, CollectBroadcast
from bench.node import DISTURBED_SHARE, Node, wait_quiet
from bench.options import Options
from bench.report import Results, Row, log
from bench.targets import BASELINE_BROADCAST, TARGET_BROADCAST_MS
from bench.workers import WorkerGroup

CLIENT_BOUND_SHARE = 0.85
CLIENT_BOUND_MIN_MS = 20.0


@dataclass
class BroadcastRun:
    """One broadcast: latencies from the publish request to each client, and who used the CPUs."""

    seq: int
    received: int
    missing: int
    duplicates: int
    online_sessions: object
    publish_http_ms: float
    first_ms: float
    p50_ms: float
    p99_ms: float
    last_ms: float
    waited_for_quiet_s: float
    cpu: dict[str, object]

    @property
    def disturbed(self) -> bool:
        """Other processes used more than :data:`DISTURBED_SHARE` of a CPU meanwhile."""
        other = self.cpu.get("other_cpu_seconds")
        window = self.cpu.get("seconds")
        return (
            isinstance(other, float)
            and isinstance(window, float)
            and (other > DISTURBED_SHARE * window)
        )

    @property
    def client_bound(self) -> bool:
        """The load clients were busy for most of the latency window."""
        client = self.cpu.get("client_cpu_seconds")
        return (
            self.last_ms >= CLIENT_BOUND_MIN_MS
            and isinstance(client, float)
            and client * 1e3 >= CLIENT_BOUND_SHARE * self.last_ms
        )


async def broadcast_once(
    seq: int, opts: Options, node: Node, group: WorkerGroup, api: ApiClient
) -> BroadcastRun | str:
    """Publish broadcast ``seq`` and collect its arrivals; a string says why it failed."""
    waited = await wait_quiet(node, group, opts.quiet_wait) if opts.quiet_wait else 0.0
    window = procstat.Window(node.pids(), group.pids, node.helper_pids)
    body = {"to": {"all": True}, "event": BROADCAST_EVENT, "data": {"seq": seq, "run": opts.run_id}}
    resp = await api.post_json("/v1/messages", body)
    if resp.status != 202:
        return f"broadcast {seq}: HTTP {resp.status} {resp.body[:200]!r}"
    got = await group.call(
        CollectBroadcast(seq=seq, timeout=opts.collect_timeout), BroadcastArrivals
    )
    cpu = window.close()
    lat_ms = sorted((t - resp.sent_ns) / 1e6 for r in got for t in r.arrivals)
    answer = resp.json()
    return BroadcastRun(
        seq=seq,
        received=len(lat_ms),
        missing=sum(r.missing for r in got),
        duplicates=sum(r.duplicates for r in got),
        online_sessions=answer.get("online_sessions") if isinstance(answer, dict) else None,
        publish_http_ms=resp.elapsed_ns / 1e6,
        first_ms=lat_ms[0] if lat_ms else math.nan,
        p50_ms=stats.quantile(lat_ms, 0.5),
        p99_ms=stats.quantile(lat_ms, 0.99),
        last_ms=lat_ms[-1] if lat_ms else math.nan,
        waited_for_quiet_s=waited,
        cpu=cpu,
    )


async def broadcast_phase(
    opts: Options, node: Node, group: WorkerGroup, api: ApiClient, res: Results
) -> None:
    """Time broadcasts until ``opts.broadcasts`` of them ran undisturbed by other processes, or
    ``opts.max_broadcasts`` in all; the figures come from the undisturbed ones if there are any."""
    runs: list[BroadcastRun] = []
    seq = 0
    while sum(not r.disturbed for r in runs) < opts.broadcasts and seq < opts.max_broadcasts:
        seq += 1
        run = await broadcast_once(seq, opts, node, group, api)
        if isinstance(run, str):
            res.notes.append(run)
            log(run)
            continue
        runs.append(run)
        cpu = run.cpu
        log(
            f"broadcast {seq}: last {run.last_ms:.1f} ms, p50 {run.p50_ms:.1f} ms, "
            f"{run.received} received, {run.missing} missing, {run.duplicates} duplicates; "
            f"CPU s server {cpu['server_cpu_seconds']:.2f} clients {cpu['client_cpu_seconds']:.2f}"
            f" other {cpu['other_cpu_seconds']:.2f}" + (" (disturbed)" if run.disturbed else "")
        )
        await asyncio.sleep(opts.broadcast_interval)

    quiet = [r for r in runs if not r.disturbed]
    counted = quiet or runs
    which = f"{len(counted)} undisturbed" if quiet else f"{len(counted)}, all disturbed"
    lasts = [r.last_ms for r in counted]
    missing = sum(r.missing for r in runs)
    dups = sum(r.duplicates for r in runs)
    med = stats.median(lasts)
    p50 = stats.median([r.p50_ms for r in counted])
    per_delivery = stats.median(
        [float(str(r.cpu["server_cpu_seconds"])) * 1e6 / max(r.received, 1) for r in counted]
    )
    res.doc["broadcast"] = {
        "runs": [
            {**asdict(r), "disturbed": r.disturbed, "client_bound": r.client_bound} for r in runs
        ],
        "counted": which,
        "last_ms_min": min(lasts, default=math.nan),
        "last_ms_median": med,
        "last_ms_max": max(lasts, default=math.nan),
        "last_ms_median_all_runs": stats.median([r.last_ms for r in runs]),
        "p50_ms_median": p50,
        "server_cpu_per_delivery_us_median": per_delivery,
        "missing_total": missing,
        "duplicates_total": dups,
    }
    disturbed = len(runs) - len(quiet)
    if disturbed:
        res.notes.append(
            f"{disturbed} of {len(runs)} broadcasts ran while other processes used more than "
            f"{DISTURBED_SHARE:.0%} of a CPU"
            + ("; they are left out of the latency figures" if quiet else "")
        )
    bound = sum(r.client_bound for r in counted)
    if bound:
        res.notes.append(
            f"{bound} of {len(counted)} broadcasts may be client-bound: the load clients used "
            f"≥ {CLIENT_BOUND_SHARE:.0%} of the latency window in CPU, so those figures are upper "
            "bounds on the server's"
        )
    spread = f"min {min(lasts):.0f} · max {max(lasts):.0f} ms" if lasts else ""
    res.rows += [
        Row(
            f"broadcast publish → last client (median of {which})",
            f"{med:.1f} ms",
            f"≤ {TARGET_BROADCAST_MS:g} ms",
            BASELINE_BROADCAST,
            med <= TARGET_BROADCAST_MS,
        ),
        Row("broadcast publish → last client (range)", spread),
        Row("broadcast publish → median client", f"{p50:.1f} ms"),
        Row("server CPU per broadcast delivery (median)", f"{per_delivery:.1f} µs"),
        Row(
            f"broadcast delivered exactly once ({len(runs)} broadcasts)",
            f"{missing} missing · {dups} duplicates",
            "0 · 0",
            met=missing == 0 and dups == 0,
        ),
    ]
