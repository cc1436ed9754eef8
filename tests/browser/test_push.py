"""Notifications while the page is closed, in a real Chromium: the service worker and the demo page.

A push is handed to the service worker by the DevTools protocol (``ServiceWorker.deliverPushMessage``,
what Chromium's own push service would do with a message from pushsvc) and read back with
``registration.getNotifications()``. A click on a notification cannot be made in a headless browser:
the test runs the worker's own click path (``openPage``, what its ``notificationclick`` handler runs)
inside the worker. Playwright's contexts are private windows, where Chromium has no push service:
``enablePush()`` gets as far as the browser's subscribe and must say so clearly.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.http.bodies import PublishRequest
from tests.browser.conftest import ROOT
from tests.browser.pages import (
    PHONE,
    WAIT_MS,
    browser_context,
    demo_url,
    feed_item,
    no_script_errors,
    open_page,
    shot,
    wait_open,
    wait_shown,
)
from tests.support import NodeHandle

pytestmark = pytest.mark.browser

DOC_IMAGES = ROOT / "docs" / "images"
NOTIFY = {**PHONE, "permissions": ["notifications"]}

REGISTER_WORKER = """async () => {
  const page = encodeURIComponent(location.href);
  const registration = await navigator.serviceWorker.register(`/client/pushsvc-sw.js?page=${page}`);
  const worker = registration.installing || registration.waiting || registration.active;
  if (worker.state !== "activated") {
    await new Promise((resolve) => worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve();
    }));
  }
  return registration.scope;
}"""

NOTIFICATIONS = """async () => {
  const registration = await navigator.serviceWorker.getRegistration("/client/");
  const shown = await registration.getNotifications();
  return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, icon: n.icon, data: n.data }));
}"""


CUT_OFF = """() => {
  const client = window.pushsvcDemo.client;
  client.reachableUrl = client.url;
  client.url = "ws://127.0.0.1:9/ws";
  client.ws.close();
}"""

RECONNECT = """() => {
  const client = window.pushsvcDemo.client;
  client.url = client.reachableUrl;
  client.retryNow();
}"""


class PushDelivery:
    """Delivers pushes to the page's service worker through the DevTools protocol."""

    def __init__(self, context: Any, page: Any, origin: str) -> None:
        self._page = page
        self._origin = origin
        self._registrations: dict[str, str] = {}
        self._cdp = context.new_cdp_session(page)
        self._cdp.on("ServiceWorker.workerRegistrationUpdated", self._updated)
        self._cdp.send("ServiceWorker.enable")

    def _updated(self, event: dict[str, Any]) -> None:
        for registration in event["registrations"]:
            if not registration["isDeleted"]:
                self._registrations[registration["scopeURL"]] = registration["registrationId"]

    def registration_id(self) -> str:
        scope = f"{self._origin}/client/"
        deadline = time.monotonic() + WAIT_MS / 1000
        while scope not in self._registrations:
            assert time.monotonic() < deadline, f"no service worker registration for {scope}"
            self._page.wait_for_timeout(50)  # lets Playwright dispatch the protocol's events
        return self._registrations[scope]

    def push(self, data: str | dict[str, Any]) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self._cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": self._origin, "registrationId": self.registration_id(), "data": text},
        )


def notifications(
    page: Any, count: int, until: Callable[[list[dict[str, Any]]], bool] = lambda _: True
) -> list[dict[str, Any]]:
    """The notifications shown, once there are `count` of them and `until` holds for them."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        shown: list[dict[str, Any]] = page.evaluate(NOTIFICATIONS)
        if len(shown) == count and until(shown):
            return shown
        assert time.monotonic() < deadline, f"wanted {count} notifications, have {shown}"
        page.wait_for_timeout(50)


def shown_within(page: Any, count: int, ms: int) -> bool:
    """Whether `count` notifications are shown within `ms` milliseconds."""
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline:
        if len(page.evaluate(NOTIFICATIONS)) == count:
            return True
        page.wait_for_timeout(50)
    return False


def worker_of(context: Any) -> Any:
    (worker,) = [w for w in context.service_workers if "/client/pushsvc-sw.js" in w.url]
    return worker


def a_vapid_public_key() -> str:
    """A fresh P-256 public key, as GET /client/push-key gives it (base64url, uncompressed)."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


def test_the_service_worker_is_served(node: NodeHandle) -> None:
    with urllib.request.urlopen(node.http_url + "/client/pushsvc-sw.js", timeout=5) as response:
        assert response.status == 200
        assert "javascript" in response.headers.get("content-type", "")
        script = response.read()
    assert b'addEventListener("push"' in script
    assert b'addEventListener("notificationclick"' in script


