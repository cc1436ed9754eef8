"""The monitor end to end: real redis-server, two real nodes, a real Alertmanager 0.25 (Debian's
``prometheus-alertmanager``) and ``pushsvc monitor`` as a process, all on free ports.

- 1 delivery in 1,000 dropped on one node: PushDeliveryLoss for that node, naming a dropped
  message, within 60 s; resolved after the fault is cleared.
- one node's bus subscription stopped: PushNodeStalled for that node within 30 s.
- a clean run with a rolling restart of both nodes and clients resuming: no alert at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor import metrics
from monitor.app import Monitor
from pushsvc.broker.base import Accepted, Expected, Published
from pushsvc.brokers import redis_broker
from pushsvc.node.publish import new_id
from pushsvc.settings import MonitorSettings
from tests.fleet import Device
from tests.support import (
    API_KEY,
    ROOT,
    UNIT,
    Alertmanager,
    NodeHandle,
    RedisServer,
    answers,
    free_port,
    launch_node,
    start_alertmanager,
    start_redis,
    wait_until,
)

pytestmark = pytest.mark.redis

NODE = {
    "registry_interval": 0.5, "ack_timeout": 1, "max_attempts": 2, "heartbeat": 5,
    "drain_timeout": 3, "client_frame_rate": 100_000, "client_frame_burst": 100_000,
}  # fmt: skip
MONITOR = {
    "ack_timeout": 1, "max_attempts": 2, "monitor_interval": 1, "monitor_grace": 2,
    "reconnect_window": 2, "late_check": 2, "loss_window": 4, "canary_interval": 1,
    "canary_stall": 5, "alert_resend": 2, "lease_ttl": 3,
}  # fmt: skip


@dataclass
class MonitorProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, by series."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5 * UNIT).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out

    def total(self, name: str, node: str | None = None) -> float:
        return sum(
            v for k, v in self.metrics().items()
            if k.startswith(name + "{") and (node is None or f'node="{node}"' in k)
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch_monitor(redis: RedisServer, am: Alertmanager, **settings: Any) -> MonitorProcess:
    port = free_port()
    values = {"redis_url": redis.url, "alertmanager_url": am.url, "api_keys": API_KEY,
              "monitor_port": port, **MONITOR, **settings}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in values.items()})
    log_path = Path(tempfile.mkstemp(prefix="pushsvc-monitor-", suffix=".log")[1])
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "monitor"], env=env, stdout=out,
                                stderr=out, cwd=ROOT)  # fmt: skip
    monitor = MonitorProcess(proc, port, log_path)
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz") or proc.poll() is not None,
               15 * UNIT)  # fmt: skip
    assert proc.poll() is None, monitor.log()
    return monitor


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
def alertmanager() -> Iterator[Alertmanager]:
    with start_alertmanager() as am:
        yield am


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[list[NodeHandle]]:
    pair = [
        launch_node("--enable-fault-injection", redis_url=redis.url, node_id=f"node-{n}", **NODE)
        for n in "ab"
    ]
    try:
        yield pair
    finally:
        for n in pair:
            n.stop()


@pytest.fixture
def monitor(
    redis: RedisServer, alertmanager: Alertmanager, nodes: list[NodeHandle]
) -> Iterator[MonitorProcess]:
    m = launch_monitor(redis, alertmanager)
    try:
        yield m
    finally:
        m.stop()


async def until(check: Any, timeout: float, interval: float = 0.25) -> Any:
    """Poll ``check`` in a thread (the devices keep being served) until it returns a value."""
    async with asyncio.timeout(timeout):
        while True:
            value = await asyncio.to_thread(check)
            if value:
                return value
            await asyncio.sleep(interval)


def dropped(message_id: str, fraction: float) -> bool:
    """The node's choice (pushsvc.node.faults): a hash of the message id."""
    return zlib.crc32(message_id.encode()) / 2**32 < fraction


