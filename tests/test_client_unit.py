"""The client's pure parts: backoff, offsets, dedupe window, close-code policy, frame codec.

No event loop, no sockets: tables in, values out.
"""

from __future__ import annotations

import math

import msgspec
import pytest

from pushsvc.client import (
    TERMINAL_CLOSE_CODES,
    ClientError,
    ClosedByOperator,
    ConnectionEnded,
    ConnectionLost,
    Message,
    PushClient,
    ServerError,
    State,
    Unauthorized,
    Welcome,
    ending_for,
)
from pushsvc.core.backoff import MAX_EXPONENT, backoff_ceiling, backoff_delay
from pushsvc.core.client_state import (
    DedupeWindow,
    StreamOffsets,
    offset_after,
    parse_offset,
    resume_for,
)

# --- backoff -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (0, 0.2, 10.0, 0.2),
        (1, 0.2, 10.0, 0.4),
        (2, 0.2, 10.0, 0.8),
        (5, 0.2, 10.0, 6.4),
        (6, 0.2, 10.0, 10.0),  # 12.8 capped
        (50, 0.2, 10.0, 10.0),
        (10_000, 0.2, 10.0, 10.0),  # no overflow for a counter that was never reset
        (3, 1.0, 5.0, 5.0),
        (0, 0.0, 10.0, 0.0),
        (4, 0.5, 0.0, 0.0),
    ],
)
def test_backoff_ceiling(attempt: int, base: float, cap: float, ceiling: float) -> None:
    assert backoff_ceiling(attempt, base, cap) == pytest.approx(ceiling)


def test_backoff_ceiling_huge_attempt_is_finite_without_a_cap() -> None:
    value = backoff_ceiling(10**6, 1.0, math.inf)
    assert value == float(2**MAX_EXPONENT)
    assert math.isfinite(value)


@pytest.mark.parametrize(("attempt", "base", "cap"), [(-1, 0.2, 10.0), (0, -0.1, 1.0), (0, 1, -1)])
def test_backoff_rejects_negative_inputs(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_ceiling(attempt, base, cap)


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (0, "low", 0.0),
        (0, "high", 0.2),
        (3, "high", 1.6),
        (3, "mid", 0.8),
        (9, "high", 10.0),
    ],
)
def test_backoff_delay_draws_uniformly_from_zero_to_the_ceiling(
    attempt: int, draw: str, expected: float
) -> None:
    calls: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return {"low": lo, "high": hi, "mid": (lo + hi) / 2}[draw]

    assert backoff_delay(attempt, 0.2, 10.0, uniform) == pytest.approx(expected)
    assert calls == [(0.0, pytest.approx(backoff_ceiling(attempt, 0.2, 10.0)))]


def test_backoff_delay_default_draw_stays_in_the_window() -> None:
    for attempt in range(12):
        ceiling = backoff_ceiling(attempt, 0.2, 10.0)
        for _ in range(50):
            assert 0.0 <= backoff_delay(attempt, 0.2, 10.0) <= ceiling


# --- offsets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "parsed"),
    [
        ("1700000000000-0", (1700000000000, 0)),
        ("1-2", (1, 2)),
        ("0-0", (0, 0)),
        ("12", None),
        ("", None),
        ("a-1", None),
        ("1-b", None),
        ("1-2-3", None),
        ("-1-2", None),
        ("1--2", None),
        (" 1-2", None),
    ],
)
def test_parse_offset(offset: str, parsed: tuple[int, int] | None) -> None:
    assert parse_offset(offset) == parsed


@pytest.mark.parametrize(
    ("new", "old", "after"),
    [
        ("5-0", None, True),
        ("5-1", "5-0", True),
        ("5-0", "5-1", False),
        ("5-0", "5-0", False),
        ("10-0", "9-99", True),  # numeric, not lexicographic
        ("9-99", "10-0", False),
        ("5-10", "5-9", True),
        ("opaque-b", "opaque-a", True),  # unparseable: the newer arrival wins if it differs
        ("opaque-a", "opaque-a", False),
        ("5-0", "opaque", True),
    ],
)
def test_offset_after(new: str, old: str | None, after: bool) -> None:
    assert offset_after(new, old) is after


def test_stream_offsets_keep_the_max_per_stream() -> None:
    offsets = StreamOffsets({"user:p1": "10-0"})
    table = [
        ("user:p1", "9-5", False, "10-0"),
        ("user:p1", "10-1", True, "10-1"),
        ("topic:clinic-205", "3-0", True, "3-0"),
        ("user:p1", "10-1", False, "10-1"),
        ("user:p1", "100-0", True, "100-0"),
    ]
    for stream, offset, moved, latest in table:
        assert offsets.observe(stream, offset) is moved
        assert offsets.snapshot()[stream] == latest
    assert offsets.snapshot() == {"user:p1": "100-0", "topic:clinic-205": "3-0"}


def test_stream_offsets_snapshot_is_a_copy() -> None:
    initial = {"all": "1-0"}
    offsets = StreamOffsets(initial)
    initial["all"] = "9-0"
    snap = offsets.snapshot()
    snap["all"] = "8-0"
    assert offsets.snapshot() == {"all": "1-0"}


def test_resume_for_keeps_everything_up_to_the_limit() -> None:
    offsets = {f"topic:t{i}": f"{i}-0" for i in range(64)}
    assert resume_for(offsets) == offsets
    assert resume_for(offsets) is not offsets


