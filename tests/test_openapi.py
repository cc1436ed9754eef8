"""The internal API's OpenAPI document tells the truth, checked against a real node.

It is a valid OpenAPI 3.1 document with no dangling ``$ref``; the checked-in ``docs/openapi.json``
is the served one (and what ``python -m pushsvc.http.openapi`` writes); every operation declares
its success schema and its errors with the one ``{"error": …}`` schema; a third-party fuzzer
(schemathesis, every check) finds no failure; every 405 says ``Allow``, on both listeners; the
documentation pages load their assets from the node.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.support import API_KEY, ROOT, UNIT, NodeHandle, start_node

CHECKED_IN = ROOT / "docs" / "openapi.json"
SCHEMATHESIS_CONFIG = ROOT / "tests" / "schemathesis.toml"
ERROR = {"$ref": "#/components/schemas/ErrorAnswer"}
PUBLISHES = {("post", "/v1/messages"), ("post", "/v1/messages/batch")}


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    with start_node(dev=True, enable_fault_injection=True, max_body_size=64 * 1024) as handle:
        yield handle


@pytest.fixture(scope="module")
def document(node: NodeHandle) -> dict[str, Any]:
    r = httpx.get(node.internal_url + "/openapi.json", timeout=10 * UNIT)
    assert r.status_code == 200
    served: dict[str, Any] = r.json()
    return served


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_the_checked_in_document_is_the_served_one(document: dict[str, Any]) -> None:
    text = CHECKED_IN.read_text()
    assert json.loads(text) == document, (
        "docs/openapi.json is stale: python -m pushsvc.http.openapi docs/openapi.json"
    )
    written = subprocess.run(
        [sys.executable, "-m", "pushsvc.http.openapi"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert written.stdout == text


def test_a_valid_openapi_31_document_without_dangling_refs(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(schemas), f"dangling: {refs - set(schemas)}"
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_every_operation_declares_its_answers(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key of the node (PUSHSVC_API_KEYS)",
        }
    }
    seen = set()
    for method, path, operation in operations(document):
        seen.add((method, path))
        responses = operation["responses"]
        success = [s for s in responses if s.startswith("2")]
        assert len(success) == 1, (method, path)
        schema = responses[success[0]]["content"]["application/json"]["schema"]
        assert set(schema) == {"$ref"}, (method, path, schema)  # a named, typed body
        errors = {s: r for s, r in responses.items() if not s.startswith("2")}
        for status, answer in errors.items():
            assert answer["content"] == {"application/json": {"schema": ERROR}}, (path, status)
        assert path.startswith("/v1/")
        assert operation["security"] == [{"bearer": []}]
        assert {"401", "403"} <= set(errors), (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(errors), (method, path)
        if (method, path) in PUBLISHES:
            assert {"409", "429", "503"} <= set(errors)
            assert "Retry-After" in errors["429"]["headers"]
    assert seen >= PUBLISHES and len(seen) == 16


def test_error_answers_have_the_documented_shape(
    node: NodeHandle, document: dict[str, Any]
) -> None:
    """The errors the fuzzer meets least: each is declared, and has the Error schema's shape."""
    url = node.internal_url
    key = {"Authorization": f"Bearer {API_KEY}"}
    big = b'{"data":"' + b"x" * 70_000 + b'"}'
    cases = [
        ("post", "/v1/messages", httpx.post(url + "/v1/messages", json={}), 401),
        ("post", "/v1/messages", httpx.post(url + "/v1/messages", headers=key, content=b"{"), 400),
        ("post", "/v1/messages", httpx.post(url + "/v1/messages", headers=key, content=big), 413),
        ("post", "/v1/tokens", httpx.post(url + "/v1/tokens", headers=key, json={"u": 1}), 422),
        ("get", "/v1/sessions", httpx.get(url + "/v1/sessions?limit=0", headers=key), 422),
        ("get", "/v1/messages/{message_id}", httpx.get(url + "/v1/messages/no", headers=key), 404),
        ("delete", "/v1/sessions/{session_id}",
         httpx.delete(url + "/v1/sessions/none", headers=key), 404),
        ("post", "/v1/nodes/{node_id}/drain",
         httpx.post(url + "/v1/nodes/a/drain", headers=key, content=b"[" * 70 + b"]" * 70), 422),
    ]  # fmt: skip
    for method, path, r, status in cases:
        assert r.status_code == status, (method, path, r.text)
        assert str(status) in document["paths"][path][method]["responses"]
        error = r.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/messages", {"to": {"all": True}, "event": "e", "ttl": "5"}, 422),
        ("/v1/messages", {"to": {"all": True}, "event": "e", "ack": 0}, 422),
        ("/v1/messages", {"to": {"all": True}, "event": "e", "ttl": 60.5}, 422),
        ("/v1/messages", {"to": {"all": True}, "event": "e", "ttl": 3600.0}, 202),
        ("/v1/messages", {"to": {"users": None, "topics": ["t"]}, "event": "e"}, 202),
        ("/v1/messages", {"to": {"users": None}, "event": "e"}, 422),
        ("/v1/tokens", {"user": "p1", "ttl": "60"}, 422),
        ("/v1/tokens", {"user": "p1", "ttl": 60.0}, 200),
        ("/v1/admin/faults", {"stop_bus": 0}, 422),
        ("/v1/admin/faults", {"drop_deliveries": "0.5"}, 422),
        ("/v1/admin/faults", {"drop_deliveries": 0}, 200),
    ],
)
def test_bodies_are_taken_as_the_document_types_them(
    node: NodeHandle, path: str, body: dict[str, Any], status: int
) -> None:
    """What the fuzzer found: a string for a number or a number for a boolean was coerced, so a
    request the document calls invalid was accepted. An integral float is a JSON integer."""
    r = node.api("POST", path, json=body)
    assert r.status_code == status, r.text


