"""The outpatient demo page in a real browser, against real nodes.

What a patient sees: the page connects, every tab of the patient shows a queue call once, another
patient's page shows nothing of it, the connection indicator tells the truth when the session is
closed or the node goes away, and when its node dies the page carries on with another node of the
cluster and shows everything sent meanwhile, once. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import (
    DESKTOP,
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
from tests.browser.screenshots import PICTURES, check_picture, take
from tests.support import UNIT, NodeHandle, start_node

pytestmark = pytest.mark.browser


def to_user(user: str, event: str, data: Any) -> dict[str, Any]:
    return {"to": {"users": [user]}, "event": event, "data": data}


def test_client_module_and_types_are_served(node: NodeHandle) -> None:
    for path, kind, needle in [
        ("/client/pushsvc.js", "javascript", b"export class PushClient"),
        ("/client/pushsvc.d.ts", "", b"export declare class PushClient"),
        ("/demo/", "text/html", b'id="connection"'),
        ("/demo/demo.js", "javascript", b'from "/client/pushsvc.js"'),
        ("/demo/demo.css", "text/css", b".status-title"),
    ]:
        with urllib.request.urlopen(node.http_url + path, timeout=5) as response:
            assert response.status == 200, path
            assert kind in response.headers.get("content-type", ""), path
            assert needle in response.read(), path


def test_page_connects(browser: Any, node: NodeHandle, artifacts: Path) -> None:
    with browser_context(browser, PHONE) as context:
        page = open_page(context, demo_url(node, user="p-connect"))
        wait_open(page)
        assert page.locator("#connection-text").inner_text() == "Live updates on"
        assert page.locator("#patient").inner_text() == "Patient p-connect"
        assert page.locator("#operator").is_visible()  # dev mode: the operator panel is there
        shot(page, artifacts, "connected-phone")
        no_script_errors(page)


def test_page_with_a_given_token(browser: Any, node: NodeHandle) -> None:
    token = node.token("p-token")
    with browser_context(browser, DESKTOP) as context:
        page = open_page(context, demo_url(node, token=token))
        wait_open(page)
        assert page.locator("#patient").inner_text() == "Patient p-token"
        assert not page.locator("#operator").is_visible()
        sent = node.publish(to_user("p-token", "rx.ready", {"window": "4"}))
        wait_shown(page, sent["id"])
        assert "window 4" in page.locator("#rx-card").inner_text()
        no_script_errors(page)


def test_two_tabs_of_one_patient_show_the_call_and_another_patient_does_not(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    with browser_context(browser, PHONE) as mine, browser_context(browser, PHONE) as theirs:
        tab1 = open_page(mine, demo_url(node, user="p1"))
        tab2 = open_page(mine, demo_url(node, user="p1"))  # same browser: same device id
        other = open_page(theirs, demo_url(node, user="p2"))
        for page in (tab1, tab2, other):
            wait_open(page)
        devices = {p.evaluate("window.pushsvcDemo.client.device") for p in (tab1, tab2)}
        assert len(devices) == 1
        sessions = {p.evaluate("window.pushsvcDemo.client.session") for p in (tab1, tab2)}
        assert len(sessions) == 2

        call = node.publish(
            to_user("p1", "queue.called", {"clinic": "205", "room": "205", "position": 1})
        )
        assert call["online_sessions"] == 2
        for page in (tab1, tab2):
            wait_shown(page, call["id"])
            assert page.locator("#status").get_attribute("data-kind") == "called"
            assert page.locator("#status-title").inner_text() == "Please go to room 205"
            page.wait_for_function(  # said aloud by screen readers
                "document.getElementById('announce-urgent').textContent.includes('room 205')"
            )

        # The other patient's page: a message of its own arrives, p1's call never does.
        mine_for_p2 = node.publish(
            to_user("p2", "queue.position", {"clinic": "205", "position": 4})
        )
        wait_shown(other, mine_for_p2["id"])
        assert feed_item(other, call["id"]).count() == 0
        assert other.locator("#status-title").inner_text() == "Number 4 in line"
        for page in (tab1, tab2):
            assert feed_item(page, mine_for_p2["id"]).count() == 0
            assert feed_item(page, call["id"]).count() == 1

        shot(tab1, artifacts, "called-phone-tab1")
        shot(tab2, artifacts, "called-phone-tab2")
        shot(other, artifacts, "other-patient-phone")
        no_script_errors(tab1, tab2, other)


def test_every_event_kind_through_the_operator_panel(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    with browser_context(browser, PHONE) as context:
        page = open_page(context, demo_url(node, user="p3"))
        wait_open(page)
        assert page.locator("#op-user").input_value() == "p3"

        def send(event: str, fields: dict[str, str]) -> None:
            before = page.locator("#feed li").count()
            page.select_option("#op-event", event)
            for selector, value in fields.items():
                page.fill(selector, value)
            page.click("#op-send")
            page.wait_for_function(
                f"document.querySelectorAll('#feed li').length === {before + 1}", timeout=WAIT_MS
            )
            assert page.locator("#operator-result").inner_text().startswith("Sent ")

        send("queue.position", {"#op-clinic": "205", "#op-position": "3"})
        assert page.locator("#status-title").inner_text() == "Number 3 in line"
        send("lab.ready", {"#op-test": "Full blood count"})
        assert "Full blood count" in page.locator("#lab-card").inner_text()
        send("rx.ready", {"#op-window": "2"})
        assert "window 2" in page.locator("#rx-card").inner_text()
        send("custom", {"#op-custom-event": "visit.note", "#op-custom-data": '{"text": "Hi"}'})
        generic = page.locator('#feed li[data-event="visit.note"]')
        assert json.loads(generic.locator("pre").inner_text()) == {"text": "Hi"}
        send("queue.position", {"#op-clinic": "205", "#op-position": "1"})
        assert page.locator("#status-title").inner_text() == "You are next"
        send("queue.called", {"#op-clinic": "205", "#op-room": "205"})
        assert page.locator("#status-title").inner_text() == "Please go to room 205"

        page.select_option("#op-event", "custom")
        page.fill("#op-custom-data", "{not json")
        page.click("#op-send")
        page.wait_for_function(
            "document.getElementById('operator-result').textContent.includes('not valid JSON')"
        )

        page.evaluate("window.scrollTo(0, 0)")
        shot(page, artifacts, "demo-phone")
        shot(page, artifacts, "demo-phone-full", full_page=True)
        no_script_errors(page)


def test_a_reload_shows_each_message_once(browser: Any, node: NodeHandle) -> None:
    with browser_context(browser, DESKTOP) as context:
        page = open_page(context, demo_url(node, user="p4"))
        wait_open(page)
        first = node.publish(to_user("p4", "lab.ready", {"test": "Glucose"}))
        wait_shown(page, first["id"])
        page.wait_for_timeout(300)  # let the ack go out
        page.reload()
        wait_open(page)
        second = node.publish(to_user("p4", "rx.ready", {"window": "1"}))
        wait_shown(page, second["id"])
        page.wait_for_timeout(300)  # anything replayed twice would be on the page by now
        assert feed_item(page, first["id"]).count() == 1
        assert feed_item(page, second["id"]).count() == 1
        assert page.locator("#feed li").count() == 2
        no_script_errors(page)


def test_a_session_closed_by_the_operator_stays_closed(
    browser: Any, node: NodeHandle, artifacts: Path
) -> None:
    with browser_context(browser, PHONE) as context:
        page = open_page(context, demo_url(node, user="p5"))
        wait_open(page)
        session = page.evaluate("window.pushsvcDemo.client.session")
        closed = node.api("DELETE", f"/v1/sessions/{session}")
        assert closed.status_code < 300, closed.text
        page.wait_for_selector('#connection[data-state="closed"]', timeout=WAIT_MS)
        assert page.locator("#connection").get_attribute("data-code") == "4010"
        assert "disconnected by the hospital" in page.locator("#notice").inner_text()
        page.wait_for_timeout(1500)  # longer than the first backoff steps: no reconnect
        assert page.locator("#connection").get_attribute("data-state") == "closed"
        shot(page, artifacts, "closed-by-operator-phone")
        no_script_errors(page)


def test_the_page_says_so_when_its_node_goes_away(browser: Any, artifacts: Path) -> None:
    with start_node(dev=True) as lonely, browser_context(browser, PHONE) as context:
        page = open_page(context, demo_url(lonely, user="p6"))
        wait_open(page)
        lonely.kill()
        page.wait_for_selector('#connection[data-state="reconnecting"]', timeout=WAIT_MS)
        assert page.locator("#notice").is_visible()
        assert "Trying again" in page.locator("#notice").inner_text()
        shot(page, artifacts, "reconnecting-phone")
        no_script_errors(page)


def test_a_topic_message_reaches_the_pages_with_that_topic(browser: Any, node: NodeHandle) -> None:
    with browser_context(browser, DESKTOP) as context:
        board = open_page(context, demo_url(node, user="p7", topics="clinic-207"))
        outside = open_page(context, demo_url(node, user="p8"))
        for page in (board, outside):
            wait_open(page)
        board.select_option("#op-to", "topics")
        assert board.locator("#op-topic").input_value() == "clinic-207"
        board.select_option("#op-event", "custom")
        board.fill("#op-custom-event", "clinic.delay")
        board.fill("#op-custom-data", '{"minutes": 20}')
        board.click("#op-send")
        board.locator('#feed li[data-event="clinic.delay"]').wait_for(timeout=WAIT_MS)
        # p8 has no such topic: a message of its own arrives, the topic's never does.
        own = node.publish(to_user("p8", "queue.position", {"clinic": "207", "position": 2}))
        wait_shown(outside, own["id"])
        assert outside.locator('#feed li[data-event="clinic.delay"]').count() == 0
        no_script_errors(board, outside)


class SwitchingProxy:
    """A local TCP port forwarding to a node that the test can switch, like a load balancer.

    The page is loaded through it, so "the same host:port" can lead to another node after a
    failure. ``point_to(None)`` refuses new connections (accepts and closes them at once).
    """

    def __init__(self, target: int) -> None:
        self._target: int | None = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point_to(self, port: int | None) -> None:
        self._target = port

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            target = self._target
            if target is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2 * UNIT)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side gone: the other goes too, as through a balancer
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._target = None
        with suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in its thread
        self._server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5 * UNIT)
        with self._lock:  # including any accepted while closing
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            sock.close()


def test_a_node_dies_and_the_page_carries_on_with_another_showing_everything_once(
    browser: Any, artifacts: Path
) -> None:
    pytest.importorskip("pushsvc.broker.redis", reason="the Redis broker (clusters) comes later")
    from tests.support import start_redis

    with (
        start_redis() as redis,
        start_node(dev=True, redis_url=redis.url) as first,
        start_node(dev=True, redis_url=redis.url) as second,
        browser_context(browser, PHONE) as context,
    ):
        proxy = SwitchingProxy(first.port)
        try:
            page = open_page(context, f"{proxy.url}/demo/?user=p9")
            wait_open(page)
            assert page.evaluate("window.pushsvcDemo.client.node") == first.node_id

            # Published on the other node, delivered live through the bus.
            before = second.publish(
                to_user("p9", "queue.position", {"clinic": "205", "position": 5})
            )
            wait_shown(page, before["id"])

            proxy.point_to(None)  # the balancer has nowhere to send the page for now
            first.kill()
            page.wait_for_selector('#connection[data-state="reconnecting"]', timeout=WAIT_MS)
            meanwhile = [
                second.publish(to_user("p9", "queue.position", {"clinic": "205", "position": n}))
                for n in (4, 3, 2, 1)
            ]
            meanwhile.append(
                second.publish(
                    to_user("p9", "queue.called", {"clinic": "205", "room": "205", "position": 1})
                )
            )
            proxy.point_to(second.port)

            wait_open(page)
            assert page.evaluate("window.pushsvcDemo.client.node") == second.node_id
            for sent in meanwhile:
                wait_shown(page, sent["id"])
            page.wait_for_timeout(500)  # a duplicate would have arrived with the replay
            for sent in [before, *meanwhile]:
                assert feed_item(page, sent["id"]).count() == 1, sent
            assert page.locator("#feed li").count() == 1 + len(meanwhile)
            assert page.locator("#status-title").inner_text() == "Please go to room 205"
            shot(page, artifacts, "reconnected-other-node-phone", full_page=True)
            no_script_errors(page)
        finally:
            proxy.close()


def test_readme_pictures(browser: Any, node: NodeHandle, artifacts: Path) -> None:
    """The pictures README.md shows, taken as `python -m tests.browser.screenshots` takes them."""
    taken = take(browser, node, artifacts / "readme")
    assert sorted(taken) == sorted(PICTURES)
    for path in taken.values():
        check_picture(path)
