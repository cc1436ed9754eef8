"""``pushsvc check-config``: are the settings valid, and can everything they name be reached?

Checks, in order: the settings parse (else exit 2 with what is wrong); the token secret and the API
key; the VAPID key and webhooks when set; Redis (version, PING time, and a warning unless its
``maxmemory-policy`` is ``noeviction``: any other policy may evict history); its topology (with
Sentinel: every sentinel answers, names the same master and has its quorum; the master takes writes;
its replicas are connected, in step, and as many as ``redis_min_replicas``); the registry (nodes
listed, stale heartbeats); the API with the key; every node's ``/readyz``; Alertmanager
(``/api/v2/status``). Each check is ``ok``, ``warn``, ``fail`` or ``skip`` with one line saying why.
Exit 1 when any check fails.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx
import typer

from cli.api import OperatorError, base_url
from cli.cluster import (
    CLUSTER_FLAGS,
    AsJson,
    Cluster,
    OperatorSettings,
    node_status,
    redacted,
    run,
)
from cli.output import emit_json, out, seconds, table
from cli.settings import build_as, flags_of
from pushsvc.apikeys import parse_entries
from pushsvc.broker.base import NodeInfo
from pushsvc.errors import BrokerError, ConfigError
from pushsvc.push.vapid import Vapid
from pushsvc.settings import MonitorSettings, NodeSettings


class CheckedSettings(OperatorSettings, NodeSettings, MonitorSettings):
    """All that ``check-config`` looks at: a node's, the monitor's and the operator's settings,
    read from the one environment they share."""


if TYPE_CHECKING:
    from pushsvc.broker.redis.url import Address, Target

#: The oldest Redis the broker works with (XADD options, GETDEL, ...).
REDIS_MIN = (6, 2)
STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str


@flags_of(CheckedSettings, (*CLUSTER_FLAGS, "alertmanager_url"))
def check_config(as_json: AsJson = False, **flags: Any) -> None:
    """Validate the settings and reach Redis, the nodes and Alertmanager; say what is wrong."""
    settings = build_as(CheckedSettings, **flags)
    checks = run(checks_of(settings))
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        t = table("check", "status", "detail")
        for c in checks:
            t.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
        out.print(t)
    if failed:
        raise typer.Exit(1)


async def checks_of(settings: CheckedSettings) -> list[Check]:
    checks = [Check("settings", "ok", "valid (PUSHSVC_* environment and flags)")]
    checks += secrets_checks(settings)
    if not settings.redis_url and not settings.api_url:
        checks.append(Check("redis", "skip", "no PUSHSVC_REDIS_URL / --redis-url"))
        checks.append(Check("api", "fail", "give --redis-url to find the nodes, or --api-url"))
    else:
        async with Cluster(settings) as cluster:
            checks += await cluster_checks(cluster)
    checks.append(await alertmanager_check(settings.alertmanager_url))
    return checks


def secrets_checks(settings: CheckedSettings) -> list[Check]:
    secret = settings.token_secret
    if not secret:
        token = Check("token secret", "warn", "not set: `token` and `listen` need it")
    elif len(secret) < 32:
        token = Check("token secret", "fail", "shorter than 32 characters (HS256 needs 32)")
    else:
        token = Check("token secret", "ok", f"set ({len(secret)} characters)")
    try:
        entries = parse_entries(settings.api_key_entries())
    except ConfigError as exc:
        return [token, Check("api key", "fail", exc.message)]
    weak = [e.key.name for e in entries if e.key.weak]
    bare = sum(e.key.bare for e in entries)
    about = f"{len(entries)} entries" + (f", {bare} bare (every scope)" if bare else "")
    if weak:
        key = Check("api key", "fail", f"key {weak[0]!r} is shorter than 24 characters")
    elif settings.api_key:
        key = Check("api key", "ok", f"set (--api-key / PUSHSVC_API_KEY); {about}")
    elif entries:
        key = Check("api key", "ok", f"the first of PUSHSVC_API_KEYS ({about})")
    else:
        key = Check("api key", "fail", "not set: give --api-key, PUSHSVC_API_KEY or ..._KEYS")
    return [token, key, *push_checks(settings)]


def push_checks(settings: CheckedSettings) -> list[Check]:
    """The VAPID key and the webhooks, when configured (docs/escalation.md)."""
    checks = []
    if settings.vapid_private_key is not None:
        try:
            key = Vapid.load(settings.vapid_private_key, settings.vapid_subject)
        except ConfigError as exc:
            checks.append(Check("vapid key", "fail", exc.message))
        else:
            checks.append(Check("vapid key", "ok", f"P-256, public key {key.public_key[:16]}…"))
    if settings.webhook_urls:
        n = len(settings.webhook_urls)
        checks.append(Check("webhooks", "ok", f"{n} endpoint(s), signed with the secret"))
    return checks


async def cluster_checks(cluster: Cluster) -> list[Check]:
    checks: list[Check] = []
    if cluster.has_redis:
        checks.append(await redis_check(cluster))
        if checks[-1].status == "fail":
            return checks
        checks += await topology_checks(cluster)
    else:
        checks.append(Check("redis", "skip", "no --redis-url: nodes are read from the API"))
    try:
        nodes = await cluster.nodes()
    except OperatorError as exc:
        return [*checks, Check("registry", "fail", exc.message)]
    checks.append(registry_check(nodes, cluster.settings.registry_interval))
    try:
        api = await cluster.api()
        await api.nodes()
    except OperatorError as exc:
        checks.append(Check("api", "fail", exc.message))
    else:
        checks.append(Check("api", "ok", f"{api.url} answers and accepts the key"))

    async def ready(n: NodeInfo) -> Check:
        try:
            ok, reasons = await (await cluster.node_api(n)).ready()
        except OperatorError as exc:
            return Check(f"node {n.id}", "fail", exc.message)
        if ok:
            return Check(f"node {n.id}", "ok", f"ready at {n.internal_addr}")
        return Check(f"node {n.id}", "fail", "not ready: " + ", ".join(reasons))

    checks += await asyncio.gather(*(ready(n) for n in nodes))
    return checks


async def redis_check(cluster: Cluster) -> Check:
    from pushsvc.broker.redis.link import Link  # noqa: PLC0415 - only this check needs it

    url = redacted(cluster.settings.redis_url or "")
    link = Link(cluster.settings.redis_url or "", timeout=2.0)
    try:
        started = time.monotonic()
        await link.call("PING")
        rtt = time.monotonic() - started
        info = (await link.call("INFO", "server")).decode()
        memory = (await link.call("INFO", "memory")).decode()  # needs no CONFIG permission
    except BrokerError as exc:
        return Check("redis", "fail", f"cannot reach Redis at {url}: {exc.message}")
    finally:
        await link.aclose()
    version = info_field(info, "redis_version")
    if redis_version(version) < REDIS_MIN:
        return Check("redis", "fail", f"Redis {version} at {url}: pushsvc needs 6.2 or newer")
    policy = info_field(memory, "maxmemory_policy")
    found = f"Redis {version} at {url}, PING {seconds(rtt)}, maxmemory-policy {policy}"
    if policy != "noeviction":
        return Check(
            "redis", "warn", found + ": it may evict history, trails and idempotency keys "
            "when full (silent loss); set it to noeviction",
        )  # fmt: skip
    return Check("redis", "ok", found)


def info_field(info: str, name: str) -> str:
    """The value of ``name`` in the text of an ``INFO`` reply; ``"?"`` when absent."""
    prefix = name + ":"
    return next(
        (line[len(prefix) :].strip() for line in info.splitlines() if line.startswith(prefix)),
        "?",
    )


#: A replica further behind its master than this (bytes of replication stream) is lagging.
REPLICA_LAG = 1 << 20


async def topology_checks(cluster: Cluster) -> list[Check]:
    """Sentinel (each sentinel answers, they agree on the master, the quorum can fail over), the
    master (it takes writes) and its replicas (connected, in step, as many as
    ``redis_min_replicas`` asks); on Redis Cluster every master that holds a partition of the
    keyspace, and how the partitions are spread. Nothing for a standalone Redis without replicas
    when none are asked for."""
    from pushsvc.broker.redis.url import parse  # noqa: PLC0415 - only this check needs it

    settings = cluster.settings
    target = parse(settings.redis_url or "")
    checks = [await sentinel_check(target)] if target.mode == "sentinel" else []
    keys = cluster.redis.keys
    slot_keys = [keys.nodes, *keys.tags] if target.mode == "cluster" else [keys.nodes]
    masters: dict[str, tuple[str, str]] = {}  # address -> (status, detail)
    spread: dict[str, int] = {}  # address -> partitions it holds
    for n, slot_key in enumerate(slot_keys):
        try:
            where, role = await _master_role(target, slot_key)
        except BrokerError as exc:
            return [*checks, Check("redis master", "fail", exc.message)]
        if n > 0:
            spread[where] = spread.get(where, 0) + 1
        if where not in masters:
            masters[where] = _replica_verdict(where, role, settings.redis_min_replicas)
    if target.mode == "standalone" and masters[next(iter(masters))][0] == "none":
        return checks
    order = {"ok": 0, "none": 1, "warn": 1, "fail": 2}  # none: no replica to fail over to
    status = max((v[0] for v in masters.values()), key=order.__getitem__)
    status = "warn" if status == "none" else status
    details = "; ".join(v[1] for v in masters.values())
    checks.append(Check("redis replicas", status, details))
    if spread:
        held = ", ".join(f"{where}: {count}" for where, count in sorted(spread.items()))
        checks.append(Check("redis partitions", "ok", f"{sum(spread.values())} partitions over "
                            f"{len(spread)} master(s) ({held})"))  # fmt: skip
    return checks


async def _master_role(target: Target, slot_key: str) -> tuple[str, Any]:
    """The address of the master that holds ``slot_key`` (the master, but on Cluster) and its
    ``ROLE`` reply; raises BrokerError when none answers."""
    from pushsvc.broker.redis.link import Link  # noqa: PLC0415 - only this check needs it

    link = Link(target, timeout=2.0, slot_key=slot_key)
    try:
        role = await link.call("ROLE")  # the link checked already that it is a master
        where = link.locator.last or (target.addresses[0] if target.addresses else None)
    finally:
        await link.aclose()
    return (f"{where[0]}:{where[1]}" if where else target.path or "?"), role


def _replica_verdict(master: str, role: Any, wanted: int) -> tuple[str, str]:
    """The status ("none": no replicas and none asked for) and detail of one master's
    replicas."""
    offset, replicas = int(role[1]), role[2]
    lagging = [
        f"{ip.decode()}:{port.decode()}"
        for ip, port, at in replicas
        if offset - int(at) > REPLICA_LAG
    ]
    detail = f"master {master} takes writes; {len(replicas)} replica(s) connected"
    if wanted:
        detail += f", PUSHSVC_REDIS_MIN_REPLICAS={wanted}"
    if len(replicas) < wanted:
        return "fail", detail + ": every publish gets 503"
    if lagging:
        return "warn", f"{detail}; lagging: {', '.join(lagging)}"
    if not replicas:
        return ("none" if not wanted else "warn"), detail + ": nothing to fail over to"
    return "ok", detail


async def sentinel_check(target: Target) -> Check:
    """Ask every sentinel for the master and whether it could fail over now."""
    from redis.exceptions import RedisError  # noqa: PLC0415 - only this check needs it

    from pushsvc.broker.redis.sentinel import ask  # noqa: PLC0415

    assert target.master is not None
    master = target.master

    async def one(address: Address) -> tuple[str, str] | str:
        try:
            async with asyncio.timeout(2.0):
                named, quorum = await ask(
                    target,
                    address,
                    [
                        ("SENTINEL", "get-master-addr-by-name", master),
                        ("SENTINEL", "ckquorum", master),
                    ],
                )
        except (OSError, TimeoutError, RedisError) as exc:
            return f"{address[0]}:{address[1]}: {exc or type(exc).__name__}"
        if not named:
            return f"{address[0]}:{address[1]}: does not know {master!r}"
        return f"{named[0].decode()}:{named[1].decode()}", quorum.decode()

    answers = await asyncio.gather(*(one(a) for a in target.addresses))
    good = [a for a in answers if isinstance(a, tuple)]
    problems = [a for a in answers if isinstance(a, str)]
    masters = sorted({m for m, _ in good})
    summary = f"{len(good)} of {len(answers)} sentinels answer for {master!r}"
    if not good:
        return Check("redis sentinel", "fail", f"{summary}: " + "; ".join(problems))
    if len(masters) > 1:
        return Check("redis sentinel", "warn", f"{summary}; they disagree: {', '.join(masters)}")
    detail = f"{summary}, master {masters[0]}; {good[0][1]}"
    if problems:
        return Check("redis sentinel", "warn", f"{detail}; " + "; ".join(problems))
    return Check("redis sentinel", "ok", detail)


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` as ``(7, 0, 15)``; ``()`` when unreadable."""
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