def test_the_demo_page_can_be_added_to_a_home_screen(node: NodeHandle) -> None:
    """iOS only pushes to web apps on the Home Screen, and those need a standalone manifest."""
    with urllib.request.urlopen(node.http_url + "/demo/", timeout=5) as response:
        assert b'rel="manifest" href="/demo/manifest.webmanifest"' in response.read()
    with urllib.request.urlopen(node.http_url + "/demo/manifest.webmanifest", timeout=5) as got:
        manifest = json.loads(got.read())
    assert manifest["display"] == "standalone"
    assert manifest["start_url"] == "/demo/"


def test_a_push_shows_its_notification_once_per_message(browser: Any, node: NodeHandle) -> None:
    with browser_context(browser, NOTIFY) as context:
        page = open_page(context, demo_url(node, user="p-sw"))
        wait_open(page)
        assert page.evaluate(REGISTER_WORKER) == f"{node.http_url}/client/"
        pushes = PushDelivery(context, page, node.http_url)
        call = {
            "id": "m-call-1",
            "event": "queue.called",
            "data": {"room": "205", "icon": "/demo/room.png"},
            "title": "It is your turn",
            "body": "Please go to room 205.",
            "stream": "user:p-sw",
            "offset": "1700000000000-1",
        }
        pushes.push(call)
        (shown,) = notifications(page, 1)
        assert shown["title"] == "It is your turn"
        assert shown["body"] == "Please go to room 205."
        assert shown["tag"] == "m-call-1"
        assert shown["icon"] == f"{node.http_url}/demo/room.png"
        assert shown["data"]["message"] == call
        assert shown["data"]["page"] == demo_url(node, user="p-sw")

        # The same message pushed again (a retried push) replaces its notification.
        pushes.push({**call, "body": "Please go to room 205 now."})
        (shown,) = notifications(page, 1, lambda n: n[0]["body"] != "Please go to room 205.")
        assert shown["body"] == "Please go to room 205 now."
        page.wait_for_timeout(300)  # a second notification would be there by now
        assert len(notifications(page, 1)) == 1

        # Another message gets its own; a push the worker cannot read still shows something.
        lab = {**call, "id": "m-lab-2", "title": "Your lab result is ready", "body": ""}
        for _ in range(3):  # DevTools may hand a push to a worker that is still busy and drop it
            pushes.push(lab)  # tagged: a push delivered twice still shows once
            if shown_within(page, 2, 3000):
                break
        notifications(page, 2)
        pushes.push("not json")
        shown_all = notifications(page, 3)
        assert sorted(n["title"] for n in shown_all) == [
            "It is your turn",
            "New notification",
            "Your lab result is ready",
        ]
        no_script_errors(page)


def test_a_click_hands_the_page_its_message_and_the_page_acks_it(
    browser: Any, node: NodeHandle
) -> None:
    with browser_context(browser, NOTIFY) as context:
        page = open_page(context, demo_url(node, user="p-click"))
        wait_open(page)
        page.evaluate(REGISTER_WORKER)
        pushes = PushDelivery(context, page, node.http_url)
        # Another tab of the page, for someone else, opened last: not the one to bring back.
        other = open_page(context, demo_url(node, user="p-click-other"))
        wait_open(other)

        # The page's connection is gone and cannot come back for now (a phone in a pocket):
        # its client keeps trying a port where nothing listens. The call waits in the inbox.
        page.evaluate(CUT_OFF)
        page.wait_for_selector('#connection[data-state="reconnecting"]')
        call = node.publish(
            {"to": {"users": ["p-click"]}, "event": "queue.called", "data": {"room": "207"}}
        )
        pushes.push(
            {
                "id": call["id"],
                "event": "queue.called",
                "data": {"room": "207"},
                "title": "It is your turn",
                "body": "Please go to room 207.",
                "stream": "user:p-click",
                "offset": call["streams"]["user:p-click"],
            }
        )
        notifications(page, 1)

        acks: list[list[str]] = []

        def on_socket(ws: Any) -> None:
            def sent(payload: str | bytes) -> None:
                frame = json.loads(payload)
                if frame.get("type") == "ack":
                    acks.append(frame["ids"])

            ws.on("framesent", sent)

        page.on("websocket", on_socket)
        # What the worker's notificationclick runs: focus the page, hand it the message.
        worker_of(context).evaluate(
            """async () => {
                const [notification] = await self.registration.getNotifications();
                notification.close();
                await openPage(notification.data);
            }"""
        )
        wait_shown(page, call["id"])  # shown before the socket is back
        assert "from a notification" in feed_item(page, call["id"]).inner_text()
        assert page.locator("#status-title").inner_text() == "Please go to room 207"

        page.evaluate(RECONNECT)
        wait_open(page)
        deadline = time.monotonic() + WAIT_MS / 1000
        while not any(call["id"] in ids for ids in acks):
            assert time.monotonic() < deadline, f"no ack of {call['id']}: {acks}"
            page.wait_for_timeout(50)
        assert acks[0] == [call["id"]]  # the first ack on the new socket: the pushed message
        while node.trail(call["id"])["state"] != "acked":
            assert time.monotonic() < deadline, node.trail(call["id"])
            page.wait_for_timeout(50)
        (device,) = node.trail(call["id"])["devices"]
        assert device["device"] == page.evaluate("window.pushsvcDemo.client.device")
        assert feed_item(page, call["id"]).count() == 1  # the replay did not show it twice
        assert page.evaluate(NOTIFICATIONS) == []
        assert feed_item(other, call["id"]).count() == 0
        no_script_errors(page, other)


