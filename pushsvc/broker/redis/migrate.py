"""Moving the keys of the layout before partitions into the partitioned keyspace.

Before the keyspace was partitioned (:mod:`pushsvc.broker.keys`), the message path's keys
carried the plain prefix: ``{c}stream:<stream>``, ``{c}body:<id>``, ``{c}trail:<id>``,
``{c}idem:<caller>:<key>``, ``{c}tally:<bucket>`` and ``{c}msgs:<bucket>`` (``{c}``: the prefix,
in braces on Redis Cluster, where they all were in its one slot). :func:`migrate` moves each of
them to its name now, with its value and its TTL (``DUMP``, ``PTTL``, ``RESTORE`` at the master of
its new slot, ``DEL``), so that nodes of this layout find the history, trails, idempotency keys
and accounting that older nodes wrote:

- a stream goes to its stream's partition;
- a body to each place an entry that refers to it reads it from (:meth:`Partitions.body`; on
  Redis Cluster one copy per partition whose streams refer to it); a body no entry refers to is
  dropped, as it would have been read by nothing;
- a trail and an idempotency key to the partition their id or key names;
- a bucket's accounting to partition 0 (the monitor sums the partitions).

Run it while no node runs (a node of either layout would write meanwhile). Nothing is
overwritten: a name now that holds other content stops the migration
(:class:`MigrationConflict`). It is idempotent: a key is deleted only after its copies are
made, and a run that stopped half-way is finished by the next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pushsvc.broker.keys import partition_of
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.partitions import Partitions
from pushsvc.errors import BrokerError

#: The kinds of keys moved, in the order they are moved (streams before the bodies they refer to).
KINDS = ("stream", "trail", "idem", "tally", "msgs", "body")

SCAN_COUNT = 1000


class MigrationConflict(BrokerError):
    """A key's name now is taken by other content: nothing of it is overwritten."""


@dataclass
class Moved:
    """What :func:`migrate` found (and moved, unless it was a dry run): keys per kind; bodies
    dropped because no entry refers to them; copies of bodies made for Cluster's partitions."""

    keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dropped_bodies: int = 0
    body_copies: int = 0


async def migrate(parts: Partitions, *, dry_run: bool = False) -> Moved:
    """Move every key of the layout before partitions under ``parts.keys``'s prefix."""
    keys, control = parts.keys, parts.control
    old = keys.prefix  # the plain prefix: that of the keys outside the partitions
    moved = Moved()
    readers: dict[str, set[str]] = {}  # message id -> the new body keys its entries read
    for kind in KINDS:
        async for name in _scan(control, _glob(old) + kind + ":*"):
            rest = name[len(old) + len(kind) + 1 :]
            if kind == "stream":
                for ref in await _references(control, name):
                    readers.setdefault(ref, set()).add(parts.body(ref, rest))
                targets = [keys.stream(rest)]
                where = [partition_of(rest)]
            elif kind == "body":
                targets = sorted(readers.get(rest, ()))
                where = [_partition(keys.tags, t) for t in targets]
                if not targets:
                    moved.dropped_bodies += 1
                moved.body_copies += max(0, len(targets) - 1)
            elif kind == "trail":
                targets = [keys.trail(rest)]
                where = [_partition(keys.tags, targets[0])]
            elif kind == "idem":
                targets = [keys.idempotency(rest)]
                where = [partition_of(rest)]
            else:  # the accounting of one bucket
                bucket = int(rest)
                now = keys.tally(bucket, 0) if kind == "tally" else keys.bucket_messages(bucket, 0)
                targets, where = [now], [0]
            moved.keys[kind] += 1
            if not dry_run:
                await _move(control, name, [
                    (parts.link(parts.group(p)), t) for p, t in zip(where, targets, strict=True)
                ])  # fmt: skip
    return moved


async def _scan(link: Link, pattern: str) -> AsyncIterator[str]:
    """The names matching ``pattern`` (SCAN; names moved meanwhile may be missed or repeated,
    which a second run covers)."""
    cursor = b"0"
    seen: set[str] = set()
    while True:
        cursor, names = await link.call("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        for raw in names:
            name = raw.decode()
            if name not in seen:
                seen.add(name)
                yield name
        if cursor in (b"0", 0, "0"):
            return


async def _references(link: Link, stream: str) -> set[str]:
    """The message ids the entries of ``stream`` refer to (field ``r``)."""
    entries = await link.call("XRANGE", stream, "-", "+")
    return {fields[1].decode() for _, fields in entries if len(fields) == 2 and fields[0] == b"r"}


async def _move(source: Link, name: str, targets: list[tuple[Link, str]]) -> None:
    """Copy ``name`` with its TTL to each target, then delete it (a key that expired meanwhile
    is simply gone)."""
    payload, ttl = await source.pipeline([("DUMP", name), ("PTTL", name)])
    if payload is None or ttl == -2:
        return
    keep = max(int(ttl), 0)  # -1: no TTL, RESTORE's 0
    for link, target in targets:
        try:
            await link.call("RESTORE", target, keep, payload)
        except BrokerError as exc:
            if "BUSYKEY" not in exc.message:
                raise
            if await link.call("DUMP", target) != payload:  # not an earlier run's copy
                raise MigrationConflict(
                    f"{target} exists already with other content: did a node of this layout "
                    "run before the migration? Stop every node; move or remove it by hand."
                ) from None
    await source.call("DEL", name)


def _partition(tags: list[str], key: str) -> int:
    return tags.index(key[: key.index("}") + 1])


def _glob(text: str) -> str:
    """``text`` as a literal in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
