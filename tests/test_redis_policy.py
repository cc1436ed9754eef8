"""A node refuses a Redis that may evict its keys, unless told otherwise; a Redis user not
allowed to read the configuration gets a warning, not a refusal."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.support import (
    API_KEY,
    ROOT,
    TOKEN_SECRET,
    UNIT,
    RedisServer,
    free_port,
    pushsvc_command,
    start_node,
    start_redis,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def evicting() -> Iterator[RedisServer]:
    with start_redis() as redis:
        redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        yield redis


def serve(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(PUSHSVC_REDIS_URL=url, PUSHSVC_API_KEYS=API_KEY, PUSHSVC_TOKEN_SECRET=TOKEN_SECRET,
               PUSHSVC_PORT=str(free_port()), PUSHSVC_INTERNAL_PORT=str(free_port()),
               PUSHSVC_MAX_CONNECTIONS="1000")  # fmt: skip
    return subprocess.run([*pushsvc_command(), "serve", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=20 * UNIT)  # fmt: skip


def test_a_redis_that_may_evict_is_refused(evicting: RedisServer) -> None:
    done = serve(evicting.url)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith('{"ts"')]
    assert len(errors) == 1, done.stderr  # one line, beside the JSON log's warnings
    assert errors[0].startswith("error: redis maxmemory-policy is 'allkeys-lru'"), errors
    assert "--allow-redis-eviction" in errors[0] and "Traceback" not in done.stderr


def test_eviction_can_be_allowed(evicting: RedisServer) -> None:
    with start_node("--allow-redis-eviction", redis_url=evicting.url) as node:
        assert node.ready()
    assert "allowed by --allow-redis-eviction" in node.log()
    with start_node(redis_url=evicting.url, allow_redis_eviction="true") as node:
        assert node.ready()


def test_a_redis_user_without_config_gets_a_warning_and_a_node(redis: RedisServer) -> None:
    redis.command("ACL", "SETUSER", "pushsvc", "on", ">secret-pw", "~*", "&*", "+@all", "-config")
    url = f"redis://pushsvc:secret-pw@127.0.0.1:{redis.port}/0"
    with start_node(redis_url=url) as node:
        assert node.ready()
    assert "CONFIG GET is not permitted" in node.log()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


def test_a_noeviction_redis_starts_quietly(redis: RedisServer) -> None:
    redis.command("CONFIG", "SET", "stream-node-max-bytes", "256")
    with start_node(redis_url=redis.url) as node:
        assert node.ready()
    assert "maxmemory-policy" not in node.log() and "stream-node-max-bytes" not in node.log()
