"""Client sockets bound to a chosen source address and port, for many connections per address.

Choosing source ports ourselves (sequentially from a random start) keeps connect() O(1): left to
the kernel, each connect from one address to one destination scans past the ports already taken,
which makes a ramp of many thousands of connections quadratic.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from pathlib import Path

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
PORT_TRIES = 20


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (``ip_local_port_range``), inclusive."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class SourcePorts:
    """Source ports handed out in sequence from a random start, wrapping within [low, high).

    The kernel's ephemeral range is skipped: a port bound explicitly on any address is no longer
    picked by the kernel for connections that let it choose (its bind bucket exists), so tens of
    thousands of client ports there would starve everyone else on the machine of ports to
    127.0.0.1, the server's own connections to Redis and this benchmark's API calls included.
    """

    def __init__(
        self, low: int = 1024, high: int = 65536, skip: tuple[int, int] | None = None
    ) -> None:
        self.low = low
        self.high = high
        self.skip = ephemeral_range() if skip is None else skip
        self.next = self._valid(random.randrange(low, high))

    def _valid(self, port: int) -> int:
        if port >= self.high:
            port = self.low
        if self.skip[0] <= port <= self.skip[1]:
            port = self.skip[1] + 1
            if port >= self.high:
                port = self.low
        return port

    def take(self) -> int:
        port = self.next
        self.next = self._valid(port + 1)
        return port


def client_socket(source_ip: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``(source_ip, port)``.

    With ``port`` 0 the kernel picks the port at connect time (``IP_BIND_ADDRESS_NO_PORT``), by
    the whole 4-tuple rather than among ports free for every destination.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if port == 0:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source_ip, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def connect_from(
    loop: asyncio.AbstractEventLoop,
    source_ip: str,
    ports: SourcePorts,
    address: tuple[str, int],
) -> socket.socket:
    """A socket connected to ``address`` from ``source_ip`` and a port taken from ``ports``.

    A port that is taken (a listener on 0.0.0.0, a connection in TIME_WAIT) is skipped; after
    :data:`PORT_TRIES` of those the kernel picks one. The caller owns the socket.
    """
    for _ in range(PORT_TRIES):
        try:
            sock = client_socket(source_ip, ports.take())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue  # a listener on 0.0.0.0 or a socket still in TIME_WAIT
            raise
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue  # the same 4-tuple is still in TIME_WAIT
            raise
        except BaseException:
            sock.close()
            raise
        return sock
    sock = client_socket(source_ip, 0)
    try:
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock
