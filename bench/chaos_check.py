"""The verdict of a fault campaign: the delivery guarantees, checked against what happened.

- **delivered** — every (202'd id, device its address covers) pair was received, or the
  message's trail (``GET /v1/messages/{id}``) says ``expired``. Pairs lost on purpose (the
  ``drop`` fault: an id the device's node logged as dropped — it may have been published well
  before the window and written in it, by a replay or a redelivery; without the logs, a dropped
  id published while its window was open, to a device on that node) are counted apart, as
  *injected*.
- **misrouted** — no device was handed a message whose address does not cover it.
- **double ids** — at most one id per (caller, idempotency key): from every 202 of every retry,
  and from the ids the devices received (each message carries its key in ``data``).
- **publish answers** — every answer to a (valid) publish is 202, 503 (retry with the same key)
  or 409 (the key is being published right now); anything else, e.g. a 500, leaves the caller
  unable to know whether it was published, and the publisher gives that key up.
- **monitor: no false loss** — per node, the monitor's unfanned + lost deliveries (its
  ``/metrics``) are not more than the acked-message pairs that really went missing there, plus
  those the ``drop`` fault ate that only arrived after the monitor's fan-out check (replayed
  when the node restarted), plus the canaries it lost itself (a dropped canary is lost too).
- **monitor: injected loss reported** — each node that lost deliveries on purpose shows them in
  the monitor's metrics or in a ``PushDeliveryLoss`` alert in Alertmanager.
- **monitor: real loss reported** — likewise each node where an ``ack: true`` message went
  missing without the ``drop`` fault (n/a when none did): a loss nobody reports is the worst.
- **failover: publishes refused** — per ``failover`` fault, from the kill to the later of the
  first 202 to a publish sent after it and the last refused answer (503, 409, timeout, refused
  connection) before the next fault: at most ``refusal_limit`` s (a campaign without the
  ``failover`` fault has no such row; one whose failovers all failed fails it).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_cluster import KEY, MONITOR
from bench.chaos_faults import DROP_FRACTION, Fault
from bench.chaos_load import Device, Publisher, Sent, caller_key

WINDOW_MARGIN = 1.0  # s around a drop window: a 202 comes a moment after the fan-out
TRAILS_READ = 300  # most trails looked up for missing pairs
SAMPLES = 5
#: The earliest the monitor's fan-out check looks at a message after its publish: a dropped
#: delivery that arrives later (replayed after its node restarted) is counted unfanned by then.
FANOUT_AFTER = MONITOR["ack_timeout"] + MONITOR["monitor_grace"]


@dataclass
class Pair:
    sent: Sent
    device: Device


@dataclass
class Verdict:
    rows: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool | None, value: int | str, detail: str = "") -> None:
        result = "n/a" if ok is None else "PASS" if ok else "FAIL"
        self.rows.append({"invariant": name, "result": result, "value": value, "detail": detail})

    @property
    def failed(self) -> bool:
        return any(r["result"] == "FAIL" for r in self.rows)


#: What a node logs for each message its ``drop_deliveries`` fault dropped.
DROPPED_LINE = "delivery dropped by a fault"


def logged_drops(logs: Path | None) -> dict[str, set[str]] | None:
    """node id -> the message ids its ``drop`` fault dropped, from the nodes' JSON log lines
    (``<node id>.log`` in ``logs``, appended to across restarts); None without ``logs``."""
    if logs is None:
        return None
    out: dict[str, set[str]] = {}
    for path in logs.glob("*.log"):
        ids = out.setdefault(path.stem, set())
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if DROPPED_LINE not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("msg") == DROPPED_LINE and "message_id" in record:
                    ids.add(str(record["message_id"]))
    return out


def dropped(
    sent: Sent,
    device: Device,
    faults: list[Fault],
    logged: Mapping[str, set[str]] | None = None,
) -> bool:
    """True when the ``drop`` fault ate this pair on purpose: the device's node logged the id as
    dropped (``logged``), or, without logs, may have (a dropped id, 202'd while a window of that
    node was open)."""
    if logged is not None:
        return sent.id in logged.get(device.node, ())
    if zlib.crc32(sent.id.encode()) / 2**32 >= DROP_FRACTION:
        return False
    return any(
        f.kind == "drop"
        and f.window is not None
        and f.node_id == device.node
        and f.window[0] - WINDOW_MARGIN <= sent.at <= f.window[1] + WINDOW_MARGIN
        for f in faults
    )


def missing_pairs(publishers: list[Publisher], devices: list[Device]) -> tuple[list[Pair], int]:
    """The addressed (message, device) pairs not received, and how many were addressed."""
    by_user: dict[str, list[Device]] = {}
    by_topic: dict[str, list[Device]] = {}
    for d in devices:
        by_user.setdefault(d.user, []).append(d)
        for t in d.topics:
            by_topic.setdefault(t, []).append(d)
    out = []
    addressed = 0
    for p in publishers:
        for s in p.accepted:
            covered = [d for u in s.users for d in by_user.get(u, [])]
            covered += [d for t in s.topics for d in by_topic.get(t, [])]
            addressed += len(covered)
            out += [Pair(s, d) for d in covered if s.id not in d.received]
    return out, addressed


def trail_states(api: str, ids: list[str]) -> dict[str, str]:
    out = {}
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as h:
        for msg_id in ids[:TRAILS_READ]:
            try:
                r = h.get(f"{api}/v1/messages/{msg_id}")
                out[msg_id] = str(r.json()["state"]) if r.status_code == 200 else str(r.status_code)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                out[msg_id] = type(exc).__name__
    return out


def refusal_window(
    answers: list[tuple[float, float, str]], killed: float, until: float
) -> dict[str, Any]:
    """What the publishers saw of one failover: ``answers`` are (sent, answered, status) in
    ``time.monotonic()``; the master was killed at ``killed``, the next fault began at
    ``until``. Seconds from the kill to the first 202 of a publish sent after it, to the last
    refused answer, the refusal window (the later of the two), and the refused answers."""
    after = [(s, a, st) for s, a, st in answers if a >= killed and s < until]
    first_202 = min((a for s, a, st in after if st == "202" and s >= killed), default=None)
    refused = sorted((a, st) for s, a, st in after if st != "202")
    ends = [t for t in (first_202, refused[-1][0] if refused else None) if t is not None]
    return {
        "first_202_s": None if first_202 is None else round(first_202 - killed, 2),
        "last_refused_s": round(refused[-1][0] - killed, 2) if refused else None,
        "refused_s": round(max(ends) - killed, 2) if ends else None,
        "refused_answers": _count(st for _, st in refused),
    }


def failovers(faults: list[Fault], publishers: list[Publisher], load_end: float) -> list[Fault]:
    """The failover faults that killed a master, each given its :func:`refusal_window`."""
    answers = [x for p in publishers for x in p.answers]
    out = []
    for i, f in enumerate(faults):
        if f.kind != "failover" or f.killed_at is None or f.failover is None:
            continue
        until = next((g.began for g in faults[i + 1 :] if g.began is not None), load_end)
        f.failover |= refusal_window(answers, f.killed_at, until)
        out.append(f)
    return out


def judge(
    publishers: list[Publisher],
    devices: list[Device],
    faults: list[Fault],
    api: str,
    monitor_missing: dict[str, dict[str, float]] | None,
    loss_alerts: set[str],
    load_end: float | None = None,
    refusal_limit: float = 5.0,
    logs: Path | None = None,
) -> Verdict:
    v = Verdict()
    accepted = [s for p in publishers for s in p.accepted]
    missing, pairs = missing_pairs(publishers, devices)
    logged = logged_drops(logs)
    injected = [m for m in missing if dropped(m.sent, m.device, faults, logged)]
    others = [m for m in missing if not dropped(m.sent, m.device, faults, logged)]
    states = trail_states(api, sorted({m.sent.id for m in others}))
    unexcused = [m for m in others if states.get(m.sent.id) != "expired"]
    samples = ", ".join(
        f"{m.sent.id} -> {m.device.name}@{m.device.node} ({states.get(m.sent.id, '?')})"
        for m in unexcused[:SAMPLES]
    )
    v.add(
        "every 202'd id delivered",
        not unexcused,
        len(unexcused),
        f"{len(unexcused)} of {pairs} pairs missing, not expired"
        + (f": {samples}" if samples else ""),
    )

    wrong = [(d.name, i, s) for d in devices for i, s in d.misrouted]
    v.add(
        "no misrouted message",
        not wrong,
        len(wrong),
        ", ".join(f"{i} on {s} -> {n}" for n, i, s in wrong[:SAMPLES]),
    )

    key_ids = {caller_key(p.caller, k): ids for p in publishers for k, ids in p.ids_by_key.items()}
    doubles = {k: ids for k, ids in key_ids.items() if len(ids) > 1}
    known = {i for ids in key_ids.values() for i in ids}
    abandoned = {caller_key(p.caller, k) for p in publishers for k in p.abandoned}
    unseen = {(i, d.keys.get(i, "")) for d in devices for i in d.received if i not in known}
    for i, k in unseen:
        if k in key_ids:
            doubles.setdefault(k, set(key_ids[k])).add(i)
    orphans = sorted(i for i, k in unseen if k in abandoned)
    v.add(
        "one id per (caller, key)",
        not doubles,
        len(doubles),
        ", ".join(f"{k}: {sorted(ids)}" for k, ids in list(doubles.items())[:SAMPLES]),
    )

    statuses: dict[str, int] = {}
    for p in publishers:
        for k, n in p.statuses.items():
            statuses[k] = statuses.get(k, 0) + n
    odd = {k: n for k, n in statuses.items() if k.isdigit() and k not in ("202", "409", "503")}
    v.add(
        "publish answers 202 or 503",
        not odd,
        sum(odd.values()),
        ", ".join(f"{n} x HTTP {k}" for k, n in sorted(odd.items()))
        + (f" ({len(abandoned)} keys given up)" if abandoned else "")
        + "".join(f"; {x}" for x in [o for p in publishers for o in p.odd][:2]),
    )

    truth: dict[str, int] = {}
    for m in missing:
        if m.sent.users:  # acked messages are the ones the monitor reconciles
            truth[m.device.node] = truth.get(m.device.node, 0) + 1
    late = _healed(publishers, devices, faults, late_after=FANOUT_AFTER, logged=logged)
    for d, _ in late:  # missing at the monitor's fan-out check: it counts them, rightly
        truth[d.node] = truth.get(d.node, 0) + 1
    lost_on = {m.device.node for m in injected}
    real_on: dict[str, int] = {}
    for m in unexcused:
        if m.sent.users:
            real_on[m.device.node] = real_on.get(m.device.node, 0) + 1
    if monitor_missing is None:
        v.add("monitor: no false loss", False, "?", "the monitor's /metrics could not be read")
        v.add("monitor: injected loss reported", False, "?", "")
        v.add("monitor: real loss reported", False, "?", "")
    else:
        said = {n: int(c["unfanned"] + c["lost"]) for n, c in monitor_missing.items()}
        # the canaries' own deliveries are reconciled too: a lost canary is a real loss
        real = {n: truth.get(n, 0) + int(c["canary_lost"]) for n, c in monitor_missing.items()}
        false = {n: (c, real[n]) for n, c in said.items() if c > real[n]}
        v.add(
            "monitor: no false loss",
            not false,
            sum(c for c, _ in false.values()),
            "; ".join(f"{n}: monitor {c} > real {t}" for n, (c, t) in sorted(false.items())),
        )
        silent = sorted(n for n in lost_on if not said.get(n) and n not in loss_alerts)
        detail = "; ".join(
            f"{n}: {sum(1 for m in injected if m.device.node == n)} dropped, monitor "
            f"{said.get(n, 0)}, alert {'yes' if n in loss_alerts else 'no'}"
            for n in sorted(lost_on)
        )
        v.add(
            "monitor: injected loss reported",
            not silent if lost_on else None,
            len(injected),
            detail or "no delivery was dropped on purpose",
        )
        blind = sorted(n for n in real_on if not said.get(n) and n not in loss_alerts)
        v.add(
            "monitor: real loss reported",
            not blind if real_on else None,
            sum(real_on.values()),
            "; ".join(
                f"{n}: {c} missing, monitor {said.get(n, 0)}, "
                f"alert {'yes' if n in loss_alerts else 'no'}"
                for n, c in sorted(real_on.items())
            )
            or "no acked message went missing",
        )

    done = failovers(faults, publishers, load_end if load_end is not None else float("inf"))
    windows = [f.failover["refused_s"] for f in done if f.failover]
    tried = sum(1 for f in faults if f.kind == "failover")
    if tried:  # a campaign without the fault has no such row (standalone: as it always was)
        worst = max((w if w is not None else float("inf") for w in windows), default=None)
        v.add(
            f"failover: publishes refused <= {refusal_limit:g} s",
            worst is not None and worst <= refusal_limit,
            "-" if worst is None else f"{worst:g} s",
            f"{len(done)} of {tried} failovers done, refused for "
            + (", ".join(f"{w} s" for w in windows) or "-"),
        )

    v.facts = {
        **({"failover_refused_s": windows} if tried else {}),
        "published_202": len(accepted),
        "retried_publishes": sum(1 for s in accepted if s.attempts > 1),
        "publish_answers": dict(sorted(statuses.items())),
        "publish_to_202_s": _quantiles(sorted(x for p in publishers for x in p.latencies)),
        "abandoned_keys": len(abandoned),
        "appended_without_202": len(orphans),
        "devices": len(devices),
        "devices_ended": sorted(f"{d.name}: {d.failure}" for d in devices if d.failure),
        "reconnects": sum(max(0, d.connections - 1) for d in devices),
        "missing_pairs": len(missing),
        "injected_missing_pairs": len(injected),
        "injected_but_delivered": len(_healed(publishers, devices, faults, logged=logged)),
        "injected_delivered_late": len(late),
        "expired_pairs": sum(1 for m in others if states.get(m.sent.id) == "expired"),
        "trail_states_of_missing": _count(states.values()),
        "monitor_missing": monitor_missing,
        "loss_alerts": sorted(loss_alerts),
        "real_missing_by_node": truth,
    }
    return v


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in values:
        out[x] = out.get(x, 0) + 1
    return out


def _quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    pick = {"p50": 0.5, "p99": 0.99}
    out = {k: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) for k, q in pick.items()}
    return out | {"max": round(xs[-1], 3)}


def _healed(
    publishers: list[Publisher],
    devices: list[Device],
    faults: list[Fault],
    late_after: float = 0,
    logged: Mapping[str, set[str]] | None = None,
) -> list[tuple[Device, Sent]]:
    """Acked-message pairs the ``drop`` fault aimed at that arrived after all, more than
    ``late_after`` s after their 202 (a restart of the node replays what was not acked)."""
    by_user: dict[str, list[Device]] = {}
    for d in devices:
        by_user.setdefault(d.user, []).append(d)
    return [
        (d, s)
        for p in publishers
        for s in p.accepted
        for u in s.users
        for d in by_user.get(u, [])
        if s.id in d.received
        and d.received[s.id] - s.at > late_after
        and dropped(s, d, faults, logged)
    ]
