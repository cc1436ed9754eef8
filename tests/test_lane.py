"""The publish lane never takes a body the FastAPI routes would refuse, and builds the same
message from it (pushsvc/http/lane.py). No I/O: both validators on the same generated bodies."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pushsvc.http.lane import LaneBatch, LanePublish, lane_outgoing
from pushsvc.http.models import BatchRequest, DataTooLarge, PublishRequest
from pushsvc.node.publish import Outgoing

DEFAULT_TTL = 600
MAX_DATA = 64

VALID_NAMES = ["p1", "clinic-205", "a.b@c+d=e_f", "x" * 128]
BAD_NAMES = ["x" * 129, "", "a b", "p1\n", "ü", 7, None]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
names = st.sampled_from(VALID_NAMES)
valid_targets = (
    st.fixed_dictionaries({"users": st.lists(names, min_size=1, max_size=3)})
    | st.fixed_dictionaries({"topics": st.lists(names, min_size=1, max_size=3)})
    | st.just({"all": True})
)
valid_messages = st.fixed_dictionaries(
    {"to": valid_targets, "event": st.sampled_from(["queue.called", "a:b-c_d", "x" * 64])},
    optional={
        "data": json_values | st.text(min_size=60, max_size=70),
        "ttl": st.sampled_from([1, 60, 30 * 86_400, None]),
        "ack": st.sampled_from([True, False, None]),
        "idempotency_key": st.sampled_from(["k", "k" * 128, None]),
        "push": st.sampled_from([
            None, {"after": 5, "title": "Room 205"},
            {"after": 59, "title": "t" * 120, "body": "b" * 1000, "urgency": "high"},
        ]),
    },
)  # fmt: skip
# One field made wrong, or wrong in a nested place, or nothing (valid).
MUTATIONS: dict[str, list[Any]] = {
    "event": ["x" * 65, "", "has space", "e\n", 1, None],
    "ttl": [0, 30 * 86_400 + 1, 5.0, 5.5, "5", True],
    "ack": [1, "true", "maybe"],
    "idempotency_key": ["", "k" * 129, 3],
    "surprise": [1],
    "push": [{"after": 0, "title": "t"}, {"after": 5}, {"after": 5, "title": ""},
             {"after": 5, "title": "t", "urgency": "low"}, {"after": 5, "title": "t", "x": 1},
             {"after": 30 * 86_400, "title": "t"}, {"after": 5.5, "title": "t"}, "t", 5],
    "to": [{}, {"all": False}, {"all": 1}, {"all": "true"}, {"users": []}, {"topics": "p1"},
           {"users": ["p1"], "all": True}, {"users": ["p1"], "topics": ["t"]},
           {"users": ["p1"], "extra": 1}, [], "p1", None],
    "user": BAD_NAMES,
}  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = draw(valid_messages)
    field = draw(st.sampled_from([None, *MUTATIONS]))
    if field is None:
        return message
    value = draw(st.sampled_from(MUTATIONS[field]))
    if field == "user":
        message["to"] = {"users": ["p1", value]}
    else:
        message[field] = value
    return message


def _data_equal(a: Outgoing, b: Outgoing) -> bool:
    return bool(msgspec.json.decode(a.data) == msgspec.json.decode(b.data))


def _same(lane: Outgoing, route: Outgoing) -> None:
    assert (lane.streams, lane.event, lane.ttl, lane.ack, lane.idempotency_key, lane.push) == (
        route.streams, route.event, route.ttl, route.ack, route.idempotency_key, route.push,
    )  # fmt: skip
    assert _data_equal(lane, route)


def _route(body: bytes, model: type[PublishRequest] | type[BatchRequest]) -> list[Outgoing]:
    """What the routes publish for ``body``; raises when they refuse it."""
    req = model.model_validate_json(body)
    found = req.messages if isinstance(req, BatchRequest) else [req]
    return [m.outgoing(DEFAULT_TTL, MAX_DATA) for m in found]


@settings(max_examples=1500, deadline=None)
@given(message=messages())
def test_the_lane_takes_only_what_the_routes_take(message: dict[str, Any]) -> None:
    body = msgspec.json.encode(message)
    try:
        decoded = msgspec.json.decode(body, type=LanePublish)
    except msgspec.ValidationError:
        return  # goes on to the routes
    lane = lane_outgoing(decoded, DEFAULT_TTL, MAX_DATA)
    if lane is None:
        return
    event("lane took it")
    (route,) = _route(body, PublishRequest)  # raises if the routes refuse it
    _same(lane, route)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(messages(), min_size=0, max_size=3))
def test_batches_too(batch: list[dict[str, Any]]) -> None:
    body = msgspec.json.encode({"messages": batch})
    try:
        decoded = msgspec.json.decode(body, type=LaneBatch)
    except msgspec.ValidationError:
        return
    lane = [lane_outgoing(m, DEFAULT_TTL, MAX_DATA) for m in decoded.messages]
    if None in lane:
        return
    route = _route(body, BatchRequest)
    assert len(lane) == len(route)
    for a, b in zip(lane, route, strict=True):
        assert a is not None
        _same(a, b)


GOOD = [
    b'{"to":{"users":["p1","p2","p1"]},"event":"queue.called","data":{"clinic":"205"}}',
    b'{"to":{"topics":["clinic-205"]},"event":"x","ttl":60,"ack":true,"idempotency_key":"k"}',
    b'{"to":{"all":true},"event":"x","data":123456789012345678901234567890}',
    b'{"to":{"users":["p1"]},"event":"x","data":[1, 2.5, "\\u00e9", null, {"a": false}]}',
]


@pytest.mark.parametrize("body", GOOD)
def test_the_lane_takes_well_formed_messages(body: bytes) -> None:
    lane = lane_outgoing(msgspec.json.decode(body, type=LanePublish), DEFAULT_TTL, MAX_DATA)
    assert lane is not None
    (route,) = _route(body, PublishRequest)
    _same(lane, route)


@pytest.mark.parametrize(
    "body",
    [
        b'{"to":{"users":["p1\\n"]},"event":"x"}',
        b'{"to":{"users":["p1"]},"event":"x\\n"}',
        b'{"to":{"users":["p1"]},"event":"x","ttl":5.0}',
        b'{"to":{"users":["p1"]},"event":"x","ack":"true"}',
        b'{"to":{"all":false},"event":"x"}',
        b'{"to":{"users":["p1"],"all":true},"event":"x"}',
        b'{"to":{"users":["p1"]},"event":"x","data":"' + b"y" * 70 + b'"}',
    ],
)
def test_the_lane_leaves_the_rest_to_the_routes(body: bytes) -> None:
    try:
        decoded = msgspec.json.decode(body, type=LanePublish)
    except msgspec.ValidationError:
        return
    assert lane_outgoing(decoded, DEFAULT_TTL, MAX_DATA) is None


def test_the_routes_refuse_a_trailing_newline_in_a_name() -> None:
    with pytest.raises(ValidationError):
        PublishRequest.model_validate_json(b'{"to":{"users":["p1\\n"]},"event":"x"}')


def test_the_routes_measure_data_compactly() -> None:
    spaced = b'{"to":{"users":["p1"]},"event":"x","data":[' + b"1,    " * 12 + b"1]}"
    lane = msgspec.json.decode(spaced, type=LanePublish)
    assert lane_outgoing(lane, DEFAULT_TTL, MAX_DATA) is None  # 74 bytes as given
    (route,) = _route(spaced, PublishRequest)  # 27 bytes re-encoded
    assert len(route.data) <= MAX_DATA
    with pytest.raises(DataTooLarge):
        _route(b'{"to":{"all":true},"event":"x","data":"' + b"y" * 70 + b'"}', PublishRequest)
