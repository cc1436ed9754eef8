"""The figures of a node-loss run (``bench.nodeloss``), from what the publisher and every client
recorded, and the table they make.

A victim client is one whose first ``welcome`` came from the victim node. Its resume time runs
from the ``kill -9`` to its first ``welcome`` from another node. Latency runs from just before a
publish was first written to the arrival of the message at its user's app (one machine clock);
a message that reached a victim client through the replay after its resume counts with that
whole wait. Windows are by publish time: ``steady`` until 1 s before the kill, ``just_before``
that last second, ``during`` the ``--window`` seconds after the kill, ``after`` the rest.

CPU is read from ``/proc`` over the window after the kill, from the kill to the end of
``--after``, and over as long as the window just before the kill, split into the survivors, the
load clients, Redis (and the victim, before the kill) and all other work on the machine (the
machine is shared: other work competes for the same cores).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from bench import stats
from bench.report import Row
from bench.resumewire import Report

STEADY_MARGIN_NS = 1_000_000_000  # published this close to the kill: not steady state


@dataclass
class Run:
    kill_ns: int
    end_ns: int
    victim_node: str
    ramp_s: float
    accepted: list[tuple[int, str, int, int]]  # (user index, id, first sent ns, attempts)
    statuses: dict[str, int]
    abandoned: int
    reports: list[Report]
    settled_s: float | None
    cpu_during: dict[str, object]  # procstat.Window over the window after the kill
    cpu_before: dict[str, object]  # the same, over as long (at most) just before the kill
    cpu_after: dict[str, object]  # the same, from the kill to the end of ``--after``


def _cpu(window: dict[str, object]) -> dict[str, float]:
    """CPU seconds of a :class:`bench.procstat.Window`: the survivors, the load clients, Redis
    (and the victim, before the kill), and every other process on the machine."""
    names = {
        "seconds": "seconds",
        "survivors": "server_cpu_seconds",
        "clients": "client_cpu_seconds",
        "redis_victim": "helper_cpu_seconds",
        "others": "other_cpu_seconds",
    }
    out = {}
    for name, key in names.items():
        value = window.get(key)
        out[name] = round(value, 2) if isinstance(value, float) else 0.0
    return out


def _ms(values: list[float]) -> dict[str, float | int]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in stats.summary(values).items()}


def figures(a: argparse.Namespace, run: Run) -> dict[str, object]:
    devices = {d.index: d for r in run.reports for d in r.devices}
    errors: Counter[str] = Counter()
    for r in run.reports:
        errors.update(r.errors)
    kill = run.kill_ns
    victims = [d for d in devices.values() if d.welcomes and d.welcomes[0][1] == run.victim_node]
    victim_users = {d.index for d in victims}
    resume_ms: list[float] = []
    handshake_ms: list[float] = []  # the successful attempt: dial -> welcome
    waited_ms: list[float] = []  # connection end -> that attempt's dial (backoff, retries)
    noticed_ms: list[float] = []
    unresumed = 0
    for d in victims:
        later = [t for t, node in d.welcomes if t > kill and node != run.victim_node]
        lost = [t for t in d.losses if t >= kill]
        if lost:
            noticed_ms.append((lost[0] - kill) / 1e6)
        if not later:
            unresumed += 1
            continue
        resume_ms.append((later[0] - kill) / 1e6)
        dial = max(t for t in d.dials if t <= later[0])
        handshake_ms.append((later[0] - dial) / 1e6)
        if lost:
            waited_ms.append((dial - lost[0]) / 1e6)
    others_dropped = sum(
        1
        for d in devices.values()
        if d.index not in victim_users and any(t >= kill for t in d.losses)
    )
    arrivals = {d.index: dict(d.arrivals) for d in devices.values()}
    owner = {mid: user for user, mid, _, _ in run.accepted}
    window_end = kill + int(a.window * 1e9)
    lat: dict[str, list[float]] = {
        k: []
        for k in ("steady", "just_before", "during_survivors", "during_victims", "during", "after")
    }
    lost_ids: list[str] = []
    for user, mid, sent, _ in run.accepted:
        got = arrivals.get(user, {}).get(mid)
        if got is None:
            lost_ids.append(mid)
            continue
        ms = (got - sent) / 1e6
        if sent < kill - STEADY_MARGIN_NS:
            lat["steady"].append(ms)
        elif sent < kill:
            lat["just_before"].append(ms)
        elif sent < window_end:
            lat["during"].append(ms)
            lat["during_victims" if user in victim_users else "during_survivors"].append(ms)
        else:
            lat["after"].append(ms)
    misrouted = sum(
        1 for index, got in arrivals.items() for mid in got if owner.get(mid, index) != index
    )
    unaccounted = sum(1 for got in arrivals.values() for mid in got if mid not in owner)
    retried = sum(1 for s in run.accepted if s[3] > 1)
    during, before, after = _cpu(run.cpu_during), _cpu(run.cpu_before), _cpu(run.cpu_after)
    extra = after["survivors"] - before["survivors"] * after["seconds"] / before["seconds"]
    return {
        "clients": len(devices),
        "victim_sessions": len(victims),
        "ramp_s": round(run.ramp_s, 1),
        "resumed": len(resume_ms),
        "unresumed": unresumed,
        "all_resumed_s": round(max(resume_ms) / 1e3, 2) if resume_ms and not unresumed else None,
        "resume_ms": _ms(resume_ms),
        "loss_noticed_ms": _ms(noticed_ms),
        "reconnect_wait_ms": _ms(waited_ms),
        "resume_handshake_ms": _ms(handshake_ms),
        "survivor_clients_dropped": others_dropped,
        "failed_attempts": sum(d.failed_attempts for d in devices.values()),
        "client_errors": dict(errors),
        "stopped": sum(1 for d in devices.values() if d.stopped),
        "accepted": len(run.accepted),
        "accepted_after_retry": retried,
        "abandoned": run.abandoned,
        "publish_statuses": run.statuses,
        "lost": len(lost_ids),
        "lost_ids": lost_ids[:20],
        "duplicates_to_app": sum(d.duplicates for d in devices.values()),
        "offset_dropped": sum(d.offset_dropped for d in devices.values()),
        "dropped_unseen": sum(d.dropped_unseen for d in devices.values()),
        "misrouted": misrouted,
        "unaccounted": unaccounted,
        "latency_ms": {k: _ms(v) for k, v in lat.items()},
        "settled_s": run.settled_s,
        "cpu_during": during,
        "cpu_before": before,
        "cpu_after": after,
        "survivor_cpu_per_resume_us": round(extra / len(resume_ms) * 1e6) if resume_ms else None,
        "publish_s_after_kill": round((run.end_ns - kill) / 1e9, 1),
    }


def _lat(result: dict[str, object], window: str) -> str:
    lat = result["latency_ms"]
    assert isinstance(lat, dict)
    s = lat[window]
    if not s.get("count"):
        return "no messages"
    return f"p50 {s['p50']:,.1f} · p99 {s['p99']:,.1f} · max {s['max']:,.1f} ms ({s['count']:,})"


def _cpu_text(cpu: object) -> str:
    assert isinstance(cpu, dict)
    return (
        f"{cpu['seconds']:.1f} s wall: survivors {cpu['survivors']:.1f} · clients "
        f"{cpu['clients']:.1f} · redis (+ victim) {cpu['redis_victim']:.1f} · "
        f"other work {cpu['others']:.1f}"
    )


def _pct(result: dict[str, object], name: str) -> str:
    s = result[name]
    assert isinstance(s, dict)
    if not s.get("count"):
        return ""
    return f"p50 {s['p50']:,.0f} · p99 {s['p99']:,.0f} · max {s['max']:,.0f} ms"


def rows(a: argparse.Namespace, r: dict[str, object]) -> list[Row]:
    res = r["resume_ms"]
    noticed = r["loss_noticed_ms"]
    assert isinstance(res, dict)
    assert isinstance(noticed, dict)
    all_s = r["all_resumed_s"]
    ok_resume = isinstance(all_s, float) and all_s <= a.target
    dist = (
        f"p50 {res['p50'] / 1e3:.2f} · p90 {res['p90'] / 1e3:.2f} · p99 {res['p99'] / 1e3:.2f} s"
        if res.get("count")
        else "none"
    )
    notice = (
        f"p50 {noticed['p50']:.0f} · max {noticed['max']:.0f} ms" if noticed.get("count") else ""
    )
    waited = _pct(r, "reconnect_wait_ms")
    shake = _pct(r, "resume_handshake_ms")
    statuses = r["publish_statuses"]
    assert isinstance(statuses, dict)
    w = f"{a.window:g} s after the kill"
    return [
        Row(
            "sessions on the victim at the kill / asked",
            f"{r['victim_sessions']:,} / {a.sessions:,}",
            met=r["victim_sessions"] == a.sessions,
        ),
        Row(
            "kill → every victim client has a welcome from a survivor",
            f"{all_s} s ({r['resumed']:,} resumed, {r['unresumed']} not)",
            f"≤ {a.target:g} s",
            met=ok_resume,
        ),
        Row("resume time from the kill", dist),
        Row("kill → clients see their connection end", notice),
        Row("connection end → the successful reconnect's dial (backoff, retries)", waited),
        Row("that reconnect: dial → welcome (handshake, hello, replay start)", shake),
        Row(
            "failed reconnect attempts · survivors' clients dropped",
            f"{r['failed_attempts']:,} {r['client_errors'] or ''} · "
            f"{r['survivor_clients_dropped']}",
        ),
        Row(
            "user messages accepted (202) · retried · abandoned",
            f"{r['accepted']:,} · {r['accepted_after_retry']} · {r['abandoned']} {statuses}",
        ),
        Row("accepted but not received by the user's app", f"{r['lost']}", "0", met=r["lost"] == 0),
        Row(
            "duplicates to the app after offset dedupe · redeliveries dropped by offset",
            f"{r['duplicates_to_app']} · {r['offset_dropped']} ({r['dropped_unseen']} unseen)",
            "0",
            met=r["duplicates_to_app"] == 0 and r["dropped_unseen"] == 0,
        ),
        Row("misrouted · unaccounted ids", f"{r['misrouted']} · {r['unaccounted']}", "0 · 0"),
        Row("latency, steady state (until 1 s before the kill)", _lat(r, "steady")),
        Row("latency, published in the last 1 s before the kill", _lat(r, "just_before")),
        Row(f"latency, {w}: survivors' users", _lat(r, "during_survivors")),
        Row(f"latency, {w}: the victim's users (incl. reconnect)", _lat(r, "during_victims")),
        Row(f"latency, {w}: all users", _lat(r, "during")),
        Row("latency, later (until the publisher stopped)", _lat(r, "after")),
        Row(f"CPU s in the {w}", _cpu_text(r["cpu_during"])),
        Row("CPU s just before the kill", _cpu_text(r["cpu_before"])),
        Row(f"CPU s from the kill to {a.after:g} s after it", _cpu_text(r["cpu_after"])),
        Row(
            "survivors' extra CPU per resumed session (over the rate before the kill)",
            f"{r['survivor_cpu_per_resume_us']} µs",
        ),
    ]
