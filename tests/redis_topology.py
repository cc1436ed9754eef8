"""Redis topologies for tests, from Debian's redis-server on free ports: a Sentinel setup (a
master, its replicas and three sentinels, with failover timings of a fraction of a second), and a
server that speaks only TLS and wants client certificates.

Each waits until it is whole before it is handed out — replicas in sync, every sentinel knowing
the replicas and the other sentinels — so a test may kill anything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pushsvc.broker.base import Broker, Placed, Publication
from pushsvc.errors import BrokerUnavailable
from tests.support import UNIT, free_port, wait_until

MASTER_NAME = "pushsvc-test"
DOWN_AFTER_MS = 400  # how long a master is silent before a sentinel thinks it down
FAILOVER_TIMEOUT_MS = 2000


@dataclass
class RedisProcess:
    """One redis-server (data node or sentinel) with the given config lines."""

    port: int
    dir: Path
    config: list[str]
    sentinel: bool = False
    cli_args: list[str] = field(default_factory=list)  # redis-cli's own (TLS)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        if not conf.exists() or not self.sentinel:  # a sentinel rewrites its own file: keep it
            lines = [
                f"port {self.port}",
                "bind 127.0.0.1",
                f"dir {self.dir}",
                "daemonize no",
                "loglevel warning",
                'save ""',
                "appendonly no",
                *self.config,
            ]
            conf.write_text("\n".join(lines) + "\n")
        args = [binary, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.answers("PING") == "PONG", 10 * UNIT)

    def kill(self) -> None:
        """kill -9: no goodbye to replicas or clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def command(self, *args: str) -> str:
        """One command with redis-cli; its output (raises when redis-cli fails)."""
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed"
        out = subprocess.run(
            [cli, "-p", str(self.port), *self.cli_args, *args],
            capture_output=True,
            check=True,
            timeout=5 * UNIT,
        )
        return out.stdout.decode().strip()

    def answers(self, *args: str) -> str | None:
        """:meth:`command`, or None when the server does not answer."""
        try:
            return self.command(*args)
        except (subprocess.SubprocessError, OSError):
            return None

    def info(self, section: str) -> dict[str, str]:
        text = self.answers("INFO", section) or ""
        pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
        return {k: v for k, _, v in pairs}


