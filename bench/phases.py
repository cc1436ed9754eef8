"""The ramp and the user-targeted phase of the fan-out benchmark."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from bench import procstat, stats
from bench.api import ApiClient
from bench.common import USER_EVENT, CollectUser, Ramp, Ramped, Setup, UserArrivals, user_id
from bench.node import DISTURBED_SHARE, Node, wait_quiet
from bench.options import Options
from bench.report import Results, Row, log
from bench.targets import BASELINE_HANDSHAKE, BASELINE_RSS, TARGET_HANDSHAKE_US, TARGET_RSS_KIB
from bench.workers import WorkerGroup


class PublishTally:
    """User-targeted messages posted one by one: ``sent`` maps the ``seq`` of each accepted one
    (202) to when its request was written (``time.time_ns()``); ``http_ms`` holds their request
    times, ``errors`` the others by HTTP status or exception."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.http_ms: list[float] = []
        self.errors: Counter[str] = Counter()

    async def post(self, api: ApiClient, path: str, body: object, seq: int) -> None:
        try:
            resp = await api.post_json(path, body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        if resp.status == 202:
            self.sent[seq] = resp.sent_ns
            self.http_ms.append(resp.elapsed_ns / 1e6)
        else:
            self.errors[f"HTTP {resp.status}"] += 1


async def paced(
    total: int, rate: float, start: Callable[[int], Coroutine[Any, Any, None]]
) -> float:
    """Run ``start(seq)`` for every ``seq`` in ``range(total)``, the n-th begun ``n / rate``
    seconds after the first; return the seconds from the first begun to the last ended."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.TaskGroup() as tg:
        for seq in range(total):
            delay = t0 + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(start(seq))
    return loop.time() - t0


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each of ``parts`` near-equal slices of ``range(n)``."""
    out = []
    first = 0
    for i in range(parts):
        count = n // parts + (1 if i < n % parts else 0)
        out.append((first, count))
        first += count
    return out


async def mint_over_http(api: ApiClient, opts: Options) -> list[str]:
    log(f"minting {opts.connections} tokens through POST /v1/tokens (give --token-secret: faster)")
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            body = {"user": user_id(opts.user_prefix, i), "topics": [], "ttl": opts.token_ttl}
            resp = await api.post_json("/v1/tokens", body)
            if resp.status != 200:
                raise RuntimeError(f"POST /v1/tokens: HTTP {resp.status} {resp.body[:200]!r}")
            token = resp.json()
            assert isinstance(token, dict)
            return str(token["token"])

    return list(await asyncio.gather(*(one(i) for i in range(opts.connections))))


def setups(opts: Options, node: Node, tokens: list[str] | None) -> list[Setup]:
    base = ipaddress.IPv4Address(opts.source_base)
    out = []
    for i, (first, count) in enumerate(split(opts.connections, opts.client_procs)):
        out.append(
            Setup(
                worker=i,
                run=opts.run_id,
                url=node.client_urls[i % len(node.client_urls)],
                source_ip=str(base + i),
                first=first,
                count=count,
                concurrency=opts.concurrency,
                connect_timeout=opts.connect_timeout,
                deadline=opts.timeout + 60,
                cpus=opts.client_cpus,
                user_prefix=opts.user_prefix,
                device_prefix="bench-",
                token_ttl=opts.token_ttl,
                topics=[],
                token_secret=node.token_secret,
                token_private_key=node.token_private_key,
                token_algorithm=opts.token_algorithm,
                tokens=tokens[first : first + count] if tokens else [],
            )
        )
    return out


async def ramp_phase(opts: Options, node: Node, group: WorkerGroup, res: Results) -> list[int]:
    pids = node.pids()
    idle_from = (time.monotonic(), procstat.sample(pids).cpu_seconds)
    await asyncio.sleep(opts.settle)
    waited = await wait_quiet(node, group, opts.quiet_wait) if opts.quiet_wait else 0.0
    before = procstat.sample(pids)
    idle_rate = (before.cpu_seconds - idle_from[1]) / max(time.monotonic() - idle_from[0], 1e-3)
    window_start = time.monotonic()
    log(f"ramping {opts.connections} connections over {len(group.workers)} processes")
    window = procstat.Window(pids, group.pids, node.helper_pids)
    t0 = time.perf_counter()
    ramped = await group.call(Ramp(), Ramped)
    wall = time.perf_counter() - t0
    ramp_cpu = window.close()
    at_end = procstat.sample(pids)
    await asyncio.sleep(opts.settle)
    pids = node.pids()
    after = procstat.sample(pids)
    idle_cpu = idle_rate * (time.monotonic() - window_start)

    ok = sum(r.ok for r in ramped)
    failed = sum(r.failed for r in ramped)
    errors: Counter[str] = Counter()
    for r in ramped:
        errors.update(r.errors)
    hs_ms = [t / 1e6 for r in ramped for t in r.handshake_ns]
    divisor = max(ok, 1)
    rss_per = (after.rss_kib - before.rss_kib) / divisor
    pss_per = (
        (after.pss_kib - before.pss_kib) / divisor
        if after.pss_kib is not None and before.pss_kib is not None
        else None
    )
    cpu_us = (after.cpu_seconds - before.cpu_seconds) / divisor * 1e6
    cpu_us_at_end = (at_end.cpu_seconds - before.cpu_seconds) / divisor * 1e6
    cpu_us_busy = (after.cpu_seconds - before.cpu_seconds - idle_cpu) / divisor * 1e6
    log(
        f"ramp: {ok} open, {failed} failed in {wall:.1f} s; RSS {rss_per:.1f} KiB/conn, "
        f"CPU {cpu_us:.0f} µs/handshake"
    )
    res.doc["ramp"] = {
        "requested": opts.connections,
        "ok": ok,
        "failed": failed,
        "errors": dict(errors),
        "seconds": wall,
        "per_worker_seconds": [r.seconds for r in ramped],
        "handshakes_per_second": ok / wall if wall else None,
        "connect_to_welcome_ms": stats.summary(hs_ms),
        "cpu": ramp_cpu,
        "waited_for_quiet_s": waited,
    }
    other = ramp_cpu["other_cpu_seconds"]
    if isinstance(other, float) and other > DISTURBED_SHARE * wall:
        res.notes.append(
            f"other processes used {other:.1f} CPU-seconds during the {wall:.1f} s ramp: "
            "handshake CPU and memory are the server's own, the ramp time is not"
        )
    res.doc["memory"] = {
        "server_pids": pids,
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "rss_per_connection_kib": rss_per,
        "pss_before_kib": before.pss_kib,
        "pss_after_kib": after.pss_kib,
        "pss_per_connection_kib": pss_per,
    }
    res.doc["cpu"] = {
        "server_cpu_seconds_ramp": after.cpu_seconds - before.cpu_seconds,
        "per_handshake_us": cpu_us,
        "per_handshake_us_at_ramp_end": cpu_us_at_end,
        "idle_cpu_share": idle_rate,
        "per_handshake_us_less_idle": cpu_us_busy,
        "clock_ticks_per_second": procstat.CLK_TCK,
    }
    res.rows += [
        Row("connections open / requested", f"{ok:,} / {opts.connections:,}", met=failed == 0),
        Row("ramp time", f"{wall:.1f} s ({ok / wall if wall else 0:,.0f}/s)"),
        Row(
            "server RSS per connection",
            f"{rss_per:.2f} KiB",
            f"≤ {TARGET_RSS_KIB:g} KiB",
            BASELINE_RSS,
            rss_per <= TARGET_RSS_KIB,
        ),
        Row(
            "server CPU per handshake",
            f"{cpu_us:.0f} µs",
            f"≤ {TARGET_HANDSHAKE_US:g} µs",
            BASELINE_HANDSHAKE,
            cpu_us <= TARGET_HANDSHAKE_US,
        ),
        Row("server RSS total after ramp", f"{after.rss_kib / 1024:.1f} MiB"),
    ]
    if failed:
        res.notes.append(f"{failed} connections failed: {dict(errors)}")
    return sorted(i for r in ramped for i in r.connected)


async def user_phase(
    opts: Options,
    node: Node,
    group: WorkerGroup,
    api: ApiClient,
    connected: list[int],
    res: Results,
) -> None:
    total = int(opts.user_rate * opts.user_duration)
    if total <= 0 or not connected:
        return
    rng = random.Random(opts.seed)
    tally = PublishTally()
    sent, http_ms, errors = tally.sent, tally.http_ms, tally.errors

    def one(seq: int) -> Coroutine[Any, Any, None]:
        user = user_id(opts.user_prefix, rng.choice(connected))
        body = {
            "to": {"users": [user]},
            "event": USER_EVENT,
            "data": {"seq": seq, "run": opts.run_id},
        }
        return tally.post(api, "/v1/messages", body, seq)

    log(f"user-targeted: {total} messages at {opts.user_rate:g}/s")
    window = procstat.Window(node.pids(), group.pids, node.helper_pids)
    publish_seconds = await paced(total, opts.user_rate, one)
    publish_cpu = window.close()

    arrivals: dict[int, int] = {}
    dup_ids, acks = await collect_user(group, sent, arrivals, time.monotonic() + opts.user_drain)
    lat = [(arrivals[s] - t0) / 1e6 for s, t0 in sent.items() if s in arrivals]
    summary = stats.summary(lat)
    missing = sum(1 for s in sent if s not in arrivals)
    res.doc["user"] = {
        "requested": total,
        "rate_per_second": opts.user_rate,
        "publish_seconds": publish_seconds,
        "cpu_while_publishing": publish_cpu,
        "accepted": len(sent),
        "errors": dict(errors),
        "received": len(lat),
        "missing": missing,
        "duplicates": dup_ids,
        "acks_sent": acks,
        "latency_ms": summary,
        "publish_http_ms": stats.summary(http_ms),
    }
    log(
        f"user-targeted: p50 {summary.get('p50', math.nan):.1f} ms, "
        f"p99 {summary.get('p99', math.nan):.1f} ms, {missing} missing"
    )
    res.rows += [
        Row(
            f"user-targeted publish → client p50 / p99 / max ({opts.user_rate:g}/s)",
            f"{summary.get('p50', math.nan):.1f} / {summary.get('p99', math.nan):.1f} / "
            f"{summary.get('max', math.nan):.1f} ms",
        ),
        Row(
            "user-targeted delivered exactly once",
            f"{missing} missing · {dup_ids} duplicates · {sum(errors.values())} publish errors",
            "0 · 0",
            met=missing == 0 and dup_ids == 0 and not errors,
        ),
    ]


async def collect_user(
    group: WorkerGroup, sent: dict[int, int], arrivals: dict[int, int], deadline: float
) -> tuple[int, int]:
    """Gather user-targeted arrivals into ``arrivals`` until every message of ``sent`` arrived or
    ``deadline`` (monotonic) passes; return the duplicates and the acks the workers counted."""
    while True:
        replies = await group.call(CollectUser(), UserArrivals)
        for r in replies:
            for seq, t in r.arrivals:
                arrivals.setdefault(seq, t)
        duplicates = sum(r.duplicates for r in replies)
        acks = sum(r.acks_sent for r in replies)
        if all(s in arrivals for s in sent) or time.monotonic() > deadline:
            return duplicates, acks
        await asyncio.sleep(0.2)
