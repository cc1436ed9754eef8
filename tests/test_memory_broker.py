"""The embedded broker stays bounded: the state of expired streams, keys and trails is freed,
and binding an idempotency key does not get slower with the number of live keys."""

from __future__ import annotations

import time

import msgspec

from pushsvc.broker.base import Placed, Publication
from pushsvc.broker.memory import MemoryBroker
from pushsvc.types import Message
from tests.support import UNIT


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def message(clock: Clock, n: int, ttl_s: int = 60) -> Message:
    ms = int(clock.now * 1000)
    return Message(f"{ms:012x}{n:020x}", "e", msgspec.Raw(b"1"), ms, True, ms + ttl_s * 1000)


async def test_expired_streams_keys_and_trails_are_freed() -> None:
    clock = Clock()
    broker = MemoryBroker(history_ttl=60, ledger_retention=30, idempotency_ttl=90, clock=clock)
    for n in range(10_000):
        item = Publication(message(clock, n), [f"user:u{n}"], f"c:k{n}", "f")
        (placed,) = await broker.publish([item], "n")
        assert isinstance(placed, Placed)
    assert (len(broker.history), len(broker.keys)) == (10_000, 10_000)
    assert len(broker._ledger._trails) == 10_000
    clock.now += 120  # past the history ttl, the keys' ttl and the trails' retention
    (later,) = await broker.publish([Publication(message(clock, 1), ["user:x"], "c:k0", "f")], "n")
    await broker.ledger.record([])
    assert isinstance(later, Placed) and not later.duplicate  # the key expired with the rest
    assert (len(broker.history), len(broker.keys)) == (1, 1)
    assert len(broker._ledger._trails) == 1
    assert await broker.history.read("user:u5", None, 10) == []


async def test_binding_a_key_costs_the_same_with_many_keys_live() -> None:
    broker = MemoryBroker()
    many = [Publication(message(Clock(), n), [], f"c:live{n}", "f") for n in range(50_000)]
    await broker.publish(many, "n")
    assert len(broker.keys) == 50_000
    started = time.perf_counter()
    for n in range(2_000):  # scanning 50,000 keys per bind would take seconds
        await broker.publish([Publication(message(Clock(), n), [], f"c:new{n}", "f")], "n")
    assert time.perf_counter() - started < 0.5 * UNIT
