"""Nodes and their sessions in Redis, kept alive by heartbeats.

A node is live while ``{p}node:<id>`` exists (``register`` sets it with the heartbeat TTL). Its
sessions live in one hash, ``{p}sessions:<node>``, whose TTL every heartbeat renews: when a node
dies without a word its sessions disappear with it. ``{p}user-sessions:<user>`` indexes sessions
by user for ``sessions(user=...)``; entries it holds for dead nodes are pruned as they are read.
Every batch is one pipelined round trip (two where the users of removed sessions are looked up).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import msgspec

from pushsvc.broker.base import NodeInfo, Registry, SessionInfo
from pushsvc.broker.keys import NODE_PRUNE_AFTER, USER_INDEX_TTL, Keyspace
from pushsvc.broker.redis.link import Link
from pushsvc.broker.redis.mux import Command

_sessions = msgspec.json.Decoder(SessionInfo)
_nodes = msgspec.json.Decoder(NodeInfo)
_encode = msgspec.json.Encoder().encode


class RedisRegistry(Registry):
    """``default_ttl``: the sessions TTL for a node this broker has not registered itself."""

    def __init__(self, link: Link, keys: Keyspace, default_ttl: float) -> None:
        self._link = link
        self._keys = keys
        self._default_ttl = default_ttl
        self._ttl: dict[str, float] = {}  # node id -> TTL of its last register() here

    async def register(self, node: NodeInfo, ttl: float) -> None:
        k = self._keys
        ms = max(1, int(ttl * 1000))
        now = time.time()
        self._ttl[node.id] = ttl
        await self._link.pipeline([
            ("SET", k.node(node.id), _encode(node), "PX", ms),
            ("ZADD", k.nodes, now + ttl, node.id),
            ("PEXPIRE", k.node_sessions(node.id), ms),
            ("ZREMRANGEBYSCORE", k.nodes, "-inf", f"({now - NODE_PRUNE_AFTER}"),
        ])  # fmt: skip

    async def deregister(self, node_id: str) -> None:
        k = self._keys
        infos = await self._link.call("HVALS", k.node_sessions(node_id))
        commands: list[Command] = [
            ("DEL", k.node(node_id), k.node_sessions(node_id)),
            ("ZREM", k.nodes, node_id),
        ]
        for raw in infos:
            info = _sessions.decode(raw)
            commands.append(("HDEL", k.user_sessions(info.user), info.id))
        self._ttl.pop(node_id, None)
        await self._link.pipeline(commands)

    async def nodes(self) -> list[NodeInfo]:
        return [info for _, info in await self._live()]

    async def _live(self) -> list[tuple[str, NodeInfo]]:
        """Live nodes by id, sorted."""
        k = self._keys
        ids = await self._link.call("ZRANGE", k.nodes, 0, -1)
        if not ids:
            return []
        names = sorted(i.decode() for i in ids)
        values = await self._link.call("MGET", *(k.node(n) for n in names))
        return [(n, _nodes.decode(v)) for n, v in zip(names, values, strict=True) if v is not None]

    async def add_sessions(self, sessions: list[SessionInfo]) -> None:
        k = self._keys
        by_node: dict[str, list[Any]] = defaultdict(list)
        by_user: dict[str, list[str]] = defaultdict(list)
        for info in sessions:
            by_node[info.node] += (info.id, _encode(info))
            by_user[info.user] += (info.id, info.node)
        commands: list[Command] = []
        for node_id, pairs in by_node.items():
            key = k.node_sessions(node_id)
            ms = max(1, int(self._ttl.get(node_id, self._default_ttl) * 1000))
            commands += (("HSET", key, *pairs), ("PEXPIRE", key, ms))
        for user, pairs in by_user.items():
            key = k.user_sessions(user)
            commands += (("HSET", key, *pairs), ("EXPIRE", key, USER_INDEX_TTL))
        await self._link.pipeline(commands)

    async def remove_sessions(self, node_id: str, session_ids: list[str]) -> None:
        if not session_ids:
            return
        k = self._keys
        key = k.node_sessions(node_id)
        infos = await self._link.call("HMGET", key, *session_ids)
        commands: list[Command] = [("HDEL", key, *session_ids)]
        for raw in infos:
            if raw is not None:
                info = _sessions.decode(raw)
                commands.append(("HDEL", k.user_sessions(info.user), info.id))
        await self._link.pipeline(commands)

    async def sessions(
        self, user: str | None = None, node: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        if limit <= 0:
            return []
        live = [n for n, _ in await self._live()]
        if user is not None:
            return await self._sessions_of(user, live, node, limit)
        out: list[SessionInfo] = []
        for node_id in live:
            if node is not None and node_id != node:
                continue
            seen: set[bytes] = set()
            cursor = b"0"
            while len(out) < limit:
                reply = await self._link.call(
                    "HSCAN", self._keys.node_sessions(node_id), cursor, "COUNT", max(limit, 100)
                )
                cursor, flat = reply[0], reply[1]
                for session_id, raw in zip(flat[::2], flat[1::2], strict=True):
                    if session_id not in seen and len(out) < limit:
                        seen.add(session_id)
                        out.append(_sessions.decode(raw))
                if cursor == b"0":
                    break
        return out

    async def _sessions_of(
        self, user: str, live: list[str], node: str | None, limit: int
    ) -> list[SessionInfo]:
        """The sessions of ``user`` on ``live`` nodes (only ``node`` when given); prunes the
        index entries of dead nodes and of sessions that are gone."""
        index_key = self._keys.user_sessions(user)
        flat = await self._link.call("HGETALL", index_key)
        alive = set(live)
        wanted: dict[str, list[str]] = defaultdict(list)
        stale: list[str] = []
        for raw_id, raw_node in zip(flat[::2], flat[1::2], strict=True):
            node_id = raw_node.decode()
            if node_id not in alive:
                stale.append(raw_id.decode())
            elif node is None or node_id == node:
                wanted[node_id].append(raw_id.decode())
        nodes = sorted(wanted)
        replies = await self._link.pipeline(
            [("HMGET", self._keys.node_sessions(n), *wanted[n]) for n in nodes]
        )
        out: list[SessionInfo] = []
        for node_id, infos in zip(nodes, replies, strict=True):
            for session_id, raw in zip(wanted[node_id], infos, strict=True):
                if raw is None:
                    stale.append(session_id)
                elif len(out) < limit:
                    out.append(_sessions.decode(raw))
        if stale:
            await self._link.call("HDEL", index_key, *stale)
        return out

    async def revoke(self, user: str, not_before: int, ttl: float) -> None:
        ms = max(1, int(ttl * 1000))
        await self._link.call("SET", self._keys.revoked(user), not_before, "PX", ms)

    async def revoked(self, user: str) -> int | None:
        raw = await self._link.call("GET", self._keys.revoked(user))
        return None if raw is None else int(raw)

    async def heartbeats(self) -> dict[str, float]:
        flat = await self._link.call("ZRANGE", self._keys.nodes, 0, -1, "WITHSCORES")
        return {n.decode(): float(score) for n, score in zip(flat[::2], flat[1::2], strict=True)}

    async def find_session(self, session_id: str) -> SessionInfo | None:
        live = [n for n, _ in await self._live()]
        replies = await self._link.pipeline(
            [("HGET", self._keys.node_sessions(n), session_id) for n in live]
        )
        for raw in replies:
            if raw is not None:
                return _sessions.decode(raw)
        return None
