"""API bodies nested too deep or holding NaN or an infinity: 422 on every endpoint that takes a
body, on the publish lane and on the FastAPI routes, never a 500; and the guard that decides it
(pushsvc/http/jsonguard.py) agrees with a reference built on Python's own parser."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.http import jsonguard
from pushsvc.http.jsonguard import MAX_DEPTH, NOT_FINITE, TOO_DEEP
from tests.support import API_KEY, UNIT, NodeHandle, start_node
from tests.wire import Wire

# -- the guard against a reference ----------------------------------------------------------


def reference(body: bytes) -> str | None:
    """What :func:`jsonguard.problem` must say, from ``json.loads`` (which takes NaN and
    Infinity, and parses 1e400 as infinity) and a walk of what it built."""
    found = json.loads(body, parse_constant=lambda _: math.nan)

    def deepest(value: Any) -> int:
        if isinstance(value, list):
            return 1 + max(map(deepest, value), default=0)
        if isinstance(value, dict):
            return 1 + max(map(deepest, value.values()), default=0)
        return 0

    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return math.isfinite(float(str(value)))  # as a browser reads it
        if isinstance(value, list):
            return all(map(finite, value))
        if isinstance(value, dict):
            return all(map(finite, value.values()))
        return True

    if deepest(found) > MAX_DEPTH:
        return TOO_DEEP
    return None if finite(found) else NOT_FINITE


# Strings full of what the guard looks for: brackets, quotes, backslashes, NaN, exponents.
tricky_text = st.text(alphabet='[]{}"\\eE019.-+NaInfity ,:ü', max_size=12)
HUGE = ["1e400", "-1E+309", "1.7976931348623157e308", "2e308", "1e-400", "0e999", "12.5e3"]
LONG = [
    "1" * 400,
    "1" * 400 + ".5",
    "-0.0",
    "1" * 308 + ".0",
    "1" + "0" * 250 + "e60",
    "9" * 210 + "e99",
    "9" * 209 + "e98",
    "17976931348623159e292",
    "0.0001e312",
    "1.7e308",
]
RAW = HUGE + LONG
# A number written as one of RAW, exactly (json.dumps would write inf as Infinity).
raw_numbers = st.integers(0, len(RAW) - 1).map(lambda i: f"@{i}@")
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | raw_numbers
    | tricky_text
)


def nest(value: Any, levels: int, as_object: bool) -> Any:
    for _ in range(levels):
        value = {"k": value} if as_object else [value]
    return value


json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=10,
)
documents = st.builds(
    nest, json_values, st.sampled_from([0, 1, 30, 62, 63, 64, 65, 90]), st.booleans()
)


@settings(max_examples=1500, deadline=None)
@given(document=documents, indent=st.sampled_from([None, 1]))
def test_the_guard_agrees_with_the_reference(document: Any, indent: int | None) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    for i, number in enumerate(RAW):
        text = text.replace(f'"@{i}@"', number)
    body = text.encode()
    assert jsonguard.problem(body) == reference(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[]", None),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, None),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), TOO_DEEP),
        (b"[" * 100_000 + b"]" * 100_000, TOO_DEEP),
        (b'["' + b"[" * 100 + b'"]', None),  # brackets in a string are text
        (b'["\\"' + b"[" * 100 + b'"]', None),  # ... after an escaped quote too
        (b'["\\\\", ' + b"[" * 70 + b"]" * 70 + b"]", TOO_DEEP),  # a string ending in \
        (b'["' + b"]" * 70 + b'", ' + b"[" * 70 + b"]" * 70 + b"]", TOO_DEEP),
        (b'{"a": NaN}', NOT_FINITE),
        (b'{"a": [1, -Infinity]}', NOT_FINITE),
        (b'{"a": "NaN Infinity 1e400"}', None),
        (b'{"a": 1e400}', NOT_FINITE),
        (b'{"a": 1E308}', None),
        (b'{"a": 1e-400}', None),
        (b'{"a": ' + b"9" * 308 + b"}", None),
        (b'{"a": ' + b"9" * 309 + b"}", NOT_FINITE),  # an integer, but a browser reads Infinity
        (b'{"a": -' + b"9" * 5000 + b"}", NOT_FINITE),
        (b'{"a": ' + b"9" * 400 + b".0}", NOT_FINITE),
    ],
)
def test_the_guard_on_chosen_bodies(body: bytes, expected: str | None) -> None:
    assert jsonguard.problem(body) == expected
    if len(body) < 4_000:  # beyond, Python's parser gives up (depth, digits of an int)
        assert reference(body) == expected


# -- every endpoint with a body, on a real node ---------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node("--enable-fault-injection") as handle:
        yield handle


@pytest.fixture(scope="module")
def dev_node() -> Iterator[NodeHandle]:
    """A node in dev mode: its client listener serves the demo API."""
    with start_node(dev=True) as handle:
        yield handle


def deep(levels: int) -> Any:
    return nest(1, levels, as_object=False)


def publish(data: Any) -> dict[str, Any]:
    return {"to": {"users": ["p1"]}, "event": "lab.ready", "data": data}


def raw(document: Any, replace: dict[str, str]) -> bytes:
    """``document`` as JSON, with each placeholder string of ``replace`` put in as raw text."""
    text = json.dumps(document)
    for placeholder, value in replace.items():
        text = text.replace(json.dumps(placeholder), value)
    return text.encode()


NAN, INF, DEEP = "__nan__", "__inf__", "__deep__"
VERY_DEEP = "[" * 50_000 + "]" * 50_000
# (endpoint, body) pairs; every body here must be refused with 422.
REFUSED = {
    "publish: data too deep": ("/v1/messages", raw(publish(deep(MAX_DEPTH)), {})),
    "publish: data very deep": ("/v1/messages", raw(publish(DEEP), {DEEP: VERY_DEEP})),
    "publish: NaN in data": ("/v1/messages", raw(publish({"a": [1, NAN]}), {NAN: "NaN"})),
    "publish: 1e400 in data": ("/v1/messages", raw(publish({"t": INF}), {INF: "1e400"})),
    "publish: 400-digit integer": ("/v1/messages", raw(publish(INF), {INF: "9" * 400})),
    "publish: 5,000-digit integer": ("/v1/messages", raw(publish(INF), {INF: "9" * 5000})),
    "publish: -Infinity": ("/v1/messages", raw(publish(INF), {INF: "-Infinity"})),
    "publish: NaN ttl": ("/v1/messages", raw({**publish(1), "ttl": NAN}, {NAN: "NaN"})),
    "batch: deep item": (
        "/v1/messages/batch",
        raw({"messages": [publish(1), publish(deep(MAX_DEPTH - 2))]}, {}),
    ),
    "batch: Infinity in an item": (
        "/v1/messages/batch",
        raw({"messages": [publish(1), publish([INF])]}, {INF: "Infinity"}),
    ),
    "tokens: NaN ttl": ("/v1/tokens", raw({"user": "p1", "ttl": NAN}, {NAN: "NaN"})),
    "tokens: deep": ("/v1/tokens", raw({"user": "p1", "topics": deep(MAX_DEPTH)}, {})),
    "faults: NaN": ("/v1/admin/faults", raw({"drop_deliveries": NAN}, {NAN: "NaN"})),
    "faults: deep": ("/v1/admin/faults", raw({"stop_bus": DEEP}, {DEEP: VERY_DEEP})),
}
# The same endpoints take these (the limit is inclusive).
TAKEN = {
    "publish: data as deep as allowed": ("/v1/messages", raw(publish(deep(MAX_DEPTH - 1)), {})),
    "publish: 1e308 and text": (
        "/v1/messages",
        raw(publish({"t": INF, "s": "NaN [[[ 1e400"}), {INF: "1e308"}),
    ),
    "batch: as deep as allowed": (
        "/v1/messages/batch",
        raw({"messages": [publish(deep(MAX_DEPTH - 3))]}, {}),
    ),
    "tokens": ("/v1/tokens", raw({"user": "p1", "ttl": 60}, {})),
}


def post(node: NodeHandle, path: str, body: bytes, *, lane: bool) -> httpx.Response:
    """POST ``body``. ``lane``: with a Content-Length, as the publish lane wants it; else
    chunked, which the lane leaves to the FastAPI routes."""
    content: bytes | Iterator[bytes] = body if lane else iter([body[:7], body[7:]])
    return httpx.post(
        node.internal_url + path,
        content=content,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=10 * UNIT,
    )


def for_someone(body: bytes) -> tuple[bytes, str]:
    """``body`` addressed to a patient of its own instead of p1, and that patient."""
    user = f"u-{secrets.token_hex(4)}"
    return body.replace(b'"p1"', b'"%s"' % user.encode()), user


async def waiting(node: NodeHandle, user: str) -> int:
    """How many messages wait for ``user``: a device's welcome says how many it replayed."""
    wire = await Wire.open(node.client_url, node.token(user), device="phone")
    await wire.ws.close()
    return int(wire.welcome["replayed"])


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "routes"])
@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_with_422(node: NodeHandle, case: str, lane: bool) -> None:
    path, body = REFUSED[case]
    body, user = for_someone(body)
    r = post(node, path, body, lane=lane)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_body"
    assert error["message"] in (TOO_DEEP, NOT_FINITE)
    assert await waiting(node, user) == 0  # nothing was published


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "routes"])
@pytest.mark.parametrize("case", list(TAKEN))
async def test_taken(node: NodeHandle, case: str, lane: bool) -> None:
    path, body = TAKEN[case]
    body, user = for_someone(body)
    r = post(node, path, body, lane=lane)
    assert r.status_code in (200, 202), r.text
    if path.startswith("/v1/messages"):
        assert await waiting(node, user) == 1


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "routes"])
async def test_bytes_that_are_not_utf8_in_data_are_refused(node: NodeHandle, lane: bool) -> None:
    """The lane keeps ``data`` as raw bytes: it must not publish what no client could read."""
    body, user = for_someone(b'{"to":{"users":["p1"]},"event":"x","data":"caf\xe9"}')
    r = post(node, "/v1/messages", body, lane=lane)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed_json"
    assert await waiting(node, user) == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/demo/api/publish", raw(publish({"a": NAN}), {NAN: "NaN"})),
        ("/demo/api/publish", raw(publish(deep(MAX_DEPTH)), {})),
        ("/demo/api/token", raw({"user": "p1", "ttl": INF}, {INF: "Infinity"})),
    ],
)
def test_the_dev_demo_api_refuses_them_too(dev_node: NodeHandle, path: str, body: bytes) -> None:
    r = httpx.post(dev_node.http_url + path, content=body, timeout=10 * UNIT)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_body"
    assert r.json()["error"]["message"] in (TOO_DEEP, NOT_FINITE)


def test_the_node_logged_no_traceback(node: NodeHandle) -> None:
    for path, body in REFUSED.values():
        post(node, path, body, lane=True)
    assert "Traceback" not in node.log()
