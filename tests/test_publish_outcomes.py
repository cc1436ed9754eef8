"""What a publish answers is what happened: a node on a real redis-server, with faults.

202 means appended. 503 (``retryable``) means "maybe": a retry with the same idempotency key
returns the first message id if it was appended, and no sequence of 503s and retries ever gives
one key two ids. Keys are scoped per API key, and a key reused for another request is a 409.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pushsvc.broker.keys import Keyspace
from tests.support import API_KEY, UNIT, NodeHandle, RedisServer, start_node, start_redis

pytestmark = pytest.mark.redis

OTHER_KEY = "other-key-of-another-hospital-system"
KEYS = Keyspace()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
def node(redis: RedisServer) -> Iterator[NodeHandle]:
    with start_node(redis_url=redis.url, api_keys=f"{API_KEY},{OTHER_KEY}") as handle:
        yield handle


def uid(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def body(user: str, key: str | None = None, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"to": {"users": [user]}, "event": "lab.ready", "data": {"n": 1}}
    if key is not None:
        out["idempotency_key"] = key
    return {**out, **changes}


def post(node: NodeHandle, path: str, payload: dict[str, Any], *, routes: bool = False,
         api_key: str = API_KEY) -> httpx.Response:  # fmt: skip
    """POST ``payload``; ``routes``: without a Content-Length (chunked), so the FastAPI routes
    answer instead of the publish lane."""
    raw = httpx.Request("POST", "http://x", json=payload).content
    content: Any = iter([raw]) if routes else raw
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    return httpx.post(node.internal_url + path, content=content, headers=headers,
                      timeout=10 * UNIT)  # fmt: skip


def entries(redis: RedisServer, user: str) -> int:
    return int(redis.command("XLEN", KEYS.stream(f"user:{user}")))


@pytest.mark.parametrize("routes", [False, True], ids=["lane", "routes"])
def test_a_key_is_the_callers_and_names_one_request(
    node: NodeHandle, redis: RedisServer, routes: bool
) -> None:
    user, key = uid(), uid("k")
    first = post(node, "/v1/messages", body(user, key), routes=routes)
    assert first.status_code == 202, first.text
    again = post(node, "/v1/messages", body(user, key), routes=routes)
    assert again.status_code == 202
    assert (again.json()["id"], again.json()["duplicate"]) == (first.json()["id"], True)
    # the same key from the same caller for another request: refused, nothing published
    for changed in ({"data": {"n": 2}}, {"event": "lab.other"}, {"ttl": 60}, {"ack": False},
                    {"to": {"users": [user, uid()]}}):  # fmt: skip
        refused = post(node, "/v1/messages", body(user, key, **changed), routes=routes)
        assert refused.status_code == 409, (changed, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "idempotency_conflict" and "retryable" not in error
    # another caller with the same key: its own message
    other = post(node, "/v1/messages", body(user, key), routes=routes, api_key=OTHER_KEY)
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"] and other.json()["duplicate"] is False
    assert entries(redis, user) == 2
    # no secret in Redis: the scope is a digest of the API key
    scoped = redis.command("--scan", "--pattern", "*idem:*")  # every partition's
    assert API_KEY not in scoped and OTHER_KEY not in scoped and key in scoped


def test_a_retry_is_the_same_request_however_its_json_is_spelled(node: NodeHandle) -> None:
    """The lane keeps the caller's bytes and the routes re-encode them: a retry that takes the
    other way, or spaces its JSON otherwise, is still the same request."""
    user, key = uid(), uid("k")
    spaced = (
        b'{"to": {"users": ["%s"]}, "event": "lab.ready", "data": {"b": [1, 2.5], "a": "x"},'
        b' "idempotency_key": "%s"}' % (user.encode(), key.encode())
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    first = httpx.post(node.internal_url + "/v1/messages", content=spaced, headers=headers)
    assert first.status_code == 202, first.text
    again = post(node, "/v1/messages", body(user, key, data={"a": "x", "b": [1, 2.5]}), routes=True)
    assert again.status_code == 202, again.text
    assert (again.json()["id"], again.json()["duplicate"]) == (first.json()["id"], True)
    both, other = uid(), uid("k")
    first = post(node, "/v1/messages", body(user, other, to={"users": [user, both]}))
    again = post(node, "/v1/messages", body(user, other, to={"users": [both, user, both]}))
    assert (again.json()["id"], again.json()["duplicate"]) == (first.json()["id"], True)


@pytest.mark.parametrize("routes", [False, True], ids=["lane", "routes"])
def test_a_batch_with_a_reused_key_answers_each_item(
    node: NodeHandle, redis: RedisServer, routes: bool
) -> None:
    user, key = uid(), uid("k")
    assert post(node, "/v1/messages", body(user, key)).status_code == 202
    batch = {"messages": [body(user), body(user, key, data={"n": 9}), body(user, uid("k"))]}
    r = post(node, "/v1/messages/batch", batch, routes=routes)
    assert r.status_code == 409, r.text
    answer = r.json()
    assert answer["error"]["code"] == "idempotency_conflict"
    ok, refused, other = answer["results"]
    assert ok["duplicate"] is False and other["duplicate"] is False
    assert refused == {
        "error": {"code": "idempotency_conflict", "message": refused["error"]["message"]}
    }
    assert entries(redis, user) == 3


def test_a_publish_whose_reply_came_too_late_is_found_by_its_retry(
    node: NodeHandle, redis: RedisServer
) -> None:
    """Redis frozen mid-publish: the node answers 503 retryable, Redis appends when it wakes,
    and the retry with the same key gets that message's id, marked duplicate."""
    user, key = uid(), uid("k")
    assert redis.proc is not None
    node.publish(body(uid()))  # the publish script is loaded: the frozen one runs on waking
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        r = post(node, "/v1/messages", body(user, key))
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["retryable"] is True and "redis" not in error["message"].lower()
    answers = []
    deadline = time.monotonic() + 15 * UNIT
    while time.monotonic() < deadline:
        again = post(node, "/v1/messages", body(user, key))
        answers.append(again.status_code)
        if again.status_code == 202:
            break
        assert again.status_code == 503, again.text
        time.sleep(0.1)
    assert answers[-1] == 202, answers
    assert again.json()["duplicate"] is True
    (entry,) = node_history(redis, user)
    assert entry == again.json()["id"]
    assert entries(redis, user) == 1


