"""Per-user revocation, token expiry and refresh, against real nodes: revocation across two nodes
on a real Redis and on a node started after it, a session closed when its token expires, and a
refresh that keeps it open."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import UNIT, NodeHandle, RedisServer, launch_node, start_node, start_redis
from tests.wire import Wire

FAST = {"registry_interval": 0.5, "heartbeat": 5}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
def pair(redis: RedisServer) -> Iterator[list[NodeHandle]]:
    nodes = [launch_node(redis_url=redis.url, node_id=f"node-{n}", **FAST) for n in "ab"]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def uid() -> str:
    return f"p-{secrets.token_hex(4)}"


async def refused(url: str, token: str) -> tuple[int, list[dict[str, Any]]]:
    """Say hello with ``token``; the close code and the frames read before it."""
    wire = await Wire.open(url, None)
    await wire.send({"type": "hello", "token": token, "device": "d1"})
    code, _, seen = await wire.closed()
    return code, seen


@pytest.mark.redis
async def test_a_revocation_closes_the_users_sessions_on_every_node_and_refuses_old_tokens(
    pair: list[NodeHandle], redis: RedisServer
) -> None:
    a, b = pair
    user, other = uid(), uid()
    old = a.token(user)
    on_a = await Wire.open(a.client_url, old, device="phone")
    on_b = await Wire.open(b.client_url, old, device="laptop")
    bystander = await Wire.open(a.client_url, a.token(other))
    r = b.api("POST", f"/v1/users/{user}/revoke")
    assert r.status_code == 202, r.text
    not_before = r.json()["not_before"]
    assert r.json()["user"] == user and not_before > time.time() - 1
    for wire in (on_a, on_b):
        code, _, seen = await wire.closed()
        assert code == 4001
        assert seen[-1] == {
            "type": "error",
            "code": "token_revoked",
            "message": seen[-1]["message"],
        }
    assert '"action": "revoke_user"' in b.log() or '"action":"revoke_user"' in b.log()
    # the old token is refused at hello, also by a node that started after the revocation
    for node in (a, b):
        code, seen = await refused(node.client_url, old)
        assert (code, seen[-1]["code"]) == (4001, "token_revoked")
    with start_node(redis_url=redis.url, node_id="node-c", **FAST) as c:
        code, seen = await refused(c.client_url, old)
        assert (code, seen[-1]["code"]) == (4001, "token_revoked")
        # a token minted after the revocation's second is accepted
        await asyncio.sleep(max(0.0, not_before - time.time()) + 0.05)
        fresh = await Wire.open(c.client_url, c.token(user))
        assert fresh.welcome["user"] == user
        result = a.publish({"to": {"users": [user]}, "event": "e", "data": 1})
        assert (await fresh.recv_msg())["id"] == result["id"]
        await fresh.close()
    # another patient's session was left alone
    result = a.publish({"to": {"users": [other]}, "event": "e", "data": 2})
    assert (await bystander.recv_msg())["id"] == result["id"]
    await bystander.close()


async def test_the_revoke_route_refuses_a_bad_user_id() -> None:
    with start_node(**FAST) as node:
        r = node.api("POST", "/v1/users/bad%20user/revoke")
        assert r.status_code == 422 and r.json()["error"]["code"]


async def test_a_session_is_closed_when_its_token_expires() -> None:
    with start_node(**FAST) as node:
        wire = await Wire.open(node.client_url, node.token(uid(), ttl=2))
        started = time.monotonic()
        code, _, seen = await wire.closed(timeout=6 * UNIT)
        assert code == 4001 and seen[-1]["code"] == "token_expired"
        assert time.monotonic() - started < 3 + 2 * UNIT


async def test_a_refresh_keeps_the_session_open_past_the_first_exp() -> None:
    with start_node(**FAST) as node:
        user = uid()
        wire = await Wire.open(node.client_url, node.token(user, ttl=2))
        await wire.send({"type": "refresh", "token": node.token(user, ttl=60)})
        refreshed = await wire.recv()
        assert refreshed["type"] == "refreshed" and refreshed["exp"] > time.time() + 50
        await asyncio.sleep(3)  # past the first token's exp
        result = node.publish({"to": {"users": [user]}, "event": "e", "data": 1})
        assert (await wire.recv_msg())["id"] == result["id"]
        await wire.close()


@pytest.mark.parametrize(
    ("token_of", "slug"),
    [("another user", "invalid_refresh"), ("garbage", "invalid_token")],
)
async def test_a_refresh_with_another_user_or_a_bad_token_closes_4001(
    token_of: str, slug: str
) -> None:
    with start_node(**FAST) as node:
        user = uid()
        wire = await Wire.open(node.client_url, node.token(user, ttl=60))
        token = node.token(uid(), ttl=120) if token_of == "another user" else "not.a.jwt"
        await wire.send({"type": "refresh", "token": token})
        code, _, seen = await wire.closed()
        assert (code, seen[-1]["type"], seen[-1]["code"]) == (4001, "error", slug)


async def test_a_refresh_with_a_revoked_token_closes_4001_token_revoked() -> None:
    with start_node(**FAST) as node:
        user = uid()
        old = node.token(user, ttl=600)
        r = node.api("POST", f"/v1/users/{user}/revoke")
        assert r.status_code == 202, r.text
        await asyncio.sleep(max(0.0, r.json()["not_before"] - time.time()) + 0.05)
        wire = await Wire.open(node.client_url, node.token(user, ttl=60))
        await wire.send({"type": "refresh", "token": old})
        code, _, seen = await wire.closed()
        assert (code, seen[-1]["code"]) == (4001, "token_revoked")
