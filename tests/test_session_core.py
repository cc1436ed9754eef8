"""A session's rules (pushsvc.core.session, its acks: pushsvc.core.acks.Deliveries, and the
node's timers: pushsvc.core.timers.Timers), tested with tables: no event loop, no socket."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from pushsvc.core import frames
from pushsvc.core import session as core
from pushsvc.core.acks import Deliveries
from pushsvc.core.offsets import Position
from pushsvc.core.session import Phase, SessionCore
from pushsvc.core.timers import Timers
from pushsvc.errors import FrameError
from pushsvc.telemetry import metrics


def at(phase: Phase) -> SessionCore[str]:
    """A session driven through its real transitions to ``phase``."""
    s: SessionCore[str] = SessionCore()
    if phase >= Phase.HELLO:
        s.upgraded()
    if phase >= Phase.REPLAY:
        s.accept(EXP)
    if phase >= Phase.LIVE:
        s.replayed({}, [])
    if phase >= Phase.CLOSING:
        assert s.closing()
    if phase == Phase.CLOSED:
        s.closed()
    assert s.phase == phase
    return s


EXP = 1_000.0  # the hello token's exp in these tables
HELLO = frames.Hello(token="t")
REFRESH = frames.Refresh(token="t2")
ACK = frames.Ack(ids=["m1", "m2"])


# -- frames, by phase -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "frame", "effect"),
    [
        (Phase.HELLO, HELLO, core.Admit(HELLO)),
        (Phase.REPLAY, HELLO, core.DUPLICATE_HELLO),
        (Phase.LIVE, HELLO, core.DUPLICATE_HELLO),
        (Phase.HELLO, ACK, core.HELLO_EXPECTED),
        (Phase.REPLAY, ACK, core.Settle(["m1", "m2"])),
        (Phase.LIVE, ACK, core.Settle(["m1", "m2"])),
        (Phase.HELLO, frames.Ping(), core.PONG),
        (Phase.LIVE, frames.Ping(), core.PONG),
        (Phase.HELLO, REFRESH, core.HELLO_EXPECTED),
        (Phase.REPLAY, REFRESH, core.Renew("t2")),
        (Phase.LIVE, REFRESH, core.Renew("t2")),
        (Phase.HELLO, frames.Pong(), None),
        (Phase.LIVE, frames.Pong(), None),
    ],
)
def test_frames_allowed_by_phase(
    phase: Phase, frame: frames.ClientFrame, effect: core.Effect | None
) -> None:
    assert at(phase).receive(frame, 0.0) == effect


def test_protocol_closes_carry_their_codes() -> None:
    assert (core.DUPLICATE_HELLO.code, core.DUPLICATE_HELLO.slug) == (4003, "duplicate_hello")
    assert (core.HELLO_EXPECTED.code, core.HELLO_EXPECTED.slug) == (4003, "hello_expected")
    assert (core.HELLO_TIMEOUT.code, core.HELLO_TIMEOUT.slug) == (4002, "hello_timeout")
    assert (core.SLOW_CONSUMER.code, core.SLOW_CONSUMER.slug) == (4008, "slow_consumer")
    assert (core.HEARTBEAT_TIMEOUT.code, core.HEARTBEAT_TIMEOUT.slug) == (4009, "heartbeat_timeout")
    assert (core.NOT_ACKNOWLEDGED.code, core.NOT_ACKNOWLEDGED.slug) == (4011, "not_acknowledged")
    assert (core.DRAINING.code, core.DRAINING.slug) == (1001, "node_draining")


# -- hello timeout and admission --------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "effect"),
    [
        (Phase.HTTP, None),  # not upgraded: the pump drops the TCP connection
        (Phase.HELLO, core.HELLO_TIMEOUT),
        (Phase.REPLAY, None),
        (Phase.LIVE, None),
        (Phase.CLOSING, None),
    ],
)
def test_hello_timeout_closes_4002_only_while_waiting_for_hello(
    phase: Phase, effect: core.Close | None
) -> None:
    assert at(phase).hello_timeout() == effect


@pytest.mark.parametrize(
    ("upgraded", "limit", "draining", "admitted"),
    [(0, 1, False, True), (2, 3, False, True), (3, 3, False, False), (4, 3, False, False),
     (0, 3, True, False)],
)  # fmt: skip
def test_admission_counts_every_upgraded_connection(
    upgraded: int, limit: int, draining: bool, admitted: bool
) -> None:
    assert core.admits(upgraded, limit, draining) is admitted


# -- phases -----------------------------------------------------------------------------------


def test_transitions_only_from_their_phase() -> None:
    s = at(Phase.LIVE)
    s.upgraded()
    s.accept(EXP)
    assert s.phase == Phase.LIVE and s.buffer is None
    assert s.replayed({"all": (1, 0)}, []) == [] and s.last == {}
    assert s.closing() is True and s.closing() is False
    assert s.closed() == Phase.CLOSING and s.phase == Phase.CLOSED
    assert s.closing() is False


# -- delivery: buffer during replay, dedupe by offset -----------------------------------------


def offer_all(s: SessionCore[str], items: list[tuple[str, Position]]) -> list[bool]:
    return [s.offer(stream, p, f"{stream}@{p}", b"f") for stream, p in items]


@pytest.mark.parametrize(
    ("phase", "written"),
    [(Phase.HTTP, False), (Phase.HELLO, False), (Phase.REPLAY, False), (Phase.LIVE, True),
     (Phase.CLOSING, False), (Phase.CLOSED, False)],
)  # fmt: skip
def test_offer_writes_only_when_live(phase: Phase, written: bool) -> None:
    s = at(phase)
    assert s.offer("all", (1, 0), "m", b"f") is written
    assert s.sent == (1 if written else 0)


@pytest.mark.parametrize(
    ("positions", "replayed", "buffered", "expected_live"),
    [
        # nothing replayed: every buffered message goes out, in order
        ({}, [], [("user:p", (5, 0)), ("all", (6, 0))], [True, True]),
        # a buffered message the replay already wrote is not written twice
        ({}, [("user:p", (5, 0))], [("user:p", (5, 0)), ("user:p", (6, 0))], [False, True]),
        # the resume position counts as written: older buffered offsets are dropped
        ({"topic:a": (9, 0)}, [], [("topic:a", (8, 0)), ("topic:a", (9, 1))], [False, True]),
        # a replay older than the resume position does not move it back
        ({"user:p": (9, 0)}, [("user:p", (3, 0))], [("user:p", (4, 0))], [False]),
        # streams are independent
        ({"user:p": (9, 0)}, [], [("all", (1, 0))], [True]),
    ],
)
def test_replay_then_live_without_gap_or_duplicate(
    positions: dict[str, Position],
    replayed: list[tuple[str, Position]],
    buffered: list[tuple[str, Position]],
    expected_live: list[bool],
) -> None:
    s = at(Phase.REPLAY)
    assert offer_all(s, buffered) == [False] * len(buffered)  # buffered, not written
    held = s.replayed(positions, replayed)
    assert [(stream, p) for stream, p, _, _ in held] == buffered
    assert s.phase == Phase.LIVE and s.buffer is None
    assert [s.offer(stream, p, item, frame) for stream, p, item, frame in held] == expected_live
    assert s.sent == len(replayed) + sum(expected_live)


@pytest.mark.parametrize(
    ("offers", "written"),
    [
        ([("all", (1, 0)), ("all", (1, 0))], [True, False]),
        ([("all", (2, 0)), ("all", (1, 5))], [True, False]),
        ([("all", (1, 0)), ("all", (1, 1)), ("user:p", (1, 0))], [True, True, True]),
    ],
)
def test_live_dedupe_by_offset(offers: list[tuple[str, Position]], written: list[bool]) -> None:
    assert offer_all(at(Phase.LIVE), offers) == written


def test_a_closing_session_drops_its_buffer() -> None:
    s = at(Phase.REPLAY)
    s.offer("all", (1, 0), "m", b"f")
    assert s.closing() and s.buffer is None
    assert s.replayed({}, []) == []


# -- heartbeats and acks ----------------------------------------------------------------------


def test_heartbeat_pings_then_closes_4009_without_a_pong() -> None:
    s = at(Phase.LIVE)
    assert s.heartbeat(10.0) == core.PING and s.ping_sent == 10.0
    assert s.heartbeat(35.0) == core.HEARTBEAT_TIMEOUT


@pytest.mark.parametrize(
    "answer", [frames.Pong(), frames.Ping(), frames.Ack(ids=["m"])], ids=["pong", "ping", "ack"]
)
def test_any_frame_answers_a_ping(answer: frames.ClientFrame) -> None:
    s = at(Phase.LIVE)
    assert s.heartbeat(10.0) == core.PING
    s.receive(answer, 10.25)
    assert s.heartbeat(35.0) == core.PING
    assert (s.rtt == 0.25) is isinstance(answer, frames.Pong)


@pytest.mark.parametrize("phase", [Phase.HELLO, Phase.REPLAY, Phase.CLOSING, Phase.CLOSED])
def test_no_heartbeat_unless_live(phase: Phase) -> None:
    assert at(phase).heartbeat(1.0) is None


def test_settled_acks_are_counted() -> None:
    s = at(Phase.LIVE)
    s.settled(0, 5.0)
    assert (s.acked, s.last_ack) == (0, None)
    s.settled(2, 6.0)
    s.settled(1, 7.0)
    assert (s.acked, s.last_ack) == (3, 7.0)


# -- acks: sent, acked, tick(now), closed ------------------------------------------------------

F1, F2 = b"frame-m1", b"frame-m2"  # the pre-framed messages written
REDELIVER_M1 = [("s1", core.Write(F1)), ("s1", core.TrailEvent("sent", "m1", 10.0, 2))]


def deliveries() -> Deliveries:
    """s1 was written m1 at 0 and owes its ack: a 10 s ack timeout, 3 writes at most."""
    d = Deliveries(ack_timeout=10, max_attempts=3)
    assert d.sent("s1", "m1", F1, 0.0) == 1
    return d


@pytest.mark.parametrize(
    ("ticks", "effects"),
    [
        ([9.9], []),  # not due yet
        ([10.0], [*REDELIVER_M1, (None, core.Count("redeliveries", 1))]),
        ([10.0, 19.9], []),  # the timer restarted with the redelivery
        (
            [10.0, 20.0],
            [("s1", core.Write(F1)), ("s1", core.TrailEvent("sent", "m1", 20.0, 3)),
             (None, core.Count("redeliveries", 1))],
        ),
        ([10.0, 20.0, 30.0], [("s1", core.NOT_ACKNOWLEDGED)]),  # 3 writes, no ack: 4011
        ([10.0, 20.0, 30.0, 40.0], []),  # forgotten once closed
    ],
)  # fmt: skip
def test_tick_redelivers_then_closes_4011(
    ticks: list[float], effects: list[tuple[str | None, core.Effect]]
) -> None:
    d = deliveries()
    *before, last = ticks
    for now in before:
        d.tick(now)
    assert d.tick(last) == effects
    assert d.pending("s1") == (0 if last >= 30 else 1)


def test_tick_redelivers_every_session_then_counts_them_once() -> None:
    d = deliveries()
    d.sent("s2", "m2", F2, 0.0)
    d.sent("s3", "m1", F1, 5.0)
    assert d.tick(10.0) == [
        *REDELIVER_M1,
        ("s2", core.Write(F2)), ("s2", core.TrailEvent("sent", "m2", 10.0, 2)),
        (None, core.Count("redeliveries", 2)),
    ]  # fmt: skip
    assert len(d) == 3


def test_a_write_again_is_an_attempt_and_restarts_the_timer() -> None:
    d = deliveries()
    assert d.sent("s1", "m1", F1, 5.0) == 2  # written again (a resume replays it)
    assert d.tick(10.0) == []
    assert d.tick(15.0) == [
        ("s1", core.Write(F1)), ("s1", core.TrailEvent("sent", "m1", 15.0, 3)),
        (None, core.Count("redeliveries", 1)),
    ]  # fmt: skip
    assert d.tick(25.0) == [("s1", core.NOT_ACKNOWLEDGED)]


def test_a_session_owing_several_is_closed_once() -> None:
    d = Deliveries(ack_timeout=1, max_attempts=1)
    d.sent("s1", "m1", F1, 0.0)
    d.sent("s1", "m2", F2, 0.0)
    assert d.tick(1.0) == [("s1", core.NOT_ACKNOWLEDGED)]


@pytest.mark.parametrize(
    ("ids", "effects", "acked"),
    [
        (["m1"], [core.TrailEvent("acked", "m1", 7.0), core.Count("acked", 1)], 1),
        (["m1", "m2", "zzz"],
         [core.TrailEvent("acked", "m1", 7.0), core.TrailEvent("acked", "m2", 7.0), core.Count("acked", 2)],
         2),
        (["zzz"], [], 0),  # never owed: nothing to trail or count
        ([], [], 0),
    ],
)  # fmt: skip
def test_first_acks_are_trailed_and_counted(
    ids: list[str], effects: list[core.Effect], acked: int
) -> None:
    d = deliveries()
    d.sent("s1", "m2", F2, 0.0)
    s = at(Phase.LIVE)
    assert d.acked("s1", s, ids, 7.0) == effects
    assert (s.acked, s.last_ack) == (acked, 7.0 if acked else None)
    assert d.acked("s1", s, ids, 8.0) == []  # a duplicate ack settles nothing
    assert d.pending("s1") == 2 - acked


def test_acks_settle_only_what_the_session_owes() -> None:
    d = deliveries()
    d.sent("s2", "m1", F1, 0.0)
    assert d.acked("s2", at(Phase.LIVE), ["m1"], 1.0)[0] == core.TrailEvent("acked", "m1", 1.0)
    assert d.acked("s3", at(Phase.LIVE), ["m1"], 1.0) == []
    assert d.tick(10.0) == [*REDELIVER_M1, (None, core.Count("redeliveries", 1))]


def test_an_acked_message_is_not_redelivered() -> None:
    d = deliveries()
    d.acked("s1", at(Phase.LIVE), ["m1"], 3.0)
    assert d.tick(10.0) == []


def test_a_closed_session_owes_nothing() -> None:
    d = deliveries()
    assert d.closed("s1") == ["m1"]
    assert (d.tick(10.0), d.pending("s1"), len(d)) == ([], 0, 0)


# -- the hello's device and resume ------------------------------------------------------------

STREAMS = ("user:p1", "topic:c1", "all")


@pytest.mark.parametrize(
    ("device", "resume", "slug"),
    [
        ("a b", {}, "invalid_device"),
        ("phone/1", {}, "invalid_device"),
        ("\u00fc", {}, "invalid_device"),
        ("p1\n", {}, "invalid_device"),
        (None, {"all": "yesterday"}, "bad_resume"),
        (None, {"all": "\u0663-0"}, "bad_resume"),
        (None, {"all": "1-\u00b2"}, "bad_resume"),
        (None, {"topic:other": "1"}, "bad_resume"),  # checked even when not read
        ("ok", {"all": "1-0", "user:p1": ""}, "bad_resume"),
    ],
)
def test_check_hello_refuses_bad_devices_and_offsets(
    device: str | None, resume: dict[str, str], slug: str
) -> None:
    with pytest.raises(FrameError) as info:
        core.check_hello(frames.Hello(token="t", device=device, resume=resume), STREAMS)
    assert (info.value.code, info.value.slug) == (4003, slug)


def test_check_hello_keeps_the_streams_the_session_reads() -> None:
    hello = frames.Hello(
        token="t", device="phone-1", resume={"user:p1": "5-1", "user:p2": "9-0", "all": "7-0"}
    )
    resume = core.check_hello(hello, STREAMS)
    assert resume.offsets == {"user:p1": "5-1", "all": "7-0"}
    assert resume.positions == {"user:p1": (5, 1), "all": (7, 0)}
    assert core.check_hello(frames.Hello(token="t"), STREAMS) == core.Resume({}, {})


# -- token lifetime ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "now", "effect"),
    [
        (Phase.REPLAY, EXP - 0.001, None),
        (Phase.REPLAY, EXP, core.TOKEN_EXPIRED),
        (Phase.LIVE, EXP - 0.001, None),
        (Phase.LIVE, EXP, core.TOKEN_EXPIRED),
        (Phase.LIVE, EXP + 60, core.TOKEN_EXPIRED),
        (Phase.CLOSING, EXP + 60, None),
        (Phase.CLOSED, EXP + 60, None),
    ],
)
def test_a_session_expires_with_its_token(
    phase: Phase, now: float, effect: core.Close | None
) -> None:
    assert at(phase).expiry(now) == effect


def test_token_expired_is_a_4001() -> None:
    assert (core.TOKEN_EXPIRED.code, core.TOKEN_EXPIRED.slug) == (4001, "token_expired")
    assert (core.TOKEN_REVOKED.code, core.TOKEN_REVOKED.slug) == (4001, "token_revoked")


@pytest.mark.parametrize(
    ("claimed", "expires", "effect", "after"),
    [
        ("p1", 2_000, core.Write(frames.ws_text_frame(b'{"type":"refreshed","exp":2000}')), 2_000),
        ("p2", 2_000, core.REFRESH_USER, EXP),
        ("p1", int(EXP), core.REFRESH_EARLIER, EXP),
        ("p1", 900, core.REFRESH_EARLIER, EXP),
    ],
)
def test_a_refresh_extends_the_session_only_for_its_user_and_later(
    claimed: str, expires: int, effect: core.Effect, after: float
) -> None:
    s = at(Phase.LIVE)
    assert s.renew("p1", claimed, expires) == effect
    assert s.expires == after
    assert s.expiry(EXP) == (None if after > EXP else core.TOKEN_EXPIRED)


def test_a_refresh_while_closing_does_nothing() -> None:
    s = at(Phase.CLOSING)
    assert s.renew("p1", "p1", 2_000) is None
    assert s.expires == EXP


@pytest.mark.parametrize(
    ("issued", "not_before", "refused"),
    [
        (100, None, False),
        (None, None, False),
        (None, 101, True),  # no iat: cannot be shown to be newer
        (99, 101, True),
        (100, 101, True),  # minted in the revocation's second, even just after it
        (101, 101, False),
        (150, 101, False),
    ],
)
def test_revocation_refuses_tokens_issued_before_its_second_ends(
    issued: int | None, not_before: int | None, refused: bool
) -> None:
    assert core.revoked(issued, not_before) is refused


@pytest.mark.parametrize(
    ("revoked_at", "expected"), [(100.0, 101), (100.999, 101), (1_700_000_000.5, 1_700_000_001)]
)
def test_not_before_is_the_next_whole_second(revoked_at: float, expected: int) -> None:
    assert core.not_before(revoked_at) == expected


def test_every_counter_the_core_names_is_applied_by_the_node() -> None:
    from pushsvc.node.gateway import COUNTERS

    assert set(COUNTERS) == set(get_args(core.CounterName))


# -- the node's timers: heartbeats, token expiry, acks in one tick ----------------------------

BEAT = 25.0  # the heartbeat in these tables (monotonic seconds)
REFRESHED = core.Write(frames.ws_text_frame(b'{"type":"refreshed","exp":2000}'))


def timers(*sessions: str) -> tuple[Timers, dict[str, SessionCore[str]]]:
    """Timers with ``sessions`` live: accepted with a token expiring at EXP (unix s), opened at
    monotonic 0, owing nothing (10 s ack timeout, 3 writes)."""
    t = Timers(Deliveries(ack_timeout=10, max_attempts=3), BEAT)
    cores: dict[str, SessionCore[str]] = {}
    for session in sessions:
        cores[session] = core_ = at(Phase.LIVE)
        t.accepted(session, core_)
        t.opened(session, 0.0)
    return t, cores


def ticks(t: Timers, monos: list[float], now: float = 0.0) -> list[list[tuple[str | None, Any]]]:
    """What each tick makes at monotonic ``monos`` (wall clock ``now``, before any expiry)."""
    return [t.tick(now, mono) for mono in monos]


@pytest.mark.parametrize(
    ("monos", "last"),
    [
        ([BEAT - 0.1], []),  # not due
        ([BEAT], [("s1", core.PING)]),
        ([BEAT, 2 * BEAT - 0.1], []),  # the next one is a heartbeat after the ping
        ([BEAT, 2 * BEAT], [("s1", core.HEARTBEAT_TIMEOUT)]),  # unanswered: 4009
        ([BEAT, 2 * BEAT, 3 * BEAT], []),  # exactly once: no more pings once it is closed
        ([BEAT, 2 * BEAT, 3 * BEAT, 10 * BEAT], []),
    ],
)
def test_tick_pings_when_due_and_closes_4009_once_without_a_pong(
    monos: list[float], last: list[tuple[str | None, core.Effect]]
) -> None:
    t, _ = timers("s1")
    assert ticks(t, monos)[-1] == last
    assert len(t.pings) == (1 if monos[-1] < 2 * BEAT else 0)  # no ping left once closed


def test_a_pong_in_time_keeps_the_session() -> None:
    t, cores = timers("s1")
    assert t.tick(0.0, BEAT) == [("s1", core.PING)]
    assert cores["s1"].receive(frames.Pong(), BEAT + 0.5) is None
    assert cores["s1"].rtt == 0.5
    assert t.tick(0.0, 2 * BEAT) == [("s1", core.PING)]
    assert t.tick(0.0, 3 * BEAT) == [("s1", core.HEARTBEAT_TIMEOUT)]  # that one went unanswered


def test_pings_go_to_every_session_due_and_only_those() -> None:
    t, _ = timers("s1", "s2")
    t.opened("s3", 10.0)  # s3 (never accepted here) opened later: not due with the others
    assert t.tick(0.0, BEAT) == [("s1", core.PING), ("s2", core.PING)]
    assert t.tick(0.0, BEAT + 10) == []  # s3 is not a session of these timers: dropped
    assert list(t.pings) == [(2 * BEAT, "s1"), (2 * BEAT, "s2")]


@pytest.mark.parametrize("phase", [Phase.REPLAY, Phase.CLOSING, Phase.CLOSED])
def test_no_ping_unless_live_and_no_more_after(phase: Phase) -> None:
    t = Timers(Deliveries(10, 3), BEAT)
    t.accepted("s1", at(phase))
    t.opened("s1", 0.0)
    assert t.tick(0.0, BEAT) == [] and not t.pings


@pytest.mark.parametrize(
    ("now", "effects"),
    [
        (EXP - 0.001, []),
        (EXP, [("s1", core.TOKEN_EXPIRED)]),
        (EXP + 60, [("s1", core.TOKEN_EXPIRED)]),
    ],
)
def test_tick_closes_4001_token_expired_when_exp_passes(
    now: float, effects: list[tuple[str | None, core.Effect]]
) -> None:
    t, _ = timers("s1")
    assert t.tick(now, 0.0) == effects
    later = t.tick(EXP + 120, 0.0)  # once: a consumed expiry does not close again
    assert later == ([] if effects else [("s1", core.TOKEN_EXPIRED)])


def test_token_expired_is_4001_with_its_slug_and_message() -> None:
    t = core.TOKEN_EXPIRED
    assert (t.code, t.slug, t.message) == (
        4001, "token_expired", "token expired: refresh it before exp, or reconnect",
    )  # fmt: skip


def test_a_refresh_before_exp_pushes_the_expiry_back() -> None:
    t, cores = timers("s1")
    assert t.renew("s1", "p1", "p1", 2_000) == REFRESHED
    assert cores["s1"].expires == 2_000
    assert t.tick(EXP, 0.0) == []  # the old exp passes: refreshed past it
    assert t.tick(1_999.9, 0.0) == []
    assert t.tick(2_000, 0.0) == [("s1", core.TOKEN_EXPIRED)]


@pytest.mark.parametrize(
    ("claimed", "expires", "refused"),
    [
        ("p2", 2_000, core.REFRESH_USER),  # a token of another user
        ("p1", int(EXP), core.REFRESH_EARLIER),  # a token that does not live longer
        ("p1", 900, core.REFRESH_EARLIER),
    ],
)
def test_a_refused_refresh_closes_4001_and_keeps_the_expiry(
    claimed: str, expires: int, refused: core.Close
) -> None:
    t, cores = timers("s1")
    assert t.renew("s1", "p1", claimed, expires) == refused
    assert refused.code == 4001 and refused.slug == "invalid_refresh"
    assert cores["s1"].expires == EXP
    assert t.tick(EXP, 0.0) == [("s1", core.TOKEN_EXPIRED)]  # (if the close were not applied)


def test_refresh_of_a_session_gone_or_closing_does_nothing() -> None:
    t, cores = timers("s1", "s2")
    t.closed("s1")
    cores["s2"].closing()
    assert t.renew("s1", "p1", "p1", 2_000) is None
    assert t.renew("s2", "p1", "p1", 2_000) is None
    assert t.renew("s9", "p1", "p1", 2_000) is None  # never accepted here
    assert cores["s2"].expires == EXP


def test_expiry_of_a_closed_session_does_nothing() -> None:
    t, cores = timers("s1", "s2", "s3")
    t.closed("s1")  # the connection is gone
    cores["s2"].closing()  # its close handshake is under way
    assert t.tick(EXP, BEAT) == [("s3", core.TOKEN_EXPIRED)]
    assert t.tick(EXP + 60, 2 * BEAT) == []
    assert not t.expiries and not t.pings


def test_one_close_per_session_and_tick_acks_first() -> None:
    """s1 used up its ack attempts, both tokens expire and no pong came, all in one tick: s1
    gets 4011 only, s2 4001 only, and neither 4009."""
    t = Timers(Deliveries(ack_timeout=10, max_attempts=1), BEAT)
    for session in ("s1", "s2"):
        t.accepted(session, at(Phase.LIVE))
        t.opened(session, 0.0)
    t.deliveries.sent("s1", "m1", F1, EXP - 10)
    assert t.tick(EXP - 30, BEAT) == [("s1", core.PING), ("s2", core.PING)]
    assert t.tick(EXP, 2 * BEAT) == [
        ("s1", core.NOT_ACKNOWLEDGED), ("s2", core.TOKEN_EXPIRED),
    ]  # fmt: skip
    assert not t.pings


def test_tick_carries_redeliveries_with_the_other_timers() -> None:
    t, _ = timers("s1")
    t.deliveries.sent("s1", "m1", F1, 0.0)
    assert t.tick(10.0, BEAT) == [*REDELIVER_M1, (None, core.Count("redeliveries", 1)),
                                  ("s1", core.PING)]  # fmt: skip


def test_closed_forgets_what_the_session_owed() -> None:
    t, _ = timers("s1")
    t.deliveries.sent("s1", "m1", F1, 0.0)
    assert t.closed("s1") == ["m1"]
    assert t.tick(EXP, BEAT) == [] and len(t.deliveries) == 0


# -- frame rejections are counted by their reason ----------------------------------------------

REJECTING = [
    (Phase.REPLAY, HELLO, "duplicate_hello"),
    (Phase.LIVE, HELLO, "duplicate_hello"),
    (Phase.HELLO, ACK, "hello_expected"),
    (Phase.HELLO, REFRESH, "hello_expected"),
    (Phase.HELLO, frames.PushUnsubscribe(), "hello_expected"),
]


@pytest.mark.parametrize(("phase", "frame", "reason"), REJECTING)
def test_a_refused_frame_closes_4003_and_counts_its_reason(
    phase: Phase, frame: frames.ClientFrame, reason: str
) -> None:
    effect = at(phase).receive(frame, 0.0)
    assert isinstance(effect, core.Close)
    assert (effect.code, effect.slug) == (4003, reason)
    assert effect.counts == (core.Count("frames_rejected", 1, (reason,)),)
    assert reason in metrics.FRAME_REJECTIONS  # a label value the node starts at 0


@pytest.mark.parametrize(
    "close",
    [core.HELLO_TIMEOUT, core.HEARTBEAT_TIMEOUT, core.NOT_ACKNOWLEDGED, core.SLOW_CONSUMER,
     core.TOKEN_EXPIRED, core.TOKEN_REVOKED, core.REFRESH_USER, core.DRAINING],
)  # fmt: skip
def test_closes_that_refuse_no_frame_count_nothing(close: core.Close) -> None:
    assert close.counts == ()


def test_every_reason_the_core_counts_is_a_known_label() -> None:
    closes = [v for v in vars(core).values() if isinstance(v, core.Close)]
    reasons = {c.labels[0] for close in closes for c in close.counts if c.name == "frames_rejected"}
    assert reasons == {"duplicate_hello", "hello_expected"}
    assert reasons <= set(metrics.FRAME_REJECTIONS)