def node_history(redis: RedisServer, user: str) -> list[str]:
    """The message ids in ``user``'s stream (entries hold the message JSON in field ``m``)."""
    out = redis.command("XRANGE", KEYS.stream(f"user:{user}"), "-", "+")
    return [json.loads(line)["id"] for line in out.splitlines() if line.startswith("{")]


def test_a_batch_over_several_script_runs_with_a_fault_between_them(
    node: NodeHandle, redis: RedisServer
) -> None:
    """300 messages are three script runs; the second fails part-way (a key of the wrong type
    where item 150's stream should be). The answer says which items are certain; the retry of
    the whole batch with the same keys gives every appended item its first id, and every user
    ends with exactly one entry."""
    users = [uid(f"b{i}-") for i in range(300)]
    keys = [uid("k") for _ in users]
    batch = {"messages": [body(u, k) for u, k in zip(users, keys, strict=True)]}
    bad = KEYS.stream(f"user:{users[150]}")
    redis.command("SET", bad, "in the way")
    r = post(node, "/v1/messages/batch", batch)
    assert r.status_code == 503, r.text[:500]
    answer = r.json()
    assert answer["error"]["retryable"] is True
    results = answer["results"]
    assert len(results) == 300
    assert all("id" in results[i] for i in [*range(128), *range(256, 300)])
    assert all(results[i]["error"]["retryable"] is True for i in range(128, 256))
    redis.command("DEL", bad)
    retry = post(node, "/v1/messages/batch", batch)
    assert retry.status_code == 202, retry.text[:500]
    again = retry.json()["results"]
    for i in [*range(128), *range(256, 300)]:
        assert (again[i]["id"], again[i]["duplicate"]) == (results[i]["id"], True)
    # the failed run appended items 128..149 before it stopped: their keys were bound
    assert [again[i]["duplicate"] for i in range(128, 256)] == [True] * 22 + [False] * 106
    assert {entries(redis, u) for u in users} == {1}
    assert len({m["id"] for m in again}) == 300


async def test_concurrent_publishes_with_one_key_give_one_message(
    node: NodeHandle, redis: RedisServer
) -> None:
    user, key = uid(), uid("k")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=node.internal_url, headers=headers) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/messages", json=body(user, key), timeout=10 * UNIT) for _ in range(20)
        ))  # fmt: skip
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["id"] for r in answers}) == 1
    assert sorted(r.json()["duplicate"] for r in answers) == [False] + [True] * 19
    assert entries(redis, user) == 1