def registry_check(nodes: list[NodeInfo], registry_interval: float) -> Check:
    if not nodes:
        return Check("registry", "fail", "no node is registered")
    now = time.time()
    by_status: dict[str, list[str]] = {}
    for n in nodes:
        by_status.setdefault(node_status(n, now, registry_interval), []).append(n.id)
    summary = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in sorted(by_status.items()))
    if "heartbeat stale" in by_status:
        return Check("registry", "fail", summary)
    return Check("registry", "warn" if "draining" in by_status else "ok", summary)


async def alertmanager_check(url: str | None) -> Check:
    if not url:
        return Check("alertmanager", "skip", "no --alertmanager-url (PUSHSVC_ALERTMANAGER_URL)")
    where = base_url(url)
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(where + "/api/v2/status")
    except httpx.HTTPError as exc:
        return Check(
            "alertmanager", "fail", f"cannot reach {where}: {str(exc) or type(exc).__name__}"
        )
    if response.status_code != 200:
        return Check(
            "alertmanager", "fail", f"{where}/api/v2/status answered {response.status_code}"
        )
    try:
        body = response.json()
        version = body.get("versionInfo", {}).get("version", "?")
        cluster = body.get("cluster", {}).get("status", "?")
    except (ValueError, AttributeError):
        return Check("alertmanager", "fail", f"{where} does not answer like Alertmanager")
    return Check("alertmanager", "ok", f"Alertmanager {version} at {where}, cluster {cluster}")
