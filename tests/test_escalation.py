"""Reaching a closed page: Web Push escalation and signed webhooks, end to end.

Real nodes (processes), a real Web Push service that checks VAPID and decrypts (tests/reach.py),
a real webhook receiver that checks signatures, and real Redis for the cluster cases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushsvc.push import ece, vapid
from tests.reach import Browser, PushService, WebhookReceiver, pid_of_peer
from tests.support import (
    ROOT,
    UNIT,
    NodeHandle,
    launch_node,
    pushsvc_command,
    start_node,
    start_redis,
    wait_until,
)
from tests.wire import Wire

SECRET = "whsec-" + "s" * 32
AFTER = max(2, round(2 * UNIT))  # push.after, whole seconds


def reach(tmp_path: Path, hooks: WebhookReceiver | None = None, **more: Any) -> dict[str, Any]:
    """Settings of a node that pushes (and calls ``hooks``)."""
    key = tmp_path / "vapid.pem"
    if not key.exists():
        key.write_text(vapid.generate()[0])
    settings: dict[str, Any] = {
        "vapid_private_key": key,
        "vapid_subject": "mailto:ops@hospital.example",
        "escalation_lease": 3 * UNIT,
        **more,
    }
    if hooks is not None:
        settings |= {"webhook_urls": hooks.url, "webhook_secret": SECRET}
    return settings


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5 * UNIT)


def push_key(node: NodeHandle) -> str:
    r = get(node.http_url + "/client/push-key")
    assert r.status_code == 200, r.text
    return str(r.json()["publicKey"])


async def subscribe(node: NodeHandle, user: str, device: str, browser: Browser) -> None:
    """A page that subscribes and is closed."""
    wire = await Wire.open(node.client_url, node.token(user), device=device)
    await wire.send({"type": "push_subscribe", "subscription": browser.subscription()})
    assert await wire.recv() == {"type": "push_subscribed"}
    await wire.ws.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")} | (env or {})
    return subprocess.run([*pushsvc_command(), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=30 * UNIT, check=False)  # fmt: skip


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_vapid_keys_prints_a_pair_that_loads(tmp_path: Path) -> None:
    done = cli("vapid-keys")
    assert done.returncode == 0, done.stderr
    pem, _, public = done.stdout.partition("-----END PRIVATE KEY-----\n")
    (tmp_path / "k.pem").write_text(pem + "-----END PRIVATE KEY-----\n")
    loaded = vapid.Vapid.load(tmp_path / "k.pem", "mailto:ops@hospital.example")
    assert public.strip() == f"public key: {loaded.public_key}"
    done = cli("vapid-keys", "--out", str(tmp_path / "new.pem"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new.pem").stat().st_mode & 0o777 == 0o600
    again = cli("vapid-keys", "--out", str(tmp_path / "new.pem"))
    assert again.returncode == 2 and "cannot create" in again.stderr


def publish(node: NodeHandle, user: str, after: int = AFTER, **more: Any) -> dict[str, Any]:
    body = {
        "to": {"users": [user]}, "event": "queue.called", "data": {"room": 205}, "ttl": 600,
        "push": {"after": after, "title": "Room 205", "body": "Please go to room 205 now",
                 "urgency": "high"},
        **more,
    }  # fmt: skip
    return node.publish(body)


async def test_push_key_is_404_json_without_a_vapid_key() -> None:
    with start_node() as node:
        r = get(node.http_url + "/client/push-key")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "push_unavailable"
        wire = await Wire.open(node.client_url, node.token("p1"))
        browser = Browser("https://push.example/x")
        await wire.send({"type": "push_subscribe", "subscription": browser.subscription()})
        frame = await wire.recv()
        assert frame["type"] == "error" and frame["code"] == "push_unavailable"


def test_dev_mode_makes_a_key_for_the_process() -> None:
    with start_node(dev=True) as node:
        assert len(ece.b64decode(push_key(node))) == 65


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"endpoint": "http://push.example/a"}, "https"),
        ({"endpoint": "ftp://127.0.0.1/a"}, "https"),
        ({"endpoint": "not a url"}, "https"),
        ({"keys": {"p256dh": "BAAA", "auth": "A" * 22}}, "p256dh"),
        ({"keys": {"p256dh": None, "auth": "AAAA"}}, "auth"),
        ({"keys": {"p256dh": None, "auth": "!!!!"}}, "base64url"),
    ],
)
async def test_a_bad_subscription_is_an_error_frame_and_4003(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    with start_node(**reach(tmp_path)) as node:
        browser = Browser("https://push.example/ok")
        sub = browser.subscription() | change
        if "keys" in change and change["keys"]["p256dh"] is None:
            sub["keys"]["p256dh"] = browser.subscription()["keys"]["p256dh"]
        wire = await Wire.open(node.client_url, node.token("p1"))
        await wire.send({"type": "push_subscribe", "subscription": sub})
        frame = await wire.recv()
        assert frame["type"] == "error" and frame["code"] == "invalid_subscription", frame
        assert why in frame["message"]
        await wire.ws.wait_closed()
        assert wire.ws.close_code == 4003


async def test_push_frames_before_hello_are_refused(tmp_path: Path) -> None:
    with start_node(**reach(tmp_path)) as node:
        wire = await Wire.open(node.client_url, None)
        await wire.send({"type": "push_unsubscribe"})
        frame = await wire.recv()
        assert frame["code"] == "hello_expected"


async def test_an_unacked_message_is_pushed_after_its_delay_and_not_before(tmp_path: Path) -> None:
    with (
        PushService() as service,
        WebhookReceiver(SECRET) as hooks,
        start_node(**reach(tmp_path, hooks)) as node,
    ):
        service.vapid_key = push_key(node)
        phone = service.browser("phone")
        await subscribe(node, "p1", "phone", phone)
        t0 = time.time()
        result = publish(node, "p1")
        await asyncio.sleep(AFTER * 0.7)
        assert service.tried("phone") == []
        (push,) = wait_until(lambda: service.accepted("phone"), AFTER + 10 * UNIT)
        assert push.at - t0 >= AFTER
        assert service.errors == []
        assert push.payload == {
            "id": result["id"], "event": "queue.called", "data": {"room": 205},
            "title": "Room 205", "body": "Please go to room 205 now", "stream": "user:p1",
            "offset": result["streams"]["user:p1"],
        }  # fmt: skip
        assert push.headers["urgency"] == "high"
        assert 0 < int(push.headers["ttl"]) <= 600 - AFTER
        assert push.headers["topic"] == result["id"][:32]
        trail = wait_until(lambda: _pushed(node, result["id"]))
        (entry,) = [d for d in trail["devices"] if d["device"] == "phone"]
        assert entry["user"] == "p1" and entry["push_sent_at"] >= push.at - 1
        (event,) = wait_until(lambda: hooks.events("message.unacked"))
        assert event["message"] == {
            "id": result["id"], "event": "queue.called", "user": "p1",
            "published_at": pytest.approx(t0, abs=2),
        }  # fmt: skip
        assert event["detail"] == {"after": AFTER}
        assert event["id"].startswith("evt_")
        assert hooks.errors == []
        await asyncio.sleep(UNIT)
        assert len(service.tried("phone")) == 1


def _pushed(node: NodeHandle, message_id: str) -> dict[str, Any] | None:
    trail = node.trail(message_id)
    return trail if any(d["push_sent_at"] for d in trail["devices"]) else None


async def test_no_push_when_a_device_acked_and_the_hospital_hears_of_the_ack(
    tmp_path: Path,
) -> None:
    with (
        PushService() as service,
        WebhookReceiver(SECRET) as hooks,
        start_node(**reach(tmp_path, hooks)) as node,
    ):
        service.vapid_key = push_key(node)
        await subscribe(node, "p1", "phone", service.browser("phone"))
        wire = await Wire.open(node.client_url, node.token("p1"), device="tablet")
        result = publish(node, "p1")
        msg = await wire.recv_msg()
        await wire.send({"type": "ack", "ids": [msg["id"]]})
        (event,) = wait_until(lambda: hooks.events("message.acked"))
        assert event["message"]["id"] == result["id"]
        assert event["detail"]["device"] == "tablet"
        await asyncio.sleep(AFTER + UNIT)
        assert service.tried("phone") == []
        assert hooks.events("message.unacked") == []
        assert len(hooks.events()) == 1


async def test_410_deletes_the_subscription_and_429_is_retried_after_retry_after(
    tmp_path: Path,
) -> None:
    def busy(n: int) -> tuple[int, dict[str, str]]:
        return (429, {"Retry-After": "2"}) if n == 0 else (201, {})

    with PushService() as service, start_node(**reach(tmp_path)) as node:
        service.vapid_key = push_key(node)
        await subscribe(node, "p1", "old", service.browser("old", lambda n: (410, {})))
        await subscribe(node, "p1", "busy", service.browser("busy", busy))
        publish(node, "p1", after=1)
        wait_until(lambda: service.accepted("busy"), 15 * UNIT)
        first, second = service.tried("busy")
        assert first.status == 429 and second.status == 201
        assert second.at - first.at >= 2
        assert len(service.tried("old")) == 1
        publish(node, "p1", after=1)
        wait_until(lambda: len(service.accepted("busy")) == 2, 15 * UNIT)
        assert len(service.tried("old")) == 1  # its subscription is gone
        assert service.errors == []


@pytest.mark.redis
async def test_webhooks_are_retried_with_the_same_event_id_after_500s_and_a_restart(
    tmp_path: Path,
) -> None:
    with start_redis() as redis, WebhookReceiver(SECRET, lambda n: 500 if n < 2 else 200) as hooks:
        settings = reach(tmp_path, hooks, redis_url=redis.url, escalate_after=1, node_id="wh")
        node = launch_node(**settings)
        try:
            result = node.publish({"to": {"users": ["p9"]}, "event": "lab.ready", "ttl": 600})
            wait_until(lambda: len(hooks.deliveries) >= 2, 15 * UNIT)
            view = node.api("GET", "/v1/webhooks").json()
            (endpoint,) = view["endpoints"]
            assert endpoint["url"] == hooks.url
            assert endpoint["last_failure"]["error"] == "HTTP 500"
            assert view["queue"] == 1
            shown = cli_json("webhooks", "--api-url", node.internal_url, "--api-key", node.api_key)
            assert shown == view
        finally:
            node.stop()
        assert len(hooks.deliveries) == 2
        node = launch_node(**settings)
        try:
            wait_until(lambda: hooks.events(status=200), 20 * UNIT)
            assert node.api("GET", "/v1/webhooks").json()["queue"] == 0
        finally:
            node.stop()
        assert len({d.raw for d in hooks.deliveries}) == 1  # the same body, the same id
        (event,) = hooks.events(status=200)
        assert event["type"] == "message.unacked"
        assert event["message"]["id"] == result["id"] and event["message"]["user"] == "p9"
        assert hooks.errors == []


@pytest.mark.redis
async def test_exactly_one_push_per_subscription_when_the_escalating_node_is_killed(
    tmp_path: Path,
) -> None:
    with start_redis() as redis, PushService() as service:
        settings = reach(tmp_path, redis_url=redis.url)
        nodes = [launch_node(node_id=f"esc-{n}", **settings) for n in "ab"]
        try:
            service.vapid_key = push_key(nodes[0])
            assert push_key(nodes[1]) == service.vapid_key
            service.hold["slow"] = hold = threading.Event()
            await subscribe(nodes[0], "p1", "fast", service.browser("fast"))
            await subscribe(nodes[1], "p1", "slow", service.browser("slow"))
            result = publish(nodes[0], "p1", after=1)
            wait_until(service.holding.is_set, 15 * UNIT)
            wait_until(lambda: service.accepted("fast"))
            await asyncio.sleep(0.5 * UNIT)  # its push is recorded
            pid = pid_of_peer(service.held_peer, [n.proc.pid for n in nodes])
            assert pid is not None
            (dying,) = [n for n in nodes if n.proc.pid == pid]
            os.kill(pid, signal.SIGKILL)
            dying.proc.wait(10)
            hold.set()  # the killed node's request is answered 500: that push never went out
            (survivor,) = [n for n in nodes if n is not dying]
            wait_until(lambda: service.accepted("slow"), 20 * UNIT)
            await asyncio.sleep(2 * UNIT)
            assert len(service.accepted("fast")) == 1
            assert len(service.tried("fast")) == 1
            assert len(service.accepted("slow")) == 1
            pushed = {d["device"] for d in survivor.trail(result["id"])["devices"]
                      if d["push_sent_at"]}  # fmt: skip
            assert pushed == {"fast", "slow"}
            assert service.errors == []
        finally:
            for n in nodes:
                n.stop()


#: (changes to a valid publish with push, the answer's status, what the error says)
BAD_PUSHES: list[tuple[dict[str, Any], int, str]] = [
    ({"to": {"topics": ["clinic-205"]}}, 422, "users"),
    ({"to": {"all": True}}, 422, "users"),
    ({"ack": False}, 422, "ack"),
    ({"ttl": 60, "push": {"after": 60, "title": "t"}}, 202, ""),  # escalates 1 s before expiry
    ({"push": {"after": 0, "title": "t"}}, 422, "after"),
    ({"push": {"after": 5, "title": ""}}, 422, "title"),
    ({"push": {"after": 5, "title": "t" * 121}}, 422, "title"),
    ({"push": {"after": 5, "title": "t", "urgency": "low"}}, 422, "urgency"),
    ({"push": {"after": 5, "title": "t", "icon": "x.png"}}, 422, "icon"),
    ({"push": {"after": 5, "title": "t", "urgency": "normal"}}, 202, ""),
]


def test_a_push_that_cannot_escalate_is_a_422(tmp_path: Path) -> None:
    with start_node(**reach(tmp_path)) as node:
        for body, status, says in BAD_PUSHES:
            request = {"to": {"users": ["p1"]}, "event": "queue.called", "ttl": 600,
                       "push": {"after": 5, "title": "Room 205"}} | body  # fmt: skip
            for path, sent in (
                ("/v1/messages", request),
                ("/v1/messages/batch", {"messages": [request]}),
            ):
                r = node.api("POST", path, json=sent)
                assert r.status_code == status, (path, body, r.text)
                if status == 422:
                    assert r.json()["error"]["code"] == "invalid_body"
                    assert says in r.text, (body, r.text)


def test_push_is_part_of_what_an_idempotency_key_stands_for(tmp_path: Path) -> None:
    with start_node(**reach(tmp_path)) as node:
        first = publish(node, "p1", idempotency_key="k-1")
        again = publish(node, "p1", idempotency_key="k-1")
        assert again["id"] == first["id"] and again["duplicate"]
        r = node.api("POST", "/v1/messages", json={
            "to": {"users": ["p1"]}, "event": "queue.called", "data": {"room": 205}, "ttl": 600,
            "idempotency_key": "k-1",
            "push": {"after": AFTER, "title": "Room 206", "body": "Please go to room 205 now",
                     "urgency": "high"},
        })  # fmt: skip
        assert r.status_code == 409, r.text


async def test_the_verdict_at_expiry_is_expired_or_lost(tmp_path: Path) -> None:
    with (
        WebhookReceiver(SECRET) as hooks,
        start_node(**reach(tmp_path, hooks, monitor_grace=0.5)) as node,
    ):
        wire = await Wire.open(node.client_url, node.token("seen"), device="phone")
        never = node.publish({"to": {"users": ["away"]}, "event": "lab.ready", "ttl": 2})
        unacked = node.publish({"to": {"users": ["seen"]}, "event": "lab.ready", "ttl": 2})
        assert (await wire.recv_msg())["id"] == unacked["id"]  # written, never acked
        wait_until(lambda: len(hooks.events()) == 2, 10 * UNIT)
        (expired,) = hooks.events("message.expired")
        (lost,) = hooks.events("message.lost")
        assert expired["message"]["id"] == never["id"] and expired["message"]["user"] == "away"
        assert lost["message"]["id"] == unacked["id"] and lost["message"]["user"] == "seen"
        assert hooks.errors == []
        await asyncio.sleep(UNIT)
        assert len(hooks.events()) == 2


@pytest.mark.redis
async def test_a_timer_outlives_the_node_that_made_it_and_a_redis_restart(tmp_path: Path) -> None:
    with start_redis(persistent=True) as redis, PushService() as service:
        settings = reach(tmp_path, redis_url=redis.url)
        first = launch_node(node_id="maker", **settings)
        try:
            service.vapid_key = push_key(first)
            await subscribe(first, "p1", "phone", service.browser("phone"))
            result = publish(first, "p1", after=AFTER)
        finally:
            first.kill()  # before the deadline: no node left
        redis.restart()
        await asyncio.sleep(AFTER)
        assert service.tried("phone") == []
        second = launch_node(node_id="heir", **settings)
        try:
            (push,) = wait_until(lambda: service.accepted("phone"), 20 * UNIT)
            assert push.payload["id"] == result["id"]
            await asyncio.sleep(UNIT)
            assert len(service.tried("phone")) == 1
            assert service.errors == []
        finally:
            second.stop()


@pytest.mark.redis
async def test_a_devices_session_end_renews_its_subscription(tmp_path: Path) -> None:
    with start_redis() as redis, PushService() as service:
        node = launch_node(**reach(tmp_path, redis_url=redis.url))
        try:
            await subscribe(node, "p1", "phone", service.browser("phone"))

            def seen() -> float:
                raw = redis.command("HGET", "pushsvc:push-subs:p1", "phone")
                return float(json.loads(raw)["seen"])

            first = wait_until(seen)
            ttl = int(redis.command("TTL", "pushsvc:push-subs:p1"))
            assert 29 * 86_400 < ttl <= 30 * 86_400
            await asyncio.sleep(1.1)
            wire = await Wire.open(node.client_url, node.token("p1"), device="phone")
            await wire.ws.close()
            wait_until(lambda: seen() > first + 1)
        finally:
            node.stop()


def test_check_config_reads_the_vapid_key(tmp_path: Path) -> None:
    good = tmp_path / "vapid.pem"
    good.write_text(vapid.generate()[0])
    (tmp_path / "bad.pem").write_text("not a key")
    for path, status in ((good, "ok"), (tmp_path / "bad.pem", "fail")):
        done = cli("check-config", "--json", env={
            "PUSHSVC_VAPID_PRIVATE_KEY": str(path), "PUSHSVC_VAPID_SUBJECT": "mailto:a@b.c",
            "PUSHSVC_WEBHOOK_URLS": "https://his.example/h", "PUSHSVC_WEBHOOK_SECRET": "s",
        })  # fmt: skip
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        assert checks["vapid key"]["status"] == status, checks["vapid key"]
        assert checks["webhooks"]["status"] == "ok"
