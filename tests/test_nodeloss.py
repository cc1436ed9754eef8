"""The node-loss benchmark's client-side dedupe and its figures (``python -m bench.nodeloss``).

Pure tables: a client's offset dedupe fed frames one by one, and the judge fed what the
publisher and the clients recorded. No node, no socket, no event loop.
"""

from __future__ import annotations

import argparse

from bench.nodeloss_figures import Run, figures, rows
from bench.resumeload import Device, Pool, offset_key
from bench.resumewire import DeviceReport, Report, Setup

S = 1_000_000_000  # ns
KILL = 100 * S
VICTIM = "nodeloss-0"


def pool() -> Pool:
    setup = Setup(
        worker=0,
        run="r1",
        urls=["ws://127.0.0.1:9/ws", "ws://127.0.0.1:10/ws"],
        homes=[],
        first=0,
        source_ip="127.0.0.1",
        user_prefix="u",
        token_secret="s" * 32,
        token_ttl=60,
        concurrency=1,
        connect_timeout=1.0,
        backoff_base=1.0,
        backoff_cap=8.0,
        deadline=60.0,
        seed=1,
    )
    return Pool(setup)


def msg(mid: str, offset: str, stream: str = "user:u0", run: str = "r1") -> dict[str, object]:
    return {"type": "msg", "id": mid, "stream": stream, "offset": offset, "data": {"run": run}}


def test_offsets_order_as_integer_pairs() -> None:
    assert offset_key("9-1") < offset_key("10-0") < offset_key("10-2")


def test_the_app_gets_each_message_once_through_the_offset_dedupe() -> None:
    p = pool()
    d = Device(p, 0, 0, "token")
    frames = [
        (msg("a", "10-0"), "a"),  # live
        (msg("a", "10-0"), None),  # redelivered: same offset, dropped
        (msg("b", "11-0"), "b"),
        (msg("a", "10-0"), None),  # replayed after a resume (its ack was lost): dropped
        (msg("b", "5-0", stream="all"), None),  # the same id on another stream: a duplicate
        (msg("c", "12-0", run="other"), None),  # another run's history: not counted
        (msg("d", "13-0"), "d"),
    ]
    for t, (frame, _) in enumerate(frames):
        d.take(frame, t)
    assert [mid for mid, _ in d.arrivals] == [m for _, m in frames if m is not None]
    assert (d.offset_dropped, d.dropped_unseen, d.duplicates) == (2, 0, 1)
    assert p.errors == {"foreign msg": 1}
    assert d.hello().endswith(b'"resume":{"user:u0":"13-0","all":"5-0"}}')


def test_an_offset_behind_the_last_with_an_unseen_id_is_counted() -> None:
    d = Device(pool(), 0, 0, "token")
    d.take(msg("a", "10-0"), 0)
    d.take(msg("z", "9-0"), 1)  # would be lost by the dedupe: it must show
    assert (d.offset_dropped, d.dropped_unseen) == (1, 1)


def device(
    index: int,
    welcomes: list[tuple[int, str]],
    arrivals: list[tuple[str, int]],
    losses: list[int] = [],  # noqa: B006 (never mutated)
) -> DeviceReport:
    dials = [t - S // 10 for t, _ in welcomes]
    return DeviceReport(index, arrivals, welcomes, dials, losses, 0, 0, 0, 0, "")


def args(**kw: float) -> argparse.Namespace:
    return argparse.Namespace(
        **({"window": 10.0, "target": 10.0, "sessions": 2, "after": 20.0} | kw)
    )


def cpu(seconds: float, survivors: float) -> dict[str, object]:
    return {
        "seconds": seconds,
        "server_cpu_seconds": survivors,
        "client_cpu_seconds": 0.0,
        "helper_cpu_seconds": 0.0,
        "other_cpu_seconds": 0.0,
    }


def run(reports: list[DeviceReport], accepted: list[tuple[int, str, int, int]]) -> Run:
    return Run(
        kill_ns=KILL,
        end_ns=KILL + 20 * S,
        victim_node=VICTIM,
        ramp_s=1.0,
        accepted=accepted,
        statuses={"202": len(accepted)},
        abandoned=0,
        reports=[Report(0, reports, {})],
        settled_s=0.0,
        cpu_during=cpu(10.0, 3.0),
        cpu_before=cpu(10.0, 1.0),
        cpu_after=cpu(20.0, 4.0),
    )


def test_resume_times_losses_and_latency_windows() -> None:
    reports = [
        device(0, [(S, VICTIM), (KILL + 2 * S, "n1")], [("m1", 50 * S + 5_000_000)], [KILL + S]),
        device(1, [(S, VICTIM), (KILL + 5 * S, "n2")], [("m3", KILL + 5 * S)], [KILL + S]),
        device(2, [(S, "n1")], [("m2", KILL + S + 2_000_000)]),
    ]
    accepted = [
        (0, "m1", 50 * S, 1),  # steady: 5 ms
        (2, "m2", KILL + S, 1),  # during, a survivor's user: 2 ms
        (1, "m3", KILL + 3 * S, 2),  # during, a victim's user: waited for the resume
        (1, "m4", KILL + 4 * S, 1),  # never arrived
    ]
    got = figures(args(), run(reports, accepted))
    assert got["victim_sessions"] == 2
    assert got["all_resumed_s"] == 5.0
    assert got["unresumed"] == 0
    assert got["survivor_clients_dropped"] == 0
    assert (got["lost"], got["lost_ids"]) == (1, ["m4"])
    assert got["accepted_after_retry"] == 1
    lat = got["latency_ms"]
    assert isinstance(lat, dict)
    assert lat["steady"]["max"] == 5.0
    assert lat["during_survivors"]["max"] == 2.0
    assert lat["during_victims"]["max"] == 2000.0
    assert got["resume_handshake_ms"] == {
        "count": 2,
        **dict.fromkeys(("min", "p50", "p90", "p99", "p999", "max", "mean"), 100.0),
    }
    # 4 s of survivor CPU in 20 s against 1 s in 10 s before: 2 s extra over 2 resumes
    assert got["survivor_cpu_per_resume_us"] == 1_000_000
    met = {r.metric: r.met for r in rows(args(), got)}
    assert met["kill → every victim client has a welcome from a survivor"] is True
    assert met["accepted but not received by the user's app"] is False


def test_a_victim_client_that_never_resumed_fails_the_target() -> None:
    reports = [
        device(0, [(S, VICTIM), (KILL + 2 * S, "n1")], []),
        device(1, [(S, VICTIM)], [], [KILL + S]),
    ]
    got = figures(args(), run(reports, []))
    assert (got["resumed"], got["unresumed"], got["all_resumed_s"]) == (1, 1, None)
    met = {r.metric: r.met for r in rows(args(), got)}
    assert met["kill → every victim client has a welcome from a survivor"] is False


def test_a_resume_later_than_the_target_fails_it() -> None:
    reports = [device(0, [(S, VICTIM), (KILL + 12 * S, "n1")], [])]
    got = figures(args(sessions=1), run(reports, []))
    assert got["all_resumed_s"] == 12.0
    met = {r.metric: r.met for r in rows(args(sessions=1), got)}
    assert met["kill → every victim client has a welcome from a survivor"] is False
