"""The multiplexed command connection (pushsvc/broker/redis/mux.py) against a real redis-server:
replies reach their callers in order however many share the connection, error replies keep the
stream in step, a stalled or killed connection fails its callers within the timeout and the next
call connects again, and the URL's password and database are used."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest

from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.sentinel import NotMaster
from pushsvc.errors import BrokerError, BrokerUnavailable
from tests.support import UNIT, RedisServer, start_redis

pytestmark = pytest.mark.redis


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    server: RedisServer,
) -> None:
    link = Link(server.url)
    try:

        async def caller(n: int) -> None:
            for i in range(20):
                key = f"k{n}"
                if random.random() < 0.5:
                    assert await link.call("INCR", key) == i + 1
                else:
                    got = await link.pipeline([("INCR", key), ("GET", key), ("ECHO", f"{n}-{i}")])
                    assert got == [i + 1, str(i + 1).encode(), f"{n}-{i}".encode()]
                if random.random() < 0.3:
                    await asyncio.sleep(0)

        await asyncio.gather(*(caller(n) for n in range(200)))
        clients = (await link.call("CLIENT", "LIST")).decode().strip().splitlines()
        assert len(clients) == 1, clients  # every call of every caller on one connection
        assert link.reachable
    finally:
        await link.aclose()


async def test_an_error_reply_keeps_the_stream_in_step(server: RedisServer) -> None:
    link = Link(server.url)
    try:
        await link.call("SET", "text", "abc")
        with pytest.raises(BrokerError, match="not an integer"):
            await link.pipeline([("INCR", "n"), ("INCR", "text"), ("INCR", "n")])
        results = await asyncio.gather(
            link.call("INCR", "text"), link.call("GET", "n"), return_exceptions=True
        )
        assert isinstance(results[0], BrokerError)
        assert not isinstance(results[0], BrokerUnavailable)
        assert results[1] == b"2"  # both INCRs of the failed pipeline ran; nothing out of step
        assert link.reachable
    finally:
        await link.aclose()


async def test_a_stalled_redis_fails_every_caller_within_the_timeout(server: RedisServer) -> None:
    link = Link(server.url, timeout=0.5 * UNIT)
    try:
        assert await link.call("PING") == b"PONG"
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(
            *(link.call("INCR", "n") for _ in range(50)), return_exceptions=True
        )
        waited = time.monotonic() - started
        assert all(isinstance(r, BrokerUnavailable) for r in results), results[:3]
        assert 0.4 * UNIT <= waited < 2 * UNIT
        assert not link.reachable
        server.proc.send_signal(signal.SIGCONT)
        assert await link.call("PING") == b"PONG"  # a new connection
        assert link.reachable
    finally:
        await link.aclose()


async def test_a_killed_connection_is_replaced_by_the_next_call(server: RedisServer) -> None:
    link, other = Link(server.url), Link(server.url)
    try:
        await link.call("CLIENT", "SETNAME", "victim")
        assert await other.call("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal") >= 1
        # The kill is seen on the next read: that call fails or already runs on a new connection.
        for _ in range(20):
            try:
                name = await link.call("CLIENT", "GETNAME")
                break
            except BrokerUnavailable:
                await asyncio.sleep(0.01)
        else:
            pytest.fail("the link never reconnected")
        assert name is None  # a fresh connection: the name was on the killed one
        assert link.reachable
    finally:
        await link.aclose()
        await other.aclose()


async def test_redis_down_then_up(server: RedisServer) -> None:
    link = Link(server.url, timeout=0.5 * UNIT)
    try:
        await link.call("SET", "a", "1")
        server.stop()
        with pytest.raises(BrokerUnavailable):
            await link.call("GET", "a")
        with pytest.raises(BrokerUnavailable):  # refused at connect
            await link.call("GET", "a")
        server.start()
        assert await link.call("PING") == b"PONG"
    finally:
        await link.aclose()


async def test_password_and_database_come_from_the_url(server: RedisServer) -> None:
    admin = Link(server.url)
    try:
        await admin.call("CONFIG", "SET", "requirepass", "s3cret")
        base = f"127.0.0.1:{server.port}"
        link = Link(f"redis://:s3cret@{base}/3")
        try:
            await link.call("SET", "where", "db3")
        finally:
            await link.aclose()
        check = Link(f"redis://default:s3cret@{base}/3")
        try:
            assert await check.call("GET", "where") == b"db3"
            assert await check.call("DBSIZE") == 1
        finally:
            await check.aclose()
        wrong = Link(f"redis://:nope@{base}/0")
        try:
            with pytest.raises(BrokerUnavailable, match="refused"):
                await wrong.call("PING")
        finally:
            await wrong.aclose()
        open_link = Link(f"redis://{base}/0")
        try:
            with pytest.raises(BrokerError, match="NOAUTH"):
                await open_link.call("PING")
        finally:
            await open_link.aclose()
    finally:
        await admin.aclose()  # its connection authenticated before the password was set


async def test_a_replica_is_never_written_to(server: RedisServer) -> None:
    with start_redis() as replica:
        replica.command("REPLICAOF", "127.0.0.1", str(server.port))
        link = Link(replica.url, timeout=0.5 * UNIT)
        try:
            with pytest.raises(BrokerUnavailable, match="is a slave, not the master"):
                await link.call("GET", "a")
            assert not link.reachable
            with pytest.raises(NotMaster, match="not the master"):
                await link.subscriber()
        finally:
            await link.aclose()


async def test_a_demoted_master_drops_the_connection_until_it_is_master_again(
    server: RedisServer,
) -> None:
    link = Link(server.url, timeout=0.5 * UNIT)
    with start_redis() as other:
        try:
            await link.call("SET", "a", "1")
            assert link.reachable
            server.command("REPLICAOF", "127.0.0.1", str(other.port))
            with pytest.raises(BrokerUnavailable):
                await link.call("SET", "a", "2")
            assert not link.reachable
            with pytest.raises(BrokerUnavailable, match="not the master"):
                await link.call("GET", "a")  # a read would answer: the connection is refused
            assert not link.reachable
            server.command("REPLICAOF", "NO", "ONE")
            await link.call("SET", "a", "3")
            assert link.reachable
        finally:
            await link.aclose()
