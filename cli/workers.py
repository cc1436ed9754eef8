"""``pushsvc serve --workers K``: K node processes sharing one client port.

Each worker is a full node (its own event loop, sessions and node id ``<node_id>-<i>``) bound to
the client port with ``SO_REUSEPORT``, so the kernel spreads new connections across them, and to
its own internal port (``--internal-port`` + i) for the API and its metrics. The supervisor
forwards SIGTERM/SIGINT so every worker drains, and restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from rich.console import Console

from pushsvc.settings import Settings

err = Console(stderr=True)
RESTART_DELAY = 1.0


def _env_value(value: object) -> str:
    """A setting as its ``PUSHSVC_*`` variable: lists comma-separated, as the settings read them."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _spawn(settings: Settings, monitor: dict[str, Any], index: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    values = settings.model_dump() | monitor
    values.update(
        workers=1,
        reuse_port=True,
        internal_port=settings.internal_port + index,
        node_id=f"{settings.node_id}-{index}",
    )
    env.update({f"PUSHSVC_{k.upper()}": _env_value(v) for k, v in values.items() if v is not None})
    return subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env)


def run_workers(settings: Settings, monitor: dict[str, Any]) -> int:
    """Run and supervise the workers until a signal; return the exit code. ``monitor``: the
    embedded monitor's flags (:data:`cli.embedded.EMBEDDED_FLAGS`; None: not given), passed on
    to every worker with the node's settings."""
    stopping = False
    workers = {i: _spawn(settings, monitor, i) for i in range(settings.workers)}

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    last = settings.internal_port + settings.workers - 1
    err.print(f"pushsvc: {settings.workers} workers on port {settings.port}, internal ports "
              f"{settings.internal_port}-{last}")  # fmt: skip
    while not stopping:
        time.sleep(0.2)
        for i, proc in list(workers.items()):
            code = proc.poll()
            if code == 2 and not stopping:  # settings or a port it cannot use: no restart helps
                err.print(f"[red]worker {i} exited with 2 (its error is above); stopping[/]")
                forward(signal.SIGTERM, None)
                break
            if code is not None and not stopping:
                err.print(f"[yellow]worker {i} exited with {code}; restarting[/]")
                time.sleep(RESTART_DELAY)
                workers[i] = _spawn(settings, monitor, i)
    worst = 0
    for proc in workers.values():
        try:
            code = proc.wait(settings.drain_timeout + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        worst = max(worst, abs(code))
    return worst