def test_every_405_says_allow(node: NodeHandle) -> None:
    url = node.internal_url
    for method, path, allow in [
        ("PUT", "/v1/admin/faults", "DELETE, GET, POST"),
        ("PATCH", "/v1/messages", "POST"),
        ("PUT", "/v1/messages/batch", "POST"),  # not a message id
        ("POST", "/v1/sessions", "DELETE, GET"),
        ("GET", "/v1/nodes/n1/drain", "POST"),
        ("DELETE", "/openapi.json", "GET, HEAD"),
        ("POST", "/docs", "GET"),
        ("POST", "/healthz", "GET"),
    ]:
        r = httpx.request(method, url + path)
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == allow, (method, path)
        assert r.json()["error"]["code"] == "method_not_allowed"


def raw_answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


UPGRADE_BY_POST = (
    b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_the_client_listener_405s_say_allow(node: NodeHandle) -> None:
    for request, allow in [
        (b"DELETE /client/pushsvc.js HTTP/1.1\r\nHost: x\r\n\r\n", b"GET, HEAD"),
        (b"GET /demo/api/token HTTP/1.1\r\nHost: x\r\n\r\n", b"POST"),
        (UPGRADE_BY_POST, b"GET"),
    ]:  # fmt: skip
        head = raw_answer(node.port, request).split(b"\r\n\r\n")[0].lower().split(b"\r\n")
        assert head[0].startswith(b"http/1.1 405"), (request, head)
        assert b"allow: " + allow.lower() in head, (request, head)


def test_the_docs_pages_load_their_assets_from_the_node(node: NodeHandle) -> None:
    url = node.internal_url
    for page in ("/docs", "/redoc"):
        answer = httpx.get(url + page)
        assert answer.headers["content-security-policy"].startswith("default-src 'self';")
        html = answer.text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources, page
        for source in sources:
            assert source.startswith("/docs/assets/"), (page, source)
            asset = httpx.get(url + source)
            assert asset.status_code == 200 and len(asset.content) > 1000, source
        assert "cdn" not in html.lower() and "https://" not in html, page
    missing = httpx.get(url + "/docs/assets/../openapi.json")
    assert missing.status_code == 404
    assert httpx.get(url + "/docs/assets/index.html").status_code == 404


def test_schemathesis_finds_no_failure(node: NodeHandle, tmp_path: Path) -> None:
    """Every check of schemathesis, every phase, a bounded number of cases per operation."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG),
        "run", node.internal_url + "/openapi.json",
        "--checks", "all", "--header", f"Authorization: Bearer {API_KEY}",
        "--max-examples", "25", "--workers", "1", "--generation-database", "none",
        "--request-timeout", str(10 * UNIT), "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False,
                         timeout=120 * UNIT)  # fmt: skip
    failures = run.stdout.partition("=== FAILURES ===")[2][:8000]
    summary = failures or run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert re.search(r"\d+ passed", summary) and "failed" not in summary.lower(), summary
    assert "Operations:       16 selected / 16 total" in run.stdout, summary
