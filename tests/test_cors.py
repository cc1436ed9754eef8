"""CORS on the client listener (``PUSHSVC_CORS_ORIGINS``): the pure header rules as a table, then
real nodes answering real HTTP requests, and the node refusing to start with a bad origin."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from pushsvc.http.cors import CORS_PATHS, cors_headers, preflight_headers
from tests.support import (
    API_KEY,
    ROOT,
    TOKEN_SECRET,
    UNIT,
    NodeHandle,
    pushsvc_command,
    start_node,
)
from tests.wire import Wire

PORTAL = "https://portal.hospital.example"
LISTED = frozenset({PORTAL.encode(), b"http://localhost:3000"})
ACAO = "access-control-allow-origin"


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        (b"https://portal.hospital.example", frozenset(), b""),
        (None, frozenset(), b""),
        (
            b"https://portal.hospital.example",
            LISTED,
            b"Access-Control-Allow-Origin: https://portal.hospital.example\r\nVary: Origin\r\n",
        ),
        (
            b"HTTPS://Portal.Hospital.Example/",
            LISTED,
            b"Access-Control-Allow-Origin: https://portal.hospital.example\r\nVary: Origin\r\n",
        ),
        (b"https://evil.example", LISTED, b"Vary: Origin\r\n"),
        (b"http://portal.hospital.example", LISTED, b"Vary: Origin\r\n"),
        (b"https://portal.hospital.example\r\nX: y", LISTED, b"Vary: Origin\r\n"),
        (b"null", LISTED, b"Vary: Origin\r\n"),
        (None, LISTED, b"Vary: Origin\r\n"),
        (b"https://anyone.example", frozenset({b"*"}), b"Access-Control-Allow-Origin: *\r\n"),
        (None, frozenset({b"*"}), b"Access-Control-Allow-Origin: *\r\n"),
    ],
)
def test_cors_headers(origin: bytes | None, allowed: frozenset[bytes], expected: bytes) -> None:
    assert cors_headers(origin, allowed) == expected


@pytest.mark.parametrize(
    ("origin", "method", "granted"),
    [
        (PORTAL.encode(), b"GET", True),
        (PORTAL.encode(), b"HEAD", True),
        (PORTAL.encode(), b"POST", False),
        (PORTAL.encode(), None, False),
        (b"https://evil.example", b"GET", False),
        (None, b"GET", False),
    ],
)
def test_preflight_headers(origin: bytes | None, method: bytes | None, granted: bool) -> None:
    lines = preflight_headers(origin, method, LISTED)
    assert (b"Access-Control-Allow-Origin" in lines) is granted
    assert (b"Access-Control-Allow-Methods: GET, HEAD" in lines) is granted
    assert b"Vary: Origin\r\n" in lines


def test_the_service_worker_is_not_cross_origin() -> None:
    """A browser registers a service worker only from the page's own origin: no CORS for it."""
    assert "/client/pushsvc-sw.js" not in CORS_PATHS
    assert {"/client/pushsvc.js", "/client/push-key"} <= CORS_PATHS


# -- real nodes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node(cors_origins=f"{PORTAL},http://localhost:3000") as handle:
        yield handle


@pytest.mark.parametrize("path", ["/client/pushsvc.js", "/client/pushsvc.d.ts", "/client/push-key"])
def test_a_listed_origin_gets_the_header(node: NodeHandle, path: str) -> None:
    r = httpx.get(node.http_url + path, headers={"Origin": PORTAL})
    assert r.status_code in (200, 404), r.text  # the push key is 404 without VAPID, still readable
    assert r.headers[ACAO] == PORTAL
    assert r.headers["vary"] == "Origin"


def test_a_listed_origin_reads_the_script_with_head_too(node: NodeHandle) -> None:
    r = httpx.head(
        node.http_url + "/client/pushsvc.js", headers={"Origin": "http://localhost:3000"}
    )
    assert r.status_code == 200 and r.headers[ACAO] == "http://localhost:3000"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", f"{PORTAL}.evil.example"])
