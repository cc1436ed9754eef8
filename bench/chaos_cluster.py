"""The system under a fault campaign: one persistent ``redis-server``, nodes, a monitor.

Every process is started on free ports of 127.0.0.1, logs to a file of the run's directory, and
can be hurt from outside: :class:`ChaosRedis` restarts (append-only file on, so history
survives), freezes (SIGSTOP), caps its memory and kills pub/sub clients; :class:`ChaosNode` is
killed (SIGKILL), drained (SIGTERM) and restarted, optionally under ``faketime`` with its wall
clock shifted. The node and monitor settings are those of :mod:`bench.soak` (short ack timeout and
monitor deadlines, so a campaign of minutes sees its verdicts).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import soak
from pushsvc.broker.keys import Keyspace

KEY = soak.KEY
CALLERS = 16  # named publish keys, one per campaign publisher (``--publishers`` at most this)


def caller_secret(caller: str) -> str:
    """The secret of ``caller``'s own publish key (named ``caller``, scope publish)."""
    return f"chaos-{caller}-" + "c" * 32


#: Every node's API keys: the campaign's own (every scope) and one named key per publisher, so
#: idempotency keys are scoped per caller.
API_KEYS = ",".join([KEY, *(f"c{i}:{caller_secret(f'c{i}')}:publish" for i in range(CALLERS))])
SECRET = soak.SECRET
NODE = {**soak.NODE, "drain_timeout": 3}
MONITOR = {**soak.MONITOR, "reconnect_window": 10, "loss_window": 600}


def spawn(argv: list[str], env: dict[str, Any], log: Path, extra: dict[str, str]) -> Any:
    child = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    child.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in env.items()})
    child.update(extra)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=child, stdout=out, stderr=out, cwd=soak.ROOT, stdin=subprocess.DEVNULL
        )


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, grace: float) -> int | None:
    """Send ``sig`` and wait ``grace`` s (then SIGKILL); the exit status, None if not running."""
    if proc is None or proc.poll() is not None:
        return None
    proc.send_signal(sig)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -signal.SIGKILL


