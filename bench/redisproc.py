"""A ``redis-server`` of the benchmark's own, on a free port of 127.0.0.1, without persistence.

It runs in its own process group with its data directory in a temporary directory; :meth:`stop`
sends SIGTERM to that PID (SIGKILL after a grace period) and removes the directory. It also gets
SIGTERM if the benchmark dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procstat, server


@dataclass
class RedisProc:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict (``redis-cli`` on PATH); empty if it cannot be read."""
        cli = shutil.which("redis-cli")
        if cli is None:
            return {}
        try:
            out = subprocess.run(
                [cli, "-p", str(self.port), "INFO", section],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def start(cpus: list[int] | None = None, ready_s: float = 10.0) -> RedisProc:
    """Start ``redis-server`` (no RDB, no AOF) on a free port, optionally pinned to ``cpus``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = server.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="pushsvc-bench-redis-"))
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no",
            "--loglevel", "warning", "--maxclients", "10000"]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=procstat.die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
        start_new_session=True,
    )
    if cpus:
        procstat.pin(proc.pid, cpus)
    redis = RedisProc(proc, port, tmp)
    deadline = time.monotonic() + ready_s
    while not redis.ping():
        if proc.poll() is not None or time.monotonic() > deadline:
            redis.stop()
            raise RuntimeError(f"redis-server did not answer PING on port {port}")
        time.sleep(0.05)
    return redis
