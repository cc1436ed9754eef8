"""Which connection serves each partition of the keyspace (:mod:`pushsvc.broker.keys`).

On a standalone or Sentinel-managed Redis one server holds every partition: one :class:`Link`
serves them all, and a script run may touch keys of several partitions (a publish to patients of
different partitions is still one run). On Redis Cluster each partition has a link of its own,
to the master of its hash tag's slot (followed through failovers and migrations like any link),
and a script run holds the keys of one partition only. The keys outside the partitions — the
registry, escalations, webhooks, rate buckets, the monitor lease — are served by
:attr:`Partitions.control`.

A *group* is the set of partitions one script run may span: every partition on one server, or
each partition alone on Cluster (:meth:`Partitions.group`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from pushsvc.broker.keys import PARTITIONS, Keyspace, id_partition, partition_of
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.url import Target

_T = TypeVar("_T")


async def together(aws: list[Awaitable[_T]]) -> list[_T]:
    """``asyncio.gather(*aws)``, without a task when there is one (one server: the common case,
    on a path that runs per publish)."""
    if len(aws) == 1:
        return [await aws[0]]
    return list(await asyncio.gather(*aws))


async def settled(aws: list[Awaitable[_T]]) -> list[_T | Exception]:
    """:func:`together`, with each failure in its result's place."""
    if len(aws) == 1:
        try:
            return [await aws[0]]
        except Exception as exc:  # noqa: BLE001 - in its place, as gather reports it
            return [exc]
    out = await asyncio.gather(*aws, return_exceptions=True)
    for result in out:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled: not a failure to report
    return [r for r in out if not isinstance(r, BaseException) or isinstance(r, Exception)]


class Partitions:
    """The links of one broker. ``await aclose()`` when done."""

    def __init__(self, target: Target, keys: Keyspace, timeout: float) -> None:
        self.keys = keys
        self.split = target.mode == "cluster"
        self.control = Link(target, timeout, slot_key=keys.nodes)
        self.timeout = timeout
        if self.split:
            self.links = [Link(target, timeout, slot_key=tag) for tag in keys.tags]
        else:
            self.links = [self.control] * PARTITIONS

    def group(self, partition: int) -> int:
        """The group of ``partition``: the partitions one script run may span share it."""
        return partition if self.split else 0

    def link(self, group: int) -> Link:
        """The link that serves ``group`` (or partition: a group is named by one of them)."""
        return self.links[group]

    def for_id(self, message_id: str) -> Link:
        """The link that serves the home partition of ``message_id``."""
        return self.links[id_partition(message_id)]

    def body(self, message_id: str, stream: str) -> str:
        """The key of the body that the entries of ``message_id`` in ``stream`` refer to: one
        per group, in the message's home partition when the group holds it."""
        home = id_partition(message_id)
        kept = partition_of(stream) if self.split else home
        return self.keys.body(message_id, kept)

    @property
    def every(self) -> list[Link]:
        """Each distinct link once, the control link first."""
        out = [self.control]
        for link in self.links:
            if link not in out:
                out.append(link)
        return out

    @property
    def reachable(self) -> bool:
        return all(link.reachable for link in self.every)

    async def aclose(self) -> None:
        await asyncio.gather(*(link.aclose() for link in self.every))