async def publish_batch(node: NodeHandle, user: str, n: int) -> list[str]:
    body = {"messages": [{"to": {"users": [user]}, "event": "lab.result", "data": {"i": i}}
                         for i in range(n)]}  # fmt: skip
    async with httpx.AsyncClient(timeout=30 * UNIT) as http:
        r = await http.post(node.internal_url + "/v1/messages/batch", json=body,
                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert r.status_code == 202, r.text
    return [item["id"] for item in r.json()["results"]]


def device(node: NodeHandle, user: str, name: str, others: tuple[NodeHandle, ...] = ()) -> Device:
    return Device(user, name, node.token(user), [node.client_url, *(o.client_url for o in others)])


async def test_dropped_deliveries_raise_delivery_loss_for_that_node_then_resolve(
    nodes: list[NodeHandle], alertmanager: Alertmanager, monitor: MonitorProcess
) -> None:
    a, b = nodes
    r = a.api("POST", "/v1/admin/faults", json={"drop_deliveries": 0.001})
    assert r.status_code == 200 and r.json()["faults"]["drop_deliveries"] == 0.001
    on_a, on_b = device(a, "pa", "pa-phone"), device(b, "pb", "pb-phone")
    for d in (on_a, on_b):
        d.start()
    await until(lambda: on_a.connections and on_b.connections, 10 * UNIT)
    ids: list[str] = []
    while sum(dropped(m, 0.001) for m in ids) < 2:  # about 1,000 messages per dropped one
        ids += await publish_batch(b, "pa", 500)
        await publish_batch(a, "pb", 50)
    started = time.monotonic()
    lost = {m for m in ids if dropped(m, 0.001)}
    await until(lambda: len(on_a.received) >= len(ids) - len(lost), 30 * UNIT)
    assert not lost & set(on_a.received)  # silently dropped: never written to the device
    alert = await until(lambda: alertmanager.firing("PushDeliveryLoss", "node-a"), 60 * UNIT)
    detected = time.monotonic() - started
    notes = alert["annotations"]
    assert alert["labels"]["severity"] == "critical"
    assert int(notes["unfanned"]) >= 1 and int(notes["expected"]) >= int(notes["unfanned"])
    assert any(m in notes["samples"] for m in lost), notes["samples"]
    assert notes["runbook_url"].endswith("#pushdeliveryloss")
    assert alertmanager.firing("PushDeliveryLoss", "node-b") is None
    assert monitor.total("pushsvc_monitor_unfanned_deliveries_total", "node-a") >= 1
    # the monitor's --once view names the same messages
    once = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli", "monitor", "--once", "--redis-url", nodes[0].env["PUSHSVC_REDIS_URL"],
         "--ack-timeout", "1", "--max-attempts", "2", "--monitor-grace", "2",
         "--reconnect-window", "2", "--late-check", "2", "--loss-window", "4"],
        capture_output=True, cwd=ROOT, timeout=60 * UNIT, check=False,
    )  # fmt: skip
    assert once.returncode == 1 and any(m in once.stdout.decode() for m in lost), once
    # cleared: no new loss; the alert resolves once the bad buckets are out of the window
    assert a.api("DELETE", "/v1/admin/faults").json()["faults"]["drop_deliveries"] == 0
    await publish_batch(b, "pa", 100)
    await until(lambda: alertmanager.firing("PushDeliveryLoss") is None, 40 * UNIT)
    print(f"PushDeliveryLoss detected {detected:.1f} s after the last publish")
    for d in (on_a, on_b):
        await d.stop()


async def test_stopped_bus_raises_node_stalled_within_30_s(
    nodes: list[NodeHandle], alertmanager: Alertmanager, monitor: MonitorProcess
) -> None:
    _, b = nodes
    # both canaries arrive first
    await until(lambda: monitor.total("pushsvc_monitor_canary_up") == 2, 20 * UNIT)
    r = b.api("POST", "/v1/admin/faults", json={"stop_bus": True})
    assert r.status_code == 200 and r.json()["faults"]["stop_bus"] is True
    started = time.monotonic()
    alert = await until(lambda: alertmanager.firing("PushNodeStalled", "node-b"), 30 * UNIT)
    print(f"PushNodeStalled detected {time.monotonic() - started:.1f} s after the bus stopped")
    assert alert["labels"]["severity"] == "critical"
    assert b.ready()  # its heartbeat and readiness look fine all along
    assert alertmanager.firing("PushNodeStalled", "node-a") is None
    assert alertmanager.firing("PushNodeHeartbeatMissing") is None
    # cleared: the node catches up and the canary arrives again
    b.api("DELETE", "/v1/admin/faults").raise_for_status()
    await until(lambda: alertmanager.firing("PushNodeStalled") is None, 30 * UNIT)


async def test_fault_injection_is_refused_without_the_flag(redis: RedisServer) -> None:
    node = launch_node(redis_url=redis.url, node_id="plain", **NODE)
    try:
        r = node.api("POST", "/v1/admin/faults", json={"drop_deliveries": 0.5})
        assert r.status_code == 403 and r.json()["error"]["code"] == "fault_injection_disabled"
        assert node.api("DELETE", "/v1/admin/faults").status_code == 403
        assert node.api("GET", "/v1/admin/faults").json()["faults"]["drop_deliveries"] == 0
        assert node.api("POST", "/v1/admin/faults", json={"drop_deliveries": 2}).status_code == 422
    finally:
        node.stop()