def test_turning_notifications_on_in_a_private_window_says_why_not(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    key = a_vapid_public_key()
    with browser_context(browser, NOTIFY) as context:
        page = open_page(context, demo_url(node, user="p-enable"))
        keys_served: list[str] = []

        def push_key(route: Any) -> None:
            keys_served.append(route.request.url)
            route.fulfill(status=200, content_type="application/json", json={"publicKey": key})

        page.route("**/client/push-key", push_key)
        wait_open(page)
        toggle = page.locator("#push-toggle")
        assert page.locator("#push").get_attribute("data-state") == "off"
        assert toggle.inner_text() == "Turn on"
        assert toggle.get_attribute("aria-pressed") == "false"
        assert "closed" in page.locator("#push-title").inner_text()
        page.evaluate("window.scrollTo(0, 0)")
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shot(page, DOC_IMAGES, "demo-push-toggle")

        toggle.click()
        page.wait_for_function(
            "document.getElementById('push-text').textContent.includes('private window')"
        )
        assert page.locator("#push").get_attribute("data-state") == "off"
        assert keys_served == [f"{node.http_url}/client/push-key"]
        registered = page.evaluate(
            "navigator.serviceWorker.getRegistration('/client/').then(r => r?.active?.scriptURL)"
        )
        assert "/client/pushsvc-sw.js?page=" in registered
        code = page.evaluate(
            "window.pushsvcDemo.client.enablePush().then(() => 'on', (e) => e.code)"
        )
        assert code == "subscribe_failed"
        shot(page, artifacts, "push-private-window-phone")
        no_script_errors(page)


def test_blocked_notifications_are_shown_as_blocked(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    with browser_context(browser, PHONE) as context:  # headless Chromium denies the prompt
        page = open_page(context, demo_url(node, user="p-blocked"))
        wait_open(page)
        page.wait_for_selector('#push[data-state="off"]')
        page.click("#push-toggle")
        page.wait_for_selector('#push[data-state="blocked"]')
        assert "blocked" in page.locator("#push-text").inner_text()
        assert not page.locator("#push-toggle").is_visible()
        code = page.evaluate(
            "window.pushsvcDemo.client.enablePush().then(() => 'on', (e) => e.code)"
        )
        assert code == "denied"
        shot(page, artifacts, "push-blocked-phone")
        no_script_errors(page)


def test_the_operator_panel_publishes_with_an_escalation_delay(
    browser: Any, node: NodeHandle
) -> None:
    with browser_context(browser, PHONE) as context:
        page = open_page(context, demo_url(node, user="p-esc"))
        wait_open(page)
        assert not page.locator("#op-push-after").is_visible()
        page.check("#op-push")
        assert page.locator("#op-push-after").is_visible()
        page.select_option("#op-to", "topics")  # a push is for a patient, not a topic
        assert not page.locator("#op-push-after").is_visible()
        page.select_option("#op-to", "users")
        page.select_option("#op-event", "queue.called")
        page.fill("#op-room", "205")
        page.fill("#op-push-after", "45")
        page.select_option("#op-push-urgency", "high")
        with page.expect_response("**/demo/api/publish") as answer:
            page.click("#op-send")
        sent = answer.value.request.post_data_json
        assert sent["to"] == {"users": ["p-esc"]}
        assert sent["push"] == {
            "after": 45,
            "title": "It is your turn",
            "body": "Please go to room 205.",
            "urgency": "high",
        }
        result = page.locator("#operator-result")
        if "push" in PublishRequest.__struct_fields__:  # the server takes escalations
            assert answer.value.status == 202
            page.wait_for_function(
                "document.getElementById('operator-result').textContent.includes('45 s')"
            )
        else:
            assert answer.value.status == 422
            page.wait_for_function(
                "document.getElementById('operator-result').textContent.startsWith('Not sent')"
            )
        assert result.inner_text()
        no_script_errors(page)
