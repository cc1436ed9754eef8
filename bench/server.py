"""The node under test: either started here on free ports and pinned to CPUs, or attached to by PID.

A started server runs in its own process group with its output in a log file; ``stop()`` sends
SIGTERM to that PID (SIGKILL after a grace period) and nothing else. The server also gets
SIGTERM if the benchmark dies, through ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench import procstat
from bench.api import ApiClient

DEFAULT_CMD = "{pushsvc} serve --dev --port {port} --internal-port {internal_port}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A port ``p`` such that ``p .. p+count-1`` are all free right now."""
    for _ in range(100):
        base = free_port(host)
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise RuntimeError(f"no run of {count} free ports found")


def pushsvc_executable() -> str:
    """The ``pushsvc`` console script next to this interpreter, else the one on PATH."""
    local = Path(sys.executable).parent / "pushsvc"
    if local.exists():
        return str(local)
    return shutil.which("pushsvc") or "pushsvc"


@dataclass
class StartedServer:
    """A server process this benchmark started; stop it with :meth:`stop`."""

    proc: subprocess.Popen[bytes]
    command: list[str]
    client_url: str
    internal_urls: list[str]
    log_path: Path
    log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def start(
    template: str,
    env: dict[str, str],
    cpus: list[int],
    log_path: Path,
    extra_args: list[str],
    workers: int = 1,
) -> StartedServer:
    """Start the server from ``template`` (``{pushsvc}``, ``{python}``, ``{port}``,
    ``{internal_port}`` are filled in) pinned to ``cpus``; the caller must :meth:`stop` it.

    With ``workers`` > 1 the server gets ``--workers K`` and worker ``i`` is expected on internal
    port ``internal_port + i``."""
    port, internal_port = free_port(), free_port_run(workers)
    if workers > 1:
        extra_args = ["--workers", str(workers), *extra_args]
    command = (
        shlex.split(
            template.format(
                pushsvc=pushsvc_executable(),
                python=sys.executable,
                port=port,
                internal_port=internal_port,
            )
        )
        + extra_args
    )
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    else:
        argv = command
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=procstat.die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
        start_new_session=True,
    )
    if cpus and argv is command:
        procstat.pin(proc.pid, cpus)
    return StartedServer(
        proc=proc,
        command=argv,
        client_url=f"ws://127.0.0.1:{port}/ws",
        internal_urls=[f"http://127.0.0.1:{internal_port + i}" for i in range(workers)],
        log_path=log_path,
        log=log,
    )


async def wait_ready(server: StartedServer, limit_s: float) -> float:
    """Poll ``/readyz`` of every internal URL until each answers 200; return the seconds it took.

    Raises ``RuntimeError`` with the log tail if the process exits or time runs out.
    """
    start_t = time.monotonic()
    deadline = start_t + limit_s
    waiting = list(server.internal_urls)
    while waiting and time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            async with ApiClient(waiting[0], None, size=1) as api:
                if (await api.get("/readyz")).status == 200:
                    waiting.pop(0)
                    continue
        await asyncio.sleep(0.2)
    if not waiting:
        return time.monotonic() - start_t
    raise RuntimeError(f"server not ready after {limit_s:.0f} s:\n{server.log_tail()}")