async def test_a_clean_run_with_a_rolling_restart_raises_no_alert(
    redis: RedisServer, nodes: list[NodeHandle], alertmanager: Alertmanager,
    monitor: MonitorProcess,
) -> None:  # fmt: skip
    fleet = [
        device(nodes[i % 2], f"p{i % 3}", f"p{i % 3}-d{i}", (nodes[(i + 1) % 2],)) for i in range(6)
    ]
    for d in fleet:
        d.start()
    await until(lambda: all(d.connections for d in fleet), 10 * UNIT)
    stop = asyncio.Event()

    async def publish() -> int:
        sent = 0
        async with httpx.AsyncClient(timeout=5 * UNIT) as http:
            while not stop.is_set():
                for node in list(nodes):
                    body = {"to": {"users": [f"p{sent % 3}"]}, "event": "queue.position",
                            "data": {"n": sent}, "idempotency_key": f"k{sent}"}  # fmt: skip
                    with contextlib.suppress(httpx.HTTPError):
                        r = await http.post(node.internal_url + "/v1/messages", json=body,
                                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
                        sent += r.status_code == 202
                await asyncio.sleep(0.05)
        return sent

    publisher = asyncio.create_task(publish())
    await asyncio.sleep(3 * UNIT)
    for i, old in enumerate(list(nodes)):
        await asyncio.to_thread(old.stop, signal.SIGTERM)
        await asyncio.sleep(0.5)
        nodes[i] = await asyncio.to_thread(
            launch_node, "--enable-fault-injection", redis_url=redis.url, node_id=old.node_id,
            port=old.port, internal_port=old.internal_port, **NODE,
        )  # fmt: skip
        await asyncio.sleep(2 * UNIT)
    await asyncio.sleep(2 * UNIT)
    stop.set()
    published = await publisher
    assert published > 100
    assert 1001 in {c for d in fleet for c in d.close_codes}  # clients did move and resume
    # every bucket of the run gets its final check (about 8 s after it ends), with no alert
    finished = time.time()
    await until(lambda: monitor.total("pushsvc_monitor_bucket_checks_total") > 0, 10 * UNIT)
    await asyncio.sleep(12 * UNIT)
    assert alertmanager.alerts() == [], alertmanager.alerts()
    assert monitor.total("pushsvc_monitor_lost_deliveries_total") == 0
    assert monitor.total("pushsvc_monitor_unfanned_deliveries_total") == 0
    expected = monitor.total("pushsvc_monitor_expected_deliveries_total")
    acked = monitor.total("pushsvc_monitor_acked_deliveries_total")
    assert expected >= published and acked >= expected - 5, (expected, acked, published)
    assert "alert sent" not in monitor.log()
    assert time.time() - finished < 60
    for d in fleet:
        await d.stop()


async def test_a_lease_lost_to_a_frozen_redis_does_not_count_old_buckets_twice(
    redis: RedisServer,
) -> None:
    """Redis frozen (SIGSTOP) past a lease check: the monitor goes standby, then active again a
    check later; the buckets it had counted before are not added to its counters again."""
    settings = MonitorSettings(redis_url=redis.url, api_keys=[API_KEY], monitor_id="flip",
                               **MONITOR)  # fmt: skip
    broker = redis_broker(settings, timeout=0.3 * UNIT)
    monitor = Monitor(settings, broker, canaries=False)
    node = f"flip-{os.getpid()}"
    now = time.time()
    message = new_id(int((now - 10) * 1000))
    await broker.ledger.record([
        Published(message, "lab.result", now - 10, now + 600, True, {}),
        Accepted(message, node, True),
        Expected(message, "p1/phone", "s1", node, now - 10),
    ])  # fmt: skip
    unfanned = metrics.unfanned.labels(node)
    try:
        assert await monitor.hold_lease()
        await monitor.reconcile(now + 10)  # every check of its bucket is due
        assert unfanned._value.get() == 1  # the pair it owed and never wrote
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            assert not await monitor.hold_lease()  # the lease check times out: standby
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert not monitor.active
        async with asyncio.timeout(10 * UNIT):
            while not await monitor.hold_lease():  # active again, in the same process
                await asyncio.sleep(0.1)
        await monitor.reconcile(now + 11)
        assert unfanned._value.get() == 1  # counted once, not again by a new reconciler
    finally:
        await monitor.close()
        await broker.close()