def test_resume_for_keeps_the_patient_streams_then_the_most_recent() -> None:
    offsets = {
        "topic:old": "1-0",
        "topic:new": "9-0",
        "user:p1": "2-0",
        "topic:mid": "5-0",
        "all": "1-5",
        "topic:opaque": "x",
        "topic:newer": "9-1",
    }
    table = [
        (2, {"user:p1", "all"}),
        (3, {"user:p1", "all", "topic:newer"}),
        (4, {"user:p1", "all", "topic:newer", "topic:new"}),
        (6, {"user:p1", "all", "topic:newer", "topic:new", "topic:mid", "topic:old"}),
        (7, set(offsets)),
    ]
    for limit, kept in table:
        result = resume_for(offsets, limit)
        assert set(result) == kept
        assert all(result[s] == offsets[s] for s in result)


# --- dedupe window -------------------------------------------------------------------------------


def test_dedupe_window_remembers_and_evicts_oldest_first() -> None:
    window = DedupeWindow(capacity=3)
    table = [
        ("a", True, ["a"]),
        ("b", True, ["a", "b"]),
        ("a", False, ["a", "b"]),  # a duplicate does not refresh its place
        ("c", True, ["a", "b", "c"]),
        ("d", True, ["b", "c", "d"]),
        ("a", True, ["c", "d", "a"]),  # forgotten, so new again
    ]
    for msg_id, new, present in table:
        assert window.add(msg_id) is new
        assert [x for x in "abcd" if x in window] == sorted(present)
        assert len(window) == len(present)


def test_dedupe_window_ack_flags() -> None:
    window = DedupeWindow(capacity=2)
    window.add("m1")
    assert not window.is_acked("m1")
    window.mark_acked("m1")
    assert window.is_acked("m1")
    window.mark_acked("unknown")  # outside the window: ignored
    assert "unknown" not in window
    assert not window.is_acked("unknown")
    window.add("m2")
    window.add("m3")  # evicts m1 and its flag
    assert not window.is_acked("m1")
    assert window.add("m1")
    assert not window.is_acked("m1")


@pytest.mark.parametrize("capacity", [0, -1])
def test_dedupe_window_rejects_empty_capacity(capacity: int) -> None:
    with pytest.raises(ValueError):
        DedupeWindow(capacity)


def test_dedupe_window_default_capacity_holds_ten_thousand_ids() -> None:
    window = DedupeWindow()
    for i in range(10_001):
        window.add(f"m{i}")
    assert len(window) == 10_000
    assert "m0" not in window
    assert "m1" in window
    assert "m10000" in window


# --- close-code policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "terminal", "cls"),
    [
        (4001, True, Unauthorized),
        (4002, True, ConnectionEnded),
        (4010, True, ClosedByOperator),
        (1001, False, ConnectionLost),
        (4011, False, ConnectionLost),
        (1006, False, ConnectionLost),
    ],
)
def test_ending_for(code: int, terminal: bool, cls: type[ConnectionEnded]) -> None:
    assert (code in TERMINAL_CLOSE_CODES) is terminal
    error = ServerError(code="x", message="y")
    exc = ending_for(code, "why", error, terminal=terminal)
    assert type(exc) is cls
    assert isinstance(exc, ClientError)
    assert (exc.code, exc.reason, exc.error) == (code, "why", error)
    assert str(code) in str(exc)


@pytest.mark.parametrize("code", [1001, 1006, 1011, 4003, 4004, 4008, 4009, 4011])
def test_reconnectable_codes(code: int) -> None:
    assert code not in TERMINAL_CLOSE_CODES


# --- frames --------------------------------------------------------------------------------------

_FRAMES = msgspec.json.Decoder(Message | Welcome | ServerError)


def test_decode_msg_frame() -> None:
    raw = (
        b'{"type":"msg","id":"m1","stream":"user:p1","offset":"17-0","event":"queue.called",'
        b'"data":{"clinic":"205"},"ts":1700000000000,"ack":true,"replay":false,"extra":1}'
    )
    msg = _FRAMES.decode(raw)
    assert msg == Message(
        id="m1",
        stream="user:p1",
        offset="17-0",
        event="queue.called",
        data={"clinic": "205"},
        ts=1700000000000,
        ack=True,
        replay=False,
    )


def test_decode_welcome_and_error_frames() -> None:
    welcome = _FRAMES.decode(
        '{"type":"welcome","session":"s1","node":"n1","user":"p1","heartbeat":25,"replayed":3}'
    )
    assert welcome == Welcome(session="s1", node="n1", user="p1", heartbeat=25.0, replayed=3)
    error = _FRAMES.decode('{"type":"error","code":"unauthorized","message":"expired"}')
    assert error == ServerError(code="unauthorized", message="expired")


def test_message_encodes_with_its_type_tag() -> None:
    msg = Message(id="m", stream="all", offset="1-0", event="e")
    assert msgspec.json.decode(msgspec.json.encode(msg))["type"] == "msg"


def test_state_values_are_the_documented_strings() -> None:
    assert [s.value for s in State] == ["connecting", "open", "reconnecting", "closed"]


@pytest.mark.parametrize(
    ("url", "device"),
    [("http://127.0.0.1/ws", "d"), ("127.0.0.1:80", "d"), ("", "d"), ("ws://127.0.0.1/ws", "")],
)
def test_client_rejects_bad_arguments(url: str, device: str) -> None:
    with pytest.raises(ValueError):
        PushClient(url, "token", device)