class RedisControls:
    """Freeze, thaw and ``redis-cli`` for one ``redis-server`` process of the campaign (the
    dataclasses below hold ``port``, ``proc`` and ``frozen``)."""

    port: int
    proc: subprocess.Popen[bytes] | None
    frozen: bool

    def freeze(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def cli(self, *args: str) -> str:
        """One command through ``redis-cli``; its output (raises on a failed exit)."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()


@dataclass
class ChaosRedis(RedisControls):
    """A ``redis-server`` with ``appendonly yes`` in ``dir``, restartable on the same port."""

    dir: Path
    port: int = field(default_factory=soak.free_port)
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--maxmemory-policy",
            "noeviction",
        ]
        self.proc = spawn(argv, {}, self.dir / "redis.log", {})
        soak.wait(lambda: soak._ping(self.port), 30, "redis-server answers PING")

    def stop(self) -> None:
        self.thaw()
        stop_process(self.proc, signal.SIGTERM, 20)
        self.proc = None

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def used_memory(self) -> int:
        for line in self.cli("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("INFO memory without used_memory")

    def kill_pubsub(self) -> str:
        """``CLIENT KILL TYPE pubsub``: every node's bus subscription is cut; how many."""
        return self.cli("CLIENT", "KILL", "TYPE", "pubsub")

    def keyspace(self) -> Keyspace:
        return Keyspace()

    def cli_key(self, key: str, *args: str) -> str:
        """:meth:`cli` (one server holds every key)."""
        return self.cli(*args)

    def repair(self) -> None:
        """After a fault that failed half-way: thawed and running."""
        self.thaw()
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def failover(self) -> dict[str, float | str]:
        raise RuntimeError("a standalone redis-server has no failover (--redis sentinel|cluster)")


def libfaketime() -> str:
    """The multi-threaded libfaketime of Debian's ``faketime`` package."""
    for lib in Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"):
        return str(lib)
    raise SystemExit("libfaketime is not installed (apt-get install faketime)")


@dataclass
class ChaosNode:
    """One ``pushsvc serve`` with fault injection on; keeps its id and ports across restarts."""

    node_id: str
    redis_url: str
    logs: Path
    port: int = field(default_factory=soak.free_port)
    internal_port: int = field(default_factory=soak.free_port)
    proc: subprocess.Popen[bytes] | None = None
    min_replicas: int = 0  # replicas WAIT must confirm before a publish is answered 202
    skew: float = 0.0  # seconds its wall clock is shifted by (faketime); 0: the real clock
    exits: list[int | None] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, skew: float = 0.0, ready_s: float = 60) -> None:
        env = {
            "redis_url": self.redis_url,
            "node_id": self.node_id,
            "port": self.port,
            "internal_port": self.internal_port,
            "api_keys": API_KEYS,
            "token_secret": SECRET,
            "log_level": "WARNING",
            "redis_min_replicas": self.min_replicas,
            **NODE,
        }
        argv = [sys.executable, "-m", "cli", "serve", "--enable-fault-injection"]
        extra: dict[str, str] = {}
        if skew:
            # preloaded into the node itself: the `faketime` command forks and would take the
            # signals meant for the node; only the wall clock disagrees, not the monotonic one
            extra = {
                "LD_PRELOAD": libfaketime(),
                "FAKETIME": f"{skew:+g}s",
                "DONT_FAKE_MONOTONIC": "1",
            }
        if soak.ready(self.api + "/readyz"):
            raise RuntimeError(f"{self.node_id}: an earlier process still serves {self.api}")
        self.skew = skew
        self.proc = spawn(argv, env, self.logs / f"{self.node_id}.log", extra)
        soak.wait(self.ready, ready_s, f"{self.node_id} ready")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}")
        return soak.ready(self.api + "/readyz")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (drain) or SIGKILL; records the exit status."""
        self.exits.append(stop_process(self.proc, sig, 20))
        self.proc = None


@dataclass
class ChaosMonitor:
    """``pushsvc monitor`` posting to Alertmanager; its ``/metrics`` are read at the end."""

    redis_url: str
    alertmanager_url: str
    logs: Path
    port: int = field(default_factory=soak.free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            "redis_url": self.redis_url,
            "alertmanager_url": self.alertmanager_url,
            "api_keys": KEY,
            "monitor_port": self.port,
            "log_level": "INFO",
            **MONITOR,
        }
        argv = [sys.executable, "-m", "cli", "monitor"]
        self.proc = spawn(argv, env, self.logs / "monitor.log", {})
        soak.wait(lambda: soak.ready(f"http://127.0.0.1:{self.port}/healthz"), 30, "monitor up")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 20)
        self.proc = None

    def missing(self) -> dict[str, dict[str, float]]:
        """Per node, the monitor's ``unfanned``, ``lost`` and ``canary_lost`` counters."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        names = {
            "pushsvc_monitor_unfanned_deliveries_total": "unfanned",
            "pushsvc_monitor_lost_deliveries_total": "lost",
            "pushsvc_monitor_canary_lost_total": "canary_lost",
        }
        out: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in names:
                labels, _, value = rest.partition("} ")
                node = labels.partition('node="')[2].partition('"')[0]
                counts = out.setdefault(node, dict.fromkeys(names.values(), 0.0))
                counts[names[name]] = float(value)
        return out


def settle_policy() -> float:
    """Seconds after the last publish until the monitor's loss check of its bucket is done."""
    m = MONITOR
    loss = m["ack_timeout"] * m["max_attempts"] + m["reconnect_window"] + m["monitor_grace"]
    return loss + 5 + 2 * m["monitor_interval"] + 2  # a bucket is 5 s; two passes; margin
