"""Pure core, tested with tables: no event loop, no I/O, ``now`` passed in."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from pushsvc import errors
from pushsvc.core import clock, frames, marks, offsets, replay, streams
from pushsvc.core.acks import AckLedger
from pushsvc.core.flow import PendingPerAddress, TokenBucket, slow_consumer
from pushsvc.core.handshake import HandshakeRefused, accept_key, check_upgrade
from pushsvc.core.index import SubscriberIndex
from pushsvc.core.trail import Trail, state
from pushsvc.errors import FrameError
from pushsvc.types import HistoryEntry, Message

# -- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type":"hello","token":"t"}', frames.Hello(token="t")),
        (
            b'{"type":"hello","token":"t","device":"d","resume":{"user:p1":"1-0"}}',
            frames.Hello(token="t", device="d", resume={"user:p1": "1-0"}),
        ),
        (b'{"type":"ack","ids":["a","b"]}', frames.Ack(ids=["a", "b"])),
        (b'{"type":"ping"}', frames.Ping()),
        (b'{"type":"pong","extra":1}', frames.Pong()),
    ],
)
def test_decode_valid_frames(raw: bytes, expected: frames.ClientFrame) -> None:
    assert frames.decode_client_frame(raw) == expected


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        (b"not json", "malformed_json"),
        (b'{"type":"ack","ids":["a"', "malformed_json"),
        (b"[1,2]", "not_an_object"),
        (b'"hello"', "not_an_object"),
        (b"42", "not_an_object"),
        (b'{"type":"subscribe"}', "unknown_frame_type"),
        (b'{"no":"type"}', "unknown_frame_type"),
        (b'{"type":"hello"}', "invalid_frame"),
        (b'{"type":"ack","ids":"a"}', "invalid_frame"),
        (b'{"type":"ack","ids":[1]}', "invalid_frame"),
        (b'{"type":"hello","token":""}', "invalid_frame"),
        (b'{"type":"ack","ids":[' + b",".join([b'"x"'] * 1001) + b"]}", "invalid_frame"),
        (b"[" * 100_000 + b"]" * 100_000, "nested_too_deep"),
        (b'{"type":"ack","ids":["a"],"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested_too_deep"),
        (
            b'{"type":"hello","token":"t","resume":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
            "nested_too_deep",
        ),
        (b"[" * 100_000, "nested_too_deep"),
    ],
)
def test_decode_bad_frames(raw: bytes, slug: str) -> None:
    with pytest.raises(FrameError) as info:
        frames.decode_client_frame(raw)
    assert info.value.slug == slug
    assert info.value.code == 4003


def test_server_frames_encode_in_wire_order() -> None:
    msg = frames.encode_msg(
        "id1", "user:p1", "5-0", "rx.ready", msgspec.Raw(b'{"w":1}'), 7, True, False
    )
    assert msg == (
        b'{"type":"msg","id":"id1","stream":"user:p1","offset":"5-0","event":"rx.ready",'
        b'"data":{"w":1},"ts":7,"ack":true,"replay":false}'
    )
    assert frames.encode_welcome("s", "n", "u", 25.0, 2) == (
        b'{"type":"welcome","session":"s","node":"n","user":"u","heartbeat":25.0,"replayed":2}'
    )
    assert frames.encode_error("slow", "m") == b'{"type":"error","code":"slow","message":"m"}'


@pytest.mark.parametrize(("size", "header"), [(5, b"\x81\x05"), (126, b"\x81\x7e\x00\x7e"),
                                              (70000, b"\x81\x7f" + (70000).to_bytes(8, "big"))])  # fmt: skip
def test_ws_text_frame_lengths(size: int, header: bytes) -> None:
    framed = frames.ws_text_frame(b"x" * size)
    assert framed.startswith(header)
    assert len(framed) == len(header) + size


# -- offsets and streams ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        ((0, 0), 100, (100, 0)),
        ((100, 0), 100, (100, 1)),
        ((100, 5), 99, (100, 6)),
        ((100, 5), 101, (101, 0)),
    ],
)
def test_next_position_is_monotonic(
    last: offsets.Position, now: int, expected: offsets.Position
) -> None:
    assert offsets.next_position(last, now) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "1", "a-1", "1-b", "-1", "1-", "1-2-3", "9" * 40 + "-1", "\u0663-1", "1-\u00b2",
     "\uff11-0", " 1-0", "+1-0", "1-0\n"],
)  # fmt: skip
def test_parse_rejects_bad_offsets(bad: str) -> None:
    with pytest.raises(FrameError):
        offsets.parse(bad)


@pytest.mark.parametrize(
    ("position", "end", "expected"),
    [
        ((5, 0), (9, 0), (5, 0)),
        ((9, 0), (9, 0), (9, 0)),
        ((9, 1), (9, 0), (9, 0)),
        ((10**30, 0), (9, 3), (9, 3)),
        ((4, 0), None, (0, 0)),
        ((0, 0), None, (0, 0)),
    ],
)
def test_clamp_keeps_resume_positions_within_the_stream(
    position: offsets.Position, end: offsets.Position | None, expected: offsets.Position
) -> None:
    assert offsets.clamp(position, end) == expected


def test_offsets_order_numerically_not_as_text() -> None:
    assert offsets.parse("10-0") > offsets.parse("9-5")
    assert offsets.parse("9-10") > offsets.parse("9-9")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("p1", True), ("clinic-205", True), ("a.b@c+d=e_f", True), ("", False), ("a b", False),
     ("a/b", False), ("x" * 128, True), ("x" * 129, False), ("ü", False), ("p1\n", False)],
)  # fmt: skip
def test_valid_names(name: str, ok: bool) -> None:
    assert streams.valid_name(name) is ok


def test_subscriptions() -> None:
    assert streams.subscriptions("p1", ("c1", "c2")) == ("user:p1", "topic:c1", "topic:c2", "all")
    assert streams.subscriptions("p1", ()) == ("user:p1", "all")


# -- acks -------------------------------------------------------------------------------------


def test_ack_ledger_redelivers_then_exhausts() -> None:
    ledger: AckLedger[str] = AckLedger(ack_timeout=10, max_attempts=3)
    assert ledger.sent("s1", "m1", "frame", now=0) == 1
    assert ledger.due(now=9.9) == ([], [])
    redeliver, exhausted = ledger.due(now=10)
    assert [(r.session, r.message_id, r.payload, r.attempt) for r in redeliver] == [
        ("s1", "m1", "frame", 2)
    ]
    assert exhausted == []
    redeliver, _ = ledger.due(now=20)
    assert [r.attempt for r in redeliver] == [3]
    assert ledger.due(now=30) == ([], ["s1"])
    assert ledger.forget_session("s1") == ["m1"]
    assert len(ledger) == 0


def test_ack_ledger_settles_first_acks_only() -> None:
    ledger: AckLedger[str] = AckLedger(ack_timeout=10, max_attempts=3)
    ledger.sent("s1", "m1", "f", 0)
    ledger.sent("s1", "m2", "f", 0)
    ledger.sent("s2", "m1", "f", 0)
    assert ledger.acked("s1", ["m1", "zzz"]) == ["m1"]
    assert ledger.acked("s1", ["m1"]) == []  # duplicate ack
    assert ledger.acked("s3", ["m1"]) == []  # a session that was never sent m1 cannot ack it
    assert ledger.pending("s1") == 1
    redeliver, _ = ledger.due(10)
    assert sorted((r.session, r.message_id) for r in redeliver) == [("s1", "m2"), ("s2", "m1")]


def test_ack_ledger_rewrite_counts_as_attempt_and_resets_timer() -> None:
    ledger: AckLedger[str] = AckLedger(ack_timeout=10, max_attempts=5)
    ledger.sent("s1", "m1", "f", 0)
    assert ledger.sent("s1", "m1", "f", 5) == 2
    assert ledger.due(10) == ([], [])  # the first timer is stale
    assert [r.attempt for r in ledger.due(15)[0]] == [3]


def test_ack_ledger_exhausted_session_listed_once() -> None:
    ledger: AckLedger[str] = AckLedger(ack_timeout=1, max_attempts=1)
    ledger.sent("s1", "m1", "f", 0)
    ledger.sent("s1", "m2", "f", 0)
    assert ledger.due(1) == ([], ["s1"])


# -- trail state ------------------------------------------------------------------------------


def _trail(ack: bool = True, expires: float = 100.0) -> Trail:
    return Trail("m", "e", 0.0, expires, ack, {"user:p1": "1-0"})


def test_trail_states() -> None:
    t = _trail()
    assert state(t, 1) == "pending"
    assert state(t, 100) == "expired"
    t.record_sent("d1", "s1", "n1", 1.0, 1)
    t.record_sent("d2", "s2", "n2", 1.0, 1)
    assert state(t, 2) == "delivered"
    assert state(t, 100) == "lost"
    assert t.record_acked("d1", "s1", "n1", 2.0) is True
    assert state(t, 3) == "partially_acked"
    t.record_sent("d2", "s3", "n1", 4.0, 1)  # d2 reconnected: new session acks
    assert t.record_acked("d2", "s3", "n1", 5.0) is True
    assert t.record_acked("d2", "s2", "n2", 6.0) is False  # not the device's first ack
    assert state(t, 200) == "acked"


def test_trail_without_acks() -> None:
    t = _trail(ack=False)
    t.sent_by_node["n1"] = 3
    assert state(t, 1) == "delivered"
    assert state(t, 1000) == "delivered"


# -- replay selection -------------------------------------------------------------------------


def _entry(
    offset: str, ack: bool = True, expires: int = 10_000, mid: str | None = None
) -> HistoryEntry:
    message = Message(mid or f"m{offset}", "e", msgspec.Raw(b"null"), 0, ack, expires)
    return HistoryEntry(offset, message)


HISTORY = [
    _entry("1-0"),
    _entry("2-0", ack=False),
    _entry("3-0"),
    _entry("4-0", expires=5),
    _entry("5-0"),
]


@pytest.mark.parametrize(
    ("stream", "resume", "acked", "expected"),
    [
        # user stream, no resume: the offline inbox = unacked messages that asked for acks
        ("user:p1", None, set(), ["1-0", "3-0", "5-0"]),
        ("user:p1", None, {"m1-0", "m5-0"}, ["3-0"]),
        # user stream with resume: everything after it, plus what is still owed before it
        ("user:p1", "2-0", {"m1-0"}, ["3-0", "5-0"]),
        ("user:p1", "3-0", set(), ["1-0", "3-0", "5-0"]),
        ("user:p1", "3-0", {"m1-0", "m3-0"}, ["5-0"]),
        ("user:p1", "0-0", {"m1-0", "m3-0", "m5-0"}, ["1-0", "2-0", "3-0", "5-0"]),
        # topics and all: only with resume, exactly what came after
        ("topic:c", None, set(), []),
        ("topic:c", "1-0", set(), ["2-0", "3-0", "5-0"]),
        ("all", "5-0", set(), []),
    ],
)
def test_replay_select(
    stream: str, resume: str | None, acked: set[str], expected: list[str]
) -> None:
    picked = replay.select(stream, HISTORY, resume, acked.__contains__, now_ms=10)
    assert [e.offset for e in picked] == expected


def test_replay_select_bad_resume_offset() -> None:
    with pytest.raises(FrameError):
        replay.select("user:p1", HISTORY, "nope", set().__contains__, now_ms=0)


# -- flow control -----------------------------------------------------------------------------


def test_token_bucket() -> None:
    bucket = TokenBucket.full(rate=10, burst=2, now=0)
    assert bucket.take(0) == 0
    assert bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.1)
    assert bucket.take(1.0) == 0  # refilled


@pytest.mark.parametrize(
    ("buffered", "over_since", "now", "close"),
    [(10, None, 0, False), (200, 0.0, 1.0, False), (200, 0.0, 5.0, True), (401, None, 0, True),
     (50, 0.0, 100.0, False)],
)  # fmt: skip
def test_slow_consumer(buffered: int, over_since: float | None, now: float, close: bool) -> None:
    assert slow_consumer(buffered, 100, over_since, 5.0, now) is close


# -- handshake --------------------------------------------------------------------------------

GOOD = {
    b"upgrade": b"websocket",
    b"connection": b"keep-alive, Upgrade",
    b"sec-websocket-version": b"13",
    b"sec-websocket-key": b"dGhlIHNhbXBsZSBub25jZQ==",
}


def test_accept_key_rfc_example() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in check_upgrade(b"GET", GOOD)


@pytest.mark.parametrize(
    ("method", "change", "status"),
    [
        (b"POST", {}, 405),
        (b"GET", {b"upgrade": b"h2c"}, 426),
        (b"GET", {b"connection": b"close"}, 400),
        (b"GET", {b"sec-websocket-version": b"8"}, 426),
        (b"GET", {b"sec-websocket-key": b"short"}, 400),
        (b"GET", {b"sec-websocket-key": b"!!!notbase64!!!!!!!!!!!!"}, 400),
    ],
)
def test_handshake_refusals(method: bytes, change: dict[bytes, bytes], status: int) -> None:
    with pytest.raises(HandshakeRefused) as info:
        check_upgrade(method, {**GOOD, **change})
    assert info.value.status == status


# -- subscriber index -------------------------------------------------------------------------


def test_subscriber_index() -> None:
    index: SubscriberIndex[str] = SubscriberIndex()
    index.add("s1", ("user:p1", "all"), "S1")
    index.add("s2", ("user:p2", "topic:c", "all"), "S2")
    assert index.get("user:p1") == {"s1": "S1"}
    assert index.get("user:p3") is None
    assert index.count(["all", "topic:c"]) == 2
    index.remove("s1", ("user:p1", "all"))
    assert index.get("user:p1") is None
    assert sorted(index.streams()) == ["all", "topic:c", "user:p2"]


def test_a_session_can_resume_every_stream_its_token_allows() -> None:
    topics = [f"t{i}" for i in range(streams.MAX_TOPICS)]
    resume = dict.fromkeys(streams.subscriptions("p1", topics), "1-0")
    hello = frames.decode_client_frame(
        msgspec.json.encode({"type": "hello", "token": "t", "resume": resume})
    )
    assert isinstance(hello, frames.Hello) and len(hello.resume) == streams.MAX_TOPICS + 2


# -- clocks and catch-up marks ----------------------------------------------------------------


def _message(ts: int, ttl_ms: int) -> Message:
    return Message("m", "e", msgspec.Raw(b"null"), ts, True, ts + ttl_ms)


@pytest.mark.parametrize(
    ("published_ts", "appended_ms", "ttl_ms", "stream_now", "is_expired"),
    [
        (1_000, 1_000, 500, 1_499, False),
        (1_000, 1_000, 500, 1_500, True),
        # the publishing node is 60 s ahead of the broker: its ts does not matter
        (61_000, 1_000, 20_000, 20_999, False),
        (61_000, 1_000, 20_000, 21_000, True),
        # ... nor 60 s behind
        (1_000, 61_000, 20_000, 80_999, False),
    ],
)
def test_expiry_is_measured_from_the_offset_in_the_streams_clock(
    published_ts: int, appended_ms: int, ttl_ms: int, stream_now: int, is_expired: bool
) -> None:
    message = _message(published_ts, ttl_ms)
    assert clock.expired(message, (appended_ms, 0), stream_now) is is_expired


@pytest.mark.parametrize(
    ("appended", "arrived", "local", "stream_now"),
    [
        ((100_000, 0), 100_002, 200_000, 199_998),  # same clocks, 2 ms on the bus
        ((100_000, 0), 160_000, 200_000, 140_000),  # this node 60 s ahead of the broker
        ((100_000, 0), 40_000, 50_000, 110_000),  # ... or 60 s behind
    ],
)
def test_stream_clock_corrects_the_local_clock_by_what_the_bus_shows(
    appended: offsets.Position, arrived: int, local: int, stream_now: int
) -> None:
    c = clock.StreamClock()
    assert c.now(local) == local  # nothing seen yet: no correction
    c.observe(appended, arrived)
    assert c.now(local) == stream_now


def test_stream_marks_advance_with_the_bus_and_start_at_a_streams_end() -> None:
    m = marks.StreamMarks()
    m.start("topic:a", (50, 0))
    m.start("user:p", None)  # empty when its first session started
    m.seen("topic:a", (40, 0))  # an envelope that crossed another on the bus: no step back
    assert m.snapshot() == {"topic:a": (50, 0), "user:p": (0, 0)}
    m.seen("user:p", (70, 1))
    m.start("user:p", (60, 0))  # already known: the bus knows better
    assert m.snapshot() == {"topic:a": (50, 0), "user:p": (70, 1)}
    m.forget("topic:a")
    assert not m.knows("topic:a") and len(m) == 1


@pytest.mark.parametrize(
    ("pending", "snapshot", "merged"),
    [
        (None, {"a": (5, 0)}, {"a": (5, 0)}),
        ({"a": (3, 0)}, {"a": (5, 0), "b": (1, 0)}, {"a": (3, 0), "b": (1, 0)}),
        ({"a": (7, 0), "c": (2, 0)}, {"a": (5, 0)}, {"a": (5, 0), "c": (2, 0)}),
    ],
)
def test_catch_up_asks_merge_to_the_earlier_mark(
    pending: dict[str, offsets.Position] | None,
    snapshot: dict[str, offsets.Position],
    merged: dict[str, offsets.Position],
) -> None:
    assert marks.merge(pending, snapshot) == merged


@pytest.mark.parametrize(
    ("mark", "after"),
    [((0, 0), "0-0"), ((1_700_000_002_000, 3), "1700000000000-0"), ((1_500, 0), "0-0")],
)
def test_catch_up_reads_a_margin_of_the_streams_clock_before_the_mark(
    mark: offsets.Position, after: str
) -> None:
    assert marks.read_after(mark) == after


@pytest.mark.parametrize(
    ("args", "extra", "body"),
    [
        (("not_found", "no such file"), {}, b'{"error":{"code":"not_found","message":"no such file"}}'),
        (
            ("unavailable", "retry"),
            {"retryable": True},
            b'{"error":{"code":"unavailable","message":"retry","retryable":true}}',
        ),
        (("invalid_body", "x"), {"retryable": False, "details": []},
         b'{"error":{"code":"invalid_body","message":"x","details":[]}}'),
    ],
)  # fmt: skip
def test_every_error_answer_has_one_shape(
    args: tuple[str, str], extra: dict[str, Any], body: bytes
) -> None:
    assert errors.error_body(*args, **extra) == body
    assert orjson.loads(body) == errors.error_document(*args, **extra)


def test_pending_per_address_counts_each_address_up_to_its_limit() -> None:
    pending = PendingPerAddress(2)
    assert [pending.enter("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert pending.enter("10.0.0.2")  # another address has its own count
    pending.leave("10.0.0.1")
    assert pending.enter("10.0.0.1") and not pending.enter("10.0.0.1")
    for _ in range(2):
        pending.leave("10.0.0.1")
    pending.leave("10.0.0.2")
    assert pending.counts == {}  # an address with nothing pending is forgotten
