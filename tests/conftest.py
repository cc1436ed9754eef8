from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import RedisServer, start_redis


@pytest.fixture(scope="session", autouse=True)
def _loopback_aliases() -> None:
    """Sanity: tests only talk to the loopback range."""
    assert socket.gethostbyname("localhost").startswith("127.")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop, restart, freeze or kill clients of."""
    with start_redis() as s:
        yield s
