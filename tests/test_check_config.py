"""``pushsvc check-config`` reads the Redis eviction policy: anything but ``noeviction`` is a
warning (evicted history is silent loss). A real redis-server whose policy the test changes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support import API_KEY, RedisServer

pytestmark = pytest.mark.redis


def redis_check(server: RedisServer) -> dict[str, Any]:
    env = {"PUSHSVC_REDIS_URL": server.url, "PUSHSVC_API_KEYS": API_KEY, "PUSHSVC_API_URL": None}
    result = CliRunner().invoke(app, ["check-config", "--json"], env=env)
    checks = {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}
    found: dict[str, Any] = checks["redis"]
    return found


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "noeviction"])
def test_check_config_reports_the_eviction_policy(server: RedisServer, policy: str) -> None:
    server.command("CONFIG", "SET", "maxmemory-policy", policy)
    check = redis_check(server)
    assert f"maxmemory-policy {policy}" in check["detail"]
    if policy == "noeviction":
        assert check["status"] == "ok"
    else:
        assert check["status"] == "warn"
        assert "set it to noeviction" in check["detail"]
