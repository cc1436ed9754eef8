"""The internal API against a real node: authentication, bad input, and never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import NodeHandle, start_node


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node("--docs", max_body_size=64 * 1024, max_message_size=2048) as handle:
        yield handle


GOOD = {"to": {"users": ["p1"]}, "event": "queue.called", "data": {"clinic": "205"}}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "test-key"},
        {"Authorization": "Basic dGVzdA=="},
    ],
)
def test_v1_needs_the_api_key(node: NodeHandle, headers: dict[str, str]) -> None:
    for method, path in [("POST", "/v1/messages"), ("GET", "/v1/sessions"), ("GET", "/v1/nodes"),
                         ("POST", "/v1/tokens"), ("GET", "/v1/messages/x"), ("DELETE", "/v1/sessions/x")]:  # fmt: skip
        r = httpx.request(method, node.internal_url + path, headers=headers, json=GOOD)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "unauthorized"


def test_health_and_metrics_need_no_key(node: NodeHandle) -> None:
    assert httpx.get(node.internal_url + "/healthz").status_code == 200
    ready = httpx.get(node.internal_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(node.internal_url + "/metrics").text
    for name in ("pushsvc_connections ", "pushsvc_messages_published_total", "pushsvc_broker_up 1.0",
                 "pushsvc_delivery_latency_seconds_bucket", "pushsvc_gc_pause_max_seconds"):  # fmt: skip
        assert name in text
    assert httpx.get(node.internal_url + "/openapi.json").json()["paths"]["/v1/messages"]["post"][
        "requestBody"
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"to":{"users":["p1"]},"event":"x"', 400, "malformed_json"),
        (b"not json", 400, "malformed_json"),
        (b"", 422, "invalid_body"),
        (b"[]", 422, "invalid_body"),
        (b"null", 422, "invalid_body"),
        (b'{"event":"x"}', 422, "invalid_body"),
        (b'{"to":{},"event":"x"}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"],"all":true},"event":"x"}', 422, "invalid_body"),
        (b'{"to":{"all":false},"event":"x"}', 422, "invalid_body"),
        (b'{"to":{"users":[]},"event":"x"}', 422, "invalid_body"),
        (b'{"to":{"users":["bad id"]},"event":"x"}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"has space"}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":""}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"x","ttl":0}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"x","ttl":"soon"}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"x","ack":"maybe"}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"x","surprise":1}', 422, "invalid_body"),
        (b'{"to":{"users":["p1"]},"event":"x","idempotency_key":""}', 422, "invalid_body"),
        (
            b'{"to":{"users":["p1"]},"event":"x","data":"' + b"y" * 3000 + b'"}',
            413,
            "message_too_large",
        ),
        (
            b'{"to":{"users":["p1"]},"event":"x","data":"' + b"y" * 70000 + b'"}',
            413,
            "body_too_large",
        ),
    ],
)
def test_bad_publish_bodies(node: NodeHandle, body: bytes, status: int, code: str) -> None:
    r = node.api("POST", "/v1/messages", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_publish_without_content_type_is_still_json(node: NodeHandle) -> None:
    import orjson

    r = node.api("POST", "/v1/messages", content=orjson.dumps(GOOD))
    assert r.status_code == 202 and len(r.json()["id"]) == 32


def test_invalid_body_names_the_field(node: NodeHandle) -> None:
    r = node.api(
        "POST", "/v1/messages/batch", json={"messages": [GOOD, {**GOOD, "event": "bad event"}]}
    )
    assert r.status_code == 422
    assert any(d["loc"][:3] == ["messages", "1", "event"] for d in r.json()["error"]["details"])
    assert node.api("POST", "/v1/messages/batch", json={"messages": []}).status_code == 422
    too_many = {"messages": [GOOD] * 1001}
    assert node.api("POST", "/v1/messages/batch", json=too_many).status_code in (413, 422)


def test_unknown_things_are_404(node: NodeHandle) -> None:
    for method, path in [("GET", "/v1/messages/nope"), ("DELETE", "/v1/sessions/nope"), ("GET", "/v1/nothing"),
                         ("GET", "/v1/messages/" + "x" * 300)]:  # fmt: skip
        r = node.api(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    r = node.api("PUT", "/v1/messages")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"user": "p1"}, 200),
        ({"user": "p1", "topics": ["clinic-205"], "ttl": 60}, 200),
        ({"user": "bad user"}, 422),
        ({"user": "p1", "topics": ["bad topic"]}, 422),
        ({"user": "p1", "ttl": -5}, 422),
        ({}, 422),
    ],
)
def test_tokens(node: NodeHandle, body: dict[str, Any], status: int) -> None:
    r = node.api("POST", "/v1/tokens", json=body)
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["token"].count(".") == 2


def test_sessions_query_validation(node: NodeHandle) -> None:
    assert node.api("GET", "/v1/sessions", params={"limit": 0}).status_code == 422
    assert node.api("GET", "/v1/sessions", params={"limit": "many"}).status_code == 422
    assert node.api("GET", "/v1/sessions", params={"limit": 5}).status_code == 200
    nodes = node.api("GET", "/v1/nodes").json()["nodes"]
    assert [n["id"] for n in nodes] == [node.node_id] and nodes[0]["state"] == "up"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "to": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "users": json_values, "topics": json_values, "all": json_values})),
        "event": json_values, "data": json_values, "ttl": json_values, "ack": json_values,
        "idempotency_key": json_values,
    },
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_no_publish_body_gets_a_500(node: NodeHandle, body: dict[str, Any]) -> None:
    r = node.api("POST", "/v1/messages", json=body)
    assert r.status_code in (202, 400, 413, 422), r.text
    if r.status_code != 202:
        assert r.json()["error"]["code"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_no_raw_body_gets_a_500(node: NodeHandle, raw: bytes) -> None:
    for path in ("/v1/messages", "/v1/messages/batch", "/v1/tokens"):
        r = node.api("POST", path, content=raw)
        assert 400 <= r.status_code < 500 or r.status_code == 202, (path, raw, r.text)


def test_one_key_twice_in_a_batch_publishes_once(node: NodeHandle) -> None:
    item = {**GOOD, "idempotency_key": "same-key-in-one-batch"}
    r = node.api("POST", "/v1/messages/batch", json={"messages": [item, GOOD, item]})
    assert r.status_code == 202
    first, other, repeat = r.json()["results"]
    assert repeat["id"] == first["id"] and repeat["duplicate"] is True
    assert other["id"] != first["id"]
