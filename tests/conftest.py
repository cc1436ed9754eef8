from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="session", autouse=True)
def _loopback_aliases() -> None:
    """Sanity: tests only talk to the loopback range."""
    assert socket.gethostbyname("localhost").startswith("127.")
