"""What a node checks of its Redis server's configuration before it starts.

An eviction policy other than ``noeviction`` lets Redis drop history, trails and idempotency keys
when it is full: silent loss. :func:`check` says whether the server is fit, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushsvc.broker.redis.link import Link
from pushsvc.errors import BrokerError, BrokerUnavailable

#: Above this, every new stream costs Redis about this many bytes (docs/operations.md § 4).
STREAM_NODE_ADVICE = 512


NOT_PERMITTED = (
    "CONFIG GET is not permitted: could not check that redis's maxmemory-policy is noeviction"
    " (any other policy may silently drop history)"
)


@dataclass(frozen=True)
class Verdict:
    """``refuse``: the reason not to start, or "". ``warnings``: lines to log and go on."""

    refuse: str = ""
    warnings: tuple[str, ...] = ()


async def check(url: str, wait: float = 2.0) -> Verdict:
    """Read the server's ``maxmemory-policy`` and ``stream-node-max-bytes``. A server that cannot
    be reached (within ``wait`` seconds) or does not let us read its configuration (ACL) gets
    warnings, not a refusal."""
    link = Link(url, wait)
    try:
        reply = await link.call("CONFIG", "GET", "maxmemory-policy")
        nodes = await link.call("CONFIG", "GET", "stream-node-max-bytes")
    except BrokerUnavailable:
        return Verdict(warnings=("redis is not reachable: could not check its maxmemory-policy",))
    except BrokerError:
        return Verdict(warnings=(NOT_PERMITTED,))
    finally:
        await link.aclose()
    found = dict(zip(reply[::2], reply[1::2], strict=True)) | dict(
        zip(nodes[::2], nodes[1::2], strict=True)
    )
    policy = found.get(b"maxmemory-policy", b"").decode()
    warnings: list[str] = []
    node_bytes = found.get(b"stream-node-max-bytes", b"0").decode()
    if node_bytes.isdigit() and int(node_bytes) > STREAM_NODE_ADVICE:
        warnings.append(
            f"redis stream-node-max-bytes is {node_bytes}: every new stream costs about that much;"
            " 256 is recommended (docs/operations.md)"
        )
    if policy and policy != "noeviction":
        return Verdict(
            refuse=f"redis maxmemory-policy is {policy!r}: it may evict history and idempotency "
            "keys (silent loss); set it to noeviction, or start with --allow-redis-eviction",
            warnings=tuple(warnings),
        )
    return Verdict(warnings=tuple(warnings))
