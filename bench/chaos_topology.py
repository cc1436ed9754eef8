"""Redis Sentinel and Redis Cluster for the fault campaign (``bench.chaos --redis``).

:class:`SentinelRedis` is a master, two replicas and three sentinels; :class:`ClusterRedis` six
processes made into three masters with a replica each by ``redis-cli --cluster create``. Every
data process has the append-only file on (a restarted one keeps what it had), all run on free
ports of 127.0.0.1 and log to the run's directory. Both offer what the campaign's faults need of
:class:`bench.chaos_cluster.ChaosRedis`, aimed at the *current* master (the one holding the
keyspace's slot on Cluster): ``restart``, ``freeze``/``thaw``, ``cli`` and ``used_memory``
(``maxmemory``), ``kill_pubsub``, ``repair``; and :meth:`failover`: SIGKILL that master, wait for
the promotion, restart it (it comes back as a replica) and wait until every replica is in sync.

The essentials of ``tests/redis_topology.py``, copied: bench does not import tests.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import soak
from bench.chaos_cluster import RedisControls, spawn, stop_process
from pushsvc.broker.keys import Keyspace, key_slot

MASTER_NAME = "pushsvc-chaos"
DOWN_AFTER_MS = 1000  # a master silent this long is down, for a sentinel and for Cluster
FAILOVER_TIMEOUT_MS = 3000
HEALTHY_S = 60.0  # most seconds to wait for a topology to be whole again
DATA = ['save ""', "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"]


@dataclass
class RedisProc(RedisControls):
    """One ``redis-server`` (data node or sentinel) from a config file written once: on a
    restart it keeps what Sentinel or Cluster rewrote there."""

    port: int
    dir: Path
    config: list[str]
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        if not conf.exists():
            head = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "daemonize no"]
            conf.write_text("\n".join([*head, "loglevel warning", *self.config]) + "\n")
        argv = [binary, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = spawn(argv, {}, self.dir / "redis.log", {})
        self.frozen = False
        soak.wait(lambda: self.answers("PING") == "PONG", 30, f"redis {self.address} answers")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.thaw()
        stop_process(self.proc, sig, 20)
        self.proc = None

    def answers(self, *args: str) -> str | None:
        """:meth:`cli`, or None when the server does not answer."""
        try:
            return self.cli(*args)
        except (subprocess.SubprocessError, OSError):
            return None

    def info(self, section: str) -> dict[str, str]:
        text = self.answers("INFO", section) or ""
        return {k: v for k, _, v in (ln.partition(":") for ln in text.splitlines() if ":" in ln)}


class Topology:
    """What both topologies share; a subclass names the master and says when it is whole."""

    data: list[RedisProc]
    helpers: list[RedisProc]  # sentinels: started after the data processes, stopped first
    one_slot = False

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        """Start every process and wait until the topology is whole."""
        raise NotImplementedError

    def master(self) -> RedisProc:
        raise NotImplementedError

    def whole(self) -> bool:
        raise NotImplementedError

    def wait_whole(self) -> None:
        soak.wait(self._whole, HEALTHY_S, f"{type(self).__name__}: replicas in sync")

    def _whole(self) -> bool:
        try:
            return self.whole()
        except (StopIteration, ValueError, IndexError):
            return False

    def keyspace(self) -> Keyspace:
        return Keyspace(one_slot=self.one_slot)

    def stop(self) -> None:
        for p in [*self.helpers, *self.data]:
            p.stop()

    def cli(self, *args: str) -> str:
        return self.master().cli(*args)

    def cli_key(self, key: str, *args: str) -> str:
        """:meth:`cli` on the server that holds ``key``."""
        return self.cli(*args)

    def used_memory(self) -> int:
        return int(self.master().info("memory")["used_memory"])

    def kill_pubsub(self) -> str:
        """``CLIENT KILL TYPE pubsub`` on every running data process; the clients killed."""
        counts = [p.cli("CLIENT", "KILL", "TYPE", "pubsub") for p in self.data if p.running]
        return str(sum(int(c or 0) for c in counts))

    def restart(self, down_for: float) -> None:
        """SIGTERM the master, start it again after ``down_for`` s; wait until whole."""
        master = self.master()
        master.stop()
        time.sleep(down_for)
        master.start()
        self.wait_whole()

    def freeze(self) -> None:
        self.master().freeze()

    def thaw(self) -> None:
        """SIGCONT what was frozen; then wait until whole (a freeze longer than the down-after
        time makes Sentinel or Cluster fail the master over)."""
        frozen = [p for p in self.data if p.frozen]
        for p in frozen:
            p.thaw()
        if frozen:
            self.wait_whole()

    def repair(self) -> None:
        """After a fault that failed half-way: every process thawed and running, in sync."""
        for p in [*self.data, *self.helpers]:
            p.thaw()
            if not p.running:
                p.start()
        self.wait_whole()

    def failover(self) -> dict[str, float | str]:
        """SIGKILL the master; wait until another one takes writes; restart the old one (it
        rejoins as a replica) and wait until whole. When it was killed (``time.monotonic()``),
        seconds to the promotion and to whole again."""
        old = self.master()
        killed = time.monotonic()
        old.stop(signal.SIGKILL)
        soak.wait(lambda: self._promoted(old), HEALTHY_S, "a replica promoted")
        promoted = time.monotonic()
        new = self.master()
        old.start()
        self.wait_whole()
        return {
            "killed_at": killed,
            "old": old.address,
            "new": new.address,
            "promoted_s": round(promoted - killed, 2),
            "whole_s": round(time.monotonic() - killed, 2),
        }

    def _promoted(self, old: RedisProc) -> bool:
        try:
            new = self.master()
        except (StopIteration, ValueError, IndexError):
            return False
        return new is not old and (new.answers("ROLE") or "").startswith("master")


class SentinelRedis(Topology):
    """A master, ``replicas`` replicas and three sentinels watching them as MASTER_NAME."""

    def __init__(self, work: Path, extra: list[str], replicas: int = 2) -> None:
        first = RedisProc(soak.free_port(), work / "d0", [*DATA, *extra])
        follow = [*DATA, *extra, f"replicaof 127.0.0.1 {first.port}"]
        self.data = [first] + [
            RedisProc(soak.free_port(), work / f"d{i}", follow) for i in range(1, replicas + 1)
        ]
        watch = [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {first.port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        self.helpers = [
            RedisProc(soak.free_port(), work / f"s{i}", watch, sentinel=True) for i in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(s.address for s in self.helpers)}/{MASTER_NAME}/0"

    def start(self) -> None:
        for p in [*self.data, *self.helpers]:
            p.start()
        self.wait_whole()

    def master(self) -> RedisProc:
        """The data process the first answering sentinel names."""
        for s in self.helpers:
            reply = s.answers("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            if reply:
                port = int(reply.split()[1])
                return next(p for p in self.data if p.port == port)
        raise ValueError("no sentinel names a master")

    def whole(self) -> bool:
        """Every running replica online, acked within the last second (traffic goes on: the
        offsets never stay equal); every sentinel knows them, and has its quorum."""
        master = self.master()
        info = master.info("replication")
        if info.get("role") != "master":
            return False
        replicas = [p for p in self.data if p is not master and p.running]
        if _online(info) != len(replicas):
            return False
        for s in self.helpers:
            known = "\n" + (s.answers("SENTINEL", "replicas", MASTER_NAME) or "") + "\n"
            if any(f"\n{r.port}\n" not in known for r in replicas):
                return False
            if not (s.answers("SENTINEL", "ckquorum", MASTER_NAME) or "").startswith("OK 3"):
                return False
        return True


class ClusterRedis(Topology):
    """Six processes, three masters with a replica each; the keyspace is in one slot."""

    one_slot = True

    def __init__(self, work: Path, extra: list[str]) -> None:
        config = [
            *DATA,
            *extra,
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {DOWN_AFTER_MS}",
        ]
        self.data = [RedisProc(_cluster_port(), work / f"n{i}", config) for i in range(6)]
        self.helpers = []
        self.slot = key_slot(Keyspace(one_slot=True).nodes)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(p.address for p in self.data)

    def start(self) -> None:
        for p in self.data:
            p.start()
        argv = ["redis-cli", "--cluster", "create", *(p.address for p in self.data)]
        argv += ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        self.wait_whole()

    def master(self) -> RedisProc:
        """The running process that says it is the master of the keyspace's slot."""
        for p in self.data:
            if p.running and not p.frozen and self._holds(p):
                return p
        raise ValueError(f"no running master holds slot {self.slot}")

    def cli_key(self, key: str, *args: str) -> str:
        slot = key_slot(key)
        for p in self.data:
            if p.running and not p.frozen and self._holds(p, slot):
                return p.cli(*args)
        raise ValueError(f"no running master holds slot {slot}")

    def _holds(self, p: RedisProc, slot: int | None = None) -> bool:
        slot = self.slot if slot is None else slot
        for line in (p.answers("CLUSTER", "NODES") or "").splitlines():
            fields = line.split()
            if len(fields) < 8 or "myself" not in fields[2]:
                continue
            if "master" not in fields[2]:
                return False
            for r in fields[8:]:
                m = re.fullmatch(r"(\d+)(?:-(\d+))?", r)
                if m and int(m[1]) <= slot <= int(m[2] or m[1]):
                    return True
        return False

    def whole(self) -> bool:
        """Every running process says the cluster is ok; every replica's link is up and the
        slot's master has a replica online."""
        for p in self.data:
            if not p.running:
                return False
            if "cluster_state:ok" not in (p.answers("CLUSTER", "INFO") or ""):
                return False
            info = p.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return _online(self.master().info("replication")) >= 1


def _online(info: dict[str, str]) -> int:
    """Replicas a master's ``INFO replication`` lists online, acked within the last second."""
    return sum(
        1
        for k, v in info.items()
        if k.startswith("slave") and "state=online" in v and re.search(r"lag=[01]$", v)
    )


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = soak.free_port()
        if port + 10000 <= 65535 and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def topology(kind: str, work: Path, extra: list[str]) -> SentinelRedis | ClusterRedis:
    """The topology ``--redis`` names (not standalone), not started; ``extra`` config lines
    for every data process (``--redis-config``)."""
    return SentinelRedis(work, extra) if kind == "sentinel" else ClusterRedis(work, extra)
