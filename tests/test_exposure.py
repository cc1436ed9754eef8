"""What each listener shows, against real nodes: /docs only when asked for, /metrics only on the
internal listener, an allow-list of client files, the Origin check, an opaque node id in the
welcome, no Redis error text in error bodies, client-chosen ids escaped in alert annotations."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from monitor.alerts import delivery_loss, shown
from monitor.reconcile import Missing, NodeLoss
from pushsvc.settings import Settings
from tests.support import (
    API_KEY,
    ROOT,
    TOKEN_SECRET,
    UNIT,
    NodeHandle,
    RedisServer,
    free_port,
    pushsvc_command,
    start_node,
    wait_until,
)
from tests.wire import Wire


@pytest.fixture(scope="module")
def node() -> Iterator[NodeHandle]:
    origins = "https://portal.hospital.example,HTTPS://App.Hospital.Example/"
    with start_node(allowed_origins=origins) as handle:
        yield handle


def test_docs_only_when_asked_for(node: NodeHandle) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        r = httpx.get(node.internal_url + path)
        assert r.status_code == 404, path
    with start_node(dev=True) as dev:
        assert httpx.get(dev.internal_url + "/docs").status_code == 200
        assert "/v1/messages" in httpx.get(dev.internal_url + "/openapi.json").json()["paths"]


def test_metrics_only_on_the_internal_listener(node: NodeHandle) -> None:
    assert httpx.get(node.internal_url + "/metrics").status_code == 200
    assert httpx.get(node.http_url + "/metrics").status_code == 404


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/client/pushsvc.js", "text/javascript"),
        ("/client/pushsvc.d.ts", "text/plain"),
        ("/demo/", "text/html"),
        ("/demo/index.html", "text/html"),
        ("/demo/demo.js", "text/javascript"),
        ("/demo/demo.css", "text/css"),
    ],
)
def test_the_client_files(node: NodeHandle, path: str, kind: str) -> None:
    r = httpx.get(node.http_url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)


@pytest.mark.parametrize(
    "path",
    [
        "/client/README.md",
        "/client/package.json",
        "/client/test/client.test.js",
        "/client/demo/demo.js",
        "/demo/../pushsvc.js",
        "/demo/README.md",
        "/client/",
        "/client/pushsvc.js/",
        "/demo/demo.js.map",
        "/client/../../pyproject.toml",
    ],
)
def test_nothing_else_of_the_client_tree(node: NodeHandle, path: str) -> None:
    assert (ROOT / "clients/js/README.md").exists()
    r = httpx.get(node.http_url + path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


@pytest.mark.parametrize(
    "origin",
    [
        "https://portal.hospital.example",
        "https://app.hospital.example",
        "https://PORTAL.hospital.example/",
    ],
)
async def test_an_allowed_origin_connects(node: NodeHandle, origin: str) -> None:
    wire = await Wire.open(node.client_url, node.token("p1"), origin=origin)
    assert wire.welcome["user"] == "p1"
    await wire.close()


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "https://evil.example",
        "https://portal.hospital.example.evil.example",
        "http://portal.hospital.example",
        "null",
    ],
)
async def test_any_other_origin_is_403(node: NodeHandle, origin: str | None) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Wire.open(node.client_url, None, origin=origin)
    response = info.value.response
    assert response.status_code == 403
    assert b'"forbidden"' in response.body


async def test_without_allowed_origins_any_origin_connects() -> None:
    with start_node() as open_node:
        wire = await Wire.open(
            open_node.client_url, open_node.token("p1"), origin="https://anywhere.example"
        )
        await wire.close()


@contextlib.contextmanager
def default_node() -> Iterator[tuple[int, str, int]]:
    """``pushsvc serve`` with no node id given: its client port, a token, its pid."""
    port, internal = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(
        PUSHSVC_PORT=str(port),
        PUSHSVC_INTERNAL_PORT=str(internal),
        PUSHSVC_API_KEYS=API_KEY,
        PUSHSVC_TOKEN_SECRET=TOKEN_SECRET,
    )
    proc = subprocess.Popen(
        [*pushsvc_command(), "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{internal}"
        wait_until(lambda: _answers(api + "/readyz"), 15 * UNIT)
        token = httpx.post(
            api + "/v1/tokens", json={"user": "p1"}, headers={"Authorization": f"Bearer {API_KEY}"}
        ).json()["token"]
        yield port, token, proc.pid
    finally:
        proc.terminate()
        proc.wait(15 * UNIT)


async def test_the_welcome_names_no_host_or_pid() -> None:
    assert (
        Settings(token_secret=TOKEN_SECRET).node_id != Settings(token_secret=TOKEN_SECRET).node_id
    )
    with default_node() as (port, token, pid):
        wire = await Wire.open(f"ws://127.0.0.1:{port}/ws", token)
        shown_id = wire.welcome["node"]
        await wire.close()
    assert shown_id.startswith("node-")
    assert socket.gethostname() not in shown_id and str(pid) not in shown_id


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=UNIT).status_code == 200
    except httpx.HTTPError:
        return False


def test_error_bodies_never_carry_redis_text(server: RedisServer) -> None:
    with start_node(redis_url=server.url) as clustered:
        assert clustered.publish({"to": {"users": ["p1"]}, "event": "e"})["id"]
        server.stop()
        try:
            for method, path, body in [
                ("POST", "/v1/messages", {"to": {"users": ["p1"]}, "event": "e"}),
                ("POST", "/v1/messages/batch", {"messages": [{"to": {"all": True}, "event": "e"}]}),
                ("GET", "/v1/sessions", None),
                ("GET", "/v1/messages/1-0-x", None),
            ]:
                r = clustered.api(method, path, json=body)
                assert r.status_code == 503, (path, r.text)
                message = r.json()["error"]["message"]
                assert message.startswith("the broker "), message  # our words, not Redis's
                for leak in ("redis", "Redis", "Errno", "refused", "Connection", str(server.port)):
                    assert leak not in r.text, (path, r.text)
        finally:
            server.start()


def test_device_ids_are_escaped_in_alert_annotations() -> None:
    hostile = 'x\n*urgent* <a href="//evil">click</a> [link](//evil) `rm` \u202e'
    loss = NodeLoss(expected=1, unfanned=1, samples=[Missing("m1", hostile, "a", "unfanned")])
    notes = dict(delivery_loss("a", loss).annotations)
    samples = notes["samples"]
    for bad in ("\n", "<", ">", "`", "[", '"', "\u202e", " click"):
        assert bad not in samples.removeprefix("m1 (unfanned, device "), bad
    assert shown("phone-1") == "phone-1"
    assert shown("d" * 100).endswith("...") and len(shown("d" * 100)) == 67


async def test_hostile_device_ids_are_refused_before_they_reach_the_cli(node: NodeHandle) -> None:
    hostile = "[/]\x1b[31mred[link=https://evil.example]click[/link]"
    origin = "https://portal.hospital.example"
    wire = await Wire.open(node.client_url, None, origin=origin)
    await wire.send({"type": "hello", "token": node.token("p-hostile"), "device": hostile})
    refused = await wire.recv()
    assert refused["type"] == "error" and refused["code"] == "invalid_device", refused
    code, _, _ = await wire.closed()
    assert code == 4003
    done = operator_cli(node, "sessions", "--user", "p-hostile")  # the refused one is not listed
    assert done.returncode == 1 and done.stdout == "no open session matches\n", done


def operator_cli(node: NodeHandle, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    return subprocess.run(
        [*pushsvc_command(), *args, "--api-url", node.internal_url, "--api-key", API_KEY],
        env={**base, "COLUMNS": "300"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def test_every_allowed_client_file_exists_and_has_a_content_type() -> None:
    from pushsvc.assets import asset_dir
    from pushsvc.http.client_routes import _TYPES, STATIC_FILES

    root = asset_dir("client")
    for path, name in STATIC_FILES.items():
        assert (root / name).is_file(), path
        assert Path(name).suffix in _TYPES, path