@dataclass
class SentinelSetup:
    """A master, ``replicas`` and three sentinels watching them as :data:`MASTER_NAME`."""

    data: list[RedisProcess]  # the master first, as started; roles change with failovers
    sentinels: list[RedisProcess]
    extra: dict[str, str] = field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/{db}"

    def master_port(self) -> int | None:
        """The port the first answering sentinel names as the master."""
        for sentinel in self.sentinels:
            reply = sentinel.answers("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            if reply:
                return int(reply.split()[1])
        return None

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(p for p in self.data if p.port == port)

    def replicas(self) -> list[RedisProcess]:
        port = self.master_port()
        return [p for p in self.data if p.port != port and p.proc is not None]

    def in_sync(self) -> bool:
        """Every running replica online and at the master's offset; every sentinel knows them
        all, the master and the other sentinels."""
        master = self.master()
        info = master.info("replication")
        replicas = self.replicas()
        online = [v for k, v in info.items() if k.startswith("slave") and "state=online" in v]
        offset = info.get("master_repl_offset")
        if len(online) != len(replicas) or not all(f"offset={offset}," in v for v in online):
            return False
        for sentinel in self.sentinels:
            known = sentinel.answers("SENTINEL", "replicas", MASTER_NAME) or ""
            if any(f"\n{r.port}\n" not in f"\n{known}\n" for r in replicas):
                return False
            if not (sentinel.answers("SENTINEL", "ckquorum", MASTER_NAME) or "").startswith("OK 3"):
                return False
        return True

    def wait_in_sync(self, timeout: float = 30 * UNIT) -> None:
        wait_until(self.in_sync, timeout, interval=0.1)

    def wait_failover(self, old_port: int, timeout: float = 30 * UNIT) -> int:
        """Wait until the sentinels name another master that answers as one; its port."""

        def promoted() -> int | None:
            port = self.master_port()
            if port is None or port == old_port:
                return None
            role = next(p for p in self.data if p.port == port).answers("ROLE") or ""
            return port if role.startswith("master") else None

        port: int = wait_until(promoted, timeout, interval=0.05)
        return port


@contextlib.contextmanager
def start_sentinel(replicas: int = 1) -> Iterator[SentinelSetup]:
    """A running :class:`SentinelSetup`, in sync; everything stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-sentinel-") as tmp:
        root = Path(tmp)
        master = RedisProcess(free_port(), root / "master", [])
        follow = [f"replicaof 127.0.0.1 {master.port}"]
        data = [
            master,
            *(RedisProcess(free_port(), root / f"r{i}", follow) for i in range(replicas)),
        ]
        watch = [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        sentinels = [
            RedisProcess(free_port(), root / f"sentinel{i}", watch, sentinel=True) for i in range(3)
        ]
        setup = SentinelSetup(data, sentinels)
        try:
            for process in data:
                process.start()
            for sentinel in sentinels:
                sentinel.start()
            setup.wait_in_sync()
            yield setup
        finally:
            for process in [*sentinels, *data]:
                process.stop()


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""

    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of them


def make_certificates(where: Path) -> Certificates:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "1",
            "-subj",
            f"/CN={ca}",
        )
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return Certificates(
        where / "ca.pem",
        where / "server.pem",
        where / "server.key",
        where / "client.pem",
        where / "client.key",
        where / "other-ca.pem",
    )


@contextlib.contextmanager
def start_tls_redis() -> Iterator[tuple[RedisProcess, Certificates]]:
    """A redis-server with TLS only (no plain port) that requires a client certificate."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-tls-") as tmp:
        certs = make_certificates(Path(tmp))
        port = free_port()
        config = [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {certs.server}",
            f"tls-key-file {certs.server_key}",
            f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients yes",
        ]
        cli = [
            "--tls",
            "--cacert",
            str(certs.ca),
            "--cert",
            str(certs.client),
            "--key",
            str(certs.client_key),
        ]
        server = RedisProcess(port, Path(tmp) / "data", config, cli_args=cli)
        try:
            server.start()
            yield server, certs
        finally:
            server.stop()


@dataclass
class ClusterSetup:
    """Three masters and a replica each, made with ``redis-cli --cluster create``."""

    nodes: list[RedisProcess]

    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def masters(self) -> list[RedisProcess]:
        return [
            n
            for n in self.nodes
            if n.proc is not None and (n.answers("ROLE") or "").startswith("master")
        ]

    def healthy(self) -> bool:
        """Every running node says the cluster is ok, and every replica is in sync."""
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.info("cluster").get("cluster_enabled") != "1":
                return False
            state = node.answers("CLUSTER", "INFO") or ""
            if "cluster_state:ok" not in state:
                return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
            ):
                return False
        return True

    def flush(self) -> None:
        for master in self.masters():
            master.command("FLUSHALL")


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextlib.contextmanager
def start_cluster() -> Iterator[ClusterSetup]:
    """A running, healthy :class:`ClusterSetup` (6 processes); everything stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-cluster-") as tmp:
        config = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 1000",
        ]
        nodes = [RedisProcess(cluster_port(), Path(tmp) / f"n{i}", config) for i in range(6)]
        setup = ClusterSetup(nodes)
        try:
            for node in nodes:
                node.start()
            cli = shutil.which("redis-cli")
            assert cli, "redis-cli is not installed"
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(n.address for n in nodes),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60 * UNIT,
            )
            wait_until(setup.healthy, 30 * UNIT, interval=0.1)
            yield setup
        finally:
            for node in nodes:
                node.stop()


async def retry_until_placed(broker: Broker, publication: Publication, timeout: float) -> None:
    """Publish ``publication`` (keyed) again and again, as a caller retrying every refusal
    with the same key, until the broker places it; fails after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                [outcome] = await broker.publish([publication], "test")
            except BrokerUnavailable:
                await asyncio.sleep(0.05)
                continue
            if isinstance(outcome, Placed):
                return
            assert isinstance(outcome, BrokerUnavailable), outcome
            await asyncio.sleep(0.05)
