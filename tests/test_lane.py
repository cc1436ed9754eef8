"""One schema per request body (pushsvc/http/bodies.py): the rules beyond the schema and where
an error is, as tables with no I/O; then a real node, which answers every body of a table the
same through the publish lane and through the FastAPI routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from pushsvc.broker.base import PushSpec
from pushsvc.core.streams import ALL, topic_stream, user_stream
from pushsvc.http.bodies import (
    BatchRequest,
    DataTooLarge,
    Invalid,
    PublishRequest,
    TokenRequest,
    message,
    where,
)
from pushsvc.node.publish import Outgoing
from tests.support import API_KEY, UNIT, NodeHandle, start_node

DEFAULT_TTL = 600
MAX_DATA = 64


def publish(body: bytes) -> Outgoing:
    return message(msgspec.json.decode(body, type=PublishRequest), DEFAULT_TTL, MAX_DATA)


@pytest.mark.parametrize(
    ("body", "streams", "ttl", "ack", "data"),
    [
        (
            b'{"to":{"users":["p1","p2","p1"]},"event":"e","data":{"a":"205"}}',
            [user_stream("p1"), user_stream("p2")],
            DEFAULT_TTL,
            True,
            b'{"a":"205"}',
        ),
        (b'{"to":{"topics":["t"]},"event":"e","ttl":60}', [topic_stream("t")], 60, False, b"null"),
        (b'{"to":{"all":true},"event":"e","ttl":3600.0,"ack":true}', [ALL], 3600, True, b"null"),
        (
            b'{"to":{"users":null,"topics":["t"]},"event":"e"}',
            [topic_stream("t")],
            DEFAULT_TTL,
            False,
            b"null",
        ),
        (
            b'{"to":{"all":true},"event":"e","data":123456789012345678901234567890}',
            [ALL],
            DEFAULT_TTL,
            False,
            b"123456789012345678901234567890",
        ),
        # data as given while it fits; without its whitespace when only that makes it fit
        (b'{"to":{"all":true},"event":"e","data":[1, 2]}', [ALL], DEFAULT_TTL, False, b"[1, 2]"),
        (
            b'{"to":{"all":true},"event":"e","data":[' + b"1,    " * 12 + b"1]}",
            [ALL],
            DEFAULT_TTL,
            False,
            b"[" + b"1," * 12 + b"1]",
        ),
    ],
)
def test_the_message_of_a_body(
    body: bytes, streams: list[str], ttl: int, ack: bool, data: bytes
) -> None:
    m = publish(body)
    assert (m.streams, m.ttl, m.ack, m.data) == (streams, ttl, ack, data)
    assert isinstance(m.ttl, int)


def test_a_push_escalates_before_the_message_expires() -> None:
    m = publish(b'{"to":{"users":["p1"]},"event":"e","ttl":60,"push":{"after":60.0,"title":"t"}}')
    assert m.push == PushSpec(after=59, title="t", body="", urgency="normal")
    assert isinstance(m.push.after, int)


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        (b'{"to":{},"event":"e"}', ["to"], "exactly one"),
        (b'{"to":{"users":["p1"],"all":true},"event":"e"}', ["to"], "exactly one"),
        (b'{"to":{"users":["p1"],"topics":["t"]},"event":"e"}', ["to"], "exactly one"),
        (b'{"to":{"all":false},"event":"e"}', ["to", "all"], "only be true"),
        (b'{"to":{"topics":["t"]},"event":"e","push":{"after":5,"title":"t"}}', ["push"], "users"),
        (
            b'{"to":{"users":["p"]},"event":"e","ack":false,"push":{"after":5,"title":"t"}}',
            ["push"],
            "ack",
        ),
    ],
)
def test_the_rules_beyond_the_schema(body: bytes, loc: list[str], says: str) -> None:
    with pytest.raises(Invalid) as refused:
        publish(body)
    assert refused.value.loc == loc
    assert says in refused.value.msg


def test_data_too_large_even_without_whitespace() -> None:
    with pytest.raises(DataTooLarge):
        publish(b'{"to":{"all":true},"event":"e","data":"' + b"y" * 70 + b'"}')


@pytest.mark.parametrize(
    ("schema", "body", "loc", "says"),
    [
        (
            PublishRequest,
            b'{"to":{"users":["p1\\n"]},"event":"e"}',
            ["to", "users", "0"],
            "matching regex",
        ),
        (PublishRequest, b'{"to":{"all":true},"event":"e\\n"}', ["event"], "matching regex"),
        (
            PublishRequest,
            b'{"to":{"all":true},"event":"e","ttl":5.5}',
            ["ttl"],
            "Expected a whole number",
        ),
        (
            PublishRequest,
            b'{"to":{"all":true},"event":"e","ttl":"5"}',
            ["ttl"],
            "Expected `integer | null`, got `str`",
        ),
        (PublishRequest, b'{"to":{"all":true},"event":"e","ack":0}', ["ack"], "got `int`"),
        (PublishRequest, b'{"to":{"all":1},"event":"e"}', ["to", "all"], "got `int`"),
        (PublishRequest, b'{"event":"e"}', ["to"], "missing required field"),
        (PublishRequest, b'{"to":{"all":true},"event":"e","x":1}', ["x"], "unknown field"),
        (PublishRequest, b"null", [], "Expected `object`"),
        (
            BatchRequest,
            b'{"messages":[{"to":{"all":true},"event":"e"},{"event":"bad event"}]}',
            ["messages", "1", "event"],
            "matching regex",
        ),
        (BatchRequest, b'{"messages":[]}', ["messages"], "length >= 1"),
        (TokenRequest, b'{"user":"p1","ttl":-5}', ["ttl"], ">= 1"),
        (TokenRequest, b'{"user":"p1","topics":["bad topic"]}', ["topics", "0"], "matching regex"),
    ],
)
def test_where_an_error_is(schema: type, body: bytes, loc: list[str], says: str) -> None:
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.json.decode(body, type=schema)
    found, msg = where(refused.value)
    assert found == loc
    assert says in msg and "- at" not in msg and "\\" not in msg and "float" not in msg


# -- the lane and the routes, on a real node ------------------------------------------------

GOOD: dict[str, Any] = {"to": {"users": ["p1"]}, "event": "lab.ready", "data": {"room": 205}}
SINGLE: list[bytes] = [
    msgspec.json.encode(GOOD),
    b'{"to":{"topics":["clinic-205"]},"event":"x","ttl":60,"ack":true,"idempotency_key":"k1"}',
    b'{"to":{"all":true},"event":"x","ttl":3600.0}',
    b'{"to":{"users":null,"topics":["t"]},"event":"x"}',
    b'{"to":{"users":["p1"]},"event":"x","ttl":60,"push":{"after":60,"title":"Room 205"}}',
    b'{"to":{"all":true},"event":"x","data":[' + b"1,    " * 400 + b"1]}",  # fits compacted
    b'{"to":{"all":true},"event":"x","data":"' + b"y" * 3000 + b'"}',  # too large
    b'{"to":{"users":["p1\\n"]},"event":"x"}',
    b'{"to":{"users":["p1"]},"event":"x","ttl":5.5}',
    b'{"to":{"users":["p1"]},"event":"x","ack":"true"}',
    b'{"to":{"all":false},"event":"x"}',
    b'{"to":{"users":["p1"],"all":true},"event":"x"}',
    b'{"to":{"topics":["t"]},"event":"x","push":{"after":5,"title":"t"}}',
    b'{"to":{"users":["p1"]},"event":"x","ack":false,"push":{"after":5,"title":"t"}}',
    b'{"to":{"users":["p1"]},"event":"x","push":{"after":5,"title":""}}',
    b'{"to":{"users":["p1"]},"event":"x","surprise":1}',
    b'{"event":"x"}',
    b"[]",
    b"",
    b'{"to":',
]
BATCH: list[bytes] = [
    msgspec.json.encode({"messages": [GOOD, {**GOOD, "event": "y"}]}),
    msgspec.json.encode({"messages": [GOOD, {**GOOD, "event": "bad event"}]}),
    msgspec.json.encode({"messages": [GOOD, {**GOOD, "to": {"all": False}}]}),
    msgspec.json.encode({"messages": [GOOD, {**GOOD, "data": "y" * 3000}]}),
    b'{"messages":[]}',
]
CASES = [("/v1/messages", b) for b in SINGLE] + [("/v1/messages/batch", b) for b in BATCH]


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node(max_message_size=2048) as handle:
        yield handle


def post(node: NodeHandle, path: str, body: bytes, *, lane: bool) -> httpx.Response:
    """POST ``body``: with a Content-Length, as the lane takes it; else chunked, which the lane
    leaves to the routes."""
    content: bytes | Iterator[bytes] = body if lane else iter([body[:7], body[7:]])
    return httpx.post(
        node.internal_url + path,
        content=content,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10 * UNIT,
    )


def gist(r: httpx.Response) -> Any:
    """The answer without what differs from one publish to the next (ids)."""
    body = r.json()
    if r.status_code != 202:
        return r.status_code, body
    results = body.get("results", [body])
    return r.status_code, [sorted(x["streams"]) for x in results]


@pytest.mark.parametrize(("path", "body"), CASES, ids=lambda x: repr(x)[:60])
def test_the_lane_and_the_routes_answer_alike(node: NodeHandle, path: str, body: bytes) -> None:
    lane, route = post(node, path, body, lane=True), post(node, path, body, lane=False)
    assert gist(lane) == gist(route)
    assert lane.status_code in (202, 400, 413, 422), lane.text
    if lane.status_code == 422:
        error = lane.json()["error"]
        assert error["code"] == "invalid_body" and error["details"], error
        assert all(isinstance(d["loc"], list) for d in error["details"])
