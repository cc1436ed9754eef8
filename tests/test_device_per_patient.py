"""Two patients whose devices have the same id never share an ack: acks and trails are keyed by
user and device, on the embedded broker and on Redis."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support import UNIT, NodeHandle, start_node, start_redis, wait_until
from tests.wire import Wire


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def node(request: pytest.FixtureRequest) -> Iterator[NodeHandle]:
    if request.param == "embedded":
        with start_node() as handle:
            yield handle
        return
    with start_redis() as redis, start_node(redis_url=redis.url) as handle:
        yield handle


async def test_an_ack_by_one_patients_phone_is_not_another_patients(node: NodeHandle) -> None:
    alice, bob = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    sent = node.publish({"to": {"users": [alice, bob]}, "event": "lab.ready", "data": 1})
    on_alice = await Wire.open(node.client_url, node.token(alice), device="phone")
    got = await on_alice.recv_msg()
    assert got["id"] == sent["id"]
    await on_alice.ack(got["id"])
    wait_until(lambda: any(d["acked_at"] for d in node.trail(sent["id"])["devices"]), 5 * UNIT)
    await on_alice.close()
    # bob's phone, same device id, comes online later: the message is still his to get
    on_bob = await Wire.open(node.client_url, node.token(bob), device="phone")
    assert on_bob.welcome["replayed"] == 1
    mine = await on_bob.recv_msg()
    assert (mine["id"], mine["stream"]) == (sent["id"], f"user:{bob}")
    await on_bob.ack(mine["id"])

    def acked_by() -> list[tuple[str, str]]:
        devices = node.trail(sent["id"])["devices"]
        return sorted((d["user"], d["device"]) for d in devices if d["acked_at"])

    wait_until(lambda: len(acked_by()) == 2, 5 * UNIT)
    assert acked_by() == [(alice, "phone"), (bob, "phone")]
    assert node.trail(sent["id"])["state"] == "acked"
    await on_bob.close()
