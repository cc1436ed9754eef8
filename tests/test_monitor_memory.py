"""The monitor's reconciliation in-process against an embedded node's memory broker (docs/architecture.md):
a real node on a free port, a real WebSocket client, the drop fault, then one reconciliation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from monitor.app import Monitor
from monitor.reconcile import FINAL
from pushsvc.broker.memory import MemoryBroker
from pushsvc.http.client_listener import edge_factory
from pushsvc.node.gateway import Node
from pushsvc.node.publish import Outgoing, Publisher
from pushsvc.settings import MonitorSettings, Settings
from tests.support import API_KEY, TOKEN_SECRET, UNIT
from tests.wire import Wire


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    settings = Settings(
        node_id="solo", port=0, internal_port=0, token_secret=TOKEN_SECRET, api_keys=[API_KEY],
        ack_timeout=1, max_attempts=2, monitor_grace=1, reconnect_window=1, late_check=1,
        ledger_flush_interval=0.02,
    )  # fmt: skip
    node = Node(settings, MemoryBroker(history_ttl=settings.history_ttl))
    await node.start(edge_factory(node))
    try:
        yield node
    finally:
        await node.close()


async def test_reconcile_in_process_names_what_the_drop_fault_swallowed(node: Node) -> None:
    client = await Wire.open(f"ws://{node.client_addr}/ws", node.tokens.mint("p1"), device="ph")
    publisher = Publisher(node)
    item = Outgoing(["user:p1"], "lab.result", b'{"ok":true}', 600, True)
    (kept,) = await publisher.publish([item])
    got = await client.recv_msg()
    assert got["id"] == kept.id
    await client.ack(kept.id)
    node.faults.drop_deliveries = 1.0  # every message, on this node
    (swallowed,) = await publisher.publish([item])
    await client.silent(0.3 * UNIT)
    await node.accounting.flush()
    settings = MonitorSettings.sharing(node.settings, loss_window=60)
    service = Monitor(settings, node.broker, canaries=False)
    now = time.time()
    reports = await service.reconcile(now + 30)  # 30 s on, the buckets of the test are final
    assert FINAL in {r.check for r in reports}
    counts = {n: c for r in reports for n, c in r.nodes.items() if c.counters}
    solo = counts["solo"]
    assert solo.counters["published"] >= 1
    assert sum(r.totals("expected") for r in reports) == 2
    assert sum(r.totals("acked") for r in reports) == 1
    missing = [m for r in reports for c in r.nodes.values() for m in c.samples]
    assert [(m.message_id, m.device, m.node, m.kind) for m in missing] == [
        (swallowed.id, "p1/ph", "solo", "unfanned")  # the device of that patient
    ]
    # the alert it would send, without an Alertmanager
    await service.probe(now)  # the registry: solo is live, its heartbeat fine
    sends = await service.alert(now + 3)
    assert [(s.alert.name, s.alert.node) for s in sends] == [("PushDeliveryLoss", "solo")]
    assert await service.hold_lease()  # the memory broker's lease
    await client.close()
