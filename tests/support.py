"""Real servers for tests: pushsvc nodes as subprocesses and redis-server, on free ports.

Timeouts are multiples of :data:`UNIT` (env ``PUSHSVC_TEST_UNIT``, default 1 second) so a slow
machine scales them all at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

UNIT = float(os.environ.get("PUSHSVC_TEST_UNIT", "1.0"))
ROOT = Path(__file__).resolve().parent.parent
TOKEN_SECRET = "test-secret-" + "x" * 60
API_KEY = "test-key-" + "k" * 24  # a bare key: every scope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (for ``--workers``' internal ports)."""
    for _ in range(100):
        base = free_port()
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_until(predicate: Any, timeout: float = 10 * UNIT, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f}s: {predicate}")
        time.sleep(interval)


@dataclass
class NodeHandle:
    """A running ``pushsvc serve`` process and how to reach it."""

    proc: subprocess.Popen[bytes]
    node_id: str
    port: int
    internal_port: int
    api_key: str = API_KEY
    token_secret: str = TOKEN_SECRET
    log_path: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def client_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, self.internal_url + path, headers=headers, timeout=10 * UNIT, **kwargs
        )

    def token(self, user: str, topics: tuple[str, ...] | list[str] = (), ttl: int = 3600) -> str:
        r = self.api("POST", "/v1/tokens", json={"user": user, "topics": list(topics), "ttl": ttl})
        r.raise_for_status()
        return str(r.json()["token"])

    def publish(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.api("POST", "/v1/messages", json=body)
        assert r.status_code == 202, r.text
        result: dict[str, Any] = r.json()
        return result

    def trail(self, message_id: str) -> dict[str, Any]:
        r = self.api("GET", f"/v1/messages/{message_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        try:
            return httpx.get(self.internal_url + "/readyz", timeout=UNIT).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15 * UNIT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no drain, no goodbye."""
        self.stop(signal.SIGKILL)


def pushsvc_command() -> list[str]:
    return [sys.executable, "-m", "cli"]


def launch_node(
    *args: str, env: dict[str, Any] | None = None, ready: bool = True, **settings: Any
) -> NodeHandle:
    """Start ``pushsvc serve`` with ``settings`` as ``PUSHSVC_*`` variables; wait until ready
    (``ready=False``: only until its internal ``/healthz`` answers)."""
    port = int(settings.pop("port", 0)) or free_port()
    internal_port = int(settings.pop("internal_port", 0)) or free_port()
    node_id = str(settings.pop("node_id", f"test-{secrets.token_hex(3)}"))
    values: dict[str, Any] = {
        "api_keys": API_KEY,
        "token_secret": TOKEN_SECRET,
        "max_connections": 5000,
        "port": port,
        "internal_port": internal_port,
        "node_id": node_id,
        **settings,
    }
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    child_env.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in values.items()})
    child_env.update(env or {})
    log_path = Path(tempfile.mkstemp(prefix=f"pushsvc-{node_id}-", suffix=".log")[1])
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*pushsvc_command(), "serve", *args], env=child_env, stdout=out, stderr=out, cwd=ROOT
        )
    handle = NodeHandle(proc, node_id, port, internal_port, log_path=log_path, env=child_env)
    up = handle.ready if ready else lambda: answers(handle.internal_url + "/healthz")
    try:
        wait_until(lambda: up() or proc.poll() is not None, 15 * UNIT)
    except TimeoutError:
        handle.kill()
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"node exited with {proc.returncode}:\n{handle.log()}")
    return handle


@contextlib.contextmanager
def start_node(*args: str, **settings: Any) -> Iterator[NodeHandle]:
    """A node for the duration of the block; ``dev=True`` passes ``--dev``."""
    if settings.pop("dev", False):
        args = (*args, "--dev")
    handle = launch_node(*args, **settings)
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class RedisServer:
    """A redis-server of our own. ``persistent``: append-only file, fsync always, so a restart
    keeps everything (how production runs it)."""

    port: int
    dir: Path
    persistent: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [
            "--appendonly", "no"]  # fmt: skip
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, 10 * UNIT)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=UNIT) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it (SIGSTOP)
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def command(self, *args: str) -> str:
        """Run one command with redis-cli; return its output."""
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed"
        out = subprocess.run([cli, "-p", str(self.port), *args], capture_output=True, check=True)
        return out.stdout.decode()


@contextlib.contextmanager
def start_redis(persistent: bool = False) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="pushsvc-redis-") as tmp:
        server = RedisServer(free_port(), Path(tmp), persistent)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def answers(url: str) -> bool:
    """True when ``url`` answers 200 now (False while nothing listens there yet)."""
    try:
        return httpx.get(url, timeout=UNIT).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Alertmanager:
    """A real Alertmanager (Debian's prometheus-alertmanager) on a free port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v2/alerts", timeout=5 * UNIT)
        r.raise_for_status()
        found: list[dict[str, Any]] = r.json()
        return found

    def firing(self, name: str, node: str | None = None) -> dict[str, Any] | None:
        for a in self.alerts():
            labels = a["labels"]
            if labels["alertname"] == name and node in (None, labels.get("node")):
                return a
        return None


@contextlib.contextmanager
def start_alertmanager() -> Iterator[Alertmanager]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is not installed (apt-get install prometheus-alertmanager)"
    with tempfile.TemporaryDirectory(prefix="pushsvc-am-") as tmp:
        config = Path(tmp) / "alertmanager.yml"
        config.write_text("route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")
        port = free_port()
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        am = Alertmanager(port, proc)
        try:
            wait_until(lambda: answers(am.url + "/-/ready"), 15 * UNIT, 0.1)
            yield am
        finally:
            proc.terminate()
            proc.wait(10)