def test_an_unlisted_origin_gets_no_header(node: NodeHandle, origin: str) -> None:
    r = httpx.get(node.http_url + "/client/pushsvc.js", headers={"Origin": origin})
    assert r.status_code == 200
    assert ACAO not in r.headers
    assert r.headers["vary"] == "Origin"


@pytest.mark.parametrize(
    "path", ["/client/pushsvc-sw.js", "/demo/", "/demo/demo.js", "/healthz", "/client/nope.js"]
)
def test_no_header_on_other_paths(node: NodeHandle, path: str) -> None:
    r = httpx.get(node.http_url + path, headers={"Origin": PORTAL})
    assert ACAO not in r.headers, path


def test_a_preflight_of_a_listed_origin(node: NodeHandle) -> None:
    r = httpx.options(
        node.http_url + "/client/pushsvc.js",
        headers={"Origin": PORTAL, "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 200 and r.content == b""
    assert r.headers[ACAO] == PORTAL
    assert r.headers["access-control-allow-methods"] == "GET, HEAD"
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"


def test_a_preflight_of_an_unlisted_origin_or_method(node: NodeHandle) -> None:
    for origin, method in (("https://evil.example", "GET"), (PORTAL, "DELETE")):
        r = httpx.options(
            node.http_url + "/client/pushsvc.js",
            headers={"Origin": origin, "Access-Control-Request-Method": method},
        )
        assert r.status_code == 200
        assert ACAO not in r.headers and "access-control-allow-methods" not in r.headers


def test_other_methods_are_still_refused(node: NodeHandle) -> None:
    r = httpx.post(node.http_url + "/client/pushsvc.js", headers={"Origin": PORTAL})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, HEAD"


async def test_cors_origins_do_not_open_the_websocket_check() -> None:
    """A CORS origin is no WebSocket origin: with ALLOWED_ORIGINS set, it is still refused."""
    with start_node(cors_origins=PORTAL, allowed_origins="https://app.hospital.example") as n:
        with pytest.raises(InvalidStatus) as info:
            await Wire.open(n.client_url, n.token("p1"), origin=PORTAL)
        assert info.value.response.status_code == 403
        wire = await Wire.open(n.client_url, n.token("p1"), origin="https://app.hospital.example")
        await wire.close()


def test_by_default_no_cors_at_all() -> None:
    with start_node() as plain:
        r = httpx.get(plain.http_url + "/client/pushsvc.js", headers={"Origin": PORTAL})
        assert r.status_code == 200
        assert ACAO not in r.headers and "vary" not in r.headers
        preflight = httpx.options(
            plain.http_url + "/client/pushsvc.js",
            headers={"Origin": PORTAL, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 405 and ACAO not in preflight.headers


def test_a_star_is_any_origin() -> None:
    with start_node(cors_origins="*") as public:
        r = httpx.get(
            public.http_url + "/client/pushsvc.js", headers={"Origin": "https://x.example"}
        )
        assert r.headers[ACAO] == "*" and "vary" not in r.headers


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("https://portal.hospital.example/app", "'https://portal.hospital.example/app' is not a"),
        ("portal.hospital.example", "'portal.hospital.example' is not a web origin"),
        ("https://portal.hospital.example?x=1", "is not a web origin"),
        ("ftp://portal.hospital.example", "is not a web origin"),
        ("https://portal.hospital.example:70000", "is not a web origin"),
        ("*,https://portal.hospital.example", "'*' (any origin) stands alone"),
    ],
)
def test_a_bad_origin_stops_the_node(value: str, said: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    done = subprocess.run(
        [*pushsvc_command(), "serve", "--port", "0", "--internal-port", "0"],
        env={
            **base,
            "PUSHSVC_TOKEN_SECRET": TOKEN_SECRET,
            "PUSHSVC_API_KEYS": API_KEY,
            "PUSHSVC_CORS_ORIGINS": value,
        },
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "cors_origins" in done.stderr and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
