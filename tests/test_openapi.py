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
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.support import API_KEY, ROOT, UNIT, NodeHandle, start_node, wait_until
from tests.wire import Wire

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


def closed_world(document: dict[str, Any]) -> dict[str, Any]:
    """The document's components with no property left undocumented (``additionalProperties``
    false on every object): an answer field the document does not name fails too."""
    components = json.loads(json.dumps(document["components"]))
    for schema in components["schemas"].values():
        if "properties" in schema:
            schema["additionalProperties"] = False
    return components


def conforms(document: dict[str, Any], method: str, template: str, r: httpx.Response) -> None:
    """``r``, a success answer to ``method`` ``template``, is what the document says for it."""
    assert r.status_code < 300, f"{method} {template}: {r.status_code} {r.text}"
    answers = document["paths"][template][method]["responses"]
    assert str(r.status_code) in answers, f"{method} {template}: undocumented {r.status_code}"
    schema = answers[str(r.status_code)]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": closed_world(document)})
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(r.json())]
    assert not problems, f"{method} {template} {r.status_code}: {problems}"


async def test_every_success_answer_is_what_the_document_describes() -> None:
    """The success answers schemathesis rarely reaches (a real message, a real session) are the
    documented schema, field for field and no field more (a node of its own: schemathesis may
    have drained the shared one; the document is the checked-in one, kept equal to the served)."""
    with start_node(enable_fault_injection=True) as node:
        await answer_as_documented(node, json.loads(CHECKED_IN.read_text()))


async def answer_as_documented(node: NodeHandle, document: dict[str, Any]) -> None:
    user = "schema-p1"
    wire = await Wire.open(node.client_url, node.token(user), device="phone")
    to = {"to": {"users": [user]}, "event": "lab.result", "data": {"k": 1}}
    published = node.api("POST", "/v1/messages", json=to)
    conforms(document, "post", "/v1/messages", published)
    message = published.json()["id"]
    delivered = await wire.recv_msg()
    await wire.ack(delivered["id"])
    batch = node.api("POST", "/v1/messages/batch", json={"messages": [to, to]})
    conforms(document, "post", "/v1/messages/batch", batch)
    token = node.api("POST", "/v1/tokens", json={"user": user, "topics": ["t"]})
    conforms(document, "post", "/v1/tokens", token)
    trail = wait_until(
        lambda: (r := node.api("GET", f"/v1/messages/{message}")).json()["devices"] and r
    )
    conforms(document, "get", "/v1/messages/{message_id}", trail)
    trace = node.api("GET", f"/v1/messages/{message}/trace")
    conforms(document, "get", "/v1/messages/{message_id}/trace", trace)
    for path, params in [
        ("/v1/nodes", {}),
        ("/v1/sessions", {"user": user}),
        ("/v1/local/sessions", {"user": user}),
        ("/v1/webhooks", {}),
        ("/v1/admin/faults", {}),
    ]:
        r = node.api("GET", path, params=params)
        conforms(document, "get", path, r)
    assert node.api("GET", "/v1/sessions", params={"user": user}).json()["sessions"]
    session = node.api("GET", "/v1/local/sessions", params={"user": user}).json()["sessions"]
    kicked = node.api("DELETE", f"/v1/sessions/{session[0]['id']}")
    conforms(document, "delete", "/v1/sessions/{session_id}", kicked)
    await wire.closed()
    laptop = await Wire.open(node.client_url, node.token(user), device="laptop")
    kicked = node.api("DELETE", "/v1/sessions", params={"user": user})
    conforms(document, "delete", "/v1/sessions", kicked)
    assert kicked.json()["sessions"], "the laptop's session is closing"
    await laptop.closed()
    revoked = node.api("POST", f"/v1/users/{user}/revoke")
    conforms(document, "post", "/v1/users/{user}/revoke", revoked)
    injected = node.api("POST", "/v1/admin/faults", json={"drop_deliveries": 0.5})
    conforms(document, "post", "/v1/admin/faults", injected)
    conforms(document, "delete", "/v1/admin/faults", node.api("DELETE", "/v1/admin/faults"))
    drained = node.api("POST", f"/v1/nodes/{node.node_id}/drain")  # last: the node leaves
    conforms(document, "post", "/v1/nodes/{node_id}/drain", drained)
